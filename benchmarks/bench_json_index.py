"""A 1 GB-class LLaVA JSON through the shared Arrow index: memory per loader worker and start-up vs size.

Generates a LLaVA-v1.5-mix665k-like JSON (multi-turn conversations, a few images reused by every entry) of
--entries entries (default 1.6 million, about 1 GB) and a 150-entry one, then prints, each beside its goal:

1. the index's one-time build (wall and CPU time, size on disk);
2. launch to first step: a fresh process imports vlmlab, opens the stream and builds its first batch, for
   the 150-entry JSON and the large one, both indexes already built (goal: within 10 % of each other);
3. memory: total PSS (proportional set size: shared pages split among the processes that map them) of the
   process tree after --batches batches with 0 and with 2 loader workers (goal: 2 workers <= 1.2 x 0).

    python benchmarks/bench_json_index.py                          # ~1 GB JSON (~1 min to write once)
    python benchmarks/bench_json_index.py --entries 200000         # quicker
    python benchmarks/bench_json_index.py --compare-json-load      # also what json.load of it costs

Not a test; CPU time counts this process and its children (benchmarks/timing.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import timed, verdict

HERE = Path(__file__).resolve().parent
QUESTIONS = [
    "What is the man in the picture doing, and what can you infer about the setting from the objects around him?",
    "Describe the scene in detail, including the colours, the people and anything written on the signs.",
    "How many animals are visible, and what are they doing? Explain how you counted them.",
]
ANSWER = (
    "The image shows a busy street market in the late afternoon. Several vendors stand behind wooden stalls "
    "stacked with fruit and vegetables, and a man in a blue jacket is weighing apples on a small scale while a "
    "customer waits with a basket."
)


def write_llava_json(path: Path, entries: int, images: int) -> None:
    """mix665k-like entries (two exchanges each, every entry an image of `images` reused), written streaming."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", encoding="utf-8") as out:
        out.write("[\n")
        for i in range(entries):
            entry = {
                "id": f"{i:012d}",
                "image": f"coco/train2017/{i % images:012d}.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>\n" + QUESTIONS[i % 3]},
                    {"from": "gpt", "value": ANSWER},
                    {"from": "human", "value": f"And what is item number {i % 97}?"},
                    {
                        "from": "gpt",
                        "value": f"Item number {i % 97} is a red apple on the left of the scale.",
                    },
                ],
            }
            out.write(("" if i == 0 else ",\n") + json.dumps(entry))
        out.write("\n]\n")
    temporary.replace(path)


def write_images(root: Path, images: int) -> None:
    from PIL import Image

    folder = root / "coco" / "train2017"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(images):
        target = folder / f"{k:012d}.jpg"
        if not target.exists():
            Image.new("RGB", (64, 64), (40 * k % 255, 90, 160)).save(target, format="JPEG")


def stream_for(path: str, workers: int):
    sys.path.insert(0, str(HERE))
    from bench_data import build_encoder

    from vlmlab.config import DataSourceConfig
    from vlmlab.data.stream import TrainStream, train_loader

    source = DataSourceConfig(name="mix", kind="llava", path=path)
    stream = TrainStream([source], build_encoder(max_length=256), micro_batch_size=4)
    return train_loader(stream, num_workers=workers)


def tree_pss_mb(pid: int) -> dict[str, float]:
    """PSS of `pid` and all its descendants (MB), in all and split into anonymous memory (each process's own
    heap) and file-backed pages (the memory-mapped index, libraries: shared through the page cache)."""
    total = {"Pss": 0.0, "Pss_Anon": 0.0, "Pss_File": 0.0}
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                name = line.split(":")[0]
                if name in total:
                    total[name] += int(line.split()[1]) / 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def child(mode: str, path: str, workers: int, batches: int) -> None:
    """One fresh process: 'first-step' builds the first batch; 'pss' reads `batches` batches, then measures."""
    import torch

    torch.set_num_threads(1)
    loader = stream_for(path, workers)
    iterator = iter(loader)
    for _ in range(1 if mode == "first-step" else batches):
        next(iterator)
    if mode == "pss":
        print(json.dumps(tree_pss_mb(os.getpid())))
    loader.close()


def run_child(*args: str) -> tuple[str, float, float]:
    """stdout, wall and CPU seconds of one fresh child process (launch to exit)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    with timed(children=True) as took:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return done.stdout, took.wall, took.cpu


def report_startup(small: Path, large: Path, args: argparse.Namespace) -> None:
    """Part 2: launch to first step in fresh processes, the small JSON against the large one."""
    print("\n2. launch to first step (fresh process: imports, stream, first batch; indexes built)")
    figures = {}
    for name, path in (("small", small), ("large", large)):
        runs = [run_child("first-step", str(path), "0", "1")[1:] for _ in range(args.repeats)]
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        figures[name] = (wall, cpu)
        entries = args.small if name == "small" else args.entries
        print(
            f"   {name}: {entries:>11,} entries  wall {wall:.2f} s  CPU {cpu:.2f} s (median of {args.repeats})"
        )
    (ws, cs), (wl, cl) = figures["small"], figures["large"]
    print(
        f"   large / small: {wl / ws:.3f} wall ({verdict(wl / ws, 1.1, higher_is_better=False)}), "
        f"{cl / max(cs, 1e-9):.3f} CPU ({verdict(cl / max(cs, 1e-9), 1.1, higher_is_better=False)}) "
        "(goal <= 1.1: start-up independent of the JSON's size)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "vlmlab-bench-json"))
    parser.add_argument("--entries", type=int, default=1_600_000, help="entries of the large JSON (~1 GB)")
    parser.add_argument("--small", type=int, default=150, help="entries of the small JSON")
    parser.add_argument("--images", type=int, default=8, help="distinct images, reused by every entry")
    parser.add_argument("--batches", type=int, default=50, help="batches read before measuring memory")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per start-up figure (median)")
    parser.add_argument("--skip-startup", action="store_true", help="leave out part 2 (4+ fresh processes)")
    parser.add_argument("--compare-json-load", action="store_true", help="also time json.load of the file")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "PATH", "WORKERS", "BATCHES"))
    args = parser.parse_args()
    if args.child:
        mode, path, workers, batches = args.child
        child(mode, path, int(workers), int(batches))
        return

    from vlmlab.data.sources.json_index import index_path, open_json_index

    root = Path(args.data_dir)
    os.environ.setdefault("VLMLAB_CACHE_DIR", str(root / "cache"))  # the children inherit it
    with timed() as took:
        write_images(root, args.images)
        large, small = root / f"mix-{args.entries}.json", root / f"mix-{args.small}.json"
        write_llava_json(large, args.entries, args.images)
        write_llava_json(small, args.small, args.images)
    size_mb = large.stat().st_size / 1e6
    print(
        f"JSON ready ({took.describe()}): {args.entries:,} entries, {size_mb:,.0f} MB; {args.small} entries"
    )

    print()
    for path in (small, large):
        existed = index_path(path).exists()
        with timed() as took:
            open_json_index(path, "mix")
        index_mb = index_path(path).stat().st_size / 1e6
        print(
            f"1. index of {path.name}: {'found (built by an earlier run)' if existed else 'built'} in "
            f"{took.describe()}, {index_mb:,.1f} MB on disk"
        )
    if args.compare_json_load:
        with timed() as took:
            with large.open(encoding="utf-8") as handle:
                rows = json.load(handle)
        print(
            f"   (json.load of the large file, as each process did before: {took.describe()}, {len(rows):,} rows)"
        )
        del rows

    if args.skip_startup:
        print("\n2. launch to first step: skipped (--skip-startup)")
    else:
        report_startup(small, large, args)

    print(f"\n3. memory: total PSS of the process tree after {args.batches} batches of the large JSON")
    pss = {}
    for workers in (0, 2):
        out, wall, cpu = run_child("pss", str(large), str(workers), str(args.batches))
        figures = json.loads(out.strip().splitlines()[-1])
        pss[workers] = figures["Pss"]
        print(
            f"   {workers} workers: {pss[workers]:,.0f} MB PSS ({figures['Pss_Anon']:,.0f} anonymous, "
            f"{figures['Pss_File']:,.0f} file-backed) (process wall {wall:.2f} s, CPU {cpu:.2f} s)"
        )
    ratio = pss[2] / pss[0]
    print(
        f"   2 workers / 0 workers: {ratio:.2f} (goal <= 1.2: {verdict(ratio, 1.2, higher_is_better=False)}); "
        f"the JSON is {size_mb:,.0f} MB"
    )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
