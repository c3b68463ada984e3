"""Training step time, eager vs `train.compile` (per-block torch.compile, vlmlab/train/compile.py), per fusion.

Each fusion's model (stage 2, everything trained) runs `--steps` optimizer steps on packed rows of
synthetic samples after `--warmup` steps, eager and then compiled (the same weights and batches); the first
compiled step's time (compilation included) is printed apart. Median wall and CPU seconds per step
(benchmarks/timing.py); goal: the compiled step no slower than the eager one. On this CPU the gain is small
(inductor's C++ kernels fuse norms and activations; the matrix products are the same oneDNN calls); on a GPU,
where fused kernels save memory traffic and launches, benchmarks/gpu_check.py measures it.

    python benchmarks/bench_compile.py [--fusions joint_decoder cross_attention mot] [--backbone qwen3-tiny]
        [--tokenizer clip-tiny] [--length 256] [--rows 2] [--steps 5] [--warmup 2] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from timing import timed, verdict

from vlmlab.data.collate import collate_packed
from vlmlab.models.vlm import build_vlm
from vlmlab.recipes import load_recipe
from vlmlab.train.compile import compile_blocks, compile_counters
from vlmlab.train.freezing import apply_freezing

FUSIONS = ("joint_decoder", "cross_attention", "mot")
BATCH_KEYS = ("input_ids", "labels", "segment_ids", "position_ids", "pixel_values")
GOAL = 1.0  # compiled / eager step time


def sample(vlm, text: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One image, then `text` tokens, the last half scored."""
    placeholder = [vlm.image_token_id] * vlm.tokens_per_image
    ids = torch.tensor(placeholder + torch.randint(5, 400, (text,), generator=generator).tolist())
    labels = ids.clone()
    labels[: len(ids) - text // 2] = -100
    size = vlm.image_tokenizer.spec.image_size
    return {
        "input_ids": ids,
        "labels": labels,
        "pixel_values": torch.randn(1, 3, size, size, generator=generator),
    }


def batches(vlm, count: int, rows: int, length: int) -> list[dict]:
    """Rows packed with two samples each, their lengths varying from batch to batch."""
    generator = torch.Generator().manual_seed(0)
    room = length // 2 - vlm.tokens_per_image
    out = []
    for _ in range(count):
        packed = [
            [
                sample(vlm, int(torch.randint(room // 2, room, (1,), generator=generator)), generator)
                for _ in range(2)
            ]
            for _ in range(rows)
        ]
        out.append(collate_packed(packed, max_length=length, pad_id=0))
    return out


def step_times(vlm, data: list[dict], warmup: int) -> tuple[list[float], list[float], float]:
    """(wall per step, CPU per step, the first step's wall) over `data`, the first `warmup` left out."""
    optimizer = torch.optim.AdamW([p for p in vlm.parameters() if p.requires_grad], lr=1e-4)
    walls, cpus = [], []
    for batch in data:
        with timed() as timing:
            vlm(**{k: batch[k] for k in BATCH_KEYS}, return_logits=False).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        walls.append(timing.wall)
        cpus.append(timing.cpu)
    return walls[warmup:], cpus[warmup:], walls[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fusions", nargs="+", choices=FUSIONS, default=list(FUSIONS))
    parser.add_argument("--backbone", default="qwen3-tiny")
    parser.add_argument("--tokenizer", default="clip-tiny")
    parser.add_argument("--length", type=int, default=256, help="tokens per packed row")
    parser.add_argument("--rows", type=int, default=2, help="rows per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"train step, {args.backbone} + {args.tokenizer}, {args.rows} x {args.length} packed tokens, "
        f"{torch.get_num_threads()} threads; median of {args.steps} steps after {args.warmup}"
    )
    for fusion in args.fusions:
        torch.manual_seed(0)
        eager = build_vlm(
            dict(backbone=args.backbone, tokenizer=args.tokenizer, random_tokenizer=True, fusion=fusion)
        )
        apply_freezing(eager, load_recipe("unfreeze-all"), 2)
        compiled = copy.deepcopy(eager)
        compile_blocks(compiled)
        data = batches(eager, args.warmup + args.steps, args.rows, args.length)
        eager_wall, eager_cpu, _ = step_times(eager, data, args.warmup)
        compiled_wall, compiled_cpu, first = step_times(compiled, data, args.warmup)
        ratio = statistics.median(compiled_wall) / statistics.median(eager_wall)
        print(
            f"  {fusion:<16} eager {statistics.median(eager_wall):7.3f} s wall {statistics.median(eager_cpu):7.3f} s CPU"
            f" | compiled {statistics.median(compiled_wall):7.3f} s wall {statistics.median(compiled_cpu):7.3f} s CPU"
            f" | first compiled step {first:6.1f} s | compiled / eager {ratio:.2f} "
            f"(goal <= {GOAL:.1f}: {verdict(ratio, GOAL, higher_is_better=False)})"
        )
    counts = compile_counters()
    print(f"graph breaks: {counts['graph_breaks']}; graphs compiled: {counts['graphs']}")


if __name__ == "__main__":
    main()
