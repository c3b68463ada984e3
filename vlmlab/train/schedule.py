"""AdamW over named parameter groups, each with its own peak learning rate, sharing one schedule shape:
linear warmup to the peak, then cosine decay to `min_lr_ratio` of the peak (paper, Appendix D)."""

from __future__ import annotations

import math

import torch
from torch import nn

from vlmlab.config import OptimConfig
from vlmlab.errors import ConfigError, unknown_choice
from vlmlab.models.tokenizers.encoder_set import tower_index


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Fraction of the peak learning rate at optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    groups: dict[str, list[tuple[str, nn.Parameter]]], optim: OptimConfig
) -> torch.optim.AdamW:
    """One AdamW param group per trainable vlmlab group; biases and norms get no weight decay. Several image
    encoders: one group per tower (`image_tokenizer.<i>`), at `optim.encoder_lr[i]` where given."""
    param_groups = []
    for group, params in groups.items():
        trainable = [(n, p) for n, p in params if p.requires_grad]
        if not trainable:
            continue
        if group not in optim.lr:
            raise unknown_choice(
                f"learning rate group (optim.lr) for trainable group {group!r}", group, optim.lr
            )
        lr = float(optim.lr[group])
        if lr <= 0:
            raise ConfigError(f"Group {group!r} trains but optim.lr.{group} = {lr}; give it a positive rate.")
        for name, members, rate in _per_tower(group, trainable, lr, optim):
            decay = [p for n, p in members if p.dim() >= 2]
            no_decay = [p for n, p in members if p.dim() < 2]
            for params_, weight_decay, suffix in (
                (decay, optim.weight_decay, ""),
                (no_decay, 0.0, ".no_decay"),
            ):
                if params_:
                    param_groups.append(
                        {
                            "params": params_,
                            "lr": rate,
                            "initial_lr": rate,
                            "weight_decay": weight_decay,
                            "name": name + suffix,
                        }
                    )
    if not param_groups:
        raise ConfigError("Nothing trains: every parameter group is frozen by this recipe and stage.")
    return torch.optim.AdamW(param_groups, betas=tuple(optim.betas))


def _per_tower(
    group: str, trainable: list[tuple[str, nn.Parameter]], lr: float, optim: OptimConfig
) -> list[tuple[str, list[tuple[str, nn.Parameter]], float]]:
    """(name, parameters, peak rate) per optimizer group of one vlmlab group: the group itself, or for an
    encoder set's image_tokenizer one per tower, each at its optim.encoder_lr (null: the group's rate)."""
    towers: dict[int, list[tuple[str, nn.Parameter]]] = {}
    for name, param in trainable:
        index = tower_index(name)
        if index is None:
            return [(group, trainable, lr)]
        towers.setdefault(index, []).append((name, param))
    rates = list(optim.encoder_lr)
    return [
        (f"{group}.{i}", members, float(rates[i]) if i < len(rates) and rates[i] is not None else lr)
        for i, members in sorted(towers.items())
    ]


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, optim.warmup_steps, total_steps, optim.min_lr_ratio)
    )
