"""Freezing as one logged function of (recipe, stage); the recipes themselves are read by vlmlab.recipes.

Beyond what a recipe states, the paper's rules:
- the adapter, cross-attention layers and the MoT image transformer always train;
- the language model is frozen in stage 1;
- what is unfrozen in stage 1 stays unfrozen in stage 2;
- discrete tokenizers (TiTok, VAR) are always frozen (no straight-through estimator);
- stage 3 keeps the stage-2 settings (a uniform learning rate over all unfrozen groups);
- several encoders: the recipe's image_tokenizer state applies to every tower, except those that
  `model.encoder_freeze` marks `frozen` (e.g. DINOv3 frozen while SigLIP 2 trains).
"""

from __future__ import annotations

import logging

from torch import nn

from vlmlab.errors import ConfigError
from vlmlab.models.tokenizers.encoder_set import tower_index
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
    # several encoders: a tower marked `frozen` (model.encoder_freeze) stays frozen whatever the recipe says
    frozen_towers = {
        i
        for i, state in enumerate(getattr(getattr(model, "config", None), "encoder_freeze", None) or ())
        if state == "frozen"
    }
    summary: dict[str, dict[str, int | bool]] = {}
    towers: dict[int, dict[str, int | bool]] = {}
    for group, params in model.parameter_groups().items():
        trainable = wanted[group] and not (group == "image_tokenizer" and discrete)
        count = trained = 0
        for name, param in params:
            tower = tower_index(name)
            # parameters a library keeps frozen on purpose (e.g. DINOv3's mask token) stay frozen
            train_it = trainable and not _never_trained(name) and tower not in frozen_towers
            param.requires_grad_(train_it)
            count += param.numel()
            trained += param.numel() if tower not in frozen_towers else 0
            if tower is not None:
                info = towers.setdefault(
                    tower, {"trainable": trainable and tower not in frozen_towers, "params": 0}
                )
                info["params"] += param.numel()
        summary[group] = {"trainable": trainable and trained > 0, "params": count}
    lines = [f"stage {stage}, freezing recipe {recipe.name!r}:"]
    for group, info in summary.items():
        if info["params"]:
            state = "trains" if info["trainable"] else "frozen"
            lines.append(f"  {group:<16} {state:<7} {info['params']:>14,} params")
        if group == "image_tokenizer":
            for index, tower in sorted(towers.items()):
                name = f"  tower {index} {tokenizer.towers[index].spec.name}"
                state = "trains" if tower["trainable"] else "frozen"
                lines.append(f"  {name:<16} {state:<7} {tower['params']:>14,} params")
    if towers:
        summary["image_tokenizer"]["towers"] = [towers[i] for i in sorted(towers)]
    log.info("\n".join(lines))
    return summary


def _never_trained(name: str) -> bool:
    return name.endswith("mask_token")
