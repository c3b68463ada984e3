"""Expand a sweep file into a DAG of stage runs in which a shared prefix runs once.

Every grid point (one value per axis) becomes a chain of stage configs, stage 1 -> 2 -> 3. Each stage config
is resolved (base, stage config, overrides, axis values, `${vars.*}`), checked against ExperimentConfig, and
then reduced to what that stage can see (the paper's rules, sections 2.3 and Appendix D):

* stage 1 trains only Joint-Decoder and Cross-Attention models: a MoT point's stage-1 config is the
  Joint-Decoder one, so every MoT stage-2 run starts from the Joint-Decoder stage-1 run of the same
  tokenizer, stage-1 freezing, backbone and any other stage-1 setting;
* stage 1 only sees the image tokenizer's stage-1 state of a freezing recipe (the language model is frozen
  in stage 1), so recipes sharing it share the stage-1 run;
* discrete tokenizers (TiTok, VAR) are always frozen: points pairing one with a recipe that trains the
  tokenizer are left out;
* text-only training data (TQA) only trains the language model (section 4.2): a stage 2/3 run on it with a
  recipe that freezes the language model would train nothing, and is left out;
* a single-stage recipe (`skip_stage1: true`, Prismatic's `no-align`) has no stage-1 run: its stage-2 run
  starts from the base weights and has no parent.
It is an error when an axis value would be left out entirely by these rules (asked for explicitly).

Replicates (`seeds: [0, 1, 2]` in the sweep file) add `train.seed` as one more axis over every stage, so
each design point is trained once per seed. Which runs may seeds share? A run may be shared only if the seed
cannot change what it learns, and in vlmlab the seed reaches every stage run: every stage trains at least
the connector, which the seed initialises (`build_model` seeds torch before building), and reads its data
in the seed's order (the stream's shuffle). A random-init tower, even a frozen one, is drawn from the seed
too, and where the language model is pretrained (`model.backbone_weights`, as in the quickstart) a
checkpoint carries only the trained weights, so a later stage rebuilds that tower from its own seed: a
stage-1 run shared by seed 1's stage 2 would hand it a tower other than the one its connector was trained
against. So a replicate is a whole chain (seed s's stage 2 starts from seed s's stage 1), and what seeds
share is what one seed shares already: within a seed, MoT starts from the Joint-Decoder stage-1 run and
recipes with one stage-1 state share that run, exactly as without seeds. The seed is part of the hashed
config (as `train.seed` always was), so a sweep without `seeds` keeps every run id, and the seed-0 runs of
a sweep that adds `seeds` keep theirs too (its ids name only a seed other than 0), reusing finished runs.

A run's id is a hash of its stage, its resolved config (minus keys that only say how it executes, see
`identity_view`) and its parents' ids, so equal prefixes collapse into one run and a changed setting always
gets a new folder. Nothing here imports torch.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vlmlab.config import (
    FUSIONS,
    TOKEN_COUNT_ADAPTERS,
    ExperimentConfig,
    check_keys,
    load_config,
    read_yaml_file,
    to_dict,
)
from vlmlab.errors import ConfigError
from vlmlab.files import atomic_write_text
from vlmlab.recipes import list_recipes, load_recipe
from vlmlab.runs.record import EXECUTION_KEYS
from vlmlab.sweep.dag import Run, SweepDag
from vlmlab.sweep.spec import (
    SEED_KEY,
    VAR_PREFIX,
    SweepSpec,
    check_backbone,
    check_fusion,
    deep_merge,
    stage1_recipe,
    tokenizer_kind,
    tokenizer_size,
)

# keys that came after runs were hashed, with their defaults (identity_view)
_LATER_KEYS = {
    "model.open_weight": None,
    "model.trust_remote_code": [],
    "train.method": "sft",
    "train.transfer_eval_samples": 0,
    "data.val_max_new_tokens": 16,
    # the resolution axis (issue 25): the preset's size and today's crop keep the ids of runs hashed before
    "model.image_size": None,
    "model.image_resize": "crop",
    # several encoders (issue 26): a single tokenizer keeps the id it had before these keys
    "model.encoder_fusion": "channel",
    "model.encoder_freeze": [],
    "optim.encoder_lr": [],
}
# keys of each data source (data.train / data.val items) that came after runs were hashed, with their defaults
_LATER_SOURCE_KEYS = {"subset": None, "max_images": None}
_VAR_REFERENCE = re.compile(r"\$\{vars\.([A-Za-z_][A-Za-z0-9_]*)")


def expand(spec: SweepSpec) -> SweepDag:
    """The sweep's runs, stage by stage, each with its parent; raise ConfigError on impossible requests."""
    expander = _Expander(spec)
    return expander.run()


def identity_view(stage: int, config: dict[str, Any], has_parent: bool) -> dict[str, Any]:
    """The part of a resolved config that decides what a run learns, for its id.

    Besides EXECUTION_KEYS, learning rates of groups that do not train in this stage and settings of
    another fusion are dropped: they cannot change the result, and keeping them would split one run in two.
    Keys added after runs were hashed (`model.cross_attention_layout`, the open-weight and training-method
    keys, the `rl` section outside GRPO runs) are dropped while they hold their defaults, so those runs keep
    their ids (so do `model.image_size` / `model.image_resize` at null / crop, the encoder-set keys
    `model.encoder_fusion` / `model.encoder_freeze` / `optim.encoder_lr` at channel / [] / [] (and
    `model.encoder_fusion` for a single tokenizer, which fuses nothing), and `train.lora` wherever no group
    trains through LoRA); the connector settings
    (`model.adapter_tokens`, `model.pixel_shuffle_ratio`) are dropped unless the adapter uses them; the
    tiling keys unless images are tiled.
    """
    view = copy.deepcopy(config)
    drop = list(EXECUTION_KEYS)
    if has_parent:
        drop.append("train.init_from")
    fusion = view["model"]["fusion"]
    if fusion != "cross_attention":
        drop += ["model.cross_attention_every", "model.cross_attention_layout", "optim.lr.cross_attention"]
    elif view["model"].get("cross_attention_layout", "every") == "every":
        # the layout key came after runs were hashed without it: its default keeps their ids
        drop.append("model.cross_attention_layout")
    if fusion != "mot":
        drop.append("optim.lr.mot_image")
    # a connector's settings only where that connector is used: they came after runs were hashed, and an
    # adapter that ignores them learns the same thing whatever they hold
    adapter = view["model"].get("adapter", "auto")
    if adapter not in TOKEN_COUNT_ADAPTERS:
        drop.append("model.adapter_tokens")
    if adapter != "pixel_shuffle":
        drop.append("model.pixel_shuffle_ratio")
    # tiling came after runs were hashed too: untiled runs keep their ids, and the grids and budget only
    # count where images are tiled
    if view["model"].get("tiling", "none") == "none":
        drop += ["model.tiling", "model.tile_grids", "model.max_image_tokens"]
    if view["model"].get("image_size") == tokenizer_size(view["model"]["tokenizer"]):
        drop.append("model.image_size")  # the preset's own size, spelled out: the same model as null
    for key, default in _LATER_KEYS.items():
        if _get(view, key) == default:
            drop.append(key)
    for group in ("train", "val"):
        for source in (view.get("data") or {}).get(group) or []:
            for key, default in _LATER_SOURCE_KEYS.items():
                if isinstance(source, dict) and key in source and source[key] == default:
                    source.pop(key)
    if view["train"].get("method", "sft") != "grpo":
        drop.append("rl")
    recipe = load_recipe(view["train"]["freeze"])
    tokenizer_trains = recipe.tokenizer_stage1 if stage == 1 else recipe.tokenizer_stage2
    if not tokenizer_trains or tokenizer_kind(view["model"]["tokenizer"]) == "discrete":
        drop += ["optim.lr.image_tokenizer", "optim.encoder_lr"]
    if not isinstance(view["model"]["tokenizer"], list):  # one tower: nothing to fuse
        drop.append("model.encoder_fusion")
    if stage == 1 or not recipe.language_stage2:
        drop.append("optim.lr.language_model")
    # LoRA came after runs were hashed: its settings only count where a group trains through it (a run
    # without one keeps its id), the targets only of those groups, the hand-off only where a parent can have
    # left adapters (stage 1 has no parent; a stage-2 parent only where its tokenizer trained through LoRA)
    lora_groups = [] if stage == 1 and recipe.skip_stage1 else recipe.lora_groups(stage)
    if not lora_groups:
        drop.append("train.lora")
    elif isinstance(view["train"].get("lora"), dict):
        settings = view["train"]["lora"]
        targets = settings.get("target_modules") or {}
        settings["target_modules"] = {g: v for g, v in targets.items() if g in lora_groups}
        if stage == 1 or (stage == 2 and ("image_tokenizer", 1) not in recipe.lora):
            drop.append("train.lora.handoff")
    for key in drop:
        _pop(view, key)
    return view


def run_id(
    stage: int,
    config: dict[str, Any],
    parents: list[str],
    vars_used: dict[str, Any],
    replicate: int | None = None,
) -> str:
    """`<fusion>_<tokenizer>_<recipe>_<backbone>[_<vars>][_seed<k>]_<hash>`: readable, and unique by the
    hash. `replicate` is the seed of a sweep with `seeds`; named when not 0, so that seed 0 keeps the id the
    run had before the sweep had seeds (the hash holds train.seed either way)."""
    view = identity_view(stage, config, bool(parents))
    payload = json.dumps({"stage": stage, "config": view, "parents": parents}, sort_keys=True, default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:10]
    model = config["model"]
    if model.get("open_weight"):  # an open-weight VLM: its name and the method, not vlmlab's parts
        parts = [
            config["train"]["method"],
            _short(str(model["open_weight"]).rstrip("/").rsplit("/", 1)[-1]),
            _short(config["train"]["freeze"]),
        ]
    else:
        parts = [
            FUSIONS[model["fusion"]].short if model["fusion"] in FUSIONS else model["fusion"],
            _short(model["tokenizer"]),
            _short(config["train"]["freeze"]),
            _short(model["backbone"]),
        ]
    if vars_used:
        parts.append("-".join(str(v) for v in vars_used.values()))
    if replicate:
        parts.append(f"seed{replicate}")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts))[:80]
    return f"{slug}_{digest}"


def write_run_files(dag: SweepDag) -> int:
    """Write each run's config.yaml (and sweep_run.json, what the sweep knows of it) atomically.

    Finished runs (result.json) are not touched, nor is a config.yaml whose identity is unchanged (the
    trainer rewrites it with its own resolved copy). Returns how many files were written.
    """
    written = 0
    for run in dag:
        if run.is_done():
            continue
        run.run_dir.mkdir(parents=True, exist_ok=True)
        if not _same_config(run):
            header = f"# vlmlab sweep {dag.name}: stage {run.stage} run {run.id} (from {dag.source})\n"
            atomic_write_text(run.config_path, header + OmegaConf.to_yaml(OmegaConf.create(run.config)))
            written += 1
        meta = {
            "sweep": dag.name,
            "id": run.id,
            "stage": run.stage,
            "parents": run.parents,
            "parent_dirs": [str(dag.runs[p].run_dir) for p in run.parents],
            "labels": run.labels,
        }
        meta_path = run.run_dir / "sweep_run.json"
        text = json.dumps(meta, indent=2, default=str) + "\n"
        if not meta_path.exists() or meta_path.read_text() != text:
            atomic_write_text(meta_path, text)
            written += 1
    return written


class _Expander:
    def __init__(self, spec: SweepSpec) -> None:
        self.spec = spec
        self.defaults = to_dict(ExperimentConfig())
        self.stage_base = {k: self._stage_base(k) for k in spec.stages}
        self.vars_referenced = {
            k: set(_VAR_REFERENCE.findall(json.dumps(base, default=str)))
            for k, base in self.stage_base.items()
        }
        # (key, values, scope): scope None = every stage, k = only stage k
        self.axes = [(key, values, None) for key, values in spec.axes.items()]
        self.axes += [
            (key, values, k) for k, stage in spec.stages.items() for key, values in stage.axes.items()
        ]
        if spec.seeds:  # last: a design point's replicates follow each other in the DAG
            self.axes.append((SEED_KEY, list(spec.seeds), None))
        self._stage_configs: dict[tuple[int, str], dict[str, Any]] = {}  # (stage, vars) -> checked config
        self._values: dict[tuple[str, str], Any] = {}  # (axis key, value) -> checked value

    def _stage_base(self, stage: int) -> dict[str, Any]:
        """Defaults <- sweep base <- stage config <- stage overrides, as a plain dict (not yet checked)."""
        config = copy.deepcopy(self.defaults)
        stage_spec = self.spec.stages[stage]
        for source in [*self.spec.base, *stage_spec.sources]:
            data = source if isinstance(source, dict) else _read_yaml(source)
            check_keys(data, ExperimentConfig)
            deep_merge(config, data)
        if stage_spec.overrides:
            data = OmegaConf.to_container(OmegaConf.from_dotlist(stage_spec.overrides))
            check_keys(data, ExperimentConfig)
            deep_merge(config, data)
        return config

    def run(self) -> SweepDag:
        spec = self.spec
        runs_by_stage: dict[int, dict[str, Run]] = {k: {} for k in spec.stages}
        skipped: Counter = Counter()
        excluded = points = 0
        survivors: Counter = Counter()  # (axis index, value key) -> surviving points
        violations: dict[tuple[int, str], str] = {}
        value_lists = [values for _, values, _ in self.axes]
        for combo in itertools.product(*value_lists):
            points += 1
            point = {(key, scope): value for (key, _, scope), value in zip(self.axes, combo)}
            if self._excluded(point):
                excluded += 1
                continue
            chain, reason = self._chain(point)
            value_keys = [(i, _value_key(v)) for i, v in enumerate(combo)]
            if reason:
                skipped[reason] += 1
                if not chain:
                    for item in value_keys:
                        violations.setdefault(item, reason)
                    continue
            survivors.update(value_keys)
            for run in chain:
                runs_by_stage[run.stage].setdefault(run.id, run)
        for (index, value_key), reason in violations.items():
            if not survivors[(index, value_key)]:
                key = self.axes[index][0]
                raise ConfigError(f"Axis {key} = {json.loads(value_key)!r} is never runnable: {reason}.")
        runs = {run.id: run for stage_runs in runs_by_stage.values() for run in stage_runs.values()}
        if not runs:
            if skipped:
                raise ConfigError(f"The sweep has no runnable point: {next(iter(skipped))}.")
            raise ConfigError("The sweep's exclude rules leave no runs.")
        return SweepDag(
            name=spec.name,
            source=spec.path,
            output_dir=spec.output_dir,
            runs=runs,
            points=points,
            excluded=excluded,
            skipped=skipped,
            seeds=list(spec.seeds),
        )

    def _excluded(self, point: dict[tuple[str, int | None], Any]) -> bool:
        values = {key: value for (key, _), value in point.items()}
        return any(
            all(_value_key(values[key]) in {_value_key(v) for v in allowed} for key, allowed in rule.items())
            for rule in self.spec.exclude
        )

    def _chain(self, point: dict[tuple[str, int | None], Any]) -> tuple[list[Run], str | None]:
        """The runs of one grid point, stage by stage, and the paper's rule that rules it out (no runs) or
        cuts it short at stage 3 (the runs before it), if any."""
        all_vars = {key[len(VAR_PREFIX) :]: v for (key, _), v in point.items() if key.startswith(VAR_PREFIX)}
        chain: list[Run] = []
        parent: Run | None = None
        for stage in self.spec.stages:
            vars_used = {k: v for k, v in all_vars.items() if k in self.vars_referenced[stage]}
            config = self._stage_config(stage, vars_used)
            assigned = [
                key for (key, scope) in point if scope in (None, stage) and not key.startswith(VAR_PREFIX)
            ]
            for key in assigned:
                value = self._checked_value(
                    key, point[(key, None)] if (key, None) in point else point[(key, stage)]
                )
                current = _get(config, key)
                if isinstance(value, dict) and isinstance(current, dict):
                    deep_merge(current, value)
                else:
                    _set(config, key, value)
            if stage == 1 and load_recipe(config["train"]["freeze"]).skip_stage1:
                continue  # a single-stage recipe: its stage-2 run has no parent (module docstring)
            reason = _rule_violation(config, stage)
            if reason:
                # a ruled-out stage 3 (e.g. text-only transfer of a frozen language model) cuts the chain short:
                # its stage-2 model is still a design point of the grid; earlier violations remove the point
                return (chain, f"stage {stage} left out: {reason}") if stage >= 3 else ([], reason)
            if stage == 1:  # what stage 1 can see of the paper's rules (module docstring)
                if config["model"]["fusion"] == "mot":
                    config["model"]["fusion"] = "joint_decoder"
                config["train"]["freeze"] = stage1_recipe(load_recipe(config["train"]["freeze"]))
            config["train"]["stage"] = stage
            parents = [parent.id] if parent else []
            replicate = point.get((SEED_KEY, None)) if self.spec.seeds else None
            rid = run_id(stage, config, parents, vars_used, replicate)
            run_dir = self.spec.output_dir / f"stage{stage}" / rid
            config["train"]["output_dir"] = str(run_dir)
            if parent:
                config["train"]["init_from"] = str(parent.run_dir)
            labels = {key: _get(config, key) for key in assigned}
            labels.update({f"{VAR_PREFIX}{k}": v for k, v in vars_used.items()})
            run = Run(id=rid, stage=stage, config=config, parents=parents, run_dir=run_dir, labels=labels)
            chain.append(run)
            parent = run
        return chain, None

    def _stage_config(self, stage: int, variables: dict[str, Any]) -> dict[str, Any]:
        """The stage's checked config (base, stage config, overrides) with these `${vars.*}` filled in."""
        key = (stage, _value_key(variables))
        if key not in self._stage_configs:
            config = self.stage_base[stage]
            if variables or "${" in json.dumps(config, default=str):
                config = _resolve_vars(config, variables, stage)
            try:
                self._stage_configs[key] = to_dict(load_config(ExperimentConfig, [copy.deepcopy(config)]))
            except ConfigError as error:
                raise ConfigError(f"Stage {stage} of sweep {self.spec.name!r}: {error}") from error
        return copy.deepcopy(self._stage_configs[key])

    def _checked_value(self, key: str, value: Any) -> Any:
        """An axis value converted and checked by the config schema on its own (cached: keys are independent,
        so checking each value once equals checking every combination, and is what keeps a dry run fast)."""
        cache_key = (key, _value_key(value))
        if cache_key not in self._values:
            nested: dict[str, Any] = {}
            _set(nested, key, copy.deepcopy(value))
            try:
                checked = _get(to_dict(load_config(ExperimentConfig, [nested])), key)
            except ConfigError as error:
                raise ConfigError(f"Axis {key} = {value!r}: {error}") from error
            if isinstance(value, dict) and isinstance(checked, dict):  # a mapping merges: keep only its keys
                checked = {k: checked[k] for k in value}
            self._values[cache_key] = checked
        return copy.deepcopy(self._values[cache_key])


def _rule_violation(config: dict[str, Any], stage: int) -> str | None:
    """Check the names the paper's rules depend on; return why this combination is not run, if so."""
    model, train = config["model"], config["train"]
    check_fusion(model["fusion"])
    check_backbone(model["backbone"])
    recipe = load_recipe(str(train["freeze"]))
    if tokenizer_kind(model["tokenizer"]) == "discrete" and recipe.trains_tokenizer:
        frozen = ", ".join(r.name for r in map(load_recipe, list_recipes()) if not r.trains_tokenizer)
        return (
            f"discrete tokenizer {model['tokenizer']} with recipe {recipe.name} (discrete tokenizers are "
            f"always frozen, paper 2.3; recipes that keep them frozen: {frozen})"
        )
    sources = config["data"]["train"]
    text_only = bool(sources) and all(s["kind"] == "synthetic" and s["mode"] == "tqa" for s in sources)
    if stage > 1 and text_only and not recipe.language_stage2:
        return (
            f"text-only stage-{stage} data with recipe {recipe.name}, which keeps the language model frozen: "
            "text gives no gradient to anything else, so nothing would train (paper 4.2)"
        )
    return None


def _resolve_vars(config: dict[str, Any], variables: dict[str, Any], stage: int) -> dict[str, Any]:
    node = OmegaConf.create({**config, "vars": variables})
    try:
        resolved = OmegaConf.to_container(node, resolve=True)
    except Exception as error:  # omegaconf names the interpolation that failed
        names = ", ".join(f"vars.{k}" for k in variables) or "none"
        raise ConfigError(
            f"Stage {stage} config: {error} (sweep variables of this point: {names})."
        ) from error
    resolved.pop("vars")
    return resolved


def _read_yaml(path: Path) -> dict[str, Any]:
    loaded = read_yaml_file(path)
    data = OmegaConf.to_container(loaded, resolve=False)
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {str(path)!r} must hold a mapping at the top level.")
    return data


def _set(config: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _pop(config: dict[str, Any], dotted: str) -> None:
    parts = dotted.split(".")
    node = _get(config, ".".join(parts[:-1])) if len(parts) > 1 else config
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def _short(name: Any) -> str:
    """A preset name as it is; a YAML path as its file name without the suffix; a list of towers joined by +."""
    if isinstance(name, list | tuple):
        return "+".join(_short(item) for item in name)
    text = str(name)
    return Path(text).stem if text.endswith((".yaml", ".yml")) else text


def _value_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _same_config(run: Run) -> bool:
    """Whether run.config_path already describes this run (same parent, same identity)."""
    try:
        existing = OmegaConf.to_container(read_yaml_file(run.config_path), resolve=False)
        same_parent = existing["train"]["init_from"] == run.config["train"]["init_from"]
        parents = bool(run.parents)
        return same_parent and identity_view(run.stage, existing, parents) == identity_view(
            run.stage, run.config, parents
        )
    except Exception:  # missing, unreadable or of another shape: write it
        return False


__all__ = ["expand", "identity_view", "run_id", "write_run_files"]
