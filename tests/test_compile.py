"""`train.compile` (vlmlab/train/compile.py): per-block torch.compile with inductor on this CPU. Against the
eager model as the reference: the same losses and weights over several steps for every fusion with packed
rows, no graph break (dynamo's own counters), a bounded number of graphs when padded lengths change every
step, and a whole run through `vlmlab train` with activation checkpointing and validation by generation."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from test_flops import sample
from test_training import experiment
from torch._dynamo.utils import counters

from vlmlab.data.collate import collate_packed, collate_padded
from vlmlab.models.vlm import build_vlm
from vlmlab.recipes import load_recipe
from vlmlab.train.compile import compile_blocks, compile_counters
from vlmlab.train.freezing import apply_freezing
from vlmlab.train.run import train

BATCH_KEYS = ("input_ids", "labels", "segment_ids", "position_ids", "pixel_values")
STEPS = 5


def fresh_dynamo() -> None:
    torch._dynamo.reset()  # compiled code and guards of other tests; inductor's on-disk cache stays warm
    counters.clear()


def losses_of(vlm, batches, first_gradients: dict | None = None) -> list[float]:
    """The loss of each optimizer step; the first step's gradients into `first_gradients`."""
    optimizer = torch.optim.AdamW([p for p in vlm.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for batch in batches:
        loss = vlm(**{k: batch[k] for k in BATCH_KEYS}, return_logits=False).loss
        loss.backward()
        if first_gradients is not None and not losses:
            first_gradients.update(
                {n: p.grad.clone() for n, p in vlm.named_parameters() if p.grad is not None}
            )
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def packed_batches(vlm) -> list[dict]:
    """Two rows of two samples each step, the samples' lengths changing from step to step."""
    return [
        collate_packed(
            [
                [sample(vlm, 9 + 3 * step + 2 * row + k, 1, 10 * step + 2 * row + k) for k in range(2)]
                for row in range(2)
            ],
            max_length=80,
            pad_id=0,
        )
        for step in range(STEPS)
    ]


@pytest.mark.slow(seconds=60)
@pytest.mark.parametrize("fusion", ["joint_decoder", "cross_attention", "mot"])
def test_compiled_steps_equal_eager_steps_without_graph_breaks(fusion):
    fresh_dynamo()
    torch.manual_seed(0)
    eager = build_vlm(dict(random_tokenizer=True, fusion=fusion))
    apply_freezing(eager, load_recipe("unfreeze-all"), 2)  # every block trains: every backward is compiled
    if fusion == "cross_attention":  # open gates: closed ones would hide the cross-attention's output
        for layer in eager.fusion.cross_attn_layers:
            layer.attn_gate.data.fill_(0.5)
            layer.mlp_gate.data.fill_(0.5)
    compiled = copy.deepcopy(eager)
    units = compile_blocks(compiled)
    assert any("image_tokenizer" in unit for unit in units) and any(
        unit.startswith("adapter") for unit in units
    )
    batches = packed_batches(eager)
    assert all(b["segment_ids"].max() == 1 for b in batches)  # packing on: two samples per row
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints never see compilation
    eager_gradients, compiled_gradients = {}, {}
    reference = losses_of(eager, batches, eager_gradients)
    assert losses_of(compiled, batches, compiled_gradients) == pytest.approx(reference, abs=1e-4)
    done = compile_counters()
    assert done["graph_breaks"] == 0, done["graph_break_reasons"]
    assert done["graphs"] > 0  # the blocks did run compiled
    # every trained weight's gradient (Adam's later updates amplify float rounding where gradients are ~0)
    assert compiled_gradients.keys() == eager_gradients.keys() and len(eager_gradients) > 20
    for name, gradient in eager_gradients.items():
        torch.testing.assert_close(compiled_gradients[name], gradient, atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.slow(seconds=40)
def test_changing_padded_lengths_recompile_each_block_once():
    """Without packing every batch has its own length: dynamo recompiles a block once with a dynamic
    length and reuses that graph for every later length, instead of one graph per length."""
    fresh_dynamo()
    torch.manual_seed(0)
    vlm = build_vlm(dict(random_tokenizer=True))
    apply_freezing(vlm, load_recipe("unfreeze-lm"), 2)
    compile_blocks(vlm)
    lengths = [12, 20, 28, 36, 44, 52]
    for step, text in enumerate(lengths):
        batch = collate_padded([sample(vlm, text, 1, step), sample(vlm, text - 4, 1, 99 + step)], pad_id=0)
        vlm(**{k: batch[k] for k in BATCH_KEYS}, return_logits=False).loss.backward()
    done = compile_counters()
    assert done["graph_breaks"] == 0, done["graph_break_reasons"]
    # three block kinds run (decoder layer, tower block, adapter); only the decoder layer sees the length:
    # its first graph and one dynamic recompile
    assert done["frames"] <= 4 < len(lengths) + 2, done


@pytest.mark.slow(seconds=60)
def test_a_compiled_run_trains_like_an_eager_run(tmp_path):
    """`vlmlab train` with train.compile and activation checkpointing, validated by generation (eager:
    cached decoding bypasses the compiled layers): the weights of the eager run, no graph break."""
    fresh_dynamo()
    settings = dict(max_steps=2, val_every_n_steps=2, deterministic=False)
    eager = train(experiment(tmp_path, "eager", 2, "joint_decoder", **settings))
    config = experiment(tmp_path, "compiled", 2, "joint_decoder", compile=True, **settings)
    config.model.gradient_checkpointing = True
    compiled = train(config)
    assert compiled["timings"]["compile"]["graph_breaks"] == 0
    assert compiled["metrics"] == eager["metrics"]  # the validation answers (greedy decoding)
    a = load_file(str(tmp_path / "eager" / "final" / "weights.safetensors"))
    b = load_file(str(tmp_path / "compiled" / "final" / "weights.safetensors"))
    assert a.keys() == b.keys()
    for name in a:  # two Adam steps (learning rates <= 2e-4) apart by float rounding at most
        torch.testing.assert_close(b[name], a[name], atol=2e-4, rtol=1e-3)
