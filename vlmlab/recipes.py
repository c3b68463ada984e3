"""Freezing recipes (paper, Table 2), read once from the presets for everyone: training applies them
(vlmlab.train.freezing), the sweep expands by them, the reports sort by them. Torch-free on purpose, so a sweep's
dry run never imports torch.

A recipe states, for the image tokenizer, whether it trains in stages 1 and 2, and for the language model
whether it trains in stage 2; `table_row` is its row in Table 2 (a user's own recipe may leave it out and
sorts after the paper's). `skip_stage1: true` makes it single-stage (Prismatic's `no-align`, section 4.1): no
alignment stage, the stage-2 run starts from the base weights with its connector freshly initialised, and a
sweep's DAG gives that run no parent. A group that trains may train fully (`trainable`) or through low-rank
adapters (`lora`: Idefics2's third state, section 3.2; the adapters' settings are `train.lora`, applied by
vlmlab.models.lora): the base weights stay frozen and only the adapters learn.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from vlmlab import presets
from vlmlab.config import read_yaml_file
from vlmlab.errors import ConfigError, unknown_choice

STATES = ("frozen", "trainable", "lora")
# the groups a recipe may put in the `lora` state (the always-trainable ones are small and new: trained fully)
LORA_GROUPS = ("image_tokenizer", "language_model")
# parts that train in every recipe: the adapter, cross-attention layers and the MoT image transformer
ALWAYS_TRAINABLE = ("adapter", "cross_attention", "mot_image")
_KEYS = {
    "image_tokenizer": ("stage1", "stage2"),
    "language_model": ("stage1", "stage2"),
    "table_row": (),
    "skip_stage1": (),
}


@dataclass(frozen=True)
class FreezeRecipe:
    name: str
    tokenizer_stage1: bool  # True = trains (fully, or through LoRA adapters when `lora` lists it)
    tokenizer_stage2: bool
    language_stage2: bool
    table_row: int | None = None
    skip_stage1: bool = False  # single-stage: no stage-1 run, stage 2 starts from the base weights
    # (group, stage) pairs that train through LoRA adapters instead of fully; stage 3 follows stage 2
    lora: frozenset[tuple[str, int]] = frozenset()

    def states(self, stage: int) -> dict[str, str]:
        """{group: frozen | trainable | lora} of the image tokenizer and the language model in `stage`."""
        trains = self.trainable_groups(stage)
        row = min(stage, 2)  # stage 3 keeps the stage-2 settings
        return {
            group: ("lora" if (group, row) in self.lora else "trainable") if trains[group] else "frozen"
            for group in LORA_GROUPS
        }

    def lora_groups(self, stage: int) -> list[str]:
        """The groups that train through LoRA adapters in `stage`."""
        return [group for group, state in self.states(stage).items() if state == "lora"]

    @property
    def uses_lora(self) -> bool:
        return bool(self.lora)

    @property
    def trains_tokenizer(self) -> bool:
        return self.tokenizer_stage1 or self.tokenizer_stage2

    def trainable_groups(self, stage: int) -> dict[str, bool]:
        if stage not in (1, 2, 3):
            raise ConfigError(f"Unknown training stage {stage!r}. Valid choices: 1, 2, 3.")
        if stage == 1 and self.skip_stage1:
            raise ConfigError(
                f"Recipe {self.name!r} is single-stage (skip_stage1: true): it has no stage 1; train its stage 2 "
                "from the base weights (train.stage=2, no train.init_from)."
            )
        if stage == 1:
            states = {"image_tokenizer": self.tokenizer_stage1, "language_model": False}
        else:
            states = {"image_tokenizer": self.tokenizer_stage2, "language_model": self.language_stage2}
        return {**states, **{group: True for group in ALWAYS_TRAINABLE}}


def list_recipes() -> list[str]:
    """The shipped recipes in Table 2's row order."""
    return [recipe.name for recipe in sorted(map(load_recipe, presets.preset_names("freeze")), key=_row)]


def recipe_order(name: str) -> tuple[int, str]:
    """Sort key of a recipe name: Table 2's row for the shipped ones, then any other name alphabetically."""
    if name in presets.preset_names("freeze"):
        return _row(load_recipe(name)), name
    return 1_000, name


def _row(recipe: FreezeRecipe) -> int:
    return recipe.table_row if recipe.table_row is not None else 1_000


def load_recipe(name_or_path: str | Path) -> FreezeRecipe:
    """A shipped recipe by name or a recipe YAML by path, checked against the paper's rules."""
    return _load(str(presets.resolve("freeze", name_or_path)))


@functools.cache
def _load(path_text: str) -> FreezeRecipe:
    path = Path(path_text)
    data = OmegaConf.to_container(read_yaml_file(path))
    if not isinstance(data, dict):
        raise ConfigError(f"Freezing recipe {str(path)!r} must hold a mapping at the top level.")
    for group, stages in data.items():
        if group not in _KEYS:
            raise unknown_choice(f"group in freezing recipe {path.stem!r}", group, _KEYS)
        if group == "table_row":
            continue
        if group == "skip_stage1":
            if not isinstance(stages, bool):
                raise ConfigError(
                    f"skip_stage1 in recipe {path.stem!r} must be true or false, got {stages!r}."
                )
            continue
        for stage, state in stages.items():
            if stage not in _KEYS[group]:
                raise unknown_choice(f"stage key in recipe {path.stem!r}", stage, _KEYS[group])
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
        tokenizer_stage1=tokenizer.get("stage1", "frozen") != "frozen",
        tokenizer_stage2=tokenizer.get("stage2", "frozen") != "frozen",
        language_stage2=language.get("stage2", "frozen") != "frozen",
        table_row=data.get("table_row"),
        skip_stage1=data.get("skip_stage1", False),
        lora=frozenset(
            (group, int(stage[-1]))
            for group in LORA_GROUPS
            for stage, state in data.get(group, {}).items()
            if state == "lora"
        ),
    )
    if recipe.skip_stage1 and "stage1" in tokenizer:
        raise ConfigError(
            f"Recipe {path.stem!r} skips stage 1 (skip_stage1: true) but states image_tokenizer.stage1; a "
            "single-stage recipe states stage 2 only."
        )
    if recipe.tokenizer_stage1 and not recipe.tokenizer_stage2:
        raise ConfigError(
            f"Recipe {path.stem!r} unfreezes the image tokenizer in stage 1 but freezes it in stage 2; what is "
            "unfrozen in stage 1 stays unfrozen in stage 2 (paper, 2.3)."
        )
    return recipe


__all__ = [
    "ALWAYS_TRAINABLE",
    "LORA_GROUPS",
    "STATES",
    "FreezeRecipe",
    "list_recipes",
    "load_recipe",
    "recipe_order",
]
