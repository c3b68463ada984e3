"""Academic benchmarks on a trained run: Standard vs Rendered protocols, scored by the official metrics."""

import json
from pathlib import Path

import pytest
from PIL import Image

import vlmlab.eval.benchmark_eval as benchmark_eval
from vlmlab.cli import main
from vlmlab.config import ExperimentConfig, load_config
from vlmlab.eval.benchmark_eval import benchmark_sample, evaluate_benchmarks
from vlmlab.eval.runs import load_run, text_side
from vlmlab.train.run import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    config = load_config(
        ExperimentConfig,
        [{"model": {"backbone": "qwen3-tiny", "tokenizer": "clip-tiny", "random_tokenizer": True}}],
        [
            "train.stage=2",
            "train.freeze=unfreeze-lm",
            "train.max_steps=1",
            "train.global_batch_size=8",
            f"train.output_dir={root / 'run'}",
            "data.max_length=512",
        ],
    )
    config.data.train = load_config(
        ExperimentConfig, [{"data": {"train": [{"task": "ring", "mode": "vqa"}]}}]
    ).data.train
    train(config)
    return root / "run"


@pytest.fixture(scope="module")
def textvqa(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("textvqa")
    data = [
        {"question_id": i, "image_id": f"im{i}", "question": q, "answers": [a] * 10}
        for i, (q, a) in enumerate([("What brand is shown?", "nike"), ("How many cups?", "2")])
    ]
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": data}))
    (root / "train_images").mkdir()
    for i in range(2):
        Image.new("RGB", (32, 24), "blue").save(root / "train_images" / f"im{i}.jpg")
    return root


def test_rendered_protocol_replaces_the_question_text_by_an_image(run_dir, textvqa):
    from vlmlab.data.benchmarks import load_benchmark

    record = next(iter(load_benchmark("textvqa", textvqa)))
    standard, rendered = benchmark_sample(record, "standard"), benchmark_sample(record, "rendered")
    images = lambda s: [g for g in s["segments"] if g["type"] == "image"]  # noqa: E731
    texts = lambda s: " ".join(g["text"] for g in s["segments"] if g["type"] == "text")  # noqa: E731
    assert len(images(rendered)) == len(images(standard)) + 1
    assert record["question"] in texts(standard) and record["question"] not in texts(rendered)
    config, model = load_run(run_dir)
    tokenizer, encoder = text_side(config, model)
    prompt = tokenizer.decode(encoder.encode_prompt(rendered)["input_ids"])
    assert "brand" not in prompt


def test_oracle_predictions_score_one_in_both_protocols(run_dir, textvqa, monkeypatch):
    seen = {}

    def oracle(model, tokenizer, encoder, records, protocol, **kwargs):
        seen[protocol] = len(records)
        return {str(r["id"]): r["answers"][0] for r in records}

    monkeypatch.setattr(benchmark_eval, "predict", oracle)
    record = evaluate_benchmarks(run_dir, [{"name": "textvqa", "path": str(textvqa)}], write=False)
    assert record["metrics"]["textvqa"] == 1.0 and record["metrics"]["textvqa.rendered"] == 1.0
    assert seen == {"standard": 2, "rendered": 2}


def test_cli_prints_standard_vs_rendered_with_the_gap(run_dir, textvqa, capsys):
    assert main(["eval", str(run_dir), "--benchmark", f"textvqa={textvqa}", "--rendered"]) == 0
    out = capsys.readouterr().out
    assert "Gap" in out and "textvqa" in out.lower()
    metrics = json.loads((run_dir / "eval.json").read_text())["metrics"]
    assert 0.0 <= metrics["textvqa"] <= 1.0 and 0.0 <= metrics["textvqa.rendered"] <= 1.0
