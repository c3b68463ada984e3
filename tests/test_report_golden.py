"""Every paper layout rendered in Markdown, CSV and LaTeX, compared byte for byte with golden files.

The golden files under tests/golden/reports/ were written by the table code as it stood before the move to
pandas (the hand-written engine of vlmlab.runs.record), so they pin every number, gap, bold mark, interval
and note the reports print. Regenerate them only for a deliberate change of output:

    VLMLAB_REGEN_GOLDEN=1 pytest tests/test_report_golden.py

and say in the commit which bytes changed and why.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from report_records import (
    connector_records,
    design_records,
    open_weight_records,
    resize_records,
    scaling_records,
    transfer_records,
)

from vlmlab.reports.layouts import (
    connector_table,
    design_table,
    resize_table,
    scaling_table,
    transfer_table,
)
from vlmlab.reports.open_weight import open_weight_rl_table, open_weight_sft_table, open_weight_tables

GOLDEN = Path(__file__).parent / "golden" / "reports"
REGENERATE = os.environ.get("VLMLAB_REGEN_GOLDEN") == "1"
FORMATS = ("md", "csv", "tex")
DESIGN_KEYS = ["model.tokenizer", "model.fusion", "train.freeze"]

# tokens per image of the connector sweep, by hand: 256 px / 16 px patches = 16 x 16 = 256 for the MLP; 64
# perceiver latents; pixel shuffle by 2: (16 / 2)^2 = 64
CONNECTOR_TOKENS = {"mlp": 256, "perceiver": 64, "pixel_shuffle": 64}

CASES: dict[str, Callable[[], Any]] = {
    # Tables 1-5: tokenizer x fusion x recipe, a missing design point, a run without DocVQA (no average)
    "design": lambda: design_table(design_records(), DESIGN_KEYS),
    # the same with partial averages (†, never bold)
    "design_partial": lambda: design_table(design_records(), DESIGN_KEYS, partial_averages=True),
    # rows merging several runs (averaged over fusions and recipes): pooled intervals, a note on the axes
    "design_by_tokenizer": lambda: design_table(design_records(), ["model.tokenizer"]),
    # a chosen subset of benchmark columns, one of which no record has
    "design_benchmarks": lambda: design_table(
        design_records(), DESIGN_KEYS, benchmarks=["vqav2", "docvqa", "ocrbench"], fill_missing=False
    ),
    # Table 2: rows = recipe, column groups = fusion, over the text-aware tokenizers
    "design_pivot": lambda: design_table(
        design_records(),
        ["train.freeze"],
        pivot="model.fusion",
        where={"model.tokenizer": ["clip", "siglip2"]},
    ),
    "design_pivot_partial": lambda: design_table(
        design_records(), ["train.freeze"], pivot="model.fusion", partial_averages=True
    ),
    # Figure 2's data: best per backbone size
    "scaling": lambda: scaling_table(scaling_records(), DESIGN_KEYS, "model.backbone"),
    # Prismatic's resize / letterbox / crop: a row per tower, a column group per rule, a point never run
    "resize": lambda: resize_table(resize_records()),
    # Tables 6-7, with chance and trivial baseline rows
    "transfer_tqa": lambda: transfer_table(transfer_records(), "tqa", ["model.fusion", "train.freeze"]),
    "transfer_vqa": lambda: transfer_table(transfer_records(), "vqa", ["model.fusion", "train.freeze"]),
    "transfer_tqa_by_fusion": lambda: transfer_table(
        transfer_records(), "tqa", ["model.fusion", "train.freeze"]
    ).collapse(1),
    # Tables 8-9 (SFT, change from base) and 10-11 (Base / SFT / RL per model)
    "open_weight_sft_vqa": lambda: open_weight_sft_table(open_weight_records(), "vqa"),
    "open_weight_sft_tqa": lambda: open_weight_sft_table(open_weight_records(), "tqa"),
    "open_weight_sft_vqa_nofill": lambda: open_weight_sft_table(
        open_weight_records(), "vqa", fill_missing=False
    ),
    "open_weight_rl_7b_vqa": lambda: open_weight_rl_table(open_weight_records(), "Qwen2.5-VL-7B", "vqa"),
    "open_weight_rl_7b_tqa": lambda: open_weight_rl_table(open_weight_records(), "Qwen2.5-VL-7B", "tqa"),
    "open_weight_rl_3b_vqa": lambda: open_weight_rl_table(open_weight_records(), "Qwen2.5-VL-3B", "vqa"),
    # Idefics2's connectors (section 3.3): a row per connector headed by its image tokens per image
    "idefics2_connector": lambda: connector_table(
        connector_records(), lambda model: CONNECTOR_TOKENS[model["adapter"]]
    ),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_rendering_matches_the_golden_file(case: str, fmt: str) -> None:
    text = CASES[case]().render(fmt)
    path = GOLDEN / f"{case}.{fmt}"
    if REGENERATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
    assert path.is_file(), f"no golden file {path}: run with VLMLAB_REGEN_GOLDEN=1"
    assert text.encode("utf-8") == path.read_bytes()


def test_open_weight_tables_are_the_named_tables() -> None:
    """`vlmlab results --layout open_weight` writes these tables under these names, in this order."""
    tables = open_weight_tables(open_weight_records())
    assert [table.name for table in tables] == [
        "open_weight_sft_vqa",
        "open_weight_sft_tqa",
        "open_weight_rl_qwen2_5_vl_7b",
        "open_weight_rl_qwen2_5_vl_7b_tqa",
        "open_weight_rl_qwen2_5_vl_3b",
    ]
    expected = {
        "open_weight_sft_vqa": "open_weight_sft_vqa",
        "open_weight_rl_qwen2_5_vl_7b": "open_weight_rl_7b_vqa",
    }
    for table in tables:
        if table.name in expected:
            for fmt in FORMATS:
                golden = (GOLDEN / f"{expected[table.name]}.{fmt}").read_bytes()
                assert table.render(fmt).encode("utf-8") == golden


def test_the_connector_layout_counts_tokens_with_the_model_itself():
    """`vlmlab results --layout idefics2_connector` counts each record's image tokens by building its model
    on the meta device, whatever backbone the record names. On siglip2-tiny (64 px / 16 px = a 4 x 4 grid)
    by hand: 16 for the MLP, 4 latents, (4 / 2)^2 = 4 after the shuffle (the So400m tower of the sweep takes
    most of a minute to build here, for the same arithmetic)."""
    from vlmlab.reports.cli import _tokens_per_image

    for adapter, tokens in {"mlp": 16, "perceiver": 4, "pixel_shuffle": 4}.items():
        model = {"backbone": "qwen3-0.6b", "tokenizer": "siglip2-tiny", "adapter": adapter}
        assert _tokens_per_image({**model, "adapter_tokens": 4, "pixel_shuffle_ratio": 2}) == tokens
