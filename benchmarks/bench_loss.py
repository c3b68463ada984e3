"""Peak memory and time of the loss over the vocabulary head: dense vs chunked (vlmlab/models/loss.py).

Memory: forward + backward of the summed cross-entropy of `[tokens, hidden] x [vocabulary, hidden]`, every
token scored, at Qwen3-0.6B's head (151,936 x 1,024) and 16k tokens by default, counted exactly on the meta
device (benchmarks/tensor_memory.py: every storage the loss allocates, alive at once; the inputs are not
counted). Goal: the chunked loss's peak at most 25 % of the dense loss's.
Time: the same loss, forward + backward, on this CPU at a smaller token count (`--time-tokens`), median wall
and CPU seconds of `--steps` runs (benchmarks/timing.py).

    python benchmarks/bench_loss.py [--tokens 16384] [--vocab 151936] [--hidden 1024] [--time-tokens 512]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from tensor_memory import LiveTensorBytes
from timing import timed

from vlmlab.models.loss import chunk_rows, linear_cross_entropy

GOAL = 0.25
IMPLS = ("dense", "chunked")


def inputs(tokens: int, vocab: int, hidden: int, device: str, dtype: torch.dtype, seed: int = 0) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    if device == "meta":
        h = torch.empty(tokens, hidden, device="meta", dtype=dtype)
        w = torch.empty(vocab, hidden, device="meta", dtype=dtype)
        t = torch.empty(tokens, device="meta", dtype=torch.long)
    else:
        h = torch.randn(tokens, hidden, generator=generator).to(dtype)
        w = (torch.randn(vocab, hidden, generator=generator) * hidden**-0.5).to(dtype)
        t = torch.randint(0, vocab, (tokens,), generator=generator)
    return h.requires_grad_(), w.requires_grad_(), t


def peak_bytes(impl: str, tokens: int, vocab: int, hidden: int, dtype: torch.dtype) -> tuple[int, int]:
    h, w, t = inputs(tokens, vocab, hidden, "meta", dtype)
    with LiveTensorBytes() as memory:
        linear_cross_entropy(h, w, t, impl).backward()
    return memory.peak, memory.largest


def step_seconds(impl: str, tokens: int, vocab: int, hidden: int, steps: int) -> tuple[float, float]:
    h, w, t = inputs(tokens, vocab, hidden, "cpu", torch.float32)
    walls, cpus = [], []
    for _ in range(steps):
        h.grad = w.grad = None
        with timed() as timing:
            linear_cross_entropy(h, w, t, impl).backward()
        walls.append(timing.wall)
        cpus.append(timing.cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384, help="scored tokens for the memory count")
    parser.add_argument("--vocab", type=int, default=151936, help="vocabulary (Qwen3: 151,936)")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size (Qwen3-0.6B: 1,024)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--time-tokens", type=int, default=512, help="scored tokens for the CPU timing")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rows = chunk_rows(args.vocab)
    print(
        f"loss over a {args.vocab:,} x {args.hidden:,} head, {args.tokens:,} scored tokens, {args.dtype} "
        f"(chunks of {rows} rows); forward + backward, counted on the meta device"
    )
    peaks = {}
    for impl in IMPLS:
        peak, largest = peak_bytes(impl, args.tokens, args.vocab, args.hidden, dtype)
        peaks[impl] = peak
        print(f"  {impl:<8} peak {peak / 2**30:8.3f} GiB   largest tensor {largest / 2**30:7.3f} GiB")
    ratio = peaks["chunked"] / peaks["dense"]
    verdict = "meets goal" if ratio <= GOAL else "ABOVE GOAL"
    print(f"peak chunked / dense: {ratio:.3f} (goal <= {GOAL:.2f}) {verdict}")
    print(f"time on this CPU, {args.time_tokens:,} scored tokens, fp32, median of {args.steps}:")
    for impl in IMPLS:
        wall, cpu = step_seconds(impl, args.time_tokens, args.vocab, args.hidden, args.steps)
        print(f"  {impl:<8} {wall:7.3f} s wall  {cpu:7.3f} s CPU")


if __name__ == "__main__":
    main()
