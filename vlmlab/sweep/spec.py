"""The sweep file: a base config, the stages to run, the axes to cross, and what to leave out.

    name: design-space                     # used in job names
    output_dir: ../outputs/design_space    # run folders: <output_dir>/stage<k>/<run_id>
    backend: slurm                         # default backend of `vlmlab sweep FILE` (local | slurm)
    command: "{python} -m vlmlab.cli train {config} {overrides}"   # optional: what a run executes
    base: ../model/paper-0.6b.yaml         # an ExperimentConfig-shaped mapping, a YAML path, or a list
    resources: {partition: gpu}            # Slurm resources shared by all stages (each stage may override)
    results: [--layout, transfer]          # `vlmlab results` options of the sweep's report (default: none);
                                           # made at the end, logged to the runs' trackers as artifacts
    stages:
      1:
        config: {train: {max_steps: 100000}}    # mapping, path or list, merged onto the base
        overrides: ["optim.warmup_steps=5000"]  # `a.b=value` strings, applied after `config`
        resources: {nodes: 4, gpus_per_node: 8, time: "2-00:00:00", mem: 0, cpus_per_task: 12}
      2: {config: ...}
      3:
        axes: {vars.task: [spatialmap, grid, ring]}   # axes of one stage: they multiply that stage's runs
        config: {data: {train: [{kind: synthetic, task: "${vars.task}"}]}}
    axes:                                  # crossed; keys are config keys or the aliases below
      tokenizer: [clip-vit-b16, titok-l32]
      fusion: [joint_decoder, cross_attention, mot]
      freeze: [all-frozen, unfreeze-lm]
    exclude:                               # points matching every key of one rule are left out
      - {tokenizer: titok-l32, fusion: mot}
    seeds: [0, 1, 2]                       # optional: train every design point once per seed (or `seeds: 3`)

`seeds` makes replicates: every design point is trained once per seed (`train.seed`), a count n meaning
seeds 0..n-1. A seed reaches every stage (see vlmlab.sweep.expand), so a replicate is a whole chain of runs,
and `vlmlab results` reads the runs that differ only in `train.seed` as replicates of one design point.
It cannot be combined with a `train.seed` axis (which would read seeds as a design choice).

A sweep is named by its path or, for the shipped ones (vlmlab/presets/sweeps/), by name: `vlmlab sweep
design_space`. A sweep file may start with `extends: other.yaml` (a path, or a shipped sweep's name): it is
merged onto that file (mappings key by key, lists replaced; `axis: null` removes an inherited axis), which is
how the shipped transfer sweep reuses the design space's stages 1-2, and with them its runs. Relative paths in
a sweep file are relative to the file's folder, except a shipped sweep's `output_dir`, which is relative to the
working directory (a run never writes into the installed package). Axis keys are dotted ExperimentConfig keys
(`optim.lr.adapter`, `train.seed`, ...), the aliases in `AXIS_ALIASES`, or `vars.<name>`: a free variable
that configs use as `${vars.<name>}` (e.g. the synthetic task of stage 3, which appears in several data
sources). The paper's rules are not written in the file: they are applied by `vlmlab.sweep.expand`.

This module only reads and checks the file (names, keys, shapes); it never imports torch, so a dry run of
the whole design space is fast.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vlmlab import presets
from vlmlab.config import FUSION_NAMES, ExperimentConfig, check_keys, read_yaml_file
from vlmlab.errors import ConfigError, unknown_choice
from vlmlab.recipes import FreezeRecipe, list_recipes, load_recipe

STAGES = (1, 2, 3)
BACKENDS = ("local", "slurm")
DEFAULT_COMMAND = "{python} -m vlmlab.cli train {config} {overrides}"
COMMAND_FIELDS = ("python", "config", "overrides", "run_dir", "run_id", "stage")

# Short names for the axes the paper varies (sections 2-3); any dotted config key works as well.
AXIS_ALIASES = {
    "tokenizer": "model.tokenizer",
    "fusion": "model.fusion",
    "freeze": "train.freeze",
    "recipe": "train.freeze",
    "backbone": "model.backbone",
    "lomo_ratio": "data.lomo.rewrite_ratio",
}
TOP_LEVEL_KEYS = ("name", "description", "extends", "output_dir", "backend", "command", "base", "resources")
TOP_LEVEL_KEYS += ("results", "stages", "axes", "exclude", "seeds")
SEED_KEY = "train.seed"
STAGE_KEYS = ("config", "overrides", "resources", "axes")
VAR_PREFIX = "vars."


@dataclass
class Resources:
    """What one run of a stage asks Slurm for; `nodes` x `gpus_per_node` processes run one DDP job."""

    partition: str | None = None
    time: str | None = None  # Slurm time limit, e.g. "2-00:00:00"
    nodes: int = 1
    gpus_per_node: int = 0  # also the number of tasks per node (one process per GPU)
    cpus_per_task: int | None = None
    mem: str | None = None  # per node, e.g. "400G" (0 = all of it)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    max_parallel: int | None = None  # array throttle: at most this many tasks of one array at once
    extra: list[str] = field(default_factory=list)  # more sbatch options, e.g. ["--exclusive"]
    setup: list[str] = field(default_factory=list)  # shell lines run before the command (module load ...)
    template: str | None = None  # another sbatch template (default: slurm/stage.sbatch of this repository)


RESOURCE_KEYS = tuple(Resources.__dataclass_fields__)
_INT_RESOURCES = ("nodes", "gpus_per_node", "cpus_per_task", "max_parallel")


@dataclass
class StageSpec:
    stage: int
    sources: list[dict | Path] = field(default_factory=list)  # merged after the sweep's base
    overrides: list[str] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)
    axes: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class SweepSpec:
    name: str
    path: Path
    output_dir: Path
    backend: str
    command: str
    base: list[dict | Path]
    stages: dict[int, StageSpec]
    axes: dict[str, list[Any]]  # global axes (apply to every stage)
    exclude: list[dict[str, list[Any]]]
    description: str = ""
    seeds: list[int] = field(default_factory=list)  # replicates (`seeds`); empty: one run per point

    @property
    def replicated(self) -> bool:
        return bool(self.seeds)

    results: list[str] = field(default_factory=list)  # `vlmlab results` options of its report

    @property
    def root(self) -> Path:
        return self.path.parent


def load_sweep(
    path: str | Path, output_dir: str | Path | None = None, command: str | None = None
) -> SweepSpec:
    """Read and check a sweep file, given by path or as a shipped sweep's name (`design_space`);
    `output_dir` / `command` replace the file's (relative to the cwd)."""
    path = presets.resolve("sweeps", path).resolve()
    data = _load_raw(path, ())
    root = path.parent
    name = str(data.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ConfigError(f"Sweep name {name!r} may only hold letters, digits, '.', '_' and '-'.")
    backend = str(data.get("backend") or "local")
    if backend not in BACKENDS:
        raise unknown_choice("sweep backend", backend, BACKENDS)
    if output_dir is not None:
        out = Path(output_dir).resolve()
    else:
        default = f"outputs/{name}" if presets.is_preset(path) else f"../outputs/{name}"
        out = Path(data.get("output_dir") or _absolute(default, _relative_root(path))).resolve()
    command = command if command is not None else str(data.get("command") or DEFAULT_COMMAND)
    check_command(command)

    default_resources = _resources(data.get("resources") or {}, "resources", Resources())
    stages_data = data.get("stages")
    if not isinstance(stages_data, dict) or not stages_data:
        raise ConfigError(
            "A sweep file needs `stages`: a mapping from stage number (1, 2, 3) to its settings."
        )
    stages = {
        stage: _stage(stage, value or {}, root, default_resources) for stage, value in stages_data.items()
    }
    if sorted(stages) != list(range(min(stages), max(stages) + 1)):
        raise ConfigError(
            f"Sweep stages {sorted(stages)} skip a stage; a stage starts from the one before it (1 -> 2 -> 3)."
        )
    axes = _axes(data.get("axes") or {}, "axes")
    for stage in stages.values():
        for key in stage.axes:
            if key in axes:
                raise ConfigError(f"Axis {key!r} is given both globally and for stage {stage.stage}.")
    all_axes = {**axes, **{k: v for s in stages.values() for k, v in s.axes.items()}}
    seeds = _seeds(data.get("seeds"))
    if seeds and SEED_KEY in all_axes:
        raise ConfigError(
            f"`seeds` and an axis on {SEED_KEY} both set the seed; keep `seeds` for replicates "
            f"(or the axis, to read each seed as a design point of its own)."
        )
    return SweepSpec(
        name=name,
        path=path,
        output_dir=out,
        backend=backend,
        command=command,
        base=_sources(data.get("base"), root, "base"),
        stages=dict(sorted(stages.items())),
        axes=axes,
        exclude=_exclude(data.get("exclude") or [], all_axes),
        description=str(data.get("description") or ""),
        seeds=seeds,
        results=_results_options(data.get("results")),
    )


def _results_options(value: Any) -> list[str]:
    """The sweep's `results:` (options of `vlmlab results`): a list of strings, or one string split as a shell
    would."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list) and all(isinstance(item, str | int | float) for item in value):
        return [str(item) for item in value]
    raise ConfigError(
        f"Sweep key results={value!r} must be `vlmlab results` options: a list of strings (e.g. "
        "[--layout, transfer]) or one string."
    )


def _seeds(value: Any) -> list[int]:
    """`seeds`: a count n (seeds 0..n-1) or a list of distinct non-negative integers; absent/null: none."""
    valid = "a count of at least 1 (`seeds: 3` = [0, 1, 2]) or a list of distinct non-negative integers"
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"Invalid `seeds: {value!r}`; valid: {valid}.")
        return list(range(value))
    if not isinstance(value, list) or not value:
        raise ConfigError(f"Invalid `seeds: {value!r}`; valid: {valid}.")
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int) or v < 0]
    if bad:
        raise ConfigError(f"Invalid seed {bad[0]!r} in `seeds: {value!r}`; valid: {valid}.")
    if len(set(value)) != len(value):
        raise ConfigError(f"`seeds: {value!r}` lists a seed twice; valid: {valid}.")
    return list(value)


def _load_raw(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """A sweep file as a mapping with absolute paths and canonical axis keys, merged onto what it extends."""
    if not path.exists():
        raise ConfigError(f"Sweep file {str(path)!r} does not exist.")
    if path in chain:
        raise ConfigError(
            f"Sweep file {str(path)!r} extends itself (through {' -> '.join(map(str, chain))})."
        )
    loaded = read_yaml_file(path)
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"Sweep file {str(path)!r} must hold a mapping at the top level.")
    data = OmegaConf.to_container(loaded, resolve=False)
    _check_keys(data, TOP_LEVEL_KEYS, "sweep file key")
    root = path.parent
    if data.get("base") is not None:
        data["base"] = _absolute(data["base"], root)
    if data.get("output_dir") is not None:
        data["output_dir"] = _absolute(data["output_dir"], _relative_root(path))
    _absolute_template(data.get("resources"), root)
    stages = data.get("stages")
    if stages is not None:
        if not isinstance(stages, dict):
            raise ConfigError(f"`stages` in {path.name} must be a mapping from stage number to settings.")
        data["stages"] = {_stage_number(k): v for k, v in stages.items()}
        for settings in data["stages"].values():
            if isinstance(settings, dict):
                if settings.get("config") is not None:
                    settings["config"] = _absolute(settings["config"], root)
                _absolute_template(settings.get("resources"), root)
                if isinstance(settings.get("axes"), dict):
                    settings["axes"] = _canonical_axes(settings["axes"], path)
    if isinstance(data.get("axes"), dict):
        data["axes"] = _canonical_axes(data["axes"], path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = root / str(parent)
    if not parent_path.exists() and not presets.is_yaml_path(str(parent)):  # a shipped sweep, by name
        parent_path = presets.resolve("sweeps", str(parent))
    merged = _load_raw(parent_path.resolve(), (*chain, path))
    merged.pop("name", None)  # a sweep's name is its own (job names, default output folder)
    deep_merge(merged, data)
    return merged


def _relative_root(path: Path) -> Path:
    """What a relative output folder in a sweep file means: beside the user's own file, but under the
    working directory for a shipped sweep (never inside the installed package)."""
    return Path.cwd() if presets.is_preset(path) else path.parent


def _canonical_axes(axes: dict[str, Any], path: Path) -> dict[str, Any]:
    """Axis keys with aliases expanded (so `freeze` in one file and `train.freeze` in another are one axis)."""
    canonical: dict[str, Any] = {}
    for key, values in axes.items():
        name = normalize_axis_key(key)
        if name in canonical:
            raise ConfigError(
                f"{path.name}: axis {name!r} is given twice (as {key!r} and under another name)."
            )
        canonical[name] = values
    return canonical


def _absolute(value: Any, root: Path) -> Any:
    if isinstance(value, str):
        return str((root / value).resolve())
    if isinstance(value, list):
        return [_absolute(item, root) if isinstance(item, str) else item for item in value]
    return value


def _absolute_template(resources: Any, root: Path) -> None:
    if isinstance(resources, dict) and isinstance(resources.get("template"), str):
        resources["template"] = _absolute(resources["template"], root)


def deep_merge(into: dict[str, Any], data: dict[str, Any]) -> None:
    """Merge like OmegaConf: mappings key by key; anything else (lists included) is replaced."""
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def check_command(command: str) -> None:
    """A command template may only use the known `{fields}` (doubled braces for literal ones)."""
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(command) if f is not None]
    except ValueError as error:
        raise ConfigError(f"Bad command template {command!r}: {error}.") from error
    for name in fields:
        if name not in COMMAND_FIELDS:
            raise unknown_choice("field in the command template", name, COMMAND_FIELDS)
    if "config" not in fields and "run_dir" not in fields:
        raise ConfigError(f"The command template {command!r} must pass the run's {{config}} or {{run_dir}}.")


def normalize_axis_key(key: str) -> str:
    """An axis key as a dotted config key (aliases expanded) or `vars.<name>`; raise on unknown keys."""
    key = str(key)
    if key in AXIS_ALIASES:
        return AXIS_ALIASES[key]
    if key.startswith(VAR_PREFIX):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key[len(VAR_PREFIX) :]):
            raise ConfigError(f"Sweep variable {key!r} must be vars.<identifier>.")
        return key
    if "." not in key:
        sections = [f.name for f in ExperimentConfig.__dataclass_fields__.values()]
        raise unknown_choice(
            "sweep axis", key, [*AXIS_ALIASES, *(f"{s}.<key>" for s in sections), "vars.<name>"]
        )
    nested: dict = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = None
    check_keys(nested, ExperimentConfig)  # raises naming the closest valid key
    return key


# ----------------------------------------------------------------------------------------------------------
# Names the paper's rules need: tokenizer kinds and freezing recipes, read from the shipped presets.


def tokenizer_kind(name: Any) -> str:
    """`continuous` or `discrete`, from the tokenizer preset (a name in vlmlab/presets/tokenizer/ or a YAML path);
    a list of towers (an encoder set) is discrete if one of them is (the config refuses that on load)."""
    if isinstance(name, list | tuple):
        return "discrete" if any(tokenizer_kind(n) == "discrete" for n in name) else "continuous"
    return _tokenizer_kind(str(name))


@functools.cache
def _tokenizer_kind(name: str) -> str:
    path = presets.resolve("tokenizer", name)
    kind = read_yaml_file(path).get("kind", "continuous")
    if kind not in ("continuous", "discrete"):
        raise unknown_choice(f"tokenizer kind in {str(path)!r}", kind, ("continuous", "discrete"))
    return str(kind)


def tokenizer_size(name: Any) -> int | None:
    """The input size (px) of a tokenizer preset (a shipped name, a YAML path or an inline mapping)."""
    if isinstance(name, dict):
        return name.get("image_size")
    if isinstance(name, list | tuple):  # an encoder set: the towers' one size, when they share it
        sizes = {tokenizer_size(n) for n in name}
        return sizes.pop() if len(sizes) == 1 else None
    return _tokenizer_size(str(name))


@functools.cache
def _tokenizer_size(name: str) -> int | None:
    return read_yaml_file(presets.resolve("tokenizer", name)).get("image_size")


def check_backbone(name: str) -> None:
    presets.resolve("backbone", str(name))


def check_fusion(name: str) -> None:
    if name not in FUSION_NAMES:
        raise unknown_choice("fusion architecture", name, FUSION_NAMES)


def stage1_recipe(recipe: FreezeRecipe) -> str:
    """The recipe name stage-1 runs use for `recipe`: stage 1 only sees the tokenizer's stage-1 state, so all
    recipes that share it map to one name (the one training least), and their stage-1 runs become one run."""
    same = [
        r
        for r in map(load_recipe, list_recipes())
        if not r.skip_stage1 and r.states(1) == recipe.states(1)  # a single-stage recipe has no stage 1
    ]
    if not same:  # a user's recipe whose stage 1 no shipped one has (e.g. the tokenizer through LoRA)
        return recipe.name
    return min(same, key=lambda r: (r.tokenizer_stage2 + r.language_stage2, r.name)).name


# ----------------------------------------------------------------------------------------------------------


def _check_keys(data: Any, allowed: tuple[str, ...], what: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"Expected a mapping for the {what}s, got {data!r}.")
    for key in data:
        if key not in allowed:
            raise unknown_choice(what, key, allowed)


def _stage_number(key: Any) -> int:
    text = str(key).removeprefix("stage")
    if text.isdigit() and int(text) in STAGES:
        return int(text)
    raise unknown_choice("stage", key, [str(s) for s in STAGES])


def _stage(stage: int, data: Any, root: Path, default: Resources) -> StageSpec:
    _check_keys(data, STAGE_KEYS, f"key of stage {stage}")
    overrides = data.get("overrides") or []
    if isinstance(overrides, str) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise ConfigError(
            f"stages.{stage}.overrides must be a list of 'key=value' strings, got {overrides!r}."
        )
    axes = _axes(data.get("axes") or {}, f"stages.{stage}.axes")
    return StageSpec(
        stage=stage,
        sources=_sources(data.get("config"), root, f"stages.{stage}.config"),
        overrides=list(overrides),
        resources=_resources(data.get("resources") or {}, f"stages.{stage}.resources", default),
        axes=axes,
    )


def _sources(value: Any, root: Path, where: str) -> list[dict | Path]:
    """Config sources: mappings stay as they are, strings are YAML paths relative to the sweep file."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    sources: list[dict | Path] = []
    for item in items:
        if isinstance(item, dict):
            check_keys(item, ExperimentConfig, "")
            sources.append(item)
        elif isinstance(item, str):
            path = (root / item).resolve()
            if not path.exists():
                raise ConfigError(f"{where}: config file {item!r} does not exist (looked at {str(path)!r}).")
            sources.append(path)
        else:
            raise ConfigError(f"{where} must be a mapping, a YAML path or a list of them, got {item!r}.")
    return sources


def _resources(data: Any, where: str, default: Resources) -> Resources:
    _check_keys(data, RESOURCE_KEYS, f"key of {where}")
    values = {name: getattr(default, name) for name in RESOURCE_KEYS}
    for key, value in data.items():
        if key in _INT_RESOURCES:
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"{where}.{key} must be a non-negative integer, got {value!r}.")
        elif key in ("extra", "setup"):
            if not isinstance(value, list) or not all(isinstance(v, str) and "\n" not in v for v in value):
                raise ConfigError(f"{where}.{key} must be a list of one-line strings, got {value!r}.")
        elif value is not None:
            value = str(value)
            if "\n" in value or '"' in value:
                raise ConfigError(f"{where}.{key} must be one line without double quotes, got {value!r}.")
        values[key] = value
    if values["nodes"] < 1:
        raise ConfigError(f"{where}.nodes must be at least 1, got {values['nodes']!r}.")
    return Resources(**values)


def _axes(data: Any, where: str) -> dict[str, list[Any]]:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping from axis key to a list of values, got {data!r}.")
    axes: dict[str, list[Any]] = {}
    for key, values in data.items():
        if values is None:  # `key: null` removes an axis inherited through `extends`
            continue
        name = normalize_axis_key(key)
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"{where}.{key} has no values.")
        if len({_freeze_value(v) for v in values}) != len(values):
            raise ConfigError(f"{where}.{key} lists a value twice: {values!r}.")
        for value in values:
            if "${" in _freeze_value(value):
                raise ConfigError(
                    f"{where}.{key}: axis values are literal; put ${{...}} references in a config."
                )
            _check_axis_value(name, value)
        axes[name] = values
    return axes


def _check_axis_value(key: str, value: Any) -> None:
    if key == "model.tokenizer":
        tokenizer_kind(value)
    elif key == "model.fusion":
        check_fusion(value)
    elif key == "train.freeze":
        load_recipe(value)
    elif key == "model.backbone":
        check_backbone(value)


def _exclude(rules: Any, axes: dict[str, list[Any]]) -> list[dict[str, list[Any]]]:
    if not isinstance(rules, list):
        raise ConfigError(f"`exclude` must be a list of mappings (axis key -> value or list), got {rules!r}.")
    checked = []
    for index, rule in enumerate(rules):
        if not isinstance(rule, dict) or not rule:
            raise ConfigError(f"exclude[{index}] must be a non-empty mapping, got {rule!r}.")
        entry = {}
        for key, values in rule.items():
            name = normalize_axis_key(key)
            if name not in axes:
                raise unknown_choice(f"axis in exclude[{index}] (only swept axes can be excluded)", key, axes)
            values = values if isinstance(values, list) else [values]
            for value in values:
                if _freeze_value(value) not in {_freeze_value(v) for v in axes[name]}:
                    raise unknown_choice(f"value of {key!r} in exclude[{index}]", value, map(str, axes[name]))
            entry[name] = values
        checked.append(entry)
    return checked


def _freeze_value(value: Any) -> str:
    """A hashable form of an axis value (values may be lists or mappings), to compare them."""
    return json.dumps(value, sort_keys=True, default=str)


__all__ = [
    "AXIS_ALIASES",
    "BACKENDS",
    "DEFAULT_COMMAND",
    "Resources",
    "SEED_KEY",
    "STAGES",
    "StageSpec",
    "SweepSpec",
    "check_command",
    "load_sweep",
    "normalize_axis_key",
    "stage1_recipe",
    "tokenizer_kind",
]
