"""Validation and evaluation by generation: greedy answers to prompt items, scored per item.

Scoring follows the item: an item from a benchmark reader (`benchmark` set) is scored with that benchmark's
official metric (VQA soft accuracy, ANLS, relaxed accuracy, ...: vlmlab.scoring.metrics); a multiple-choice
item (`options`) the paper's way, the option committed to after "Final answer:" (Appendix C); any other
open-ended item by exact match after the official VQA normalisation. Chance levels exist only for
multiple-choice items.

Across ranks the items are sharded (rank r takes items r, r + world, ...) and the scores gathered, so every
rank ends with the scores of all items. Ranks generate in lockstep (the same number of batches and of
decoding steps), which a sharded (FSDP) model needs: each of its forwards is a collective.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from vlmlab.data.chat_encode import collate_chat
from vlmlab.data.synthetic.prompts import extract_final_answer
from vlmlab.data.validation import collate_prompts
from vlmlab.models.generation import greedy_generate
from vlmlab.scoring.intervals import interval, is_binary
from vlmlab.scoring.metrics import get_metric, vqa_normalize


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_ranks_true(flag: bool) -> bool:
    value = torch.tensor([int(flag)], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def _collective_device() -> torch.device:
    backend = dist.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def _max_over_ranks(value: int) -> int:
    tensor = torch.tensor([value], device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


@torch.no_grad()
def generate_texts(
    model: torch.nn.Module,
    text_tokenizer: Any,
    items: Sequence[dict[str, Any]],
    batch_size: int = 32,
    max_new_tokens: int = 16,
    dtype: torch.dtype | None = None,
    lockstep_filler: dict[str, Any] | None = None,
) -> list[str]:
    """Greedy answers to prompt items (`input_ids`, `pixel_values`), batched with left padding, on the
    model's device, under autocast to `dtype` when given.

    `lockstep_filler`: in a multi-process run, an item to generate from (and discard) on batches this rank
    does not have, so that every rank runs as many batches and decoding steps as the busiest one."""
    stops = [text_tokenizer.convert_tokens_to_ids("<|im_end|>"), text_tokenizer.eos_token_id]
    stops = [s for s in stops if s is not None]
    device = next(model.parameters()).device
    lockstep = lockstep_filler is not None and _world()[1] > 1
    batches = [items[start : start + batch_size] for start in range(0, len(items), batch_size)]
    if lockstep:
        batches += [[lockstep_filler]] * (_max_over_ranks(len(batches)) - len(batches))
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    texts: list[str] = []
    open_weight = hasattr(model, "generate_batch")  # a HF model: its processor's tensors, its generate()
    for batch_items in batches:
        if open_weight:
            chat = collate_chat(
                [{k: v for k, v in item.items() if isinstance(v, torch.Tensor)} for item in batch_items],
                text_tokenizer.pad_token_id,
                left_pad=True,
            )
            with autocast:
                outputs = model.generate_batch(chat, max_new_tokens, stops, synced=lockstep)
            texts += [text_tokenizer.decode(tokens, skip_special_tokens=True) for tokens in outputs]
            continue
        batch = collate_prompts(batch_items, text_tokenizer.pad_token_id)
        pixels = batch.get("pixel_values")
        with autocast:
            outputs = greedy_generate(
                model,
                batch["input_ids"].to(device),
                batch["segment_ids"].to(device),
                pixels.to(device) if pixels is not None and pixels.numel() else None,
                max_new_tokens,
                stops,
                all_finished=_all_ranks_true if lockstep else None,
            )
        texts += [text_tokenizer.decode(tokens, skip_special_tokens=True) for tokens in outputs]
    return texts[: len(items)]


def score_item(text: str, item: dict[str, Any]) -> tuple[float, bool]:
    """(score in [0, 1], whether the answer could not be extracted) of one generated answer."""
    if item.get("benchmark"):
        return float(get_metric(item["benchmark"])(text.strip(), item)), False
    if item.get("options"):
        answer = extract_final_answer(text, item["options"])
        return float(answer == item["answer"]), answer is None
    return float(vqa_normalize(text.strip()) == vqa_normalize(str(item["answer"]))), False


def chance_level(items: Sequence[dict[str, Any]]) -> float | None:
    """Expected accuracy of guessing among the options; None where there are no options to guess from."""
    if not items or not all(item.get("options") and not item.get("benchmark") for item in items):
        return None
    return sum(1.0 / len(item["options"]) for item in items) / len(items)


def evaluate_items(
    model: torch.nn.Module,
    text_tokenizer: Any,
    items: Sequence[dict[str, Any]],
    batch_size: int = 32,
    max_new_tokens: int = 16,
    dtype: torch.dtype | None = None,
    keep_items: bool = False,
) -> dict[str, Any]:
    """`accuracy` (mean item score), `n`, and for multiple-choice items `extraction_failures` and `chance`,
    over all items, each rank generating a disjoint share. The same on every rank.

    Also the 95 % interval of the accuracy from the gathered per-item scores (vlmlab.scoring.intervals:
    Wilson when every score is 0 or 1, else the seeded percentile bootstrap) as `ci_low` / `ci_high`, and
    for 0/1 outcomes the number `correct`, so that results can pool runs. All values are plain floats;
    `keep_items` adds `item_scores` (the per-item scores, item order) and `items` (their digest,
    `items_digest`), which `as_metric` stores in a record for paired tests (vlmlab.scoring.replicates)."""
    rank, world = _world()
    mine = list(range(rank, len(items), world))
    texts = generate_texts(
        model,
        text_tokenizer,
        [items[i] for i in mine],
        batch_size,
        max_new_tokens,
        dtype,
        lockstep_filler=items[0] if items else None,
    )
    scored = {i: score_item(text, items[i]) for i, text in zip(mine, texts)}
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, scored)
        scored = {i: value for part in gathered for i, value in part.items()}
    count = max(len(items), 1)
    scores = [scored[i][0] for i in sorted(scored)]  # item order, whatever the number of ranks
    low, high = interval(scores)
    result = {
        "accuracy": sum(scores) / count,
        "n": float(len(items)),
        "ci_low": low,
        "ci_high": high,
    }
    if is_binary(scores):
        result["correct"] = float(sum(scores))
    if keep_items:  # per item, in item order: what a paired test between two models needs (as_metric)
        result["item_scores"] = scores
        result["items"] = items_digest(items)
    if any(item.get("options") and not item.get("benchmark") for item in items):
        result["extraction_failures"] = sum(failed for _, failed in scored.values()) / count
    chance = chance_level(items)
    if chance is not None:
        result["chance"] = chance
    return result


def items_digest(items: Sequence[dict[str, Any]]) -> str:
    """A short fingerprint of which items were scored, in which order: two records are paired only on the
    same items."""
    ids = json.dumps([str(item.get("id", index)) for index, item in enumerate(items)])
    return hashlib.sha256(ids.encode()).hexdigest()[:16]


def as_metric(result: dict[str, Any]) -> dict[str, Any]:
    """An `evaluate_items` result as a record metric (vlmlab.runs.record): {"score", "n", "ci": [low,
    high]}, plus "correct" (the number of 0/1 successes) where the outcomes were 0/1, and the per-item
    `outcomes` (ints for 0/1) with the `items` digest they were scored on, for paired tests."""
    metric: dict[str, Any] = {"score": result["accuracy"], "n": int(result["n"])}
    if "ci_low" in result and "ci_high" in result:
        metric["ci"] = [result["ci_low"], result["ci_high"]]
    if "correct" in result:
        metric["correct"] = int(round(result["correct"]))
    if "item_scores" in result:
        binary = is_binary(result["item_scores"])
        metric["outcomes"] = [int(x) if binary else float(x) for x in result["item_scores"]]
        metric["items"] = result["items"]
    return metric
