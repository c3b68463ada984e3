"""`vlmlab quickstart`: the main job on a laptop-class CPU, nothing downloaded.

1. generates the held-out synthetic data (SpatialMap test and OOD splits as webdataset shards);
2. trains the tiny Qwen3 once as a text-only language model and saves it in the released layout: the
   stand-in for the pretrained Qwen3 every run of the paper starts from (vlmlab/train/text_pretrain.py);
3. runs the shipped `quickstart` sweep on the local backend: 3 fusions x 2 freezing recipes through all three
   stages (stage 1 captions with the language model frozen, stage 2 VQA, stage 3 the text-only version);
4. evaluates every stage-2 ("No Train") and stage-3 model on the VQA and TQA versions of the test and
   OOD splits (the cross-modality transfer protocol, section 4);
5. gathers the records into the transfer tables (chance and trivial baselines beside every number, 95 %
   intervals) and their figures, and ends with a two-line reading: which design choices differ (a paired
   test over the same held-out samples) and which do not, each claim naming the seeds behind it.

One seed per design point: two would double the training (about 14 of the 15 minutes on 2 cores are the
budget already), and the steps cannot be halved without the answer going unlearned (the sweep's header). So
the reading says plainly that every claim rests on one seed; `seeds: [0, 1, 2]` in a sweep file gives
replicates, and the same reading then calls an effect only when every seed agrees.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from vlmlab import presets
from vlmlab.config import FUSIONS
from vlmlab.files import atomic_write_text
from vlmlab.reports.frame import get_dotted

# The quickstart's SpatialMap: two objects in distribution, three out of distribution, drawn twice the
# paper's size so that each object covers whole 16-px patches of the tiny ViT's 64-px input.
OBJECT_SCALE = 2.0
EVAL_DIFFICULTY = {
    "spatialmap": {
        "test": {"num_objects": 2, "object_scale": OBJECT_SCALE},
        "ood": {"num_objects": 3, "object_scale": OBJECT_SCALE},
    }
}
AXES = {"fusion": "model.fusion", "freezing": "train.freeze"}


def text_corpus(seed: int = 0) -> Iterator[str]:
    """The pretraining text: captions of all three tasks and the text versions of Grid and Ring.

    SpatialMap's text version is left out on purpose: it is the transfer study's held-out task, so the
    language model must not have read its questions before stage 3.
    """
    from vlmlab.data.samples import CAPTION_INSTRUCTION, synthetic_to_sample
    from vlmlab.data.synthetic.generate import build_sample, resolve_params

    kinds = [
        ("spatialmap", "caption"),
        ("grid", "caption"),
        ("ring", "caption"),
        ("grid", "tqa"),
        ("ring", "tqa"),
    ]
    params = {task: resolve_params(task, "train") for task, _ in kinds}
    params["spatialmap"] = resolve_params("spatialmap", "train", num_objects=[2, 3])
    for index in itertools.count():
        for task, mode in kinds:
            raw = build_sample(task, "train", index, seed, 64, params[task], image=False)
            if mode == "caption":
                yield f"{CAPTION_INSTRUCTION}\n{raw['caption']}"
            else:
                sample = synthetic_to_sample(raw, "tqa")
                yield f"{sample['prompt']}\n{sample['response']}"


def write_sweep(out: Path, backbone_weights: Path) -> Path:
    """The sweep the quickstart runs: the shipped `quickstart` sweep, starting from the pretrained text model."""
    sweep = {
        "extends": "quickstart",
        "base": [
            str(presets.resolve("model", "tiny")),
            {"model": {"backbone_weights": str(backbone_weights.resolve())}},
        ],
    }
    path = out / "quickstart.yaml"
    atomic_write_text(path, "# written by `vlmlab quickstart`\n" + json.dumps(sweep, indent=1) + "\n")
    return path


def run_quickstart(out: Path, parallel: int = 2, num_eval: int = 300) -> int:
    from vlmlab.cli import main as cli
    from vlmlab.data.synthetic import write_split
    from vlmlab.train.text_pretrain import TextPretraining, pretrained_text_backbone

    started = time.time()
    out = Path(out)
    print(f"[1/5] held-out data: SpatialMap test (2 objects) and OOD (3 objects), {num_eval} samples each")
    for split, knobs in EVAL_DIFFICULTY["spatialmap"].items():
        files = write_split(
            "spatialmap", split, out / "data", num=num_eval, image_size=64, progress=True, **knobs
        )
        print(f"      {files.count} samples -> {files.index}")

    recipe = TextPretraining(backbone="qwen3-tiny", corpus="captions(spatialmap,grid,ring)+text(grid,ring)")
    print(
        f"[2/5] pretrained language model: qwen3-tiny as a text-only LM, {recipe.steps} steps x {recipe.batch_size} "
        "texts (captions of all three tasks, text questions of Grid and Ring)"
    )
    folder, record = pretrained_text_backbone(recipe, text_corpus, out / "pretrained" / "qwen3-tiny-text")
    print(
        f"      loss {record['loss_first_steps']:.2f} -> {record['loss_last_steps']:.2f} "
        f"({record['wall_seconds']:.0f} s) -> {folder}"
    )

    sweep_file = write_sweep(out, folder)
    print(f"[3/5] training: the quickstart sweep on the local backend, {parallel} run(s) at a time")
    if parallel > 1:  # tiny models: one thread per run, runs side by side, uses the cores best
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    code = cli(
        [
            "sweep",
            str(sweep_file),
            "--backend",
            "local",
            "--parallel",
            str(parallel),
            "--output",
            str(out / "runs"),
        ]
    )
    if code:
        print("training failed; see the stdout.log of the failed run above", file=sys.stderr)
        return code

    print(
        f"[4/5] evaluation: VQA and TQA x test and OOD, {num_eval} samples each, every stage-2 and stage-3 model"
    )
    runs = sorted(p.parent for p in (out / "runs").glob("stage[23]/*/result.json"))
    todo = [run for run in runs if not (run / "eval.json").exists()]
    # one single-threaded process per core, as in training (spawned: the parent has used torch's threads)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(1, parallel), mp_context=context, initializer=_one_thread) as pool:
        for run in pool.map(_evaluate, todo, itertools.repeat(num_eval)):
            print(f"      {run.parent.name}/{run.name}")

    print("[5/5] results")
    code = cli(
        [
            "results",
            str(out / "runs"),
            "--layout",
            "transfer",
            "--group-by",
            "model.fusion,train.freeze",
            "--out",
            str(out / "report"),
        ]
    )
    records = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("stage2/*/eval.json"))]
    print("\nReading (image questions, SpatialMap VQA in distribution, stage-2 models):")
    for line in reading(records):
        print(f"  {line}")
    minutes = (time.time() - started) / 60
    print(f"\nquickstart finished in {minutes:.1f} min; tables and figures in {out / 'report'}")
    return code


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _evaluate(run: Path, num_eval: int) -> Path:
    from vlmlab.scoring.transfer import evaluate_transfer

    evaluate_transfer(run, tasks=["spatialmap"], num_samples=num_eval, difficulty=EVAL_DIFFICULTY)
    return run


def _label(axis: str, value: Any) -> str:
    return FUSIONS[value].display if axis == "fusion" and value in FUSIONS else str(value)


def _seeds(count: int) -> str:
    return "1 seed" if count == 1 else f"{count} seeds"


def _cell(cell: Mapping[str, Any]) -> str:
    low, high = cell["ci"]
    return f"{100 * cell['score']:.1f} % [{100 * low:.1f}, {100 * high:.1f}]"


def _outcome_rows(records: Sequence[Mapping[str, Any]], name: str) -> tuple[str, list[list[float]]] | None:
    """(items digest, one row of per-sample outcomes per seed) of one design point's records, or None
    when a record lacks them (older records) or they were scored on other samples."""
    from vlmlab.reports.replicates import metric_entries

    rows, digests = [], set()
    for record in sorted(records, key=lambda r: str(get_dotted(r["config"], "train.seed"))):
        entry = metric_entries(record.get("metrics", {})).get(name)
        if not isinstance(entry, Mapping) or not isinstance(entry.get("outcomes"), list):
            return None
        rows.append([float(x) for x in entry["outcomes"]])
        digests.add(str(entry.get("items")))
    return (digests.pop(), rows) if len(digests) == 1 else None


def reading(
    records: Sequence[Mapping[str, Any]], task: str = "spatialmap", metric: tuple[str, str] = ("vqa", "ind")
) -> list[str]:
    """Two lines from the stage-2 evaluation records: the best configuration against chance and the design
    choices that differ; then those where no effect is shown. Every claim names the seeds behind it.

    Pairs are compared along one axis with every other axis held fixed, so a difference is attributable to
    that axis alone. Runs that differ only in `train.seed` are replicates of one design point: its cell is
    their mean with the interval across seeds (vlmlab.reports.replicates). Where both records carry
    per-sample outcomes, a pair differs when the paired test holds (vlmlab.scoring.replicates: p < 0.05
    over the samples, the interval of the difference excludes 0, and with several seeds every seed agrees
    in sign); otherwise (older records) when the two 95 % intervals do not overlap. A claim on one seed is
    said to rest on one seed: one seed's late break-through can read as an effect of the design.
    """
    from vlmlab.reports.replicates import merge_replicates
    from vlmlab.scoring.replicates import paired_comparison

    name = f"{task}.{metric[0]}.{metric[1]}"
    by_point: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        values = {axis: get_dotted(record["config"], key) for axis, key in AXES.items()}
        by_point.setdefault(json.dumps(values, sort_keys=True, default=str), []).append(record)
    points = []
    for members in by_point.values():
        merged = merge_replicates(members)
        if len(merged) != 1:  # records of one design point that are not seeds of it: not a cell to read
            continue
        cell = get_dotted(merged[0].get("metrics", {}), name) or merged[0].get("metrics", {}).get(name)
        if not isinstance(cell, Mapping) or "ci" not in cell:
            continue
        values = {axis: get_dotted(members[0]["config"], key) for axis, key in AXES.items()}
        points.append((values, {**cell, "seeds": int(cell.get("seeds", 1))}, _outcome_rows(members, name)))
    if not points:
        return ["no evaluated stage-2 runs to read", ""]
    chance = get_dotted(records[0].get("chance", {}), name)
    best_values, best, _ = max(points, key=lambda point: point[1]["score"])
    label = " / ".join(_label(axis, value) for axis, value in best_values.items())
    seeds = f" ({_seeds(best['seeds'])})"
    if isinstance(chance, float):
        above = best["ci"][0] > chance
        first = f"best: {label} {_cell(best)}{seeds} against {100 * chance:.0f} % chance" + (
            " (interval above chance)" if above else " (interval includes chance)"
        )
    else:  # records without a chance level (no options to guess among)
        first = f"best: {label} {_cell(best)}{seeds}"
    separated, overlapping = [], []
    for axis in AXES:
        others = [a for a in AXES if a != axis]
        for pa, pb in itertools.combinations(points, 2):
            if pa[0][axis] == pb[0][axis] or any(pa[0][o] != pb[0][o] for o in others):
                continue
            (va, ca, oa), (vb, cb, ob) = sorted([pa, pb], key=lambda p: -p[1]["score"])
            fixed = ", ".join(_label(o, va[o]) for o in others)
            count = min(ca["seeds"], cb["seeds"])
            backing = _seeds(count) if ca["seeds"] == cb["seeds"] else f"{ca['seeds']} vs {cb['seeds']} seeds"
            if oa is not None and ob is not None and oa[0] == ob[0]:
                test = paired_comparison(oa[1], ob[1])
                differs = test.holds
                how = f"paired p = {test.p_value:.3f}"
                if test.p_value < 0.05 and count >= 2 and not test.across_seeds:
                    how += ", seeds disagree"
                detail = f"{fixed}; {how}; {backing}"
            else:
                differs = ca["ci"][0] > cb["ci"][1]
                detail = f"{fixed}; {backing}"
            if count == 1:
                detail += " only" if differs else ""
            text = f"{_label(axis, va[axis])} {_cell(ca)} vs {_label(axis, vb[axis])} {_cell(cb)} ({detail})"
            (separated if differs else overlapping).append((axis, text))
    if separated:
        first += "; differ: " + "; ".join(text for _, text in separated)
    else:
        first += "; no two configurations differ"
    if overlapping:
        axes = sorted({axis for axis, _ in overlapping})
        second = f"no effect shown ({', '.join(axes)}): " + "; ".join(t for _, t in overlapping)
    else:
        second = "every compared pair differs"
    if all(point[1]["seeds"] == 1 for point in points):
        second += (
            " -- every claim rests on one training seed (a sweep's `seeds: [0, 1, 2]` trains replicates; "
            "a seed's late break-through can read as an effect)"
        )
    return [first, second]
