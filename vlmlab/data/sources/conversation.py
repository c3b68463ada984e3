"""Conversations as LLaVA / ShareGPT and chat datasets write them -> the sample schema's `messages`.

Turns are `{"from": "human" | "gpt" | "system", "value": str}` (LLaVA, ShareGPT), `{"role": ..., "content":
str}` (chat format) or `{"user": str, "assistant": str, "source": str}` (The Cauldron: one exchange a turn). Images sit where `<image>` markers stand in user turns, in order; a conversation without
markers gets all its images before the first user turn's text (LLaVA's convention). More markers than
images, or some markers but fewer than the images, is a bad sample.
"""

from __future__ import annotations

from typing import Any

from vlmlab.data.samples import check_sample
from vlmlab.data.sources.base import BadSample
from vlmlab.errors import ConfigError

IMAGE_MARKER = "<image>"
ROLE_NAMES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
}


def _turn(turn: Any, index: int) -> tuple[str, str]:
    if not isinstance(turn, dict):
        raise BadSample(f"turn {index} is not an object: {turn!r:.80}")
    speaker = turn.get("from", turn.get("role"))
    text = turn.get("value", turn.get("content"))
    role = ROLE_NAMES.get(str(speaker).lower())
    if role is None:
        raise BadSample(f"turn {index} has speaker {speaker!r}; valid: {', '.join(sorted(ROLE_NAMES))}")
    if not isinstance(text, str):
        raise BadSample(f"turn {index} ({speaker}) has no text")
    return role, text


def _exchanges(turns: list[Any]) -> list[Any]:
    """The Cauldron's turns (`{"user", "assistant", "source"}`: one exchange each) as two turns each; other
    turns as they are."""
    out: list[Any] = []
    for turn in turns:
        if (
            isinstance(turn, dict)
            and "user" in turn
            and "assistant" in turn
            and not {"from", "role"} & set(turn)
        ):
            out += [
                {"role": "user", "content": turn["user"]},
                {"role": "assistant", "content": turn["assistant"]},
            ]
        else:
            out.append(turn)
    return out


def conversation_sample(
    key: str, turns: Any, images: list[Any], *, source: str, system: str | None = None
) -> dict[str, Any]:
    """A `messages` sample from conversation turns and the sample's images (paths, PIL images or None)."""
    if not isinstance(turns, list) or not turns:
        raise BadSample("no conversation turns")
    parsed = [_turn(turn, index) for index, turn in enumerate(_exchanges(turns))]
    markers = sum(text.count(IMAGE_MARKER) for role, text in parsed if role == "user")
    stray = sum(text.count(IMAGE_MARKER) for role, text in parsed if role != "user")
    if stray:
        raise BadSample(f"{stray} {IMAGE_MARKER} marker(s) outside user turns")
    if markers > len(images) or 0 < markers < len(images):
        raise BadSample(f"{markers} {IMAGE_MARKER} marker(s) but {len(images)} image(s)")
    if not images and not system and [role for role, _ in parsed] == ["user", "assistant"]:
        # a single text turn keeps the single-turn form, whose `prompt` LoMo recognises and rewrites
        sample = {
            "id": key,
            "source": source,
            "prompt": parsed[0][1],
            "response": parsed[1][1],
            "kind": "text",
        }
        return check_sample(sample)
    messages: list[dict[str, Any]] = []
    if system and (not parsed or parsed[0][0] != "system"):
        messages.append({"role": "system", "content": system})
    pending = list(images) if markers == 0 else []
    queue = iter(images)
    for role, text in parsed:
        if role != "user":
            messages.append({"role": role, "content": text})
            continue
        content: list[dict[str, Any]] = [{"type": "image", "image": image} for image in pending]
        pending = []
        for number, piece in enumerate(text.split(IMAGE_MARKER)):
            if number:
                content.append({"type": "image", "image": next(queue)})
            if piece:
                content.append({"type": "text", "text": piece})
        messages.append({"role": "user", "content": content})
    sample = {"id": key, "source": source, "messages": messages, "kind": "interleaved"}
    try:
        return check_sample(sample)
    except ConfigError as error:
        raise BadSample(str(error)) from error
