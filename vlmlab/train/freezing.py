"""Freezing as one logged function of (recipe, stage); the recipes themselves are read by vlmlab.recipes.

Beyond what a recipe states, the paper's rules:
- the adapter, cross-attention layers and the MoT image transformer always train;
- the language model is frozen in stage 1;
- what is unfrozen in stage 1 stays unfrozen in stage 2;
- discrete tokenizers (TiTok, VAR) are always frozen (no straight-through estimator);
- stage 3 keeps the stage-2 settings (a uniform learning rate over all unfrozen groups).
"""

from __future__ import annotations

import logging

from torch import nn

from vlmlab.errors import ConfigError
from vlmlab.recipes import FreezeRecipe, list_recipes, load_recipe

log = logging.getLogger("vlmlab.train")


def check_recipe(recipe: FreezeRecipe, discrete_tokenizer: bool, tokenizer_name: str = "") -> None:
    if discrete_tokenizer and recipe.trains_tokenizer:
        valid = [r for r in list_recipes() if not load_recipe(r).trains_tokenizer]
        raise ConfigError(
            f"Recipe {recipe.name!r} trains the image tokenizer, but {tokenizer_name or 'this tokenizer'} is "
            f"discrete and always frozen. Valid recipes for discrete tokenizers: {', '.join(valid)}."
        )


def apply_freezing(model: nn.Module, recipe: FreezeRecipe, stage: int) -> dict[str, dict[str, int | bool]]:
    """Set requires_grad per parameter group and log what trains. Returns {group: {trainable, params}}."""
    tokenizer = getattr(model, "image_tokenizer", None)  # an open-weight VLM's vision tower is continuous
    discrete = bool(getattr(tokenizer, "is_discrete", False))
    if tokenizer is not None:
        check_recipe(recipe, discrete, tokenizer.spec.name)
    if stage == 1 and getattr(getattr(model, "config", None), "fusion", None) == "mot":
        raise ConfigError(
            "Mixture-of-Transformers has no stage 1 (paper, 2.3): train a joint_decoder stage 1 and start the MoT "
            "stage 2 from it with train.init_from."
        )
    wanted = recipe.trainable_groups(stage)
    summary: dict[str, dict[str, int | bool]] = {}
    for group, params in model.parameter_groups().items():
        trainable = wanted[group] and not (group == "image_tokenizer" and discrete)
        count = 0
        for name, param in params:
            # parameters a library keeps frozen on purpose (e.g. DINOv3's mask token) stay frozen
            param.requires_grad_(trainable and not _never_trained(name))
            count += param.numel()
        summary[group] = {"trainable": trainable and count > 0, "params": count}
    lines = [f"stage {stage}, freezing recipe {recipe.name!r}:"]
    for group, info in summary.items():
        if info["params"]:
            state = "trains" if info["trainable"] else "frozen"
            lines.append(f"  {group:<16} {state:<7} {info['params']:>14,} params")
    log.info("\n".join(lines))
    return summary


def _never_trained(name: str) -> bool:
    return name.endswith("mask_token")
