"""Freezing as one logged function of (recipe, stage): the six Table 2 recipes live in configs/freeze/.

A recipe states, for the image tokenizer, whether it trains in stages 1 and 2, and for the language model
whether it trains in stage 2. Everything else follows the paper's rules:
- the adapter, cross-attention layers and the MoT image transformer always train;
- the language model is frozen in stage 1;
- what is unfrozen in stage 1 stays unfrozen in stage 2;
- discrete tokenizers (TiTok, VAR) are always frozen (no straight-through estimator);
- stage 3 keeps the stage-2 settings (a uniform learning rate over all unfrozen groups).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from torch import nn

from vlmlab.config import read_yaml_file
from vlmlab.errors import ConfigError, unknown_choice
from vlmlab.paths import config_root

log = logging.getLogger("vlmlab.train")
STATES = ("frozen", "trainable")
ALWAYS_TRAINABLE = ("adapter", "cross_attention", "mot_image")


@dataclass(frozen=True)
class FreezeRecipe:
    name: str
    tokenizer_stage1: bool  # True = trainable
    tokenizer_stage2: bool
    language_stage2: bool

    def trainable_groups(self, stage: int) -> dict[str, bool]:
        if stage not in (1, 2, 3):
            raise ConfigError(f"Unknown training stage {stage!r}. Valid choices: 1, 2, 3.")
        if stage == 1:
            states = {"image_tokenizer": self.tokenizer_stage1, "language_model": False}
        else:
            states = {"image_tokenizer": self.tokenizer_stage2, "language_model": self.language_stage2}
        return {**states, **{group: True for group in ALWAYS_TRAINABLE}}


def list_recipes() -> list[str]:
    return sorted(p.stem for p in (config_root() / "freeze").glob("*.yaml"))


def load_recipe(name_or_path: str) -> FreezeRecipe:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = config_root() / "freeze" / f"{name_or_path}.yaml"
        if not path.exists():
            raise unknown_choice("freezing recipe", name_or_path, list_recipes())
    data = OmegaConf.to_container(read_yaml_file(path))
    allowed = {"image_tokenizer": {"stage1", "stage2"}, "language_model": {"stage1", "stage2"}}
    for group, stages in data.items():
        if group not in allowed:
            raise unknown_choice(f"group in freezing recipe {path.stem!r}", group, allowed)
        for stage, state in stages.items():
            if stage not in allowed[group]:
                raise unknown_choice(f"stage key in recipe {path.stem!r}", stage, allowed[group])
            if state not in STATES:
                raise unknown_choice(f"state of {group}.{stage} in recipe {path.stem!r}", state, STATES)
    tokenizer = data.get("image_tokenizer", {})
    language = data.get("language_model", {})
    if language.get("stage1", "frozen") != "frozen":
        raise ConfigError(
            f"Recipe {path.stem!r}: the language model must stay frozen in stage 1 (paper, 2.3)."
        )
    recipe = FreezeRecipe(
        name=path.stem,
        tokenizer_stage1=tokenizer.get("stage1", "frozen") == "trainable",
        tokenizer_stage2=tokenizer.get("stage2", "frozen") == "trainable",
        language_stage2=language.get("stage2", "frozen") == "trainable",
    )
    if recipe.tokenizer_stage1 and not recipe.tokenizer_stage2:
        raise ConfigError(
            f"Recipe {path.stem!r} unfreezes the image tokenizer in stage 1 but freezes it in stage 2; what is "
            "unfrozen in stage 1 stays unfrozen in stage 2 (paper, 2.3)."
        )
    return recipe


def check_recipe(recipe: FreezeRecipe, discrete_tokenizer: bool, tokenizer_name: str = "") -> None:
    if discrete_tokenizer and (recipe.tokenizer_stage1 or recipe.tokenizer_stage2):
        valid = [r for r in list_recipes() if not _unfreezes_tokenizer(load_recipe(r))]
        raise ConfigError(
            f"Recipe {recipe.name!r} trains the image tokenizer, but {tokenizer_name or 'this tokenizer'} is "
            f"discrete and always frozen. Valid recipes for discrete tokenizers: {', '.join(valid)}."
        )


def _unfreezes_tokenizer(recipe: FreezeRecipe) -> bool:
    return recipe.tokenizer_stage1 or recipe.tokenizer_stage2


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
