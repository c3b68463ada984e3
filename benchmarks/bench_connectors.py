"""What each connector (`model.adapter`) costs per sample: image tokens, step time and FLOPs.

For every continuous connector at the paper's 0.6B backbone (random init) with a real-size image tokenizer
(SigLIP 2 ViT-B/16 at 224 px: 196 patches of width 768, random init), one sample (an image, then
`--text` text tokens, the text scored) through Joint-Decoder:
  image tokens per sample, beside the count the design-space papers used (MM1: 64 or 144 pooled tokens;
  Idefics2: 64 perceiver latents from 729 patches; Idefics3: pixel shuffle by 4, 16 x fewer tokens);
  step time, forward + backward at batch 1, median wall and CPU seconds (benchmarks/timing.py);
  forward FLOPs per sample from the model's own accounting on the meta device (`vlmlab describe`: tokenizer,
  connector and decoder), and forward + backward FLOPs of the measured step from torch's FlopCounterMode.

    python benchmarks/bench_connectors.py [--backbone qwen3-0.6b] [--tokenizer siglip2-b16-224] [--tokens 64,144]
    python benchmarks/bench_connectors.py --backbone qwen3-tiny --tokenizer clip-tiny --tokens 4 --steps 1
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics

import torch
from timing import timed
from torch.utils.flop_counter import FlopCounterMode

from vlmlab.config import ModelConfig, load_config
from vlmlab.models.adapters import ADAPTERS
from vlmlab.models.describe import build_on_meta, describe
from vlmlab.models.vlm import build_vlm

# the counts the design-space papers report for each connector, printed beside ours
REFERENCES = {
    "mlp": "LLaVA: every patch (576 at 336 px)",
    "linear": "every patch",
    "pixel_shuffle": "Idefics3: r=4 -> 1/16 of the patches (SmolVLM r=4)",
    "perceiver": "Idefics2: 64 latents from 729 patches",
    "avgpool": "MM1: 64 or 144",
    "c_abstractor": "MM1 / Honeybee: 64 or 144",
}


def settings(tokens: list[int], ratio: int) -> list[tuple[str, dict]]:
    """(connector, its model keys) for every registered continuous connector; the counted ones at each of
    `tokens` (MM1's 64 and 144; the perceiver's default 64 is Idefics2's)."""
    cases: list[tuple[str, dict]] = []
    for name in ADAPTERS.names():
        if name == "embedding":  # discrete tokenizers only
            continue
        if name in ("avgpool", "c_abstractor"):
            cases += [(name, {"adapter_tokens": count}) for count in tokens]
        elif name == "perceiver":
            cases.append((name, {"adapter_tokens": tokens[0]}))
        elif name == "pixel_shuffle":
            cases.append((name, {"pixel_shuffle_ratio": ratio}))
        else:
            cases.append((name, {}))
    return cases


def sample(model: torch.nn.Module, text: int) -> dict[str, torch.Tensor]:
    """One sample: the image's placeholders, then `text` scored text tokens."""
    generator = torch.Generator().manual_seed(0)
    words = torch.randint(0, model.image_token_id, (1, text), generator=generator)  # any text id
    image = torch.full((1, model.tokens_per_image), model.image_token_id)
    ids = torch.cat([image, words], dim=1)
    size = model.image_tokenizer.spec.image_size
    return {
        "input_ids": ids,
        "labels": torch.where(ids == model.image_token_id, -100, ids),
        "pixel_values": torch.randn(1, 3, size, size, generator=generator),
        "return_logits": False,
    }


def measure(model: torch.nn.Module, batch: dict, steps: int) -> tuple[int, float, float]:
    """(forward + backward FLOPs of one step, counted in the warm-up step; median wall and CPU seconds of
    `steps` timed steps)."""

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()

    with FlopCounterMode(display=False) as counter:
        step()
    walls, cpus = [], []
    for _ in range(steps):
        with timed() as took:
            step()
        walls.append(took.wall)
        cpus.append(took.cpu)
    return counter.get_total_flops(), statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="qwen3-0.6b")
    parser.add_argument("--tokenizer", default="siglip2-b16-224")
    parser.add_argument("--tokens", default="64,144", help="model.adapter_tokens values (squares)")
    parser.add_argument("--ratio", type=int, default=2, help="pixel_shuffle ratio (must divide the grid)")
    parser.add_argument("--text", type=int, default=32, help="text tokens per sample")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per connector (after a warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated connectors to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokens = [int(count) for count in args.tokens.split(",")]

    print(
        f"backbone {args.backbone}, tokenizer {args.tokenizer} (random init), Joint-Decoder, batch 1: one image "
        f"+ {args.text} text tokens, {args.threads} threads, median of {args.steps} steps"
    )
    header = (
        f"{'connector':<26}{'img tok':>8}  {'reference':<52}{'wall s':>8}{'CPU s':>8}"
        f"{'fwd GFLOP':>11}{'f+b GFLOP':>11}{'adapter M':>11}"
    )
    print(header)
    print("-" * len(header))
    only = set(filter(None, args.only.split(",")))
    for name, keys in settings(tokens, args.ratio):
        if only and name not in only:
            continue
        label = name + "".join(f" {key.split('_')[-1]}={value}" for key, value in keys.items())
        config = load_config(
            ModelConfig,
            [
                dict(
                    backbone=args.backbone,
                    tokenizer=args.tokenizer,
                    random_tokenizer=True,
                    adapter=name,
                    **keys,
                )
            ],
        )
        # the model's own FLOP accounting, on the meta device (no memory, no weights)
        meta = build_on_meta(config)
        length = meta.tokens_per_image + args.text
        info = describe(meta, context_length=length)
        forward = (
            info["tokens_per_image"] * info["forward_flops_per_image_token"]
            + args.text * info["forward_flops_per_text_token"]
        )
        del meta
        torch.manual_seed(0)
        model = build_vlm(config).train()

        flops, wall, cpu = measure(model, sample(model, args.text), args.steps)
        print(
            f"{label:<26}{info['tokens_per_image']:>8}  {REFERENCES[name]:<52}"
            f"{wall:8.3f}{cpu:8.3f}{forward / 1e9:11.2f}{flops / 1e9:11.2f}"
            f"{info['params']['adapter'] / 1e6:11.2f}"
        )
        del model
        gc.collect()
    side = math.isqrt(info["tokenizer_tokens_per_image"])
    print(
        f"(the tokenizer gives {info['tokenizer_tokens_per_image']} patches, a {side} x {side} grid; fwd: the "
        "model's forward FLOPs per sample (describe, meta device); f+b: forward + backward of the measured "
        "step (FlopCounterMode); adapter M: its parameters in millions)"
    )


if __name__ == "__main__":
    main()
