"""Batched greedy generation for every fusion architecture, with or without a key-value cache.

Prompts are left-padded (segment id -1 on padding, 0 on prompt tokens) so that every row's next token is
at the last position. With the cache, the prompt (and its images) is encoded once; each new token then
attends to the cached keys/values of the decoder layers (Joint-Decoder, MoT: the cache was filled through
each token's own modality copy) and, for Cross-Attention, to the cached image keys/values of every gated
layer. Without the cache, the whole sequence is recomputed each step: the reference the cache is tested
against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import DynamicCache

from vlmlab.models.fusion.context import positions_from_segments


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,  # [B, T] left-padded prompts
    segment_ids: torch.Tensor,  # [B, T] 0 on prompt tokens, -1 on left padding
    pixel_values: torch.Tensor | None,
    max_new_tokens: int,
    stop_ids: list[int],
    use_cache: bool = True,
    all_finished: Callable[[bool], bool] | None = None,
) -> list[list[int]]:
    """Greedy continuation of each prompt; stops at any of `stop_ids` (not included in the result).

    The image placeholder id is never generated: it is not text, and as an input it would mark an image
    slot. `all_finished(done_here)` (multi-process lockstep) says whether every process is done, so all
    keep decoding until the last one is."""
    was_training = model.training
    model.eval()
    step = _cached_steps(model, input_ids, segment_ids, pixel_values) if use_cache else None
    batch = input_ids.shape[0]
    generated: list[list[int]] = [[] for _ in range(batch)]
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    stop = torch.tensor(stop_ids, device=input_ids.device)
    ids, segments = input_ids, segment_ids
    logits = next(step) if step else model(ids, pixel_values=pixel_values, segment_ids=segments).logits[:, -1]
    for _ in range(max_new_tokens):
        logits[:, model.image_token_id] = float("-inf")
        next_token = logits.argmax(dim=-1)
        is_stop = (next_token[:, None] == stop).any(dim=1)
        for row in range(batch):
            if not finished[row] and not is_stop[row]:
                generated[row].append(int(next_token[row]))
        finished |= is_stop
        done = bool(finished.all())
        if all_finished(done) if all_finished is not None else done:
            break
        if step:
            logits = step.send(next_token)
        else:
            ids = torch.cat([ids, next_token[:, None]], dim=1)
            segments = torch.cat([segments, torch.zeros_like(segments[:, :1])], dim=1)
            logits = model(ids, pixel_values=pixel_values, segment_ids=segments).logits[:, -1]
    model.train(was_training)
    return generated


def _cached_steps(model, input_ids, segment_ids, pixel_values):
    """A generator: yields the prompt's last logits, then receives each new token and yields its logits."""
    cache = DynamicCache(config=model.lm.config)
    logits, positions, extras = model.prefill(input_ids, segment_ids, pixel_values, cache)
    segments = segment_ids
    token = yield logits
    while True:
        segments = torch.cat([segments, torch.zeros_like(segments[:, :1])], dim=1)
        positions = positions + 1
        token = yield model.decode_step(token, positions, segments, cache, extras)


__all__ = ["greedy_generate", "positions_from_segments"]
