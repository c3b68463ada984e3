"""Model FLOPs per training step (vlmlab/models/flops.py) against torch's FlopCounterMode on real steps of tiny
models (vision tower included), the batch shape collation counts by hand, and the throughput summary."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vlmlab.data.collate import collate_packed, collate_padded
from vlmlab.models.flops import batch_shape, flop_model
from vlmlab.models.vlm import build_vlm
from vlmlab.recipes import load_recipe
from vlmlab.train.freezing import apply_freezing
from vlmlab.train.throughput import Throughput, peak_tflops


def sample(vlm, text: int, images: int, seed: int) -> dict[str, torch.Tensor]:
    """An encoded sample: `images` images up front, then `text` tokens, the last half scored."""
    generator = torch.Generator().manual_seed(seed)
    placeholder = [vlm.image_token_id] * vlm.tokens_per_image
    ids = torch.tensor(placeholder * images + torch.randint(0, 400, (text,), generator=generator).tolist())
    labels = ids.clone()
    labels[: len(ids) - text // 2] = -100
    size = vlm.image_tokenizer.spec.image_size
    return {
        "input_ids": ids,
        "labels": labels,
        "pixel_values": torch.randn(images, 3, size, size, generator=generator),
    }


# (fusion, recipe, stage, extra model keys): what trains changes which backward products run
CASES = [
    ("joint_decoder", "all-frozen", 1, {}),  # only the adapter trains: input gradients through the LM
    ("joint_decoder", "unfreeze-all", 2, {}),  # everything, the tower too
    ("cross_attention", "unfreeze-lm", 2, {}),
    ("cross_attention", "all-frozen", 1, {}),  # frozen LM: no backward before the first cross layer
    ("mot", "all-frozen", 2, {}),  # image copies train, the text layers pass gradients only
    # a connector with blocks of its own (RegNet convolutions; the perceiver's bare latents parameter trips
    # the counter's module tracker in the backward)
    ("joint_decoder", "unfreeze-lm", 2, {"adapter": "c_abstractor", "adapter_tokens": 4}),
    ("joint_decoder", "lora-lm", 2, {}),  # LoRA adapters on the language model
]


@pytest.mark.parametrize(
    ("fusion", "recipe", "stage", "keys"),
    CASES,
    ids=[f"{c[0]}-{c[1]}-{c[3].get('adapter', 'mlp')}" for c in CASES],
)
def test_step_flops_follow_torchs_flop_counter(fusion, recipe, stage, keys):
    torch.manual_seed(0)
    vlm = build_vlm(dict(random_tokenizer=True, fusion=fusion, **keys))
    apply_freezing(vlm, load_recipe(recipe), stage)
    vlm.loss_impl = "dense"  # the chunked loss forms its gradients inside the forward: the same products
    if fusion == "cross_attention":  # open the gates: closed gates still compute every product
        for layer in vlm.fusion.cross_attn_layers:
            layer.attn_gate.data.fill_(0.5)
    # one sample per row, rows of equal length: the counter's full-row attention is the sum over samples
    batch = collate_padded([sample(vlm, 24, 2, seed) for seed in range(3)], pad_id=0)
    assert batch["shape"]["tokens"] == batch["input_ids"].numel()
    keys_in = ("input_ids", "labels", "segment_ids", "position_ids", "pixel_values")
    with FlopCounterMode(display=False) as counter:
        vlm(**{k: batch[k] for k in keys_in}, return_logits=False).loss.backward()
    counted = flop_model(vlm, vlm.config).step(batch_shape(batch))
    assert counted == pytest.approx(counter.get_total_flops(), rel=0.05), (counted, counter.get_total_flops())


def test_the_chunked_loss_costs_the_dense_losss_flops():
    vlm = build_vlm(dict(random_tokenizer=True))
    apply_freezing(vlm, load_recipe("unfreeze-lm"), 2)
    batch = collate_padded([sample(vlm, 16, 1, seed) for seed in range(2)], pad_id=0)
    keys_in = ("input_ids", "labels", "segment_ids", "position_ids", "pixel_values")
    totals = {}
    for impl in ("dense", "chunked"):
        vlm.loss_impl = impl
        with FlopCounterMode(display=False) as counter:
            vlm(**{k: batch[k] for k in keys_in}, return_logits=False).loss.backward()
        totals[impl] = counter.get_total_flops()
    assert totals["chunked"] == totals["dense"]


def test_collation_counts_the_shape_by_hand():
    vlm = build_vlm(dict(random_tokenizer=True))
    a, b, c = (sample(vlm, n, images, n) for n, images in ((10, 1), (6, 0), (8, 2)))
    lengths = [len(s["input_ids"]) for s in (a, b, c)]  # 26, 6, 40 (16 tokens an image)
    batch = collate_packed([[a, b], [c]], max_length=48, pad_id=0)
    shape = batch["shape"]
    assert shape["tokens"] == sum(lengths) == batch["num_real_tokens"]
    assert shape["square_lengths"] == sum(n * n for n in lengths)  # each sample attends within itself
    assert shape["images_per_row"] == [1, 2]
    # scored: each sample's own scored labels, the first label of every sample unscored (packing)
    assert shape["scored"] == 5 + 3 + 4


def test_throughput_summary_and_peaks():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16-mixed", tf32=False) == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", "bf16-mixed", tf32=False) == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "32-true", tf32=True) == 156.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "32-true", tf32=False) == 19.5
    assert peak_tflops("NVIDIA L40S", "bf16-mixed", tf32=False) == 362.1
    assert peak_tflops("cpu", "bf16-mixed", tf32=False) is None
    gpu = Throughput("NVIDIA H100", 1000.0)
    for seconds in (10.0, 1.0, 2.0, 1.0):  # the first window (compilation, warm-up) is left out
        logged = gpu.add(seconds, tokens=1000, flops=500e12)
    assert logged == {"tokens_per_s_per_device": 1000.0, "tflops": 500.0, "mfu": 0.5}
    summary = gpu.summary()
    assert (
        summary["tflops"] == 500.0 and summary["mfu"] == 0.5 and summary["tokens_per_s_per_device"] == 1000.0
    )
    cpu = Throughput("cpu", None)
    assert "mfu" not in cpu.add(2.0, tokens=10, flops=4e12)
    assert cpu.summary() == {
        "device": "cpu",
        "peak_tflops": None,
        "tokens_per_s_per_device": 5.0,
        "tflops": 2.0,
        "mfu": None,
    }
