"""Academic benchmarks on a trained run: Standard vs Rendered protocols, scored by the official metrics."""

import json
from pathlib import Path

import pytest
from PIL import Image

import vlmlab.eval.benchmark_eval as benchmark_eval
from vlmlab.cli import main
from vlmlab.config import ExperimentConfig, load_config
from vlmlab.eval.benchmark_eval import benchmark_sample, evaluate_benchmarks
from vlmlab.runs.load import load_run, text_side
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


def gold(records_by_id):
    """A stand-in for generation that answers every prompt with its first reference answer."""
    calls = []

    def generate(model, tokenizer, items, *args, **kwargs):
        calls.append([item["id"] for item in items])
        return [records_by_id[item["id"]] for item in items]

    return generate, calls


def test_oracle_predictions_score_one_in_both_protocols(run_dir, textvqa, monkeypatch, tmp_path):
    generate, calls = gold({"0": "nike", "1": "2"})
    monkeypatch.setattr(benchmark_eval, "generate_texts", generate)
    record = evaluate_benchmarks(
        run_dir, [{"name": "textvqa", "path": str(textvqa)}], write=False, out_dir=tmp_path, batch_size=1
    )
    assert (
        record["metrics"]["textvqa"]["score"] == 1.0 and record["metrics"]["textvqa.rendered"]["score"] == 1.0
    )
    # two soft-scored (VQA accuracy) samples, both 1.0: n, the 0/1 count and the Wilson interval of 2/2
    assert record["metrics"]["textvqa"]["n"] == 2 and record["metrics"]["textvqa"]["correct"] == 2
    assert record["metrics"]["textvqa"]["ci"] == pytest.approx([0.3424, 1.0], abs=1e-3)
    assert calls == [["0"], ["1"], ["0"], ["1"]]  # one batch at a time, each protocol once
    lines = (tmp_path / "textvqa.jsonl").read_text().splitlines()
    assert [json.loads(line)["prediction"] for line in lines] == ["nike", "2"]


def test_a_killed_evaluation_continues_where_it_stopped(run_dir, textvqa, monkeypatch, tmp_path):
    generate, calls = gold({"0": "nike", "1": "2"})

    def dies_on_the_second_batch(model, tokenizer, items, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        return generate(model, tokenizer, items)

    monkeypatch.setattr(benchmark_eval, "generate_texts", dies_on_the_second_batch)
    entry = [{"name": "textvqa", "path": str(textvqa)}]
    with pytest.raises(KeyboardInterrupt):
        evaluate_benchmarks(run_dir, entry, ("standard",), write=False, out_dir=tmp_path, batch_size=1)
    path = tmp_path / "textvqa.jsonl"
    with path.open("a") as handle:
        handle.write('{"id": "1", "predic')  # a line torn by the kill
    monkeypatch.setattr(benchmark_eval, "generate_texts", generate)
    record = evaluate_benchmarks(run_dir, entry, ("standard",), write=False, out_dir=tmp_path, batch_size=1)
    assert calls == [["0"], ["1"]]  # record 0 was not generated again
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["0", "1"]
    assert record["metrics"]["textvqa"]["score"] == 1.0


def test_records_are_read_one_batch_ahead_at_most(run_dir, textvqa, monkeypatch, tmp_path):
    """Memory does not grow with the split: encoding and generation follow the record stream."""
    pulled = []

    def records():
        for index in range(7):
            pulled.append(index)
            yield {"id": index, "benchmark": "textvqa", "question": "What brand?", "answers": ["nike"] * 10,
                   "image": Image.new("RGB", (32, 24), "blue")}  # fmt: skip

    def generate(model, tokenizer, items, *args, **kwargs):
        assert len(pulled) <= 3 * (len(generate.seen) + 1)  # batch size 3
        generate.seen.append(len(items))
        return ["nike"] * len(items)

    generate.seen = []
    monkeypatch.setattr(benchmark_eval, "generate_texts", generate)
    config, model = load_run(run_dir)
    tokenizer, encoder = text_side(config, model)
    path = benchmark_eval.predict(
        model, tokenizer, encoder, records(), "standard", tmp_path / "p.jsonl", batch_size=3
    )
    assert generate.seen == [3, 3, 1] and benchmark_eval.score("textvqa", path) == 1.0
    assert benchmark_eval.score_metric("textvqa", path) == {"score": 1.0, "n": 7, "ci": pytest.approx(
        [0.6457, 1.0], abs=1e-3), "correct": 7}  # fmt: skip


def test_server_splits_get_the_official_submission_files(run_dir, tmp_path, monkeypatch, capsys):
    # the official layout of v2_Questions_Test_mscoco.zip: test-dev's questions are a subset of test2015's
    vqav2 = tmp_path / "vqav2"
    vqav2.mkdir()
    test_dev = [
        {"image_id": 42, "question": "How many?", "question_id": 4200},
        {"image_id": 43, "question": "What color?", "question_id": 4301},
    ]
    test_standard = [
        {"image_id": 44, "question": "Is it raining?", "question_id": 4402},
        test_dev[1],
        {"image_id": 42, "question": "Why?", "question_id": 4201},
        test_dev[0],
    ]
    (vqav2 / "v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(
        json.dumps({"questions": test_dev})
    )
    (vqav2 / "test2015").mkdir()
    for image in (42, 43):
        Image.new("RGB", (32, 24)).save(vqav2 / "test2015" / f"COCO_test2015_{image:012d}.jpg")
    # without test2015's questions the submission could not cover the ids the server expects: one line
    # before the model is built, nothing written
    out = tmp_path / "eval"
    command = [
        "eval",
        str(run_dir),
        "--benchmark",
        f"vqav2={vqav2}",
        "--split",
        "test-dev",
        "--out",
        str(out),
    ]
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "v2_OpenEnded_mscoco_test2015_questions.json" in err, err
    assert not out.exists()
    (vqav2 / "v2_OpenEnded_mscoco_test2015_questions.json").write_text(
        json.dumps({"questions": test_standard})
    )
    docvqa = tmp_path / "docvqa" / "test"
    docvqa.mkdir(parents=True)
    data = [{"questionId": 57, "question": "Date?", "image": "documents/d.png", "docId": 3}]
    (docvqa / "test_v1.0.json").write_text(json.dumps({"data": data}))
    (docvqa / "documents").mkdir()
    Image.new("RGB", (32, 24)).save(docvqa / "documents" / "d.png")
    monkeypatch.setattr(benchmark_eval, "generate_texts", lambda m, t, items, *a, **k: ["7"] * len(items))
    assert main([*command, "--dtype", "bf16", "--batch-size", "2", "--device", "cpu"]) == 0
    assert main(["eval", str(run_dir), "--benchmark", f"docvqa={tmp_path / 'docvqa'}", "--split", "test",
                 "--out", str(out)]) == 0  # fmt: skip
    # the formats the servers take (EvalAI for VQAv2, the RRC for DocVQA), written out by hand: VQAv2's lists
    # every test2015 id in that file's order, test-dev's answered, the others with the empty placeholder
    assert json.loads((out / "vqav2-test-dev-submission.json").read_text()) == [
        {"question_id": 4402, "answer": ""},
        {"question_id": 4301, "answer": "7"},
        {"question_id": 4201, "answer": ""},
        {"question_id": 4200, "answer": "7"},
    ]
    assert json.loads((out / "docvqa-test-submission.json").read_text()) == [
        {"questionId": 57, "answer": "7"}
    ]
    metrics = json.loads((run_dir / "eval.json").read_text())["metrics"]
    assert "vqav2-test-dev" not in metrics  # nothing to score locally


def test_cli_prints_standard_vs_rendered_with_the_gap(run_dir, textvqa, capsys):
    assert main(["eval", str(run_dir), "--benchmark", f"textvqa={textvqa}", "--rendered"]) == 0
    out = capsys.readouterr().out
    assert "Gap" in out and "textvqa" in out.lower()
    metrics = json.loads((run_dir / "eval.json").read_text())["metrics"]
    for key in ("textvqa", "textvqa.rendered"):
        low, high = metrics[key]["ci"]
        assert 0.0 <= low <= metrics[key]["score"] <= high <= 1.0 and metrics[key]["n"] == 2
