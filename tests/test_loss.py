"""The loss over the vocabulary head (vlmlab/models/loss.py): the chunked loss against the dense one, which
is transformers' own (`nn.functional.cross_entropy` over the full logits), and the memory it never takes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vlmlab.config import TrainConfig, load_config
from vlmlab.errors import ConfigError
from vlmlab.models.loss import chunk_rows, linear_cross_entropy, resolve_loss_impl
from vlmlab.models.vlm import build_vlm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from tensor_memory import LiveTensorBytes  # noqa: E402


def head_case(tokens: int = 37, vocab: int = 301, hidden: int = 24, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=generator, dtype=torch.float64).float()
    w = torch.randn(vocab, hidden, generator=generator, dtype=torch.float64).float() * 0.3
    t = torch.randint(0, vocab, (tokens,), generator=generator)
    return h, w, t


def loss_and_grads(impl: str, h, w, t, rows=None, train_hidden=True, train_weight=True):
    h = h.clone().requires_grad_(train_hidden)
    w = w.clone().requires_grad_(train_weight)
    loss = linear_cross_entropy(h, w, t, impl, rows_per_chunk=rows)
    (loss * 0.7).backward()  # an upstream gradient that is not 1
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("rows", [1, 5, 37, 1000], ids=["row-by-row", "uneven-chunks", "one-chunk", "larger"])
def test_chunked_loss_and_gradients_equal_the_dense_loss(rows):
    h, w, t = head_case()
    dense = loss_and_grads("dense", h, w, t)
    chunked = loss_and_grads("chunked", h, w, t, rows=rows)
    torch.testing.assert_close(chunked[0], dense[0], rtol=1e-5, atol=1e-5)
    for ours, reference in zip(chunked[1:], dense[1:], strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("train_hidden", "train_weight"), [(True, False), (False, True), (False, False)])
def test_a_frozen_head_or_input_gets_no_gradient_and_the_rest_the_dense_one(train_hidden, train_weight):
    h, w, t = head_case(seed=1)
    flags = dict(train_hidden=train_hidden, train_weight=train_weight)
    if not (train_hidden or train_weight):  # nothing trains: the loss alone, no backward
        value = linear_cross_entropy(h, w, t, "chunked", rows_per_chunk=4)
        torch.testing.assert_close(value, linear_cross_entropy(h, w, t, "dense"), rtol=1e-5, atol=1e-5)
        assert not value.requires_grad
        return
    dense = loss_and_grads("dense", h, w, t, **flags)
    chunked = loss_and_grads("chunked", h, w, t, rows=4, **flags)
    torch.testing.assert_close(chunked[0], dense[0], rtol=1e-5, atol=1e-5)
    for ours, reference in zip(chunked[1:], dense[1:], strict=True):
        assert (ours is None) == (reference is None)
        if ours is not None:
            torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_under_bf16_autocast_the_chunked_loss_follows_the_dense_one():
    h, w, t = head_case(tokens=16, vocab=97, hidden=32, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = loss_and_grads("dense", h, w, t)
        chunked = loss_and_grads("chunked", h, w, t, rows=6)
    assert chunked[1].dtype == torch.float32 and chunked[2].dtype == torch.float32  # the parameters' dtype
    torch.testing.assert_close(chunked[0], dense[0], rtol=1e-2, atol=1e-2)  # bf16 matmuls on both sides
    for ours, reference in zip(chunked[1:], dense[1:], strict=True):
        torch.testing.assert_close(ours, reference, rtol=2e-2, atol=2e-3)


def test_the_model_trains_the_same_with_either_loss():
    """A tiny VLM's loss and every parameter's gradient: chunked (the default) equal to dense."""
    torch.manual_seed(0)
    vlm = build_vlm(dict(random_tokenizer=True))
    ids = torch.randint(0, 400, (2, 12))
    placeholders = torch.full((2, vlm.tokens_per_image), vlm.image_token_id)
    input_ids = torch.cat([ids[:, :3], placeholders, ids[:, 3:]], dim=1)
    labels = torch.where(input_ids == vlm.image_token_id, -100, input_ids)
    labels[:, :5] = -100  # an unscored prompt
    batch = dict(input_ids=input_ids, labels=labels, pixel_values=torch.randn(2, 3, 64, 64))
    grads = {}
    for impl in ("dense", "chunked"):
        vlm.zero_grad()
        vlm.loss_impl = impl
        out = vlm(**batch, return_logits=False)
        out.loss.backward()
        grads[impl] = (
            out.loss.detach(),
            {n: p.grad.clone() for n, p in vlm.named_parameters() if p.grad is not None},
        )
    assert grads["chunked"][1].keys() == grads["dense"][1].keys() and "lm.lm_head.weight" in grads["dense"][1]
    torch.testing.assert_close(grads["chunked"][0], grads["dense"][0], rtol=1e-5, atol=1e-6)
    for name, value in grads["dense"][1].items():
        torch.testing.assert_close(grads["chunked"][1][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_the_chunked_loss_never_holds_more_than_a_chunk_of_logits():
    """At Qwen3's vocabulary and 4k scored tokens (on the meta device: counted, not allocated), no tensor of
    the chunked loss is as large as the full logits, and its peak is a small fraction of the dense loss's."""
    vocab, hidden, tokens = 151_936, 1024, 4096
    logits_bytes = tokens * vocab * 4
    peaks = {}
    for impl in ("dense", "chunked"):
        h = torch.empty(tokens, hidden, device="meta", requires_grad=True)
        w = torch.empty(vocab, hidden, device="meta", requires_grad=True)
        t = torch.empty(tokens, device="meta", dtype=torch.long)
        with LiveTensorBytes() as memory:
            linear_cross_entropy(h, w, t, impl).backward()
        peaks[impl] = memory.peak
        if impl == "dense":
            assert memory.largest == logits_bytes  # the full fp32 logits, by hand
        else:  # the head's fp32 gradient (vocab x hidden) is the largest, then one chunk's logits
            assert memory.largest == vocab * hidden * 4 < logits_bytes
    assert peaks["chunked"] <= 0.25 * peaks["dense"], peaks
    assert chunk_rows(vocab) * vocab * 4 <= 256 << 20


def test_the_loss_implementation_is_checked_in_one_line():
    with pytest.raises(
        ConfigError, match=r"Unknown loss implementation \(train.loss_impl\) 'fused'.*chunked"
    ):
        load_config(TrainConfig, [{"loss_impl": "fused"}])
    with pytest.raises(
        ConfigError, match="loss_impl=liger needs a CUDA device .*valid here: auto, dense, chunked"
    ):
        resolve_loss_impl("liger", torch.device("cpu"))
    assert resolve_loss_impl("auto", torch.device("cpu")) == "chunked"
    assert resolve_loss_impl("dense", torch.device("cpu")) == "dense"
