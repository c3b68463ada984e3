"""The one sample schema every training and validation source is converted to before encoding.

A sample is a dict::

    {
        "id": str,                      # unique within its source (logs, debugging)
        "segments": [                   # the user turn, in order; text and images may interleave freely
            {"type": "text", "text": str},
            {"type": "image", "image": PIL.Image.Image},
            ...
        ],
        "response": str,                # the assistant turn: the only supervised text
        "source": str,                  # the data source's name (mixture statistics, per-source metrics)
        # optional
        "answer": str,                  # the gold answer, for accuracy with `extract_final_answer`
        "options": list[str],           # the answer options, when the question has them
        "answers": list[str],           # every reference answer (validation with an official metric)
        "benchmark": str,               # the benchmark whose official metric scores it (vlmlab.scoring.metrics)
        "kind": "caption" | "vqa" | "text" | "interleaved",
    }

A multi-turn sample carries ``"messages"`` instead of ``segments`` / ``response``::

    "messages": [
        {"role": "system", "content": str},                       # optional, first
        {"role": "user", "content": str | [segment, ...]},        # images only in user turns
        {"role": "assistant", "content": str},                    # every assistant turn is supervised
        ...                                                       # alternating, ending on an assistant turn
    ]

A single-turn sample is the one-turn case: ``segments`` (the user turn) + ``response`` (the assistant).

An interleaved web document (OBELICS, MINT-1T: pretraining data, no conversation) carries ``"document"``
instead: ``[segment, ...]``, text and images in document order, ``"kind": "interleaved"``. It is encoded
without chat roles, every text token scored (the model learns the document's text, conditioned on the images
before it) and the end of the document marked by the tokenizer's EOS; see `vlmlab.data.encode`.

A text-only sample may carry ``"prompt": str`` instead of ``"segments"``; it then means
``segments = [{"type": "text", "text": prompt}]``. Text-only samples are written this way on purpose:
LoMo (:mod:`vlmlab.data.lomo`) recognises them by their ``prompt`` and rewrites part of it into an image,
adding ``segments`` (which then take precedence; the ``prompt`` stays for reference).

Segments are concatenated without separators, so whatever spacing or newlines the text needs are part of
the text segments (LoMo relies on this: its segments concatenate back to the original prompt).

Kinds: ``caption`` (an image and an instruction, the response describes the image: stage 1), ``vqa`` (an
image and a question about it), ``text`` (text only), ``interleaved`` (any other mix).
"""

from __future__ import annotations

from typing import Any

from vlmlab.data.synthetic.prompts import build_prompt
from vlmlab.errors import ConfigError, unknown_choice

KINDS = ("caption", "vqa", "text", "interleaved")
SYNTHETIC_MODES = ("caption", "vqa", "tqa")
CAPTION_INSTRUCTION = "Describe the image."
RESPONSES = ("answer", "solution")


def segments_of(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """The user turn of a sample as segments, whichever of the two allowed forms it uses."""
    if "segments" in sample:
        segments = sample["segments"]
        if not isinstance(segments, list):
            raise ConfigError(
                f"sample {sample.get('id')!r}: 'segments' must be a list, got {type(segments)}."
            )
        for segment in segments:
            kind = segment.get("type") if isinstance(segment, dict) else None
            if kind not in ("text", "image"):
                raise ConfigError(
                    f"sample {sample.get('id')!r}: every segment must be a dict with type 'text' or 'image', "
                    f"got {segment!r}."
                )
            if kind == "text" and not isinstance(segment.get("text"), str):
                raise ConfigError(f"sample {sample.get('id')!r}: a text segment needs a string 'text'.")
        return segments
    prompt = sample.get("prompt")
    if isinstance(prompt, str):
        return [{"type": "text", "text": prompt}]
    raise ConfigError(f"sample {sample.get('id')!r} has neither 'segments' nor a string 'prompt'.")


ROLES = ("system", "user", "assistant")


def _content_segments(sample: dict[str, Any], role: str, content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    segments = segments_of({"id": sample.get("id"), "segments": content})
    if role != "user" and any(segment["type"] == "image" for segment in segments):
        raise ConfigError(f"sample {sample.get('id')!r}: images may only stand in user turns, not {role!r}.")
    return segments


def _check_not_empty(sample: dict[str, Any], turns: list[tuple[str, list[dict[str, Any]]]]) -> None:
    """Empty answers teach nothing and empty questions teach answering nothing: both are bad samples."""
    for index, (role, segments) in enumerate(turns):
        has_image = any(segment["type"] == "image" for segment in segments)
        if not has_image and not "".join(s.get("text", "") for s in segments).strip():
            what = "response" if role == "assistant" else f"{role} turn"
            raise ConfigError(f"sample {sample.get('id')!r}: the {what} (turn {index}) is empty.")


DOCUMENT_ROLE = "document"  # the one "turn" of an interleaved document: no chat role, all text scored


def turns_of(sample: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The conversation as (role, segments) turns: `messages` as given, or the single-turn form as one
    user turn (its segments) and one assistant turn (its response); a `document` is one DOCUMENT_ROLE turn."""
    if "document" in sample:
        segments = segments_of({"id": sample.get("id"), "segments": sample["document"]})
        if not any(s["type"] == "text" and s["text"].strip() for s in segments):
            raise ConfigError(f"sample {sample.get('id')!r}: the document holds no text (nothing to learn).")
        return [(DOCUMENT_ROLE, segments)]
    messages = sample.get("messages")
    if messages is None:
        response = sample.get("response")
        if not isinstance(response, str):
            raise ConfigError(
                f"sample {sample.get('id')!r} needs a string 'response' (the supervised answer)."
            )
        return [("user", segments_of(sample)), ("assistant", [{"type": "text", "text": response}])]
    if not isinstance(messages, list) or not messages:
        raise ConfigError(f"sample {sample.get('id')!r}: 'messages' must be a non-empty list of turns.")
    turns = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise unknown_choice(f"role (sample {sample.get('id')!r}, turn {index})", role, ROLES)
        if role == "system" and index != 0:
            raise ConfigError(
                f"sample {sample.get('id')!r}: a system turn may only come first (turn {index})."
            )
        turns.append((role, _content_segments(sample, role, message.get("content"))))
    roles = [role for role, _ in turns if role != "system"]
    if not roles or any(role != ("user", "assistant")[i % 2] for i, role in enumerate(roles)):
        raise ConfigError(
            f"sample {sample.get('id')!r}: turns must alternate user, assistant, ... after an optional system "
            f"turn, got {[role for role, _ in turns]}."
        )
    if roles[-1] != "assistant":
        raise ConfigError(
            f"sample {sample.get('id')!r}: the conversation ends on a user turn; the last turn must be the "
            "assistant's (it is what the model learns)."
        )
    return turns


def check_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Raise ConfigError naming the sample when it does not follow the schema; return it unchanged."""
    if not isinstance(sample, dict):
        raise ConfigError(f"a sample must be a dict, got {type(sample).__name__}.")
    # a training sample must teach something: no empty answer, no empty question
    _check_not_empty(sample, turns_of(sample))
    if "messages" in sample or "document" in sample:
        return sample
    if not isinstance(sample.get("response"), str):
        raise ConfigError(f"sample {sample.get('id')!r} needs a string 'response' (the supervised answer).")
    kind = sample.get("kind")
    if kind is not None and kind not in KINDS:
        raise unknown_choice(f"sample kind (sample {sample.get('id')!r})", kind, KINDS)
    return sample


def num_images(sample: dict[str, Any]) -> int:
    """How many images the sample holds (each costs `tokens_per_image` positions)."""
    return sum(segment["type"] == "image" for _, segments in turns_of(sample) for segment in segments)


def synthetic_response(sample: dict[str, Any], modality: str, response: str = "answer") -> str:
    """The supervised answer to a synthetic question.

    Short by default ("Final answer: X"): tiny models learn the answer format in a few steps and the
    accuracy metric only reads what follows "Final answer:". `response="solution"` prepends the worked
    solution for the modality (reasoning supervision).
    """
    if response not in RESPONSES:
        raise unknown_choice("synthetic response style", response, RESPONSES)
    final = f"Final answer: {sample['answer']}"
    if response == "answer":
        return final
    solution = sample["solution_direct" if modality == "image" else "solution"]
    return f"{solution}\n{final}"


def synthetic_to_sample(
    sample: dict[str, Any], mode: str, *, source: str | None = None, response: str = "answer"
) -> dict[str, Any]:
    """Convert one synthetic-task sample (see `vlmlab.data.synthetic`) for training or validation.

    Modes: ``caption`` (the image + "Describe the image." -> the caption, stage 1), ``vqa`` (the image +
    the image-modality question -> the answer), ``tqa`` (the complete text question alone -> the answer,
    written with ``prompt`` so LoMo can rewrite it). The image may be None (length planning without
    rendering: see `vlmlab.data.stream`).
    """
    if mode not in SYNTHETIC_MODES:
        raise unknown_choice("synthetic mode", mode, SYNTHETIC_MODES)
    out: dict[str, Any] = {
        "id": f"{sample['id']}-{mode}",
        "source": source if source is not None else f"{sample.get('task', 'synthetic')}-{mode}",
    }
    image = {"type": "image", "image": sample.get("image")}
    if mode == "caption":
        out.update(
            segments=[image, {"type": "text", "text": CAPTION_INSTRUCTION}],
            response=sample["caption"],
            answer=sample["caption"],
            kind="caption",
        )
    elif mode == "vqa":
        out.update(
            segments=[image, {"type": "text", "text": build_prompt(sample, "image")}],
            response=synthetic_response(sample, "image", response),
            answer=sample["answer"],
            options=list(sample["options"]),
            kind="vqa",
        )
    else:
        out.update(
            prompt=build_prompt(sample, "text"),
            response=synthetic_response(sample, "text", response),
            answer=sample["answer"],
            options=list(sample["options"]),
            kind="text",
        )
    return out


def is_synthetic_record(record: dict[str, Any]) -> bool:
    """A raw synthetic-task record (as written by `vlmlab data synthetic`), not yet converted."""
    return "segments" not in record and "prompt" not in record and {"question", "answer"} <= record.keys()


__all__ = [
    "CAPTION_INSTRUCTION",
    "DOCUMENT_ROLE",
    "KINDS",
    "RESPONSES",
    "ROLES",
    "SYNTHETIC_MODES",
    "check_sample",
    "is_synthetic_record",
    "num_images",
    "segments_of",
    "synthetic_response",
    "synthetic_to_sample",
    "turns_of",
]
