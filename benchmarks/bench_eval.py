"""`vlmlab eval --benchmark` on generated VQAv2-format records: samples/s and peak RSS vs the number of records.

A tiny trained run (1 step, CPU) answers N = 250, 1000, 2000 questions of a VQAv2 val folder in the official
layout (questions + annotations JSON, 224 x 224 JPEGs, 4 questions per image as in COCO), each N in a fresh
process. Goal: peak RSS flat in N (records are encoded one batch at a time; predictions stream to JSONL),
ratio RSS(2000) / RSS(250) <= 1.10. samples/s counts the streaming evaluation only (reading records,
decoding images, generating, writing predictions), not the process start-up. With a GPU, the same on
`--device cuda --dtype bf16`.

Usage: python benchmarks/bench_eval.py [--sizes 250 1000 2000] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

RSS_GOAL = 1.10
CHILD = """
import resource, sys, time
import vlmlab.eval.benchmark_eval as benchmark_eval
from vlmlab.cli import main
timed = {"predict": 0.0}
original = benchmark_eval.predict
def predict(*args, **kwargs):  # the streaming part: reading records, decoding images, generating, writing
    started = time.perf_counter()
    try:
        return original(*args, **kwargs)
    finally:
        timed["predict"] += time.perf_counter() - started
benchmark_eval.predict = predict
started = time.perf_counter()
code = main(sys.argv[1:])
usage = resource.getrusage(resource.RUSAGE_SELF)
print("BENCH", time.perf_counter() - started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, timed["predict"], code)
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
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True)
    line = next(line for line in done.stdout.splitlines() if line.startswith("BENCH"))
    _, wall, cpu, peak_kib, predict_s, code = line.split()
    if int(code) != 0:
        raise SystemExit(f"vlmlab eval failed: {done.stderr[-2000:]}")
    return {
        "records": size,
        "wall_s": float(wall),
        "cpu_s": float(cpu),
        "predict_s": float(predict_s),
        "peak_rss_mib": int(peak_kib) / 1024,
    }


def report(label: str, rows: list[dict[str, float]]) -> None:
    print(f"{label}:")
    print(f"  {'records':>8} {'wall s':>8} {'CPU s':>8} {'eval s':>8} {'samples/s':>10} {'peak RSS MiB':>13}")
    for row in rows:
        rate = row["records"] / max(row["predict_s"], 1e-9)
        print(
            f"  {row['records']:>8} {row['wall_s']:>8.1f} {row['cpu_s']:>8.1f} {row['predict_s']:>8.1f} "
            f"{rate:>10.1f} {row['peak_rss_mib']:>13.0f}"
        )
    print("  (wall and CPU: the whole process, start-up included; eval s: the streaming evaluation alone)")
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
    started, cpu_started = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
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
    print(
        f"benchmark total: {time.perf_counter() - started:.0f} s wall, {time.process_time() - cpu_started:.0f} s CPU"
    )


if __name__ == "__main__":
    main()
