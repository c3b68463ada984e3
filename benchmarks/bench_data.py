"""The data layer at scale: start-up and memory vs dataset size, resume cost vs step, packing.

Prints each figure with its goal beside it, in wall and in CPU time (benchmarks/timing.py: CPU counts this
process and its loader workers, so it is what the work costs whatever else runs on the machine), with a
verdict on each; not a test. Shards are generated once into --data-dir (small JPEG + JSON samples). The
loader's throughput per worker on photo-sized JPEGs is benchmarks/bench_loader.py.

    python benchmarks/bench_data.py                      # 2,000 x 500 samples (about 2.5 GB, ~2 min once)
    python benchmarks/bench_data.py --shards 200         # quicker
    python benchmarks/bench_data.py --skip-startup       # without part 1 and its two fresh processes
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from timing import timed, verdict


def jpeg_bytes(size: int, seed: int) -> bytes:
    """A photo-like JPEG (smooth gradients plus noise) of size x size pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], axis=-1) * rng.uniform(80, 255, 3)
    array = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_shards(folder: Path, num_shards: int, per_shard: int, image_size: int, distinct: int) -> str:
    """Shards `shard-00000.tar` ...; returns their brace pattern. Skips work already on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    images = [jpeg_bytes(image_size, seed) for seed in range(distinct)]
    pattern = str(folder / f"shard-{{00000..{num_shards - 1:05d}}}.tar")
    for shard in range(num_shards):
        path = folder / f"shard-{shard:05d}.tar"
        if path.exists():
            continue
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for i in range(per_shard):
                key = f"{shard:05d}{i:05d}"
                record = {"segments": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}
                record["response"] = f"a photo number {i % 97} with some colours"
                for name, data in (
                    (f"{key}.json", json.dumps(record).encode()),
                    (f"{key}.jpg", images[i % distinct]),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(path)
    return pattern


def build_encoder(tokenizer: str = "clip-tiny", max_length: int = 256):
    from vlmlab.data.encode import SampleEncoder
    from vlmlab.data.text_tokenizer import load_text_tokenizer
    from vlmlab.models.tokenizers import load_tokenizer_spec
    from vlmlab.models.tokenizers.preprocess import build_image_transform

    spec = load_tokenizer_spec(tokenizer)
    text = load_text_tokenizer("tiny", 512, 511)
    return SampleEncoder(text, build_image_transform(spec), 16, 511, max_length)


def child_startup(pattern: str) -> None:
    """In a fresh process: time and peak RSS from building the stream to its first batch."""
    import torch

    from vlmlab.config import DataSourceConfig
    from vlmlab.data.stream import TrainStream, train_loader

    torch.set_num_threads(1)
    encoder = build_encoder()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with timed() as took:
        stream = TrainStream([DataSourceConfig(name="coyo", kind="webdataset", path=pattern)], encoder)
        next(iter(train_loader(stream)))
    print(
        json.dumps(
            {
                "wall": took.wall,
                "cpu": took.cpu,
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss_before_mb": before,
            }
        )
    )


def startup(pattern: str) -> dict:
    run = subprocess.run(
        [sys.executable, __file__, "--child-startup", pattern], capture_output=True, text=True, check=True
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "vlmlab-bench-data"))
    parser.add_argument("--shards", type=int, default=2000)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--resume-batch", type=int, default=100_000)
    parser.add_argument("--packing-batches", type=int, default=100, help="batches of the packing part (3.)")
    parser.add_argument(
        "--skip-startup",
        action="store_true",
        help="leave out part 1 (start-up in two fresh processes, each importing torch and vlmlab anew)",
    )
    parser.add_argument("--child-startup")
    args = parser.parse_args()
    if args.child_startup:
        child_startup(args.child_startup)
        return

    import torch

    from vlmlab.config import DataSourceConfig
    from vlmlab.data.stream import TrainStream, _Reader, stream_states, train_loader

    torch.set_num_threads(1)
    root = Path(args.data_dir)
    with timed() as took:
        small = write_shards(root / "small", 20, args.per_shard, 16, 8)
        large = write_shards(root / "large", args.shards, args.per_shard, 16, 8)
    print(f"shards ready ({took.describe()}) under {root}")

    if args.skip_startup:
        print("\n1. start-up: skipped (--skip-startup)")
    else:
        report_startup(small, large, args)

    # 2. resume cost at batch 0 vs --resume-batch (micro-batch 1, padded: one sample per batch)
    encoder = build_encoder()
    source = [DataSourceConfig(name="coyo", kind="webdataset", path=large)]

    def stream() -> TrainStream:
        return TrainStream(source, encoder, micro_batch_size=1, packing=False)

    template = train_loader(stream(), keep=4)
    next(iter(template))
    early = template.state_after(1)
    with timed() as took:
        reader = _Reader(stream(), 0, 1)  # the reader's own code path, without building the batches
        for _ in range(args.resume_batch - 1):
            while not reader.rows:
                item = reader.read_one()
                if item is not None:
                    reader.rows.append([item])
            reader.rows.pop(0)
            reader.batches += 1
    late = {**early, "loader": _replace_stream_state(early["loader"], reader.state_dict())}
    late["batches"] = args.resume_batch
    print(
        f"\n2. resume (reached batch {args.resume_batch:,} in {took.describe()} by reading "
        f"records only; reader position: {reader.state_dict()['readers'][0]})"
    )
    timings = {}
    for name, state in (("batch 0", template.state_after(0)), (f"batch {args.resume_batch:,}", late)):
        runs = []
        for _ in range(7):  # restore + first batch; the median of 7 (wall and CPU each)
            with timed() as took:
                loader = train_loader(stream())
                loader.restore(state)
                next(iter(loader))
            runs.append((took.wall, took.cpu))
        timings[name] = tuple(sorted(values)[len(values) // 2] for values in zip(*runs))
        print(
            f"   resume at {name:>14}: wall {timings[name][0] * 1e3:.1f} ms  cpu {timings[name][1] * 1e3:.1f} ms"
        )
    (w0, c0), (w1, c1) = timings.values()
    print(
        f"   ratio {w1 / w0:.2f} wall ({verdict(w1 / w0, 1.2, higher_is_better=False)}), "
        f"{c1 / max(c0, 1e-9):.2f} CPU ({verdict(c1 / max(c0, 1e-9), 1.2, higher_is_better=False)}) "
        "(goal <= 1.2; local tars seek to the next sample, others skip <= 1 shard)"
    )
    assert stream_states(late["loader"])[0]["readers"] == reader.state_dict()["readers"]

    # 3. packing on the stage-2-like synthetic mix
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_packing import sources as stage2_mix

    mix = TrainStream(stage2_mix(True, 64), encoder, micro_batch_size=8)
    batches = list(itertools.islice(train_loader(mix), args.packing_batches))
    fraction = sum(b["num_real_tokens"] for b in batches) / sum(b["input_ids"].numel() for b in batches)
    print(
        f"\n3. packing, stage-2-like mix, {args.packing_batches} batches x 8 rows x 256: {fraction:.1%} real "
        "tokens (goal >= 95%)"
    )


def report_startup(small: str, large: str, args: argparse.Namespace) -> None:
    """Part 1, start-up and memory: 20 shards vs --shards shards, each in a fresh process."""
    few, many = startup(small), startup(large)
    n_few, n_many = 20 * args.per_shard, args.shards * args.per_shard
    print("\n1. start-up until the first batch (fresh process, 0 workers)")
    for name, n, figures in (("small", n_few, few), ("large", n_many, many)):
        print(
            f"   {name}: {n:>9,} samples  wall {figures['wall']:.3f} s  cpu {figures['cpu']:.3f} s  "
            f"peak RSS {figures['rss_mb']:.0f} MB ({figures['rss_mb'] - figures['rss_before_mb']:+.0f} MB "
            "for the stream)"
        )
    extra = many["rss_mb"] - few["rss_mb"]
    print(
        f"   {n_many // n_few}x the samples: start-up x{many['wall'] / few['wall']:.2f} wall, "
        f"x{many['cpu'] / max(few['cpu'], 1e-9):.2f} CPU (goal: independent of the sample count), "
        f"extra memory {extra:+.1f} MB (goal: <= 50 MB for the index: {verdict(extra, 50, higher_is_better=False)})"
    )


def _replace_stream_state(loader_state: dict, reader_state: dict) -> dict:
    """The loader state with its (single) reader's state swapped for `reader_state`."""
    out = {}
    for key, value in loader_state.items():
        if isinstance(value, dict) and value.get("vlmlab_stream"):
            out[key] = reader_state
        elif isinstance(value, dict):
            out[key] = _replace_stream_state(value, reader_state)
        else:
            out[key] = value
    return out


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
