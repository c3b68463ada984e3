"""CPU cost of one training step (forward + backward) per fusion, on the same batch and weights.

Prints seconds per step, wall and CPU (all `--threads` threads together: benchmarks/timing.py), and the
ratios the model-assembly issue sets goals for, each judged on wall and on CPU time:
  Joint-Decoder text-only / raw Qwen3ForCausalLM      (goal <= 1.05)
  MoT / Joint-Decoder, half the tokens image tokens    (goal <= 1.15: equal FLOPs per token)
  Cross-Attention / Joint-Decoder                      (informative)

    python benchmarks/bench_fusion.py [--backbone qwen3-55m] [--batch 4] [--length 512] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import timed, verdict
from transformers import Qwen3ForCausalLM

from vlmlab.models.vlm import build_vlm


def step_times(steps: dict, rounds: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per step of each named step, measured round-robin so that load from other
    processes on the machine affects every configuration alike."""
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            with timed() as took:
                step()
            times[name].append((took.wall, took.cpu))
    return {
        name: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
        for name, values in times.items()
    }


def ratio_line(label: str, step: tuple[float, float], base: tuple[float, float], goal: float | None) -> str:
    """'<label> wall s/step, CPU s/step, ratio to `base` on both (with the goal's verdict on each)'."""
    wall, cpu = step[0] / base[0], step[1] / max(base[1], 1e-12)
    if goal is None:
        judged = ""
    else:
        judged = (
            f"  (goal <= {goal}: {verdict(wall, goal, higher_is_better=False)} on wall, "
            f"{verdict(cpu, goal, higher_is_better=False)} on CPU)"
        )
    return f"{label:<39}{step[0]:8.3f} s/step wall {step[1]:8.3f} s CPU   ratio {wall:.3f} wall, {cpu:.3f} CPU{judged}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="qwen3-55m")
    parser.add_argument("--tokenizer", default="clip-tiny")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    models = {
        fusion: build_vlm(
            dict(backbone=args.backbone, tokenizer=args.tokenizer, random_tokenizer=True, fusion=fusion)
        )
        for fusion in ("joint_decoder", "mot", "cross_attention")
    }
    joint = models["joint_decoder"]
    state = joint.state_dict()
    for model in models.values():
        model.load_state_dict(state, strict=False)
        model.train()
    raw = Qwen3ForCausalLM(joint.lm.config)
    raw.load_state_dict(joint.lm.state_dict())
    raw.train()
    n_params = sum(p.numel() for p in raw.parameters())

    vocab = joint.backbone_spec.vocab_size
    text = torch.randint(0, vocab - 1, (args.batch, args.length))

    def train_step(model, **batch):
        model.zero_grad(set_to_none=True)
        if model is not raw:  # as in training: the head runs on the scored positions only, once
            batch["return_logits"] = False
        model(**batch).loss.backward()

    # half image tokens: each row = [image, text, image, text, ...] with images filling half the positions
    per_image = joint.image_tokenizer.num_tokens
    images_per_row = args.length // 2 // per_image
    text_per_gap = (args.length - images_per_row * per_image) // images_per_row
    row = []
    for _ in range(images_per_row):
        row += [joint.image_token_id] * per_image + [1] * text_per_gap
    ids = torch.randint(0, vocab - 1, (args.batch, len(row)))
    is_image = torch.tensor(row) == joint.image_token_id
    ids[:, is_image] = joint.image_token_id
    labels = torch.where(ids == joint.image_token_id, -100, ids)
    size = joint.image_tokenizer.spec.image_size
    pixels = torch.randn(args.batch * images_per_row, 3, size, size)
    # cross-attention sees the same text and images, with one marker per image in the sequence
    x_row = []
    for _ in range(images_per_row):
        x_row += [joint.image_token_id] + [1] * text_per_gap
    x_ids = torch.randint(0, vocab - 1, (args.batch, len(x_row)))
    x_ids[:, torch.tensor(x_row) == joint.image_token_id] = joint.image_token_id
    x_labels = torch.where(x_ids == joint.image_token_id, -100, x_ids)
    t = step_times(
        {
            "raw": lambda: train_step(raw, input_ids=text, labels=text),
            "joint_text": lambda: train_step(joint, input_ids=text, labels=text),
            "joint_mm": lambda: train_step(joint, input_ids=ids, pixel_values=pixels, labels=labels),
            "mot": lambda: train_step(models["mot"], input_ids=ids, pixel_values=pixels, labels=labels),
            "xattn": lambda: train_step(
                models["cross_attention"], input_ids=x_ids, pixel_values=pixels, labels=x_labels
            ),
        },
        args.steps,
    )
    t_raw, t_joint_text, t_joint_mm, t_mot, t_xattn = (
        t[k] for k in ("raw", "joint_text", "joint_mm", "mot", "xattn")
    )

    print(
        f"backbone {args.backbone} ({n_params / 1e6:.1f}M params), batch {args.batch} x {args.length} tokens, "
        f"{args.threads} threads, median of {args.steps} steps"
    )
    print(f"{'raw Qwen3ForCausalLM, text':<39}{t_raw[0]:8.3f} s/step wall {t_raw[1]:8.3f} s CPU")
    print(ratio_line("Joint-Decoder, text", t_joint_text, t_raw, 1.05))
    print(
        f"{'Joint-Decoder, half image tokens':<39}{t_joint_mm[0]:8.3f} s/step wall {t_joint_mm[1]:8.3f} s CPU"
    )
    print(ratio_line("MoT, half image tokens", t_mot, t_joint_mm, 1.15))
    print(
        ratio_line("Cross-Attention, same text and images", t_xattn, t_joint_mm, None)
        + f"  ({len(x_row)} sequence positions vs {len(row)})"
    )


if __name__ == "__main__":
    main()
