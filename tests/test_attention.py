"""Every attention implementation against independent truths on packed rows.

The truth for a packed row is each of its samples run alone (one sample, no padding, PyTorch SDPA's causal
kernel): packing must change nothing. Implementations: eager and sdpa (dense block-causal mask),
flex_attention (a BlockMask; its forward runs on the CPU), and the variable-length path flash attention
takes, through a reference varlen attention registered for the test (flash itself needs a GPU:
benchmarks/gpu_check.py runs it against the same truth).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface, Qwen3ForCausalLM

from vlmlab.models.fusion import FUSIONS as FUSION_REGISTRY
from vlmlab.models.fusion import context
from vlmlab.models.generation import greedy_generate
from vlmlab.models.vlm import build_vlm

FUSIONS = FUSION_REGISTRY.names()
# per row: samples, each a list of text lengths and "I" (an image)
LAYOUT = [[[3, "I", 4], [5]], [[2, "I", 2, "I", 3]], [[6], [2, "I", 1], [4]]]


def model_with(fusion: str, implementation: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_vlm(
        dict(backbone="qwen3-tiny", tokenizer="clip-tiny", random_tokenizer=True, fusion=fusion),
        attn_implementation=implementation,
    ).eval()


def sample_ids(model, pieces, generator) -> tuple[list[int], int]:
    ids, images = [], 0
    for piece in pieces:
        if piece == "I":
            ids += [model.image_token_id] * model.tokens_per_image
            images += 1
        else:
            ids += torch.randint(0, 400, (piece,), generator=generator).tolist()
    return ids, images


def packed_batch(model):
    """Packed rows with padding; -> the batch and, per sample, (row, start, ids, its pixel values)."""
    generator = torch.Generator().manual_seed(3)
    size = model.image_tokenizer.spec.image_size
    rows, pixels, samples = [], [], []
    for row, layout in enumerate(LAYOUT):
        ids, segs = [], []
        for index, pieces in enumerate(layout):
            sample, images = sample_ids(model, pieces, generator)
            own = torch.randn(images, 3, size, size, generator=generator)
            samples.append((row, len(ids), sample, own))
            pixels.append(own)
            ids += sample
            segs += [index] * len(sample)
        rows.append((ids, segs))
    length = max(len(ids) for ids, _ in rows) + 3  # every row ends in padding
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    segment_ids = torch.full((len(rows), length), -1)
    for row, (ids, segs) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        segment_ids[row, : len(segs)] = torch.tensor(segs)
    batch = {"input_ids": input_ids, "segment_ids": segment_ids, "pixel_values": torch.cat(pixels)}
    return batch, samples


def alone(model, samples) -> list[torch.Tensor]:
    """Each sample's logits, run on its own through the default causal SDPA path."""
    out = []
    with torch.no_grad():
        for _, _, ids, pixels in samples:
            out.append(model(torch.tensor([ids]), pixel_values=pixels if len(pixels) else None).logits[0])
    return out


def assert_packed_equals_alone(model, reference) -> None:
    batch, samples = packed_batch(model)
    with torch.no_grad():
        logits = model(**batch).logits
    for (row, start, ids, _), expected in zip(samples, alone(reference, samples)):
        torch.testing.assert_close(logits[row, start : start + len(ids)], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flex_attention"])
def test_packed_rows_equal_each_sample_alone(fusion: str, implementation: str, monkeypatch) -> None:
    # transformers compiles flex attention; inductor's CPU flex template fails to build for some shapes in
    # this torch, so on the CPU the BlockMask is checked through flex's uncompiled (reference) path
    if implementation == "flex_attention":
        from torch.nn.attention.flex_attention import flex_attention
        from transformers.integrations import flex_attention as integration

        def uncompiled(query, key, value, training=False, **kwargs):
            return flex_attention(query, key, value, **kwargs)

        monkeypatch.setattr(integration, "compile_friendly_flex_attention", uncompiled)
    assert_packed_equals_alone(model_with(fusion, implementation), model_with(fusion))


def test_eager_is_causal_without_packing_and_matches_transformers() -> None:
    model = model_with("joint_decoder", "eager")
    reference = Qwen3ForCausalLM(model.lm.config).eval()
    reference.load_state_dict(model.lm.state_dict())
    ids = torch.randint(0, 400, (2, 10))
    with torch.no_grad():
        ours, theirs = model(ids).logits, reference(ids).logits
        changed = ids.clone()
        changed[:, 9] = (changed[:, 9] + 1) % 400
        later = model(changed).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(later[:, :9], ours[:, :9], rtol=0, atol=0)  # token 9 is seen by no earlier one


# -- the varlen path flash attention takes, through a CPU reference that reads only what flash reads
CALLS: list[str] = []


def reference_varlen(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Flash's contract on the CPU: packed sequences from cu_seq_lens over the flattened batch, or a [B, Tk]
    key padding mask (bottom-right causal), never a dense mask. -> [B, Tq, H, hd]"""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    batch, heads, length, dim = query.shape
    if "cu_seq_lens_q" in kwargs:
        assert attention_mask is None
        CALLS.append("varlen")
        flat = [x.transpose(1, 2).reshape(batch * length, heads, dim) for x in (query, key, value)]
        out = torch.empty_like(flat[0])
        bounds = kwargs["cu_seq_lens_q"].tolist()
        for start, end in zip(bounds[:-1], bounds[1:]):
            q, k, v = (x[start:end].transpose(0, 1) for x in flat)
            out[start:end] = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling).transpose(
                0, 1
            )
        return out.view(batch, length, heads, dim), None
    CALLS.append("padding" if attention_mask is not None else "causal")
    assert attention_mask is None or attention_mask.dim() == 2
    keys = key.shape[2]
    allowed = torch.ones(length, keys, dtype=torch.bool).tril(keys - length)[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scaling)
    return out.transpose(1, 2), None


@pytest.fixture
def varlen(monkeypatch):
    AttentionInterface.register("reference_varlen", reference_varlen)
    monkeypatch.setitem(context.MASK_LAYOUTS, "reference_varlen", "varlen")
    CALLS.clear()

    def switch(model):
        model.lm.config._attn_implementation = "reference_varlen"
        return model

    return switch


@pytest.mark.parametrize("fusion", FUSIONS)
def test_flash_varlen_lengths_isolate_packed_samples(varlen, fusion: str) -> None:
    assert_packed_equals_alone(varlen(model_with(fusion)), model_with(fusion))
    assert set(CALLS) == {"varlen"} and len(CALLS) == model_with(fusion).lm.config.num_hidden_layers


@pytest.mark.parametrize("fusion", FUSIONS)
def test_flash_generation_with_left_padding_and_cache_equals_sdpa(varlen, fusion: str) -> None:
    reference = model_with(fusion)
    batch, samples = packed_batch(reference)
    prompts = [(ids, pixels) for _, _, ids, pixels in samples if len(pixels)][:3]
    length = max(len(ids) for ids, _ in prompts)
    input_ids = torch.zeros(len(prompts), length, dtype=torch.long)
    segments = torch.full((len(prompts), length), -1)
    for row, (ids, _) in enumerate(prompts):
        input_ids[row, length - len(ids) :] = torch.tensor(ids)
        segments[row, length - len(ids) :] = 0
    pixels = torch.cat([p for _, p in prompts])
    expected = greedy_generate(reference, input_ids, segments, pixels, max_new_tokens=6, stop_ids=[])
    model = varlen(model_with(fusion))
    assert greedy_generate(model, input_ids, segments, pixels, max_new_tokens=6, stop_ids=[]) == expected
    assert "padding" in CALLS and "varlen" not in CALLS


def test_varlen_lengths_by_hand() -> None:
    segments = torch.tensor([[0, 0, 0, 1, 1, -1], [0, 0, 0, 0, -1, -1]])
    lengths = context.varlen_lengths(segments)
    assert lengths["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 10, 12]
    assert lengths["max_length_q"] == 4


def test_flash_without_its_package_is_refused_before_training(monkeypatch) -> None:
    import importlib.util

    from vlmlab.errors import ConfigError
    from vlmlab.train.preflight import _check_attention_kernel

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a)
    )
    with pytest.raises(ConfigError, match="flash_attention_2 needs a CUDA GPU and the flash-attn package"):
        _check_attention_kernel("flash_attention_2")
    _check_attention_kernel("sdpa")
