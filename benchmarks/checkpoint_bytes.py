"""Stored bytes of a finished design-space grid: the weight-delta layout vs keeping every last.ckpt.

Every run of the sweep file (expanded by vlmlab's own sweep code, `vlmlab.sweep.expand`) is built on the meta
device from its model config (shapes only: nothing is downloaded or allocated) and frozen by its recipe for its
stage (`apply_freezing`); what a finished run keeps follows from that:

- new layout (now): `final/`, and `best/` when validation selects a checkpoint, each a `weights.safetensors`
  with the trained parameters in fp32 (plus the frozen ones and buffers when the base is randomly initialised)
  and a `meta.json`; beside them config.yaml, result.json and the logs. `checkpoints/last.ckpt` and
  `checkpoints/data_state/` are deleted once result.json is written (unless `train.keep_resume_state`).
- old layout (the issue's 1.34 TB): the same plus `checkpoints/last.ckpt` kept after the run: every parameter
  and persistent buffer in fp32 plus AdamW's two fp32 moments of each trained parameter.

Weight files are predicted to the byte (the safetensors header included); meta.json, config.yaml and
result.json are rebuilt from the config with placeholder metrics; logs and the Slurm stdout are estimated per
step. Then a tiny stage 1 -> stage 2 chain is trained end to end (CPU, about a minute) and the bytes left in
its run folders are compared with the same formula: exit 1 if they differ by more than a few KB of metadata.
Sizes are apparent file sizes (st_size); GB and TB are 10^9 and 10^12 bytes.

    python benchmarks/checkpoint_bytes.py                  # the grid, then the tiny runs (~1 min)
    python benchmarks/checkpoint_bytes.py --skip-measure   # the grid only (~15 s)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timing import timed

from vlmlab.presets import preset_dir

REPO = Path(__file__).resolve().parent.parent
ISSUE_OLD_TB = 1.34  # issue 13: "Checkpoints of the 0.6B design-space grid total ~1.34 TB"
GOAL_RATIO = 0.40  # acceptance: stored bytes after completion <= 40 % of that
METADATA_TOLERANCE = 8 * 1024  # bytes per run folder the small-file estimates may be off by
# estimates of what is not rebuilt exactly (per logged row / per optimizer step)
LOG_BYTES_PER_ROW = 700  # metrics.csv + TensorBoard scalars of one logged step (~12 values)
STDOUT_BYTES_PER_STEP = 150  # one progress-bar refresh per optimizer step in a Slurm job's stdout.log
TENSORBOARD_HEADER, HPARAMS_FILE, LOCK_FILE = 88, 3, 15  # bytes every run folder holds regardless
TORCH_SAVE_BYTES_PER_TENSOR = 200  # zip entry, 64-byte alignment and pickle of one tensor in last.ckpt
# safetensors writes tensors by descending dtype (the declaration order of its Rust enum), then by name
_SAFETENSORS_DTYPES = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
}
_DTYPE_RANK = {name: rank for rank, name in enumerate(_SAFETENSORS_DTYPES.values())}


@dataclass
class RunBytes:
    """What one finished run stores, by kind of file."""

    key: tuple[str, str, int]  # (tokenizer, fusion, stage)
    trained_params: int
    all_params: int
    checkpoints: list[str]  # "final", and "best" when validation selects one
    weights: dict[str, int] = field(default_factory=dict)  # checkpoint -> weights.safetensors bytes
    meta: dict[str, int] = field(default_factory=dict)  # checkpoint -> meta.json bytes
    small: int = 0  # config.yaml, result.json, logs, lock, stdout (estimated where noted)
    resume: int = 0  # checkpoints/last.ckpt, kept after completion in the old layout

    @property
    def new(self) -> int:
        return sum(self.weights.values()) + sum(self.meta.values()) + self.small

    @property
    def old(self) -> int:
        return self.new + self.resume


def safetensors_bytes(tensors: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> int:
    """The exact size of `safetensors.torch.save_file` of these tensors: 8 + JSON header (padded to 8) + data."""
    order = sorted(tensors, key=lambda t: (-_DTYPE_RANK[_SAFETENSORS_DTYPES[t[1]]], t[0]))
    header, offset = {}, 0
    for name, dtype, shape in order:
        size = int(torch.Size(shape).numel()) * dtype.itemsize
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    length = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + length + (-length % 8) + offset


def stored_tensors(
    model: torch.nn.Module, include_frozen: bool
) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """What `save_stage_checkpoint` writes: trained parameters, or all of them plus every buffer."""
    tensors = [
        (name, p.dtype, tuple(p.shape))
        for name, p in model.named_parameters()
        if p.requires_grad or include_frozen
    ]
    if include_frozen:
        tensors += [(f"buffer:{name}", b.dtype, tuple(b.shape)) for name, b in model.named_buffers()]
    return tensors


def last_ckpt_bytes(model: torch.nn.Module) -> int:
    """last.ckpt: the model's state dict (fp32 parameters + persistent buffers) and AdamW's exp_avg / exp_avg_sq
    (plus a scalar step) per trained parameter, with torch.save's per-tensor overhead."""
    state = model.state_dict(keep_vars=True)
    trained = [p for p in model.parameters() if p.requires_grad]
    data = sum(t.numel() * t.element_size() for t in state.values())
    data += sum(2 * p.numel() * p.element_size() + 4 for p in trained)
    return data + TORCH_SAVE_BYTES_PER_TENSOR * (len(state) + 3 * len(trained))


def _base_weights_estimate(config: dict[str, Any]) -> dict[str, Any]:
    """A stand-in for meta.json's `base_weights`: records of the same shape as a hub download would give."""
    from vlmlab.models.tokenizers import load_tokenizer_spec

    model = config["model"]

    def record(source: str) -> dict[str, Any]:
        folder = f"~/.cache/huggingface/hub/models--{source.replace('/', '--')}/snapshots/{'0' * 40}"
        file = {"path": f"{folder}/model.safetensors", "bytes": 10**9, "sha256": "0" * 64}
        return {"source": source, "revision": "0" * 40, "sha256": "0" * 64, "files": [file]}

    tokenizer = None
    if not model["random_tokenizer"]:
        tokenizer = model["tokenizer_weights"] or load_tokenizer_spec(model["tokenizer"]).pretrained
    return {
        "backbone": record(model["backbone_weights"]) if model["backbone_weights"] else None,
        "image_tokenizer": record(tokenizer) if tokenizer else None,
    }


def _metrics(config: dict[str, Any]) -> dict[str, float]:
    """Placeholder validation metrics with the names and typical float lengths of the real ones."""
    metrics: dict[str, float] = {}
    for i, source in enumerate(config["data"]["val"]):
        name = source.get("name") or f"{source.get('task', 'source')}-{source.get('mode', 'vqa')}-test-{i}"
        metrics[f"{name}/accuracy"] = 0.123456789
        metrics[f"{name}/extraction_failures"] = 0.0
    if metrics:
        metrics["mean_accuracy"] = 0.123456789
    return metrics


def _json_bytes(data: Any) -> int:
    return len(json.dumps(data, indent=2, default=str).encode())


def predict_run(
    model: torch.nn.Module, config: dict[str, Any], run_dir: Path, parent: Path | None, slurm: bool
) -> RunBytes:
    """The bytes one finished run keeps, from its (meta-device) model with the run's freezing applied."""
    from omegaconf import OmegaConf

    from vlmlab.recipes import load_recipe
    from vlmlab.train.freezing import apply_freezing

    train, model_cfg = config["train"], config["model"]
    freezing = apply_freezing(model, load_recipe(train["freeze"]), train["stage"])
    include_frozen = train["init_from"] is None and model_cfg["backbone_weights"] is None
    trained = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    checkpoints = ["final"] + (["best"] if train["select_best"] and config["data"]["val"] else [])
    result = RunBytes(
        key=(model_cfg["tokenizer"], model_cfg["fusion"], train["stage"]),
        trained_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        all_params=sum(p.numel() for p in model.parameters()),
        checkpoints=checkpoints,
    )
    weights = safetensors_bytes(stored_tensors(model, include_frozen))
    metrics = _metrics(config)
    for name in checkpoints:
        folder = run_dir / name
        meta = {
            "stage": train["stage"],
            "fusion": model_cfg["fusion"],
            "parent": os.path.relpath(parent, folder) if parent else None,
            "trained": trained,
            "base_weights": _base_weights_estimate(config),
            "config": config,
            "metrics": {**metrics, "step": train["max_steps"]} if name == "best" else metrics,
        }
        result.weights[name] = weights
        result.meta[name] = _json_bytes(meta)
    record = {  # result.json as vlmlab/train/run.py writes it
        "run_id": run_dir.name,
        "config_hash": "0" * 16,
        "stage": train["stage"],
        "config": config,
        "metrics": metrics,
        "chance": {name.split("/")[0]: 0.25 for name in metrics if name.endswith("/accuracy")},
        "best": {"step": train["max_steps"], "metrics": metrics} if train["select_best"] else None,
        "checkpoint": str(run_dir / checkpoints[-1]),
        "parent": str(parent) if parent else None,
        "freezing": freezing,
        "data": {"seen": {f"source-{i}": 10**6 for i, _ in enumerate(config["data"]["train"])}},
        "timings": {"train_seconds": 12345.6, "steps": train["max_steps"]},
        "created": "2026-01-01T00:00:00.000000+00:00",
    }
    config_yaml = len(OmegaConf.to_yaml(OmegaConf.create(config)).encode())
    rows = train["max_steps"] // max(1, train["log_every_n_steps"])
    logs = TENSORBOARD_HEADER + HPARAMS_FILE + rows * LOG_BYTES_PER_ROW
    stdout = train["max_steps"] * STDOUT_BYTES_PER_STEP if slurm else 0
    result.small = config_yaml + _json_bytes(record) + logs + LOCK_FILE + stdout
    result.resume = last_ckpt_bytes(model)
    return result


class MetaModels:
    """Meta-device models, one per distinct model config (freezing is re-applied per run)."""

    def __init__(self) -> None:
        self._models: dict[str, torch.nn.Module] = {}

    def get(self, model_config: dict[str, Any]) -> torch.nn.Module:
        from vlmlab.config import ModelConfig, load_config
        from vlmlab.models.describe import build_on_meta

        key = json.dumps(model_config, sort_keys=True)
        if key not in self._models:
            model = build_on_meta(load_config(ModelConfig, [model_config]))
            if any(t.device.type != "meta" for t in [*model.parameters(), *model.buffers()]):
                raise RuntimeError("some tensors were not built on the meta device")
            self._models[key] = model
        return self._models[key]


def grid(sweep: Path) -> tuple[list[RunBytes], list[str]]:
    """Every run of the sweep with its stored bytes; runs that could not be computed, with the reason."""
    from vlmlab.sweep.expand import expand
    from vlmlab.sweep.spec import load_sweep

    spec = load_sweep(sweep)
    dag = expand(spec)
    models, results, failed = MetaModels(), [], []
    for run in dag:
        parent = None
        if run.parents:  # the parent's best/ when it selects one, else its final/
            up = dag.runs[run.parents[0]]
            chosen = "best" if up.config["train"]["select_best"] and up.config["data"]["val"] else "final"
            parent = up.run_dir / chosen
        try:
            model = models.get(run.config["model"])
            results.append(predict_run(model, run.config, run.run_dir, parent, slurm=spec.backend == "slurm"))
        except Exception as error:  # say which run kind cannot be computed instead of guessing
            failed.append(f"{run.key}: {type(error).__name__}: {error}")
    return results, failed


def print_table(results: list[RunBytes]) -> None:
    groups: dict[tuple[str, str, int], list[RunBytes]] = defaultdict(list)
    for result in results:
        groups[result.key].append(result)
    header = ["tokenizer", "fusion", "stage", "runs", "trained M", "ckpts", "new GB", "old GB", "new/old"]
    rows = []
    for (tokenizer, fusion, stage), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])
    ):
        trained = sorted({r.trained_params for r in runs})
        span = (
            f"{trained[0] / 1e6:.0f}"
            if len(trained) == 1
            else f"{trained[0] / 1e6:.0f}-{trained[-1] / 1e6:.0f}"
        )
        new, old = sum(r.new for r in runs), sum(r.old for r in runs)
        ckpts = sorted({len(r.checkpoints) for r in runs})
        rows.append(
            [tokenizer, fusion, str(stage), str(len(runs)), span, "/".join(map(str, ckpts)),
             f"{new / 1e9:.1f}", f"{old / 1e9:.1f}", f"{new / old:.0%}"]
        )  # fmt: skip
    new, old = sum(r.new for r in results), sum(r.old for r in results)
    rows.append(
        [
            "total",
            "",
            "",
            str(len(results)),
            "",
            "",
            f"{new / 1e9:.1f}",
            f"{old / 1e9:.1f}",
            f"{new / old:.0%}",
        ]
    )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  "
            + "  ".join(
                cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))
            )
        )


# -- the tiny end-to-end check


def tiny_configs(root: Path) -> list[tuple[str, Path]]:
    """A tiny stage 1 -> stage 2 chain as (name, config file); a second copy of stage 2 keeps its resume
    state, to check the old layout's last.ckpt formula too."""
    from omegaconf import OmegaConf

    def write(name: str, stage: int, **train: Any) -> Path:
        mode = "caption" if stage == 1 else "vqa"
        val = (
            [{"kind": "synthetic", "task": "spatialmap", "mode": "vqa", "split": "test"}]
            if stage == 2
            else []
        )
        config = {
            "model": {"backbone": "qwen3-tiny", "tokenizer": "clip-tiny", "random_tokenizer": True},
            "data": {
                "max_length": 96,
                "micro_batch_size": 4,
                "train": [{"kind": "synthetic", "task": "spatialmap", "mode": mode}],
                "val": val,
                "val_samples": 8,
            },
            "train": {
                "stage": stage,
                "freeze": "unfreeze-tok-s2",  # stage 2 trains the tokenizer and adapter, not the LM
                "max_steps": 4,
                "global_batch_size": 4,
                "checkpoint_every_n_steps": 2,
                "output_dir": str(root / name),
                "select_best": stage == 2,
                "val_every_n_steps": 2 if stage == 2 else None,
                **train,
            },
        }
        path = root / f"{name}.yaml"
        path.write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
        return path

    s1 = write("s1", 1)  # random-init base: the full model (and buffers) is stored
    return [
        ("s1", s1),
        ("s2", write("s2", 2, init_from=str(root / "s1"))),  # a delta: final/ + best/
        ("s2-keep", write("s2-keep", 2, init_from=str(root / "s1"), keep_resume_state=True)),
    ]


def folder_bytes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def _line(label: str, measured: int, predicted: int, note: str, verdict: bool | None) -> bool:
    """One measured-vs-predicted row; returns the verdict (True when there is none)."""
    mark = "" if verdict is None else ("  OK" if verdict else "  MISMATCH")
    print(
        f"     {label:<30} measured {measured:>11,} B  predicted {predicted:>11,} B  "
        f"({measured - predicted:+,} B, {note}){mark}"
    )
    return verdict is not False


def measure(root: Path) -> bool:
    """Train the tiny chain, then compare what is on disk with the prediction; True when they agree."""
    from vlmlab.config import ExperimentConfig, load_config, to_dict
    from vlmlab.models.checkpoint import resolve_checkpoint

    models, ok = MetaModels(), True
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    for name, path in tiny_configs(root):
        with timed(children=True) as took, open(root / f"{name}.log", "w") as log:
            code = subprocess.call(
                [sys.executable, "-m", "vlmlab.cli", "train", str(path)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        if code != 0:
            print(f"   {name}: training failed (exit {code}), see {root / f'{name}.log'}")
            return False
        config = to_dict(load_config(ExperimentConfig, [str(path)]))
        run_dir = Path(config["train"]["output_dir"])
        parent = resolve_checkpoint(config["train"]["init_from"]) if config["train"]["init_from"] else None
        predicted = predict_run(models.get(config["model"]), config, run_dir, parent, slurm=False)
        files = folder_bytes(run_dir)
        resume = files.pop("checkpoints/last.ckpt", 0)
        measured = sum(files.values())
        print(f"\n   {name} (trained in {took.describe()}): {len(files)} files kept")
        for ckpt in predicted.checkpoints:
            got, want = files.get(f"{ckpt}/weights.safetensors", 0), predicted.weights[ckpt]
            ok &= _line(f"{ckpt}/weights.safetensors", got, want, "exact", got == want)
        weights = sum(predicted.weights.values())
        _line("meta, config, result, logs", measured - weights, predicted.new - weights, "estimated", None)
        verdict = abs(measured - predicted.new) <= METADATA_TOLERANCE
        ok &= _line("the run folder", measured, predicted.new, f"+-{METADATA_TOLERANCE:,} B allowed", verdict)
        if config["train"]["keep_resume_state"]:
            close = abs(resume / predicted.resume - 1) <= 0.05
            ok &= _line("last.ckpt (kept: old layout)", resume, predicted.resume, "+-5 % allowed", close)
        elif resume or (run_dir / "checkpoints" / "data_state").exists():
            print("     MISMATCH: the resume state (last.ckpt / data_state) is still there after completion")
            ok = False
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=preset_dir("sweeps") / "design_space.yaml")
    parser.add_argument("--skip-measure", action="store_true", help="only the grid, no tiny training run")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="keep the tiny runs here (default: a temp dir)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().setLevel(logging.ERROR)  # open_clip's "initialized randomly" on the meta device
    with timed() as this_process, timed(children=True) as took:
        ok = run(args)
    print(f"\n{took.describe()} ({this_process.cpu:.1f} s CPU here, the rest in the tiny training runs)")
    if not ok:
        print("FAILED: see MISMATCH / NOT COMPUTED above", file=sys.stderr)
        sys.exit(1)


def run(args: argparse.Namespace) -> bool:
    """The grid's bytes, then (unless --skip-measure) the tiny chain; True when every check agreed."""
    print(
        f"1. {args.sweep.name}: bytes kept by every run after completion (meta-device models, fp32 weights)"
    )
    results, failed = grid(args.sweep)
    print_table(results)
    new, old = sum(r.new for r in results), sum(r.old for r in results)
    small = sum(r.small + sum(r.meta.values()) for r in results)
    print(
        f"\n   new layout (final/ + best/ deltas, metadata): {new / 1e12:.3f} TB ({new / 1e9:,.0f} GB, "
        f"of it {small / 1e9:.2f} GB metadata, logs and stdout)"
    )
    print(
        f"   old layout (+ last.ckpt kept after the run):  {old / 1e12:.3f} TB ({old / 1e9:,.0f} GB, of it "
        f"{(old - new) / 1e9:,.0f} GB last.ckpt; the issue's estimate: ~{ISSUE_OLD_TB} TB, ~900 GB last.ckpt)"
    )
    print(
        f"   new / old: {new / old:.1%}; new / {ISSUE_OLD_TB} TB: {new / (ISSUE_OLD_TB * 1e12):.1%} (goal <= 40 %)"
    )
    if failed:
        print(f"\n   NOT COMPUTED ({len(failed)} runs, left out of the totals above):")
        for line in failed:
            print(f"     {line}")

    ok = not failed
    if not args.skip_measure:
        print("\n2. a tiny stage 1 -> stage 2 chain trained end to end: bytes on disk vs the same formula")
        if args.work_dir:
            args.work_dir.mkdir(parents=True, exist_ok=True)
            ok &= measure(args.work_dir.resolve())
        else:
            with tempfile.TemporaryDirectory(prefix="checkpoint-bytes-") as tmp:
                ok &= measure(Path(tmp))
    return ok


if __name__ == "__main__":
    main()
