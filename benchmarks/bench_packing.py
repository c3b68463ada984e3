"""Padded vs packed training batches on a stage-2-like mix: data-pipeline throughput and real-token fraction.

The mix: image questions (vqa) and text questions (tqa) of all three synthetic tasks plus captions, with
varied difficulty so lengths vary (~40-220 tokens with the tiny tokenizer and 16 tokens per image);
rows of 256 tokens. Goal: >= 95% real tokens with packing. `--paper-difficulty` uses the tasks' fixed
paper settings instead, whose few distinct lengths cap any packing lower (offline best-fit-decreasing
reaches ~93%). Throughputs are per wall second and per CPU second (this process plus its loader workers,
whose CPU is read while they run); the goal is a token fraction, not a time.

Usage: python benchmarks/bench_packing.py [--batches N] [--workers W] [--micro-batch B] [--paper-difficulty]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile

from timing import timed

from vlmlab.config import DataSourceConfig
from vlmlab.data.encode import SampleEncoder
from vlmlab.data.stream import TrainStream, train_loader
from vlmlab.data.text_tokenizer import load_text_tokenizer
from vlmlab.models.tokenizers import load_tokenizer_spec
from vlmlab.models.tokenizers.preprocess import build_image_transform

VARIED = {
    "spatialmap": {"num_objects": [3, 8]},
    "grid": {"min_steps": 1, "max_steps": 8},
    "ring": {"num_objects": [3, 12], "max_steps": 12},
}


def sources(varied: bool, image_size: int) -> list[DataSourceConfig]:
    out = []
    for task, knobs in VARIED.items():
        for mode, weight in (("vqa", 1.0), ("tqa", 1.0), ("caption", 0.5)):
            out.append(
                DataSourceConfig(
                    name=f"{mode}-{task}",
                    task=task,
                    mode=mode,
                    weight=weight,
                    difficulty=knobs if varied else {},
                    image_size=image_size,
                )
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--tokenizer", default="clip-tiny", help="image tokenizer preset (preprocessing)")
    parser.add_argument("--tokens-per-image", type=int, default=16)
    parser.add_argument("--paper-difficulty", action="store_true")
    args = parser.parse_args()

    spec = load_tokenizer_spec(args.tokenizer)
    with tempfile.TemporaryDirectory() as cache:
        text_tokenizer = load_text_tokenizer("tiny", 512, 511, cache_dir=cache)
    encoder = SampleEncoder(
        text_tokenizer, build_image_transform(spec), args.tokens_per_image, 511, args.max_length
    )
    mix = sources(not args.paper_difficulty, spec.image_size)
    print(
        f"mix: {len(mix)} sources ({'paper' if args.paper_difficulty else 'varied'} difficulty), "
        f"max_length {args.max_length}, {args.tokens_per_image} tokens/image at {spec.image_size} px, "
        f"micro-batch {args.micro_batch}, {args.batches} batches, {args.workers} worker(s)"
    )
    for packing in (False, True):
        stream = TrainStream(mix, encoder, seed=0, micro_batch_size=args.micro_batch, packing=packing)
        real = total = samples = 0
        with timed(children=True) as took:  # worker start-up included, as a training run pays it too
            for batch in itertools.islice(train_loader(stream, num_workers=args.workers), args.batches):
                real += batch["num_real_tokens"]
                total += batch["segment_ids"].numel()
                samples += int(batch["segment_ids"].max(dim=1).values.add(1).sum())
        print(
            f"{'packed' if packing else 'padded':>6}: real-token fraction {real / total:6.1%}  "
            f"{took.rate(real):9.0f} real tokens/s  {took.rate(total):9.0f} row tokens/s  "
            f"{took.rate(samples):7.1f} samples/s wall, {took.cpu_rate(samples):7.1f} per CPU second  "
            f"({samples / (args.batches * args.micro_batch):.2f} samples/row; {took.describe()})"
            + (
                f"   goal >= 95% real tokens: {'met' if real / total >= 0.95 else 'NOT met'}"
                if packing
                else ""
            )
        )


if __name__ == "__main__":
    main()
