"""Cached generation equals recomputing the whole sequence, for every fusion architecture."""

import pytest
import torch

from vlmlab.models.fusion import FUSIONS
from vlmlab.models.generation import _cached_steps, greedy_generate
from vlmlab.models.vlm import build_vlm


def spread_weights(vlm):
    """Random tiny models predict one token forever; larger weights make every step's choice matter."""
    with torch.no_grad():
        for name, param in vlm.named_parameters():
            if param.dim() == 2 and "image_tokenizer" not in name:
                param.normal_(0, 0.3)
    if vlm.config.fusion == "cross_attention":
        for layer in vlm.fusion.cross_attn_layers:
            layer.attn_gate.data.fill_(1.0)
            layer.mlp_gate.data.fill_(1.0)


def left_padded_prompts(vlm):
    n, marker = vlm.tokens_per_image, vlm.image_token_id
    rows = [[5, 6, *[marker] * n, 7, 8, 9], [10, *[marker] * n, 11, 12, 13, 14, 15, 16, *[marker] * n, 17]]
    length = max(map(len, rows))
    ids = torch.zeros(2, length, dtype=torch.long)
    segments = torch.full((2, length), -1)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = torch.tensor(row)
        segments[i, length - len(row) :] = 0
    return ids, segments, torch.randn(3, 3, 64, 64)


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_cached_logits_equal_full_recomputation(fusion):
    vlm = build_vlm(dict(fusion=fusion, random_tokenizer=True)).eval()
    spread_weights(vlm)
    ids, segments, pixels = left_padded_prompts(vlm)
    forced = torch.randint(0, 500, (2, 6))
    with torch.no_grad():
        steps = _cached_steps(vlm, ids, segments, pixels)
        cached = [next(steps)] + [steps.send(forced[:, t]) for t in range(forced.shape[1])]
        full_ids = torch.cat([ids, forced], dim=1)
        full_segments = torch.cat([segments, torch.zeros_like(forced)], dim=1)
        full = vlm(full_ids, pixel_values=pixels, segment_ids=full_segments).logits
    for t, logits in enumerate(cached):
        torch.testing.assert_close(logits, full[:, ids.shape[1] - 1 + t], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_cached_and_uncached_greedy_tokens_identical(fusion):
    vlm = build_vlm(dict(fusion=fusion, random_tokenizer=True)).eval()
    spread_weights(vlm)
    ids, segments, pixels = left_padded_prompts(vlm)
    cached = greedy_generate(vlm, ids, segments, pixels, max_new_tokens=10, stop_ids=[0], use_cache=True)
    uncached = greedy_generate(vlm, ids, segments, pixels, max_new_tokens=10, stop_ids=[0], use_cache=False)
    assert cached == uncached
    assert len(set(cached[0])) > 2  # the sequence is not one repeated token
    # a left-padded row generates what it generates alone
    alone = greedy_generate(vlm, ids[1:], segments[1:], pixels[1:], 10, [0])
    assert alone[0] == cached[1]
