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


# tokens per tile of each connector on clip-tiny (64 px, 16 px patches: a 4 x 4 grid), by hand:
# mlp / linear keep 16, pixel_shuffle by 2 -> 16 / 4 = 4, perceiver / avgpool -> adapter_tokens,
# and Cross-Attention puts one marker per tile in the sequence
HAND_TOKENS_PER_TILE = {"mlp": 16, "linear": 16, "pixel_shuffle": 4, "perceiver": 8, "avgpool": 4, "xattn": 1}
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
