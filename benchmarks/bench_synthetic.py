"""Time to write the paper-size synthetic splits: 3 tasks x (4500 train + 500 test + 500 OOD), as shards.

Usage: python benchmarks/bench_synthetic.py [--workers N] [--image-size PX] [--out DIR] [--scale F]
(`--scale 0.1` runs a tenth of every split for a quick check.)
Each split prints wall seconds and CPU seconds (this process plus its render workers); no goal is judged.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from timing import timed

from vlmlab.data.synthetic import PAPER_SIZES, SPLITS, TASKS, write_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--out", help="keep the shards here instead of a temporary directory")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the paper sizes to generate")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        total_samples = 0
        with timed(children=True) as total:  # children: the render pool's workers
            for task in TASKS.names():
                for split in SPLITS:
                    num = max(1, round(PAPER_SIZES[split] * args.scale))
                    with timed(children=True) as took:
                        files = write_split(
                            task, split, out, num=num, image_size=args.image_size, workers=args.workers
                        )
                    size_mb = sum(p.stat().st_size for p in files.shards) / 1e6
                    print(
                        f"{task:>10}/{split:<5} {num:>5} samples  {took.wall:6.1f} s wall  {took.cpu:6.1f} s CPU  "
                        f"{size_mb:6.1f} MB"
                    )
                    total_samples += num
    print(
        f"total: {total_samples} samples at {args.image_size} px with {args.workers} worker(s): "
        f"{total.describe()} ({1000 * total.wall / total_samples:.2f} ms/sample wall, "
        f"{1000 * total.cpu / total_samples:.2f} ms CPU/sample)"
    )


if __name__ == "__main__":
    main()
