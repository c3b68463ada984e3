"""The data pipeline's batches against the real model: a packed batch must give exactly the loss of its
samples run one by one (nothing leaks across sample boundaries: masks, positions, first-token labels)."""

from __future__ import annotations

import pytest
import torch

from vlmlab.config import DataSourceConfig
from vlmlab.data.collate import collate_packed, collate_padded, pack_rows
from vlmlab.data.encode import SampleEncoder
from vlmlab.data.stream import TrainStream
from vlmlab.data.text_tokenizer import load_text_tokenizer
from vlmlab.data.validation import build_val_set, collate_prompts
from vlmlab.models.fusion.context import positions_from_segments
from vlmlab.models.tokenizers import load_tokenizer_spec
from vlmlab.models.tokenizers.preprocess import build_image_transform
from vlmlab.models.vlm import build_vlm


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("num_real_tokens", "shape")}


@pytest.mark.parametrize("fusion", ["joint_decoder", "cross_attention"])
def test_packed_loss_equals_the_per_sample_losses(tmp_path, fusion):
    model = build_vlm(dict(fusion=fusion, random_tokenizer=True)).eval()
    spec = model.backbone_spec
    tok = load_text_tokenizer("tiny", spec.vocab_size, spec.image_token_id, cache_dir=tmp_path)
    transform = build_image_transform(load_tokenizer_spec(model.config.tokenizer))
    encoder = SampleEncoder(tok, transform, model.tokens_per_image, spec.image_token_id, max_length=256)
    sources = [
        DataSourceConfig(task="ring", mode="vqa", image_size=64),
        DataSourceConfig(task="ring", mode="tqa", difficulty={"num_objects": [3, 4]}),
        DataSourceConfig(task="grid", mode="caption", image_size=64),
    ]
    stream = TrainStream(sources, encoder, seed=0)
    loaded = stream.open_sources()
    planned = stream.planned_items(7)
    encoded = [encoder.encode(loaded[source].full_sample(record)) for source, record, _ in planned]
    rows = pack_rows(encoded, 256)
    assert any(len(row) > 1 for row in rows)
    batch = collate_packed(rows, 256, encoder.pad_id)
    assert torch.equal(batch["position_ids"], positions_from_segments(batch["segment_ids"]))
    with torch.no_grad():
        packed = model(**model_inputs(batch), return_logits=False)
        singles = [
            model(**model_inputs(collate_padded([e], encoder.pad_id)), return_logits=False) for e in encoded
        ]
    assert packed.num_scored_tokens == sum(s.num_scored_tokens for s in singles)
    expected = sum(s.loss * s.num_scored_tokens for s in singles) / packed.num_scored_tokens
    torch.testing.assert_close(packed.loss, expected, rtol=1e-4, atol=1e-5)


def test_left_padded_prompts_score_like_unpadded_ones(tmp_path):
    model = build_vlm(dict(fusion="joint_decoder", random_tokenizer=True)).eval()
    spec = model.backbone_spec
    tok = load_text_tokenizer("tiny", spec.vocab_size, spec.image_token_id, cache_dir=tmp_path)
    transform = build_image_transform(load_tokenizer_spec(model.config.tokenizer))
    encoder = SampleEncoder(tok, transform, model.tokens_per_image, spec.image_token_id, max_length=256)
    items = build_val_set(DataSourceConfig(task="ring", mode="vqa", split="test", image_size=64), encoder, 2)
    items += build_val_set(DataSourceConfig(task="grid", mode="tqa", split="test"), encoder, 1)
    batch = collate_prompts(items, encoder.pad_id)
    with torch.no_grad():
        together = model(**batch).logits[:, -1]
        for row, item in enumerate(items):
            alone = model(item["input_ids"][None], item["pixel_values"]).logits[0, -1]
            torch.testing.assert_close(together[row], alone, rtol=1e-4, atol=1e-4)
