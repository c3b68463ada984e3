"""LoRA adapters through peft on one parameter group: the `lora` state of a freezing recipe.

`add_lora(model, group, settings)` wraps the group's target linear layers with peft's LoRA layers
(`peft.inject_adapter_in_model`, in place: parameter names gain `.base_layer.` and `.lora_A.default.` /
`.lora_B.default.` (and DoRA's `.lora_magnitude_vector.default.`) parts, the group's prefix stays, so
vlmlab's groups, learning rates and FSDP units stay what they were). `merge_lora(model, group)` folds the
adapters into the base weights with peft's own merge and puts the plain layers back (peft's
`merge_and_unload`, done layer by layer because the adapters sit inside a model that is no PeftModel).

The model remembers its adapters in `model.lora_adapters` ({group: settings}) and the groups it merged since
its parent's weights were loaded in `model.lora_merged`: a stage checkpoint records both (checkpoint.py), so
loading replays the chain (merge where the run merged, add adapters before their tensors are loaded).
Works on vlmlab's VisionLanguageModel and on open-weight models (OpenWeightVLM): both map parameter names to
groups with `parameter_groups()`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from torch import nn

from vlmlab.config import LoraSettings
from vlmlab.errors import ConfigError

log = logging.getLogger("vlmlab.train")

ADAPTER = "default"  # peft's adapter name: one adapter per layer
ALL_LINEAR = "all-linear"
# heads that map to the vocabulary: never adapted by `all-linear` (peft's own rule for all-linear)
_OUTPUT_LAYERS = ("lm_head",)


def lora_adapters(model: nn.Module) -> dict[str, dict[str, Any]]:
    """{group: settings as a dict} of the adapters the model holds now."""
    return dict(getattr(model, "lora_adapters", {}) or {})


def _settings_dict(settings: LoraSettings | dict[str, Any]) -> dict[str, Any]:
    return dataclasses.asdict(settings) if isinstance(settings, LoraSettings) else dict(settings)


def _group_of_parameters(model: nn.Module) -> dict[str, str]:
    return {name: group for group, params in model.parameter_groups().items() for name, _ in params}


def group_linears(model: nn.Module, group: str) -> dict[str, nn.Linear]:
    """The nn.Linear modules of `group` LoRA can wrap: {module path: module}. Linear layers that
    nn.MultiheadAttention reads by weight (its out_proj, never called) are left out: an adapter there would
    never see a gradient."""
    groups = _group_of_parameters(model)
    called_by_weight = {
        f"{name}.out_proj" if name else "out_proj"
        for name, module in model.named_modules()
        if isinstance(module, nn.MultiheadAttention)
    }
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name not in called_by_weight
        and groups.get(f"{name}.weight") == group
    }


def lora_targets(model: nn.Module, group: str, names: list[str]) -> list[str]:
    """Module paths of `group` whose last part is one of `names` (or every linear layer but the output head
    for `all-linear`); one line naming what exists when a name matches nothing in the group."""
    linears = group_linears(model, group)
    leaves = sorted({path.rsplit(".", 1)[-1] for path in linears})
    unknown = [name for name in names if name != ALL_LINEAR and name not in leaves]
    if unknown or not linears:
        raise ConfigError(
            f"train.lora.target_modules.{group}: {', '.join(unknown) or ALL_LINEAR} matches no linear layer of "
            f"the {group} (valid: {ALL_LINEAR}, {', '.join(leaves) or 'none: it has no linear layers'})."
        )
    every = ALL_LINEAR in names
    return [
        path
        for path in linears
        if (every and path.rsplit(".", 1)[-1] not in _OUTPUT_LAYERS) or path.rsplit(".", 1)[-1] in names
    ]


def add_lora(model: nn.Module, group: str, settings: LoraSettings | dict[str, Any]) -> int:
    """Wrap `group`'s target layers with fresh LoRA adapters (B = 0: the model's outputs do not change);
    -> the number of adapter parameters. The caller sets requires_grad (apply_freezing)."""
    import peft

    if group in lora_adapters(model):
        raise ConfigError(f"The {group} already has LoRA adapters; merge them before adding new ones.")
    values = _settings_dict(settings)
    targets = lora_targets(model, group, values["target_modules"].get(group) or [ALL_LINEAR])
    config = peft.LoraConfig(
        r=values["rank"],
        lora_alpha=values["alpha"],
        lora_dropout=values["dropout"],
        use_dora=values["dora"],
        target_modules=targets,  # full module paths: peft matches a path exactly or by its suffix
    )
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    # peft leaves its config on the model; vlmlab keeps its own record (lora_adapters), and a stale one would
    # make peft warn of "multiple adapters" when another group (or a fresh adapter after a merge) is added
    model.__dict__.pop("peft_config", None)
    # peft marks only adapters as trainable; the caller decides, so restore the rest as it was
    for name, param in model.named_parameters():
        if name in trainable:
            param.requires_grad_(trainable[name])
    model.lora_adapters = {**lora_adapters(model), group: values}
    return sum(p.numel() for _, p in adapter_parameters(model, group))


def adapter_parameters(model: nn.Module, group: str | None = None) -> list[tuple[str, nn.Parameter]]:
    """The LoRA parameters (A, B, DoRA magnitudes) of `group`, or of every group."""
    groups = _group_of_parameters(model)
    return [
        (name, param)
        for name, param in model.named_parameters()
        if is_adapter_parameter(name) and (group is None or groups.get(name) == group)
    ]


def is_adapter_parameter(name: str) -> bool:
    return ".lora_" in name


def lora_layers(model: nn.Module, group: str) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    groups = _group_of_parameters(model)
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and groups.get(f"{name}.base_layer.weight") == group
    ]


def merge_lora(model: nn.Module, group: str) -> int:
    """Fold `group`'s adapters into its base weights (peft's merge, refusing non-finite results) and put the
    plain layers back, so the parameter names are the base model's again; -> layers merged."""
    layers = lora_layers(model, group)
    for name, layer in layers:
        layer.merge(safe_merge=True, adapter_names=[ADAPTER])
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
    adapters = lora_adapters(model)
    adapters.pop(group, None)
    model.lora_adapters = adapters
    model.lora_merged = [*getattr(model, "lora_merged", []), group]
    return len(layers)


def merge_all(model: nn.Module) -> list[str]:
    """Merge every group's adapters (before an export: the result is a plain model); -> the groups."""
    groups = list(lora_adapters(model))
    for group in groups:
        merge_lora(model, group)
    return groups


def hand_off(model: nn.Module, lora_groups: list[str], settings: LoraSettings) -> dict[str, str]:
    """What a stage does with the adapters its parent left: {group: carried | merged}.

    Adapters are carried on where this stage trains the same group through LoRA and `handoff` is carry (the
    same settings are required: a change of rank or targets cannot continue the same adapters); everywhere
    else they are merged into the base weights."""
    wanted = _settings_dict(settings)
    done: dict[str, str] = {}
    for group, had in lora_adapters(model).items():
        if group in lora_groups and settings.handoff == "carry":
            mine = {k: wanted[k] for k in ("rank", "alpha", "dora")}
            theirs = {k: had[k] for k in ("rank", "alpha", "dora")}
            same_targets = had["target_modules"].get(group) == wanted["target_modules"].get(group)
            if mine != theirs or not same_targets:
                raise ConfigError(
                    f"train.lora.handoff=carry continues the parent's {group} adapters ({theirs}, targets "
                    f"{had['target_modules'].get(group)}), but this run asks for {mine}, targets "
                    f"{wanted['target_modules'].get(group)}: use the parent's settings, or "
                    "train.lora.handoff=merge to fold them in and start new adapters."
                )
            done[group] = "carried"
        else:
            merge_lora(model, group)
            done[group] = "merged"
    return done


__all__ = [
    "ADAPTER",
    "ALL_LINEAR",
    "add_lora",
    "adapter_parameters",
    "group_linears",
    "hand_off",
    "is_adapter_parameter",
    "lora_adapters",
    "lora_layers",
    "lora_targets",
    "merge_all",
    "merge_lora",
]
