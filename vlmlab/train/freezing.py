"""Freezing as one logged function of (recipe, stage); the recipes themselves are read by vlmlab.recipes.

Beyond what a recipe states, the paper's rules:
- the adapter, cross-attention layers and the MoT image transformer always train;
- the language model is frozen in stage 1;
- what is unfrozen in stage 1 stays unfrozen in stage 2;
- discrete tokenizers (TiTok, VAR) are always frozen (no straight-through estimator);
- stage 3 keeps the stage-2 settings (a uniform learning rate over all unfrozen groups);
- several encoders: the recipe's image_tokenizer state applies to every tower, except those that
  `model.encoder_freeze` marks `frozen` (e.g. DINOv3 frozen while SigLIP 2 trains).

A group in the `lora` state keeps its base weights frozen and trains peft LoRA adapters on its target layers
(`train.lora`, vlmlab.models.lora); adapters a parent stage left are carried on or merged first (hand-off).
"""

from __future__ import annotations

import logging

from torch import nn

from vlmlab.config import LoraSettings
from vlmlab.errors import ConfigError
from vlmlab.models import lora as lora_adapters
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


def apply_freezing(
    model: nn.Module, recipe: FreezeRecipe, stage: int, lora: LoraSettings | None = None
) -> dict[str, dict[str, int | bool | str]]:
    """Set requires_grad per parameter group (adding LoRA adapters to groups in the `lora` state, after the
    hand-off of a parent's adapters) and log what trains. Returns {group: {trainable, params}}; a LoRA group
    adds `lora` (its settings) and `trainable_params` (the adapters' count; `params` is the base's)."""
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
    lora_groups = recipe.lora_groups(stage)
    settings = lora or LoraSettings()
    handed = lora_adapters.hand_off(model, lora_groups, settings)
    for group in lora_groups:
        if group not in lora_adapters.lora_adapters(model):
            lora_adapters.add_lora(model, group, settings)
    # several encoders: a tower marked `frozen` (model.encoder_freeze) stays frozen whatever the recipe says
    frozen_towers = {
        i
        for i, state in enumerate(getattr(getattr(model, "config", None), "encoder_freeze", None) or ())
        if state == "frozen"
    }
    summary: dict[str, dict[str, int | bool | str]] = {}
    towers: dict[int, dict[str, int | bool]] = {}
    for group, params in model.parameter_groups().items():
        trainable = wanted[group] and not (group == "image_tokenizer" and discrete)
        through_lora = group in lora_groups
        count = trained = adapters = 0
        for name, param in params:
            tower = tower_index(name)
            in_frozen_tower = tower in frozen_towers
            if lora_adapters.is_adapter_parameter(name):
                param.requires_grad_(trainable and not in_frozen_tower)
                adapters += param.numel()
                continue
            # parameters a library keeps frozen on purpose (e.g. DINOv3's mask token) stay frozen; a LoRA
            # group's base weights too
            param.requires_grad_(
                trainable and not through_lora and not _never_trained(name) and not in_frozen_tower
            )
            count += param.numel()
            trained += 0 if in_frozen_tower else param.numel()
            if tower is not None:
                info = towers.setdefault(tower, {"trainable": trainable and not in_frozen_tower, "params": 0})
                info["params"] += param.numel()
        summary[group] = {"trainable": trainable and trained > 0, "params": count}
        if through_lora:
            summary[group].update(lora=settings.describe(), trainable_params=adapters)
    lines = [f"stage {stage}, freezing recipe {recipe.name!r}:"]
    for group, info in summary.items():
        if "lora" in info:
            how = f" ({handed[group]} from the parent)" if group in handed else ""
            lines.append(
                f"  {group:<16} lora r={settings.rank:<3} {info['trainable_params']:>14,} trainable of "
                f"{info['params']:,} params{how}"
            )
        elif info["params"]:
            state = "trains" if info["trainable"] else "frozen"
            merged = " (parent's LoRA adapters merged)" if handed.get(group) == "merged" else ""
            lines.append(f"  {group:<16} {state:<7} {info['params']:>14,} params{merged}")
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
