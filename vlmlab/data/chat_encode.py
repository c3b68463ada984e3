"""Samples -> an open-weight VLM's inputs, through the model's own processor and chat template.

vlmlab's own models take the Qwen chat layout built token by token (vlmlab/data/encode.py). A released VLM
(Qwen2.5-VL, Gemma 3, InternVL, Kimi-VL, ...) must see exactly what its processor makes of a conversation:
its chat template's role markers, its image markers expanded to as many image tokens as its image
processor gives the image (Qwen2.5-VL: one per 28 x 28 pixels), and the pixel layout its vision tower
reads (flattened patches + `image_grid_thw`, tiles, ...). So `ChatEncoder` renders each sample as chat
messages, lets the processor do the rest, and only adds the labels:

* the conversation up to each assistant turn, rendered with the generation prompt, must be a token prefix
  of the whole conversation (true of every released chat template we know; checked, one clear error when
  not); the tokens after that prefix, up to the end of the turn rendered on its own, are the answer: they
  are trained (labels = ids), including the template's end-of-turn token and excluding whitespace after it;
* a sample longer than `max_length` tokens is dropped and counted in `num_dropped` (nothing is cut: the
  processor's image tokens and the answer must stay whole, and truncating a chat template's text would
  break its markup).

The result keeps the processor's own tensors: per-token ones (`input_ids`, `token_type_ids`,
`mm_token_type_ids`) as [T], per-image ones (`pixel_values`, `image_grid_thw`, ...) as the processor
returned them for this sample. `collate_chat` pads the former and concatenates the latter, in sample order,
which is how every HF VLM takes a batch.

Length planning without pixels (the stream counts tokens before images are decoded) runs the processor on
blank stand-in images of `image_size`: the token count depends only on the image size, so for the
synthetic tasks (drawn at that size) the plan is exact. Open-weight rows are padded, one sample each, so the
plan only decides which samples a batch holds: a sample whose decoded images give another length is
encoded as it really is (and dropped, counted, if that is longer than `max_length`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from vlmlab.data.encode import Encoder
from vlmlab.data.samples import turns_of
from vlmlab.errors import ConfigError

IGNORE_INDEX = -100
PER_TOKEN_KEYS = ("input_ids", "labels", "attention_mask", "token_type_ids", "mm_token_type_ids")


class ChatEncoder(Encoder):
    """The encoder interface (vlmlab.data.encode.Encoder) for a HF processor; pickles into data-loader
    workers with its processor."""

    def __init__(self, processor: Any, max_length: int, image_size: int = 384) -> None:
        if max_length < 8:
            raise ConfigError(f"max_length must be >= 8 tokens, got {max_length}.")
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None or getattr(processor, "chat_template", None) is None:
            raise ConfigError(
                f"{type(processor).__name__} has no tokenizer or no chat template; an open-weight model needs "
                "the processor files of its release (chat_template.jinja or chat_template.json)."
            )
        self.processor = processor
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.image_size = image_size
        self.num_dropped = 0

    @property
    def image_token_id(self) -> int | None:
        """The id each image becomes many of in the ids (its "soft" token: Qwen's <|image_pad|>, ...)."""
        token = getattr(self.tokenizer, "image_token_id", None)
        return token if token is not None else getattr(self.processor, "image_token_id", None)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    # -- chat messages
    @staticmethod
    def messages(sample: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Image.Image | None]]:
        """The sample as HF chat messages (image parts as {"type": "image"}) and its images in order."""
        messages: list[dict[str, Any]] = []
        images: list[Image.Image | None] = []
        for role, segments in turns_of(sample):
            content = []
            for segment in segments:
                if segment["type"] == "image":
                    content.append({"type": "image"})
                    images.append(segment.get("image"))
                elif content and content[-1]["type"] == "text":  # adjacent text parts render as one
                    content[-1] = {"type": "text", "text": content[-1]["text"] + segment["text"]}
                else:
                    content.append({"type": "text", "text": segment["text"]})
            messages.append({"role": role, "content": content})
        return messages, images

    def _render(self, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def _process(self, text: str, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if images:
            kwargs["images"] = [image.convert("RGB") if image.mode != "RGB" else image for image in images]
        return dict(self.processor(**kwargs))

    def _stand_ins(self, images: Sequence[Image.Image | None]) -> list[Image.Image]:
        return [
            image if image is not None else Image.new("RGB", (self.image_size, self.image_size))
            for image in images
        ]

    # -- the SampleEncoder interface
    def tokenize(
        self, sample: dict[str, Any], *, with_response: bool = True, max_length: int | None = None
    ) -> dict[str, Any] | None:
        """{"input_ids", "labels", "images", "text" (the rendered chat), "processed" (the processor's tensors,
        when the images were loaded)}, or None when it does not fit (counted in `num_dropped`)."""
        budget = self.max_length if max_length is None else max_length
        if "document" in sample:  # no chat template renders a web document without roles
            raise ConfigError(
                f"sample {sample.get('id')!r} is an interleaved document; open-weight models (model.open_weight) "
                "train on chat samples only: train documents with vlmlab's own models."
            )
        messages, images = self.messages(sample)
        if messages[-1]["role"] != "assistant":
            raise ConfigError(f"sample {sample.get('id')!r} ends without an assistant turn.")
        real = all(image is not None for image in images)
        pixels = self._stand_ins(images)
        if not with_response:
            text = self._render(messages[:-1], True)
            processed = self._process(text, pixels)
            ids = processed["input_ids"][0].tolist()
            labels = [IGNORE_INDEX] * len(ids)
        else:
            text = self._render(messages, False)
            processed = self._process(text, pixels)
            ids = processed["input_ids"][0].tolist()
            labels = [IGNORE_INDEX] * len(ids)
            seen = 0  # images in the turns rendered so far
            for turn, message in enumerate(messages):
                if message["role"] != "assistant":
                    seen += sum(part["type"] == "image" for part in message["content"])
                    continue
                start = self._prefix_length(messages[:turn], pixels[:seen], ids, sample)
                end = self._prefix_length(messages[: turn + 1], pixels[:seen], ids, sample, closed=True)
                while end > start and not self.tokenizer.decode([ids[end - 1]]).strip():
                    end -= 1  # the newline after the end-of-turn marker is not an answer token
                labels[start:end] = ids[start:end]
        if len(ids) > budget:
            self.num_dropped += 1
            return None
        return {
            "input_ids": ids,
            "labels": labels,
            "images": images,
            "text": text,
            "processed": processed if real else None,
        }

    def _prefix_length(
        self,
        messages: list[dict[str, Any]],
        images: list[Image.Image],
        full: list[int],
        sample: dict[str, Any],
        closed: bool = False,
    ) -> int:
        """Length of the rendering of `messages` (with the generation prompt unless `closed`) inside `full`."""
        ids = self._process(self._render(messages, not closed), images)["input_ids"][0].tolist()
        if full[: len(ids)] != ids:
            raise ConfigError(
                f"The chat template of {type(self.processor).__name__} does not render the conversation of "
                f"sample {sample.get('id')!r} up to a turn as a prefix of the whole conversation, so the answer "
                "tokens cannot be told apart; fix the template (chat_template.jinja) or use single-turn data."
            )
        return len(ids)

    def finish(
        self, tokens: dict[str, Any], images: list[Image.Image] | None = None
    ) -> dict[str, torch.Tensor]:
        """Token-level result + (loaded) images -> this sample's tensors in the processor's own layout."""
        images = tokens["images"] if images is None else images
        if len(images) != len(tokens["images"]):
            raise ConfigError(f"expected {len(tokens['images'])} images for this sample, got {len(images)}.")
        if any(image is None for image in images):
            raise ConfigError("An image segment holds no image (None): load the sample's pixels first.")
        processed = tokens.get("processed")
        if processed is None or images is not tokens["images"]:
            processed = self._reprocess(tokens, images)
        out: dict[str, torch.Tensor] = {
            "input_ids": torch.tensor(tokens["input_ids"], dtype=torch.long),
            "labels": torch.tensor(tokens["labels"], dtype=torch.long),
        }
        for key, value in processed.items():
            if key in ("input_ids", "attention_mask") or not isinstance(value, torch.Tensor):
                continue
            out[key] = value[0] if key in PER_TOKEN_KEYS else value
        out.setdefault("pixel_values", torch.zeros(0))
        return out

    def _reprocess(self, tokens: dict[str, Any], images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """The processor's tensors for loaded images (the ids were planned with stand-ins of their size)."""
        processed = self._process(tokens["text"], images)
        if processed["input_ids"][0].tolist() != tokens["input_ids"]:
            raise ConfigError(
                "The sample's images give a different number of image tokens than planned (its images are "
                f"not {self.image_size} x {self.image_size}); see vlmlab/data/chat_encode.py."
            )
        return processed

    def collate(self, rows: Sequence[Sequence[dict[str, Any]]], packing: bool) -> dict[str, Any]:
        """The stream's micro-batch: one sample per row, right-padded (open-weight models take no packing)."""
        if packing:
            raise ConfigError(
                "Open-weight models train on padded rows: set data.packing: false (their position layouts, "
                "e.g. Qwen2.5-VL's 3-D rotary positions, are computed by the model from whole rows)."
            )
        return collate_chat([row[0] for row in rows], self.pad_id)


def collate_chat(encoded: Sequence[dict[str, Any]], pad_id: int, left_pad: bool = False) -> dict[str, Any]:
    """Samples of `ChatEncoder` -> one batch: per-token tensors padded (right for training, left for
    generation; input ids with `pad_id`, labels with -100, the rest with 0) plus `attention_mask` and
    `segment_ids` (0 on tokens, -1 on padding), per-image tensors concatenated in sample order."""
    if not encoded:
        raise ConfigError("collate_chat needs at least one encoded sample.")
    length = max(len(e["input_ids"]) for e in encoded)
    batch: dict[str, Any] = {}
    token_keys = [k for k in PER_TOKEN_KEYS if k in encoded[0]]
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX}
    for key in token_keys:
        batch[key] = torch.full((len(encoded), length), fill.get(key, 0), dtype=encoded[0][key].dtype)
    segment_ids = torch.full((len(encoded), length), -1, dtype=torch.long)
    for row, sample in enumerate(encoded):
        n = len(sample["input_ids"])
        where = slice(length - n, length) if left_pad else slice(0, n)
        for key in token_keys:
            batch[key][row, where] = sample[key]
        segment_ids[row, where] = 0
    batch["segment_ids"] = segment_ids
    batch["attention_mask"] = segment_ids.ge(0).long()
    image_keys = dict.fromkeys(k for e in encoded for k in e if k not in PER_TOKEN_KEYS)
    for key in image_keys:  # text-only samples have none of them (pixel_values: an empty tensor)
        parts = [e[key] for e in encoded if key in e and e[key].numel() > 0]
        if parts:
            batch[key] = torch.cat(parts)
        elif key == "pixel_values":
            batch[key] = torch.zeros(0)
    batch["num_real_tokens"] = int(segment_ids.ge(0).sum())
    return batch


__all__ = ["ChatEncoder", "PER_TOKEN_KEYS", "collate_chat"]
