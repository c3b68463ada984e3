"""AnyRes tiling (issue 25): the plan against transformers' LLaVA-NeXT rule and processor, hand-computed token
counts, the per-sample budget."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaNextImageProcessor
from transformers.image_processing_utils import select_best_resolution

from vlmlab.config import ModelConfig, load_config
from vlmlab.data.tiling import tile_pixels
from vlmlab.errors import ConfigError
from vlmlab.tiling import DEFAULT_TILE_GRIDS, THUMBNAIL_ONLY, TilingPlan, best_grid, best_resolution

GRID_SETS = [
    DEFAULT_TILE_GRIDS,
    ((1, 1), (1, 2), (2, 1), (2, 2), (1, 3), (3, 1), (2, 3), (3, 2), (3, 3), (1, 4), (4, 1)),
    ((2, 2), (1, 4), (4, 1), (1, 1)),
]
# widths / heights from tiny to larger than any canvas, with odd values and exact multiples of the tiles
SIDES = (7, 20, 31, 50, 64, 96, 100, 128, 137, 200, 333, 500, 672, 1000)


@pytest.mark.parametrize("grids", GRID_SETS)
@pytest.mark.parametrize("tile", [32, 336])
def test_grid_choice_equals_llava_next_rule(grids, tile):
    """14 x 14 = 196 sizes per (grid set, tile): 1176 aspect ratios / sizes against transformers' rule."""
    canvases = [[rows * tile, cols * tile] for rows, cols in grids]
    for width, height in itertools.product(SIDES, SIDES):
        expected = select_best_resolution((height, width), canvases)
        assert best_resolution(width, height, [tuple(c) for c in canvases]) == tuple(expected)
        rows, cols = best_grid(width, height, grids, tile)
        assert (rows * tile, cols * tile) == tuple(expected), (width, height)


def test_grid_choice_prefers_the_shape_of_the_image():
    """Hand-checked cases: a wide image takes a wide grid, a square one the largest square canvas."""
    assert best_grid(300, 100, DEFAULT_TILE_GRIDS, 100) == (1, 3)
    assert best_grid(100, 300, DEFAULT_TILE_GRIDS, 100) == (3, 1)
    assert best_grid(200, 200, DEFAULT_TILE_GRIDS, 100) == (2, 2)
    # a small image is never upscaled into more kept pixels: the least wasted canvas wins (1x2 over 2x2)
    assert best_grid(60, 30, DEFAULT_TILE_GRIDS, 100) == (1, 2)


@pytest.mark.parametrize("size", [(50, 20), (20, 70), (64, 64), (100, 37), (13, 90), (96, 33), (200, 200)])
def test_tiles_equal_llava_next_processor(size):
    """Thumbnail and tiles (resize, centred padding, row-major cut) bit-equal to LlavaNextImageProcessor
    with its rescaling and normalisation off."""
    tile = 32
    width, height = size
    processor = LlavaNextImageProcessor(
        size={"height": tile, "width": tile},
        crop_size={"height": tile, "width": tile},
        image_grid_pinpoints=[[rows * tile, cols * tile] for rows, cols in DEFAULT_TILE_GRIDS],
        do_normalize=False,
        do_rescale=False,
        do_center_crop=False,
    )
    rng = np.random.default_rng(width * 1000 + height)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    expected = processor(image, return_tensors="pt")["pixel_values"][0]
    grid = best_grid(width, height, DEFAULT_TILE_GRIDS, tile)
    mine = tile_pixels(image, grid, tile)
    assert mine.dtype == torch.uint8 and mine.shape == (1 + grid[0] * grid[1], 3, tile, tile)
    assert torch.equal(mine.float(), expected[: mine.shape[0]])


def test_thumbnail_only_is_one_tile():
    image = Image.new("RGB", (40, 10), (10, 20, 30))
    assert tile_pixels(image, THUMBNAIL_ONLY, 16).shape == (1, 3, 16, 16)


# (grid, tokens per tile) -> positions: (1 + rows * cols) * t + rows + 1, written out
HAND_POSITIONS = {
    ((1, 2), 16): 3 * 16 + 2,  # 50
    ((2, 1), 16): 3 * 16 + 3,  # 51
    ((2, 2), 16): 5 * 16 + 3,  # 83
    ((1, 3), 4): 4 * 4 + 2,  # 18
    ((3, 1), 4): 4 * 4 + 4,  # 20
    ((2, 2), 8): 5 * 8 + 3,  # 43
    ((3, 3), 1): 10 + 4,  # 14
    ((0, 0), 16): 17,  # thumbnail only
}


@pytest.mark.parametrize(("key", "expected"), list(HAND_POSITIONS.items()))
def test_positions_per_image_hand_computed(key, expected):
    grid, tokens_per_tile = key
    plan = TilingPlan(((1, 2), (2, 1), (2, 2), (1, 3), (3, 1), (3, 3)), 64, tokens_per_tile)
    assert plan.cost(grid) == expected


def test_budget_falls_back_to_fewer_tiles_then_thumbnails():
    """The budget is split evenly among a sample's images; each picks among the grids that fit its share."""
    plan = TilingPlan(DEFAULT_TILE_GRIDS, 64, 16, max_image_tokens=100)
    # 1 image: share 100 fits every grid (2x2 costs 83): a square image takes 2x2
    assert plan.grid_for(128, 128, 1) == (2, 2)
    assert plan.max_positions(1) == 83
    # 2 images: share 50 fits only 1x2 (50); 2x1 costs 51
    assert plan.allowed_grids(2) == ((1, 2),)
    assert plan.grid_for(64, 192, 2) == (1, 2)
    assert plan.max_positions(2) == 50
    # 3 images: share 33, no grid fits -> thumbnails only (17 each, 51 in all)
    assert plan.grid_for(128, 128, 3) == THUMBNAIL_ONLY and plan.max_positions(3) == 17
    assert plan.fits(5) and not plan.fits(6)  # 6 thumbnails need 102 > 100: the sample is dropped
    unbounded = TilingPlan(DEFAULT_TILE_GRIDS, 64, 16)
    assert unbounded.fits(100) and unbounded.max_positions(7) == 83


def test_budget_below_a_thumbnail_is_refused_in_one_line():
    with pytest.raises(
        ConfigError, match=r"max_image_tokens=16 cannot hold even one image's thumbnail"
    ) as err:
        TilingPlan(DEFAULT_TILE_GRIDS, 64, 16, max_image_tokens=16)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tiling": "tiles"}, r"Unknown tiling \(model.tiling\) 'tiles'.*anyres, none"),
        ({"tiling": "anyres", "tile_grids": [[1, 0]]}, r"tile_grids entry \[1, 0\] is not a grid"),
        ({"tiling": "anyres", "tile_grids": [[1, 2, 3]]}, r"tile_grids entry \[1, 2, 3\] is not a grid"),
        ({"tiling": "anyres", "tile_grids": []}, r"tile_grids is empty"),
        ({"tiling": "anyres", "tile_grids": [[1, 2], [1, 2]]}, r"lists the grid \[1, 2\] twice"),
        ({"tiling": "anyres", "max_image_tokens": 1}, r"max_image_tokens=1 cannot hold even one image"),
        (
            {"tiling": "anyres", "adapter": "perceiver", "adapter_tokens": 16, "max_image_tokens": 16},
            r"max_image_tokens=16 .*valid: 17 or more",
        ),
        (
            {"tiling": "anyres", "image_resize": "letterbox"},
            r"model.image_resize=letterbox .*valid here: crop",
        ),
        ({"tiling": "anyres", "image_resize": "squash"}, r"Unknown image resize rule .*'squash'"),
    ],
)
def test_bad_tiling_settings_refused_on_load(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(ModelConfig, [overrides])
    assert "\n" not in str(err.value)


def test_tiling_keys_load():
    config = load_config(
        ModelConfig, [{"tiling": "anyres", "tile_grids": [[1, 2], [3, 1]], "max_image_tokens": 40}]
    )
    assert (
        config.tiling == "anyres" and config.tile_grids == [[1, 2], [3, 1]] and config.max_image_tokens == 40
    )
    assert load_config(ModelConfig, [{}]).tile_grids == [list(grid) for grid in DEFAULT_TILE_GRIDS]


# -- step 2: the data layer ---------------------------------------------------------------------------------
def unit(tiles: torch.Tensor) -> torch.Tensor:
    """A picklable stand-in for a tokenizer's normalisation."""
    return tiles.float() / 255


def tiled_encoder(tok, tile=32, tokens_per_tile=4, budget=None, max_length=512):
    from data_helpers import IMAGE_ID

    from vlmlab.data.encode import SampleEncoder
    from vlmlab.data.tiling import ImageTiler

    plan = TilingPlan(DEFAULT_TILE_GRIDS, tile, tokens_per_tile, budget)
    return SampleEncoder(tok, None, tokens_per_tile, IMAGE_ID, max_length, tiler=ImageTiler(plan, unit))


def two_image_sample(wide=(96, 32), tall=(20, 70)):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in (wide, tall)]
    return {
        "id": "two",
        "segments": [
            {"type": "text", "text": "left"},
            {"type": "image", "image": images[0]},
            {"type": "text", "text": "right"},
            {"type": "image", "image": images[1]},
        ],
        "response": "ok",
    }


def test_a_tiled_sample_has_hand_computed_placeholders_separators_and_tiles(tok):
    from data_helpers import IMAGE_ID

    encoder = tiled_encoder(tok)
    newline = tok.encode("\n", add_special_tokens=False)
    assert len(newline) == 1
    sample = two_image_sample()
    encoded = encoder.encode(sample)
    # wide 96 x 32 on 32 px tiles -> 1x3 (4 tiles x 4 = 16 placeholders, 2 newlines);
    # tall 20 x 70 -> 3x1 (4 x 4 = 16 placeholders, 4 newlines)
    assert encoded["image_tiles"].tolist() == [4, 4]
    assert encoded["pixel_values"].shape == (8, 3, 32, 32)
    ids = encoded["input_ids"].tolist()
    assert ids.count(IMAGE_ID) == 32
    # the first image's span, token by token: thumbnail, \n, one row of three tiles, \n
    start = ids.index(IMAGE_ID)
    expected = [IMAGE_ID] * 4 + newline + [IMAGE_ID] * 12 + newline
    assert ids[start : start + len(expected)] == expected
    second = ids.index(IMAGE_ID, start + len(expected))
    expected = [IMAGE_ID] * 4 + newline + ([IMAGE_ID] * 4 + newline) * 3
    assert ids[second : second + len(expected)] == expected
    # no image position or separator is scored
    labels = encoded["labels"].tolist()
    assert all(label == -100 for label in labels[start : second + len(expected)])
    # the pixels are the thumbnail and tiles of each image, in placeholder order
    first = tile_pixels(sample["segments"][1]["image"], (1, 3), 32)
    assert torch.equal(encoded["pixel_values"][:4], first.float() / 255)
    # planned without pixels: each image at the costliest grid (2x2: 5 x 4 + 3 = 23), an upper bound
    text_only = {
        **sample,
        "segments": [{**s, "image": None} if s["type"] == "image" else s for s in sample["segments"]],
    }
    assert not encoder.exact_length
    assert encoder.length(text_only) == len(ids) - (18 + 20) + 2 * 23


def test_the_budget_gives_fewer_tiles_then_drops_the_sample(tok):
    sample = two_image_sample()
    # 2 images, budget 40: share 20 fits 1x3 (4 x 4 + 2 = 18) and 3x1 (20) only
    encoded = tiled_encoder(tok, budget=40).encode(sample)
    assert encoded["image_tiles"].tolist() == [4, 4]
    # budget 30: share 15 fits 1x2 (3 x 4 + 2 = 14) and 2x1 (15): the wide image takes 1x2, the tall one 2x1
    encoded = tiled_encoder(tok, budget=30).encode(sample)
    assert encoded["image_tiles"].tolist() == [3, 3]
    assert int((encoded["input_ids"] == 511).sum()) == 2 * 3 * 4  # IMAGE_ID: 3 tiles of 4 per image
    # budget 20: share 10 fits no grid -> both thumbnails (4 + 1 each)
    encoded = tiled_encoder(tok, budget=20).encode(sample)
    assert encoded["image_tiles"].tolist() == [1, 1] and encoded["pixel_values"].shape[0] == 2
    # budget 9: two thumbnails need 10 -> dropped and counted
    encoder = tiled_encoder(tok, budget=9)
    assert encoder.encode(sample) is None and encoder.num_dropped == 1


def test_collation_carries_a_variable_number_of_tiles(tok):
    from vlmlab.data.collate import collate_packed, collate_padded

    encoder = tiled_encoder(tok)
    one = encoder.encode(two_image_sample())
    other = encoder.encode(two_image_sample(wide=(64, 64), tall=(40, 10)))
    # 64 x 64 keeps all 4096 pixels only on the 2x2 canvas (64 x 64): 5; 40 x 10 keeps its 400 pixels on every
    # canvas but 2x1 (256), and 1x2 (32 x 64) wastes the least: 3
    assert other["image_tiles"].tolist() == [5, 3]
    for batch in (collate_padded([one, other], 0), collate_packed([[one, other]], 512, 0)):
        assert batch["image_tiles"].tolist() == [4, 4, 5, 3]
        assert batch["pixel_values"].shape[0] == 16
        assert torch.equal(batch["pixel_values"], torch.cat([one["pixel_values"], other["pixel_values"]]))


def test_a_packed_tiled_stream_resumes_exactly(tok):
    from data_helpers import IMAGE_ID, assert_batches_equal, mix

    from vlmlab.data.stream import TrainStream, train_loader

    encoder = tiled_encoder(tok, budget=60)

    def stream():
        return TrainStream(mix(), encoder, seed=5, micro_batch_size=2, packing=True)

    loader = train_loader(stream(), keep=10)
    straight = list(itertools.islice(loader, 6))
    for batch in straight:
        tiles = batch["image_tiles"]
        assert batch["pixel_values"].shape[0] == int(tiles.sum())
        # each image: (1 + tiles) x 4 placeholders
        assert int((batch["input_ids"] == IMAGE_ID).sum()) == 4 * int(tiles.sum())
    resumed_loader = train_loader(stream())
    resumed_loader.restore(loader.state_after(3))
    for a, b in zip(straight[3:], itertools.islice(resumed_loader, 3)):
        assert_batches_equal(a, b)


# -- step 3: the model --------------------------------------------------------------------------------------
# every connector's positions per image on the 2x2 grid and thumbnail only, by hand: t per tile on clip-tiny
# (64 px, 16 px patches: 4 x 4), (1 + 4) * t + 2 + 1 on 2x2, t + 1 alone
HAND_TILED = {
    "mlp": ({}, 16, 83, 17),
    "linear": ({}, 16, 83, 17),
    "embedding": ({"tokenizer": "titok-tiny"}, 16, 83, 17),  # titok-tiny's 16 token ids
    "pixel_shuffle": ({"pixel_shuffle_ratio": 2}, 4, 23, 5),  # (4 / 2)^2
    "perceiver": ({"adapter_tokens": 8}, 8, 43, 9),
    "avgpool": ({"adapter_tokens": 4}, 4, 23, 5),
    "c_abstractor": ({"adapter_tokens": 4}, 4, 23, 5),  # pools to 2 x 2 as avgpool does
}


def test_every_registered_adapter_has_hand_computed_tiled_counts():
    from vlmlab.models.adapters import ADAPTERS

    assert set(HAND_TILED) == set(ADAPTERS.names())


@pytest.mark.parametrize("fusion", ["joint_decoder", "cross_attention"])
@pytest.mark.parametrize("adapter", list(HAND_TILED))
def test_describe_reports_positions_per_image_by_hand(adapter, fusion):
    from vlmlab.models.describe import build_on_meta, describe

    settings, per_tile, two_by_two, thumbnail = HAND_TILED[adapter]
    if fusion == "cross_attention":  # one marker per tile: 5 + 3 on 2x2, 1 + 1 alone
        per_tile, two_by_two, thumbnail = 1, 8, 2
    config = ModelConfig(adapter=adapter, fusion=fusion, tiling="anyres", max_image_tokens=200, **settings)
    tiling = describe(build_on_meta(config))["tiling"]
    assert tiling["positions_per_tile"] == per_tile
    assert tiling["positions_per_image"]["2x2"] == two_by_two and tiling["thumbnail_only"] == thumbnail
    assert tiling["max_image_tokens"] == 200


def test_vlmlab_describe_prints_the_tiling(capsys):
    from vlmlab.cli import main

    assert main(["describe", "model/tiny", "model.tiling=anyres", "model.max_image_tokens=100"]) == 0
    out = capsys.readouterr().out
    assert "tiling anyres (64 px tiles)" in out
    assert "2x2 tiles (canvas 128 wide x 128 high): 83 positions per image" in out
    assert "thumbnail only: 17 positions; budget: 100 positions per sample" in out


def test_a_budget_below_the_connectors_thumbnail_stops_the_build():
    from vlmlab.models.describe import build_on_meta

    with pytest.raises(ConfigError, match=r"max_image_tokens=10 cannot hold .*16 tokens \+ 1 separator = 17"):
        build_on_meta(ModelConfig(tiling="anyres", max_image_tokens=10))


def tiled_model(fusion, **model):
    from vlmlab.config import ExperimentConfig
    from vlmlab.models.vlm import build_vlm
    from vlmlab.runs.load import text_side

    config = load_config(
        ExperimentConfig,
        [{"model": {"random_tokenizer": True, "fusion": fusion, "tiling": "anyres", **model}}],
    )
    torch.manual_seed(0)
    vlm = build_vlm(config.model)
    if fusion == "cross_attention":  # its gates start closed (no gradient reaches the images): open them
        for layer in vlm.fusion.cross_attn_layers:
            layer.attn_gate.data.fill_(0.5)
            layer.mlp_gate.data.fill_(0.5)
    return vlm, text_side(config, vlm)[1]


@pytest.mark.parametrize("fusion", ["joint_decoder", "mot", "cross_attention"])
def test_tiled_samples_train_and_generate_with_every_fusion(fusion):
    """A packed row of two samples, three images on three different grids, through the run's own encoder;
    then tiled prompts generate."""
    from vlmlab.data.collate import collate_packed

    vlm, encoder = tiled_model(fusion, adapter="pixel_shuffle")
    one = encoder.encode(two_image_sample(wide=(192, 64), tall=(60, 200)))  # 1x3, 3x1: 4 + 4 tiles
    rng = np.random.default_rng(1)
    square = Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))  # 2x2: 5 tiles
    other = encoder.encode({"id": "sq", "segments": [{"type": "image", "image": square}], "response": "sq"})
    batch = collate_packed([[one, other]], encoder.max_length, encoder.pad_id)
    assert batch["image_tiles"].tolist() == [4, 4, 5]
    assert batch["pixel_values"].shape == (13, 3, 64, 64)
    per_tile = 1 if fusion == "cross_attention" else 4  # pixel shuffle by 2 on a 4 x 4 grid
    assert int((batch["input_ids"] == vlm.image_token_id).sum()) == 13 * per_tile
    vlm.train()
    optimizer = torch.optim.AdamW([p for p in vlm.parameters() if p.requires_grad], lr=1e-3, weight_decay=0)
    losses = []
    for step in range(2):
        optimizer.zero_grad()
        keys = ("input_ids", "labels", "segment_ids", "position_ids", "pixel_values")
        loss = vlm(**{k: batch[k] for k in keys}).loss
        loss.backward()
        if step == 0:  # the tiles reach the connector
            assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in vlm.adapter.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    # generation (validation's path): left-padded tiled prompts, the same with and without the KV cache
    from vlmlab.data.validation import collate_prompts
    from vlmlab.models.generation import greedy_generate

    prompts = [two_image_sample(wide=(128, 128)), two_image_sample(wide=(192, 64), tall=(60, 200))]
    prompts = collate_prompts([encoder.encode_prompt(sample) for sample in prompts], encoder.pad_id)
    assert prompts["image_tiles"].tolist() == [5, 3, 4, 4]  # 128 x 128: 2x2; 20 x 70: 2x1 on 64 px tiles
    args = (
        vlm.eval(),
        prompts["input_ids"],
        prompts["segment_ids"],
        prompts["pixel_values"],
        4,
        [encoder.im_end],
    )
    with torch.no_grad():
        assert greedy_generate(*args, use_cache=True) == greedy_generate(*args, use_cache=False)


def test_data_inspect_and_stats_count_a_tiled_config_as_training_does(tmp_path):
    """`vlmlab data inspect / stats` on a config that tiles: each image on its grid, hand-counted positions
    (2 per tile here: tokens-per-image counts a tile's placeholders); under a budget the second image of a
    sample falls back to its thumbnail."""
    import json

    from vlmlab.data.inspect import inspect, stats

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for name, (width, height) in {"wide.png": (192, 64), "tall.png": (60, 200)}.items():
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / name)
    rows = [
        {"id": "wide", "image": "wide.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "Noise."}]},
        {"id": "both", "image": ["wide.png", "tall.png"], "conversations": [
            {"from": "human", "value": "<image> and <image>"}, {"from": "gpt", "value": "Noise."}]},
    ]  # fmt: skip
    (tmp_path / "llava.json").write_text(json.dumps(rows))
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"model: {{tokenizer: clip-tiny, tiling: anyres}}\n"  # 64 px tiles
        f"data:\n  train:\n    - {{kind: llava, path: {tmp_path / 'llava.json'}, image_root: {tmp_path / 'images'}}}\n"
    )
    # 192 x 64 -> 1x3: thumbnail 2 + newline, one row of 3 tiles + newline = 3 + 7 = 10 positions;
    # 60 x 200 -> 3x1: 3 + 3 * (2 + 1) = 12 positions
    report = inspect(str(config), [], 2, 2, None)
    assert "-- wide: " in report and "1 image(s), 8 image tokens; tiles: 1x3 + thumbnail" in report
    assert "2 image(s), 16 image tokens; tiles: 1x3 + thumbnail, 3x1 + thumbnail" in report
    # a budget of 12 positions: each of two images may take 6, a thumbnail (3) but no grid (10, 12)
    budget = ["model.max_image_tokens=12"]
    assert "2 image(s), 4 image tokens; tiles: thumbnail, thumbnail" in inspect(
        str(config), budget, 2, 2, None
    )
    summary = stats(str(config), budget, 10, 2)
    assert "tile grids: thumbnail: 2, 1x3 + thumbnail: 1" in summary
    untiled = inspect(str(config), ["model.tiling=none"], 2, 2, None)
    assert "tiles:" not in untiled and "2 image(s), 4 image tokens" in untiled


# -- step 4: export, exact resume, FSDP ----------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["llava", "remote-code", "auto"])
def test_export_refuses_tiling_in_one_line(tmp_path, capsys, fmt):
    from test_export import checkpoint

    from vlmlab.cli import main

    source = checkpoint(tmp_path, "ckpt", tiling="anyres")
    assert main(["export", str(source), "--out", str(tmp_path / "out"), "--format", fmt]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "model.tiling=anyres" in err and f"--format {fmt}" in err and "no export format" in err
    assert not (tmp_path / "out").exists()


# exact resume after a kill, tiled through each fusion: tests/test_training.py KILL_CASES


def tiled_rows(encoder) -> list[dict]:
    """Two samples with the same text (so each holds the same number of scored tokens) and images on
    different grids: one row per rank."""
    return [
        encoder.encode(two_image_sample(wide=(192, 64), tall=(60, 200))),  # 4 + 4 tiles
        encoder.encode(two_image_sample(wide=(128, 128), tall=(70, 20))),  # 5 + 3 tiles
    ]


def fsdp_steps(vlm, batch, steps=2) -> list[float]:
    keys = ("input_ids", "labels", "segment_ids", "position_ids", "pixel_values")
    params = [p for p in vlm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, foreach=False)
    losses = []
    for _ in range(steps):
        loss = vlm(**{k: batch[k] for k in keys}, return_logits=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def _fsdp_worker(rank: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    from vlmlab.data.collate import collate_padded
    from vlmlab.train.sharding import shard_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    vlm, encoder = tiled_model("joint_decoder", adapter="pixel_shuffle")
    shard_model(vlm, init_device_mesh("cpu", (2,)))
    rows = tiled_rows(encoder)  # each rank its own row: a different number of tiles per rank
    losses = torch.tensor(fsdp_steps(vlm.train(), collate_padded([rows[rank]], encoder.pad_id)))
    dist.all_reduce(losses)
    state = get_model_state_dict(vlm, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save({"losses": (losses / 2).tolist(), "state": state}, out)
    dist.barrier()
    dist.destroy_process_group()


def test_tiled_rows_shard_under_fsdp_like_one_process(tmp_path):
    from ports import unused_port
    from processes import spawn

    from vlmlab.data.collate import collate_padded

    out = tmp_path / "sharded.pt"
    spawn(_fsdp_worker, (unused_port(), str(out)))
    sharded = torch.load(out, weights_only=True)
    vlm, encoder = tiled_model("joint_decoder", adapter="pixel_shuffle")
    rows = tiled_rows(encoder)
    assert [row["image_tiles"].tolist() for row in rows] == [[4, 4], [5, 3]]
    assert int((rows[0]["labels"] != -100).sum()) == int((rows[1]["labels"] != -100).sum())
    losses = fsdp_steps(vlm.train(), collate_padded(rows, encoder.pad_id))
    assert sharded["losses"] == pytest.approx(losses, rel=1e-4, abs=1e-5)
    reference = vlm.state_dict()
    assert sharded["state"].keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(sharded["state"][name], value, rtol=1e-4, atol=1e-4, msg=name)


def test_tiling_settings_change_run_ids_only_when_images_are_tiled():
    from vlmlab.config import ExperimentConfig, to_dict
    from vlmlab.sweep.expand import run_id

    def ids(**model) -> str:
        config = to_dict(ExperimentConfig())
        config["model"].update(model)
        return run_id(1, config, [], {})

    before = to_dict(ExperimentConfig())  # a config resolved before the tiling keys existed
    for key in ("tiling", "tile_grids", "max_image_tokens"):
        del before["model"][key]
    assert run_id(1, before, [], {}) == ids()
    assert ids(tile_grids=[[2, 2]], max_image_tokens=100) == ids()  # untiled: neither is used
    assert ids(tiling="anyres") != ids()
    assert ids(tiling="anyres", tile_grids=[[2, 2]]) != ids(tiling="anyres")
    assert ids(tiling="anyres", max_image_tokens=100) != ids(tiling="anyres")
