"""Sample (vlmlab/data/samples.py schema) -> token ids, labels and preprocessed pixels, in the Qwen chat layout.

Layout (ChatML, what Qwen's chat template renders), turn after turn::

    [<|im_start|>system\n{system}<|im_end|>\n]<|im_start|>user\n{segments}<|im_end|>\n<|im_start|>assistant\n
    {answer}<|im_end|>\n<|im_start|>user\n...<|im_start|>assistant\n{last answer}<|im_end|>

(a single-turn sample is one user and one assistant turn; the sequence stops at the last <|im_end|>).
Each image segment becomes `tokens_per_image` copies of the backbone's image token id (one for
cross-attention), and its pixels are appended to `pixel_values` in placeholder order. Text is tokenized in
place, separately from the fixed role headers, so every answer's token span is known exactly instead of
being recovered from character offsets. Labels equal the input ids on every assistant turn and its closing
`<|im_end|>` (the model must learn to stop) and are -100 everywhere else.

With AnyRes tiling (an `ImageTiler`, vlmlab/data/tiling.py; the rule: vlmlab/tiling.py) an image segment
becomes its thumbnail's and tiles' placeholders, `tokens_per_image` per tile (the connector's count, one
marker in Cross-Attention), with the text tokenizer's newline token after the thumbnail and after each row of
tiles (so the vocabulary is unchanged), and its thumbnail + tiles go to `pixel_values` as separate
tokenizer inputs; `image_tiles` [n_images] holds each image's count (1 + rows * cols). The grid depends on
the image's size: a sample tokenized without its pixels is planned with the costliest grid its budget
allows (`exact_length` is False: the encoded sample is at most that long), and a sample whose images
cannot fit the budget even as thumbnails is dropped and counted in `num_dropped`.

Too-long samples lose user / system *text* from the left (the oldest context goes first; images and
answers are never cut); when even that cannot fit the sample is dropped and counted in
`num_dropped`, because a truncated answer would teach the model wrong text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from vlmlab.data.samples import DOCUMENT_ROLE, turns_of
from vlmlab.data.text_tokenizer import IM_END, IM_START
from vlmlab.data.tiling import ImageTiler
from vlmlab.errors import ConfigError
from vlmlab.tiling import THUMBNAIL_ONLY

IGNORE_INDEX = -100
ImageTransform = Callable[[Image.Image], torch.Tensor]


class Encoder:
    """What the stream, validation and evaluation use of an encoder, in terms of the two methods every
    encoder implements: `tokenize` (token level, images may be None) and `finish` (tensors)."""

    # whether `length()` (no pixels) is exactly the encoded length; False: an upper bound (tiled images)
    exact_length = True

    def tokenize(
        self, sample: dict[str, Any], *, with_response: bool = True, max_length: int | None = None
    ) -> dict[str, Any] | None:
        raise NotImplementedError

    def finish(
        self, tokens: dict[str, Any], images: list[Image.Image] | None = None
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def length(self, sample: dict[str, Any]) -> int | None:
        """Encoded length in tokens (None: too long, dropped) without touching any pixels."""
        tokens = self.tokenize(sample)
        return None if tokens is None else len(tokens["input_ids"])

    def encode(self, sample: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """A training example: input_ids [T], labels [T] (-100 off the response), pixel_values (the images).

        None when the sample cannot fit in `max_length` (counted in `num_dropped`).
        """
        tokens = self.tokenize(sample)
        return None if tokens is None else self.finish(tokens)

    def encode_prompt(
        self, sample: dict[str, Any], max_length: int | None = None
    ) -> dict[str, torch.Tensor] | None:
        """The prompt only, ending with the assistant header, for generation (validation accuracy).

        `max_length` bounds the prompt (default: the encoder's); leave room for the generated tokens.
        """
        tokens = self.tokenize(sample, with_response=False, max_length=max_length)
        if tokens is None:
            return None
        encoded = self.finish(tokens)
        del encoded["labels"]
        return encoded


class SampleEncoder(Encoder):
    """Turns samples into model inputs; pickles into data-loader workers (keep the transform picklable)."""

    def __init__(
        self,
        text_tokenizer: Any,
        image_transform: ImageTransform | None,
        tokens_per_image: int,
        image_token_id: int,
        max_length: int,
        tiler: ImageTiler | None = None,
    ) -> None:
        """`tokens_per_image`: placeholders per image, or per tile when `tiler` tiles the images."""
        if tokens_per_image < 1:
            raise ConfigError(f"tokens_per_image must be >= 1, got {tokens_per_image}.")
        if max_length < 8:
            raise ConfigError(f"max_length must be >= 8 tokens, got {max_length}.")
        self.tokenizer = text_tokenizer
        self.image_transform = image_transform
        self.tokens_per_image = tokens_per_image
        self.image_token_id = image_token_id
        self.max_length = max_length
        self.num_dropped = 0
        self._image_shape: tuple[int, ...] | None = None
        vocab = text_tokenizer.get_vocab()
        for token in (IM_START, IM_END):
            if token not in vocab:
                raise ConfigError(
                    f"The text tokenizer lacks {token}; vlmlab encodes samples in the Qwen chat layout."
                )
        self.im_start, self.im_end = vocab[IM_START], vocab[IM_END]
        self._roles: dict[str, list[int]] = {}
        self.tiler = tiler
        self.exact_length = tiler is None
        if tiler is not None:
            newline = self.text_ids("\n")
            if len(newline) != 1:
                raise ConfigError(
                    f"The text tokenizer splits a newline into {len(newline)} tokens; AnyRes "
                    "tiling separates tile rows with one newline token."
                )
            self.separator_id = newline[0]

    @property
    def pad_id(self) -> int:
        """Padding id for collation: the tokenizer's pad token, else its EOS."""
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def text_ids(self, text: str) -> list[int]:
        """Token ids of plain text, no special tokens added (the Rust tokenizer directly: ~10x faster)."""
        if not text:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return backend.encode(text, add_special_tokens=False).ids
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    # -- token level (no pixels): what the stream's length planning uses
    def tokenize(
        self, sample: dict[str, Any], *, with_response: bool = True, max_length: int | None = None
    ) -> dict[str, Any] | None:
        """`{"input_ids": list, "labels": list, "images": [PIL or None, ...]}`, or None if it cannot fit.

        Images are not preprocessed here, and may be None (a sample whose pixels are not loaded yet): the
        token layout only depends on how many there are.
        """
        budget = self.max_length if max_length is None else max_length
        turns = turns_of(sample)
        if turns[0][0] == DOCUMENT_ROLE:
            return self._document_tokens(turns[0][1], budget)
        if not with_response:  # a generation prompt: the history, then the last assistant header
            turns = turns[:-1]
        # blocks in order, each (ids, kind): "fixed" (role headers), "text" (truncatable context),
        # "image" (never cut), "answer" (an assistant turn: scored, never cut)
        blocks: list[tuple[list[int], str]] = []
        images: list[Image.Image | None] = []
        grids: list[tuple[int, int] | None] = []  # tiled: each image's grid (None: planned without pixels)
        num_images = sum(segment["type"] == "image" for _, segments in turns for segment in segments)
        if self.tiler is not None and not self.tiler.plan.fits(num_images):
            self.num_dropped += 1  # even thumbnails exceed model.max_image_tokens
            return None
        for number, (role, segments) in enumerate(turns):
            if number:  # close the previous turn (an answer block already holds its own <|im_end|>)
                closing = [] if turns[number - 1][0] == "assistant" else [self.im_end]
                blocks.append(([*closing, *self.text_ids("\n")], "fixed"))
            blocks.append(([self.im_start, *self._role_ids(role)], "fixed"))
            if role == "assistant":
                text = "".join(segment["text"] for segment in segments)
                blocks.append(([*self.text_ids(text), self.im_end], "answer"))
                continue
            pending_text = ""
            for segment in segments:
                if segment["type"] == "text":
                    pending_text += segment["text"]  # adjacent text segments tokenize as one string
                    continue
                if pending_text:
                    blocks.append((self.text_ids(pending_text), "text"))
                    pending_text = ""
                image = segment.get("image")
                if self.tiler is None:
                    blocks.append(([self.image_token_id] * self.tokens_per_image, "image"))
                else:
                    grid = None if image is None else self.tiler.plan.grid_for(*image.size, num_images)
                    grids.append(grid)
                    blocks.append((self._tiled_ids(grid, num_images), "image"))
                images.append(image)
            if pending_text:
                blocks.append((self.text_ids(pending_text), "text"))
        if not with_response:
            header = [*self.text_ids("\n"), self.im_start, *self._role_ids("assistant")]
            blocks.append(([self.im_end, *header] if turns[-1][0] != "assistant" else header, "fixed"))
        # the last turn closes with <|im_end|> (scored); the template's final newline is not trained
        if with_response and blocks[-1][1] == "fixed":
            raise ConfigError(f"sample {sample.get('id')!r} ends without an assistant turn.")
        overflow = sum(len(ids) for ids, _ in blocks) - budget
        for index, (ids, kind) in enumerate(blocks):  # the oldest context text goes first
            if overflow <= 0:
                break
            if kind == "text":
                cut = min(overflow, len(ids))
                blocks[index] = (ids[cut:], kind)
                overflow -= cut
        if overflow > 0:
            self.num_dropped += 1
            return None
        input_ids = [token for ids, _ in blocks for token in ids]
        labels = [t if kind == "answer" else IGNORE_INDEX for ids, kind in blocks for t in ids]
        tokens = {"input_ids": input_ids, "labels": labels, "images": images}
        if self.tiler is not None:
            tokens["grids"] = grids
        return tokens

    def _document_tokens(self, segments: list[dict[str, Any]], budget: int) -> dict[str, Any] | None:
        """An interleaved document: its segments in order without chat roles, every text token and the
        closing EOS scored (pretraining on web documents, as OBELICS / MINT-1T are used), images not.

        A document longer than the budget keeps its beginning (images whole: the text up to the cut, no
        EOS since the document did not end there), as documents are cut in pretraining; the plan never
        depends on pixels, so the length without images is the encoded length. Tiled images are planned
        at their costliest grid, so a tiled document must fit whole (else it is dropped and counted)."""
        num_images = sum(segment["type"] == "image" for segment in segments)
        if self.tiler is not None and not self.tiler.plan.fits(num_images):
            self.num_dropped += 1
            return None
        blocks: list[tuple[list[int], str, Any]] = []
        pending = ""
        for segment in segments:
            if segment["type"] == "text":
                pending += segment["text"]
                continue
            if pending:
                blocks.append((self.text_ids(pending), "text", None))
                pending = ""
            image = segment.get("image")
            if self.tiler is None:
                blocks.append(([self.image_token_id] * self.tokens_per_image, "image", image))
            else:
                grid = None if image is None else self.tiler.plan.grid_for(*image.size, num_images)
                blocks.append((self._tiled_ids(grid, num_images), "image", (image, grid)))
        if pending:
            blocks.append((self.text_ids(pending), "text", None))
        eos = self.tokenizer.eos_token_id
        blocks.append(([self.im_end if eos is None else int(eos)], "text", None))
        if sum(len(ids) for ids, _, _ in blocks) > budget:
            if self.tiler is not None:
                self.num_dropped += 1
                return None
            kept, used = [], 0
            for ids, kind, image in blocks:
                room = budget - used
                if len(ids) <= room:
                    kept.append((ids, kind, image))
                    used += len(ids)
                    continue
                if kind == "text" and room > 0:
                    kept.append((ids[:room], kind, image))
                break
            blocks = kept
        if not any(kind == "text" and ids for ids, kind, _ in blocks):
            self.num_dropped += 1  # only images fit: nothing to learn
            return None
        input_ids = [token for ids, _, _ in blocks for token in ids]
        labels = [t if kind == "text" else IGNORE_INDEX for ids, kind, _ in blocks for t in ids]
        extras = [extra for _, kind, extra in blocks if kind == "image"]
        if self.tiler is None:
            return {"input_ids": input_ids, "labels": labels, "images": extras}
        return {
            "input_ids": input_ids,
            "labels": labels,
            "images": [image for image, _ in extras],
            "grids": [grid for _, grid in extras],
        }

    def _tiled_ids(self, grid: tuple[int, int] | None, num_images: int) -> list[int]:
        """Thumbnail, newline, then each row of tiles and a newline; an unknown grid (no pixels yet) is
        planned as the costliest one the budget allows, the most the image can take."""
        plan = self.tiler.plan
        if grid is None:
            grid = max(plan.allowed_grids(num_images), key=plan.cost, default=THUMBNAIL_ONLY)
        rows, cols = grid
        tile = [self.image_token_id] * self.tokens_per_image
        ids = [*tile, self.separator_id]
        for _ in range(rows):
            ids += [*(tile * cols), self.separator_id]
        return ids

    def _role_ids(self, role: str) -> list[int]:
        if role not in self._roles:
            self._roles[role] = self.text_ids(f"{role}\n")
        return self._roles[role]

    # -- pixels
    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """Preprocessed images stacked to [n, 3, H, W]; n = 0 gives an empty tensor of the right H, W."""
        if not images:
            return torch.zeros((0, *self._empty_shape()))
        if self.image_transform is None:
            raise ConfigError("This SampleEncoder has no image transform but the sample has images.")
        tensors = []
        for image in images:
            if image is None:
                raise ConfigError("An image segment holds no image (None): load the sample's pixels first.")
            tensor = self.image_transform(image.convert("RGB") if image.mode != "RGB" else image)
            if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3:
                raise ConfigError(f"The image transform must return a [3, H, W] tensor, got {tensor!r:.80}.")
            tensors.append(tensor.float())
        self._image_shape = tuple(tensors[0].shape)
        return torch.stack(tensors)

    def _empty_shape(self) -> tuple[int, ...]:
        if self.tiler is not None:
            return (3, self.tiler.plan.tile_size, self.tiler.plan.tile_size)
        if self._image_shape is None:
            if self.image_transform is None:
                return (3, 0, 0)
            self._image_shape = tuple(self.image_transform(Image.new("RGB", (64, 64))).shape)
        return self._image_shape

    def finish(
        self, tokens: dict[str, Any], images: list[Image.Image] | None = None
    ) -> dict[str, torch.Tensor]:
        """Token-level result + (loaded) images -> tensors."""
        images = tokens["images"] if images is None else images
        if len(images) != len(tokens["images"]):
            raise ConfigError(f"expected {len(tokens['images'])} images for this sample, got {len(images)}.")
        if self.tiler is not None:
            return self._finish_tiled(tokens, images)
        return {
            "input_ids": torch.tensor(tokens["input_ids"], dtype=torch.long),
            "labels": torch.tensor(tokens["labels"], dtype=torch.long),
            "pixel_values": self.pixels(images),
        }

    def _finish_tiled(self, tokens: dict[str, Any], images: list[Image.Image]) -> dict[str, torch.Tensor]:
        tiles = []
        for image, grid in zip(images, tokens["grids"], strict=True):
            if image is None or grid is None:
                # the token layout was planned for the costliest grid: tokenize again with the pixels loaded
                raise ConfigError(
                    "A tiled image needs its pixels when the sample is tokenized, not only after."
                )
            tiles.append(self.tiler.pixels(image, grid))
        return {
            "input_ids": torch.tensor(tokens["input_ids"], dtype=torch.long),
            "labels": torch.tensor(tokens["labels"], dtype=torch.long),
            "pixel_values": torch.cat(tiles) if tiles else torch.zeros((0, *self._empty_shape())),
            "image_tiles": torch.tensor(
                [1 + rows * cols for rows, cols in tokens["grids"]], dtype=torch.long
            ),
        }


__all__ = ["IGNORE_INDEX", "Encoder", "ImageTransform", "SampleEncoder"]
