"""`vlmlab eval --benchmark` on generated VQAv2-format records: samples/s and peak RSS vs the number of records.

A tiny trained run (1 step, CPU) answers N = 250, 1000, 2000 questions of a VQAv2 val folder in the official
layout (questions + annotations JSON, 224 x 224 JPEGs, 4 questions per image as in COCO), each N in a fresh
process. Goal: peak RSS flat in N (records are encoded one batch at a time; predictions stream to JSONL),
ratio RSS(2000) / RSS(250) <= 1.10. samples/s counts the streaming evaluation only (reading records,
decoding images, generating, writing predictions), not the process start-up, per wall second and per CPU
second (benchmarks/timing.py; the CPU figure does not depend on what else runs on the machine). With a GPU,
the same on `--device cuda --dtype bf16`.

Usage: python benchmarks/bench_eval.py [--sizes 250 1000 2000] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image
from timing import timed

RSS_GOAL = 1.10
CHILD = """
import os, resource, sys
sys.path.insert(0, os.environ["VLMLAB_BENCHMARKS"])
from timing import timed
import vlmlab.eval.benchmark_eval as benchmark_eval
from vlmlab.cli import main
spent = {"wall": 0.0, "cpu": 0.0}
original = benchmark_eval.predict
def predict(*args, **kwargs):  # the streaming part: reading records, decoding images, generating, writing
    with timed(children=True) as took:
        result = original(*args, **kwargs)
    spent["wall"] += took.wall
    spent["cpu"] += took.cpu
    return result
benchmark_eval.predict = predict
with timed(children=True) as command:
    code = main(sys.argv[1:])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("BENCH", command.wall, command.cpu, peak, spent["wall"], spent["cpu"], code)
"""


def tiny_run(root: Path) -> Path:
    from vlmlab.config import ExperimentConfig, load_config
    from vlmlab.train.run import train

    config = load_config(
        ExperimentConfig,
        [{"model": {"backbone": "qwen3-tiny", "tokenizer": "clip-tiny", "random_tokenizer": True}}],
        [
            "train.stage=2",
            "train.max_steps=1",
            "train.global_batch_size=8",
            f"train.output_dir={root / 'run'}",
        ],
    )
    config.data.train = load_config(
        ExperimentConfig, [{"data": {"train": [{"task": "spatialmap", "mode": "vqa"}]}}]
    ).data.train
    train(config)
    return root / "run"


def vqav2_folder(root: Path, records: int) -> Path:
    folder = root / "vqav2"
    (folder / "val2014").mkdir(parents=True)
    images = (records + 3) // 4
    for image_id in range(images):
        colour = (image_id * 37 % 256, image_id * 91 % 256, 120)
        Image.new("RGB", (224, 224), colour).save(folder / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    questions = [
        {"image_id": q // 4, "question": f"What colour is shape {q}?", "question_id": q}
        for q in range(records)
    ]
    annotations = [
        {"question_id": q, "image_id": q // 4, "multiple_choice_answer": "red",
         "answers": [{"answer": "red", "answer_confidence": "yes", "answer_id": i} for i in range(10)]}
        for q in range(records)
    ]  # fmt: skip
    (folder / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": questions}))
    (folder / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    return folder


def measure(run: Path, data: Path, size: int, batch: int, out: Path, extra: list[str]) -> dict[str, float]:
    args = ["eval", str(run), "--benchmark", f"vqav2={data}", "--limit", str(size), "--batch-size", str(batch),
            "--max-new-tokens", "4", "--out", str(out), *extra]  # fmt: skip
    env = {**os.environ, "VLMLAB_BENCHMARKS": str(Path(__file__).resolve().parent)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True, env=env
    )
    line = next(line for line in done.stdout.splitlines() if line.startswith("BENCH"))
    _, wall, cpu, peak_kib, predict_s, predict_cpu_s, code = line.split()
    if int(code) != 0:
        raise SystemExit(f"vlmlab eval failed: {done.stderr[-2000:]}")
    return {
        "records": size,
        "wall_s": float(wall),
        "cpu_s": float(cpu),
        "predict_s": float(predict_s),
        "predict_cpu_s": float(predict_cpu_s),
        "peak_rss_mib": int(peak_kib) / 1024,
    }


def report(label: str, rows: list[dict[str, float]]) -> None:
    print(f"{label}:")
    print(
        f"  {'records':>8} {'wall s':>8} {'CPU s':>8} {'eval s':>8} {'eval CPU s':>10} {'samples/s':>10} "
        f"{'/CPU s':>8} {'peak RSS MiB':>13}"
    )
    for row in rows:
        rate = row["records"] / max(row["predict_s"], 1e-9)
        cpu_rate = row["records"] / max(row["predict_cpu_s"], 1e-9)
        print(
            f"  {row['records']:>8} {row['wall_s']:>8.1f} {row['cpu_s']:>8.1f} {row['predict_s']:>8.1f} "
            f"{row['predict_cpu_s']:>10.1f} {rate:>10.1f} {cpu_rate:>8.1f} {row['peak_rss_mib']:>13.0f}"
        )
    print(
        "  (wall and CPU s: the whole `vlmlab eval` command, model loading included; eval s: the streaming "
        "evaluation alone; samples/s per wall second of it, /CPU s per CPU second)"
    )
    ratio = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    verdict = "ok" if ratio <= RSS_GOAL else "ABOVE GOAL"
    print(
        f"  peak RSS {rows[-1]['records']} / {rows[0]['records']} records: {ratio:.3f} "
        f"(goal <= {RSS_GOAL:.2f}) {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000, 2000])
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    with timed(children=True) as total, tempfile.TemporaryDirectory() as tmp:  # children: the evals
        root = Path(tmp)
        run = tiny_run(root)
        data = vqav2_folder(root, max(args.sizes))
        settings = [("CPU, fp32", [])]
        import torch

        if torch.cuda.is_available():
            settings.append(("GPU, bf16", ["--device", "cuda", "--dtype", "bf16"]))
        for label, extra in settings:
            rows = []
            for size in sorted(args.sizes):
                out = root / f"out-{label[:3]}-{size}"
                rows.append(measure(run, data, size, args.batch_size, out, extra))
            report(label, rows)
    print(f"benchmark total: {total.describe()} (the eval processes included)")


if __name__ == "__main__":
    main()
