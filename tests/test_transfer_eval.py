"""The cross-modality transfer protocol: record layout, answer bookkeeping, and the transfer table."""

import json

import pytest

import vlmlab.scoring.accuracy as accuracy
from vlmlab.cli import main
from vlmlab.config import ExperimentConfig, load_config
from vlmlab.scoring.transfer import evaluate_transfer
from vlmlab.train.run import train


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    common = {
        "model": {"backbone": "qwen3-tiny", "tokenizer": "clip-tiny", "random_tokenizer": True},
        "data": {"max_length": 160, "micro_batch_size": 4, "val_samples": 4},
    }
    runs = {}
    for stage, mode, parent in ((2, "vqa", None), (3, "tqa", "s2")):
        config = load_config(
            ExperimentConfig,
            [common],
            [
                f"train.stage={stage}",
                "train.freeze=unfreeze-lm",
                "train.max_steps=2",
                "train.global_batch_size=4",
                f"train.output_dir={root / f's{stage}'}",
                *([f"train.init_from={root / parent}"] if parent else []),
            ],
        )
        config.data.train = [
            load_config(ExperimentConfig, [{"data": {"train": [{"task": "ring", "mode": mode}]}}]).data.train[
                0
            ]
        ]
        train(config)
        runs[stage] = root / f"s{stage}"
    return root, runs


def gold_answers(monkeypatch, items_seen):
    """Replace generation by an oracle that answers each prompt with its gold option."""

    def oracle(model, input_ids, segment_ids, pixel_values, max_new_tokens, stop_ids, **kwargs):
        batch = items_seen.pop(0)
        return [tokenizer.encode(f"Final answer: {item['answer']}") for item in batch]

    def run(model, text_tokenizer, items, **kwargs):
        nonlocal tokenizer
        tokenizer = text_tokenizer
        items_seen.extend(items[i : i + 32] for i in range(0, len(items), 32))
        return original_accuracy(model, text_tokenizer, items, **kwargs)

    tokenizer = None
    original_accuracy = accuracy.evaluate_items
    monkeypatch.setattr(accuracy, "greedy_generate", oracle)
    monkeypatch.setattr("vlmlab.scoring.transfer.evaluate_items", run)


def test_oracle_answers_score_one_and_chance_is_one_over_options(stage_runs, monkeypatch):
    _, runs = stage_runs
    gold_answers(monkeypatch, [])
    record = evaluate_transfer(runs[2], tasks=["ring", "grid"], num_samples=6, write=False)
    for task in ("ring", "grid"):
        for modality in ("vqa", "tqa"):
            for split in ("ind", "ood"):
                cell = record["metrics"][task][modality][split]
                # 6/6 correct: Wilson, z^2/n = 0.6403: centre 1.3201 / 1.6403 = 0.8048, half 0.1952
                assert cell["score"] == 1.0 and cell["n"] == 6 and cell["correct"] == 6
                assert cell["ci"] == pytest.approx([0.6097, 1.0], abs=1e-3)
                # per-sample outcomes for paired tests, and which samples they are (the same in every
                # record of this split, whatever the model)
                assert cell["outcomes"] == [1] * 6 and len(cell["items"]) == 16
            assert record["metrics"][task][modality]["ind"]["items"] != cell["items"]
    # Ring: 8 objects in distribution, 12 out of distribution -> 1/8 and 1/12 (Appendix C)
    assert record["chance"]["ring"]["tqa"] == pytest.approx({"ind": 1 / 8, "ood": 1 / 12})
    # Grid: 3x3 grid -> 9 options; 4x4 OOD -> 16
    assert record["chance"]["grid"]["vqa"] == pytest.approx({"ind": 1 / 9, "ood": 1 / 16})


def test_transfer_records_feed_the_transfer_table_and_figure(stage_runs, tmp_path):
    root, runs = stage_runs
    for stage in (2, 3):
        evaluate_transfer(runs[stage], tasks=["ring"], num_samples=4)
        record = json.loads((runs[stage] / "eval.json").read_text())
        assert record["stage"] == stage and set(record["metrics"]["ring"]) == {"vqa", "tqa"}
        cell = record["metrics"]["ring"]["tqa"]["ind"]
        assert cell["n"] == 4 and cell["ci"][0] <= cell["score"] <= cell["ci"][1]
    out = tmp_path / "report"
    assert main(["results", str(root), "--layout", "transfer", "--out", str(out)]) == 0
    written = {p.name for p in out.iterdir()}
    assert any(name.endswith(".png") for name in written) and any(name.endswith(".md") for name in written)
    table = (out / "transfer_tqa.md").read_text()
    assert "95 % confidence interval" in table and " [" in table  # every accuracy with its interval


def test_validation_intervals_reach_the_eval_record(monkeypatch):
    """Training validation writes `<set>/accuracy_ci_low|high` beside each accuracy (plain floats: the
    checkpoint selection and the log read floats); the eval record folds them into the accuracy's entry."""
    from vlmlab.scoring.transfer import _as_fractions
    from vlmlab.train.data import TrainData

    result = {"accuracy": 0.5, "n": 20.0, "ci_low": 0.2993, "ci_high": 0.7007, "correct": 10.0}
    monkeypatch.setattr("vlmlab.train.data.evaluate_items", lambda *args, **kwargs: dict(result))
    data = object.__new__(TrainData)  # no model or data needed: evaluate_items is stubbed
    data.config, data.model, data.text_tokenizer = load_config(ExperimentConfig), None, None
    data._val_sets = {"grid-vqa": [{}], "ring-tqa": [{}]}
    metrics = data.evaluate()
    assert metrics["mean_accuracy"] == 0.5 and all(isinstance(v, float) for v in metrics.values())
    assert metrics["grid-vqa/accuracy_ci_low"] == 0.2993 and metrics["grid-vqa/accuracy_ci_high"] == 0.7007
    folded = _as_fractions(metrics)
    assert folded["val.grid-vqa.accuracy"] == {"score": 0.5, "ci": [0.2993, 0.7007]}
    assert folded["val.mean_accuracy"] == 0.5 and not any("_ci_" in name for name in folded)
