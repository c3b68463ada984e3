"""Does the loader keep up with a GPU? Samples/s per loader worker on JPEG shards, beside what a step eats.

For each JPEG side (`--sizes`, default 256 and 384 px, photo-like images in webdataset shards): one loader
worker reads the shards, decodes, resizes and normalises each image with the tokenizer's own preprocessing
(`--tokenizer`, default SigLIP 2 B/16 at 224 px: the transform only, no weights), tokenises the text and packs
rows of `--length` tokens; the main process only takes the batches. Printed: samples/s per worker on wall
time and per CPU second (the worker's and this process's CPU, benchmarks/timing.py), against the goal of
150 samples/s per worker at 256 px, and the size of the stream state a checkpoint stores per worker.

Beside it, what a GPU needs: the samples/s of one training step of Qwen3-0.6B + the tokenizer (stage 2,
everything trained, packed rows) at `--mfu` (default 45 %) of an H100's bf16 peak, from the model's own FLOP
count (vlmlab/models/flops.py, built on the meta device), and the workers per GPU that takes.

    python benchmarks/bench_loader.py [--sizes 256 384] [--samples 400] [--tokenizer siglip2-b16-224]
        [--length 1024] [--data-dir DIR] [--skip-need]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import torch
from bench_data import build_encoder, write_shards
from timing import timed, verdict

GOAL = 150.0  # samples/s per worker at 256 px
H100_BF16_TFLOPS = 989.4


def samples_per_second(
    pattern: str, tokenizer: str, length: int, samples: int, num_workers: int = 1
) -> tuple:
    """(timing, samples, stream state bytes) of `num_workers` workers streaming `samples` samples."""
    from vlmlab.config import DataSourceConfig
    from vlmlab.data.stream import TrainStream, train_loader

    encoder = build_encoder(tokenizer, max_length=length)
    stream = TrainStream(
        [DataSourceConfig(name="photos", kind="webdataset", path=pattern)], encoder, micro_batch_size=4
    )
    loader = train_loader(stream, num_workers=num_workers)
    batches = iter(loader)
    next(batches)  # the worker's start-up (imports, opening the first shard) is not throughput
    count = 0
    with timed(children=True) as took:  # CPU: the worker (read while it runs) and this process
        while count < samples:
            batch = next(batches)
            count += int(batch["segment_ids"].max(dim=1).values.add(1).sum())
    buffer = io.BytesIO()
    torch.save(loader.state_after(loader.batches), buffer)
    return took, count, len(buffer.getvalue())


def gpu_need(tokenizer: str, length: int, mfu: float) -> tuple[float, int]:
    """(samples/s one H100 trains at `mfu`, samples per packed row) for Qwen3-0.6B + `tokenizer`, stage 2."""
    from vlmlab.models.flops import BatchShape, flop_model
    from vlmlab.models.vlm import build_vlm
    from vlmlab.recipes import load_recipe
    from vlmlab.train.freezing import apply_freezing

    with torch.device("meta"):
        vlm = build_vlm(dict(backbone="qwen3-0.6b", tokenizer=tokenizer, random_tokenizer=True))
    apply_freezing(vlm, load_recipe("unfreeze-all"), 2)
    sample = vlm.tokens_per_image + 64  # one image and a short question and answer
    per_row = length // sample
    shape = BatchShape(
        tokens=per_row * sample,
        square_lengths=per_row * sample**2,
        images_per_row=(per_row,),
        scored=per_row * 16,
    )
    flops = flop_model(vlm, vlm.config).step(shape)
    return H100_BF16_TFLOPS * 1e12 * mfu / (flops / per_row), per_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384], help="JPEG sides (px)")
    parser.add_argument("--samples", type=int, default=400, help="samples timed per size")
    parser.add_argument("--tokenizer", default="siglip2-b16-224", help="whose preprocessing the loader runs")
    parser.add_argument("--length", type=int, default=1024, help="tokens per packed row")
    parser.add_argument("--mfu", type=float, default=0.45)
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "vlmlab-bench-loader"))
    parser.add_argument("--skip-need", action="store_true", help="leave out the GPU's need (a meta model)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.data_dir)
    need = None
    if not args.skip_need:
        need, per_row = gpu_need(args.tokenizer, args.length, args.mfu)
        print(
            f"a GPU's need: Qwen3-0.6B + {args.tokenizer}, stage 2, {per_row} samples per {args.length}-token row, "
            f"{args.mfu:.0%} MFU on an H100 (bf16 {H100_BF16_TFLOPS:.0f} TFLOP/s): {need:,.0f} samples/s per GPU"
        )
    print(
        f"one loader worker, {args.tokenizer} preprocessing, rows of {args.length} tokens, {args.samples} samples:"
    )
    for size in args.sizes:
        pattern = write_shards(root / f"photos{size}", 2, 200, size, 50)
        took, count, state = samples_per_second(pattern, args.tokenizer, args.length, args.samples)
        rate, cpu_rate = took.rate(count), took.cpu_rate(count)
        goal = (
            f"goal >= {GOAL:.0f}: {verdict(rate, GOAL)} on wall, {verdict(cpu_rate, GOAL)} on CPU"
            if size == 256
            else ""
        )
        workers = f"; {need / cpu_rate:.1f} workers per GPU" if need else ""
        print(
            f"  {size} px JPEG: {rate:6.0f} samples/s wall, {cpu_rate:6.0f} per CPU second{workers} "
            f"({took.describe()}); stream state {state / 1e3:.1f} kB per worker {goal}"
        )


if __name__ == "__main__":
    main()
