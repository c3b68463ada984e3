"""Real dataset formats as training sources: img2dataset tars, LLaVA JSON / JSONL, Hugging Face save_to_disk
folders and parquet (map-style and streaming), and the paper's stage-2 mixture from official files.

Each fixture is written here in the format as published; a tiny model trains a few steps on each, and the
bad cases are one clear error naming the source and the bad value."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

import pytest
import torch
from data_helpers import IMAGE_ID
from PIL import Image

from vlmlab.config import DataSourceConfig, ExperimentConfig, load_config
from vlmlab.data.sources import DataHealth, HFSource, LlavaSource, VQASource, WebDatasetSource, first_sample
from vlmlab.data.stream import TrainStream, train_loader
from vlmlab.errors import ConfigError
from vlmlab.train.run import train


def jpeg(colour: tuple[int, int, int], size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def save(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg(colour))
    return path


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def train_few_steps(tmp_path: Path, source: dict, steps: int = 2) -> dict:
    config = load_config(
        ExperimentConfig,
        [
            {
                "model": {"backbone": "qwen3-tiny", "tokenizer": "clip-tiny", "random_tokenizer": True},
                "data": {"max_length": 256, "micro_batch_size": 2, "train": [source]},
                "train": {
                    "stage": 2,
                    "freeze": "unfreeze-all",
                    "max_steps": steps,
                    "global_batch_size": 2,
                    "output_dir": str(tmp_path / "run"),
                },
            }
        ],
    )
    record = train(config)
    assert record["timings"]["steps"] == steps
    assert sum(record["data"]["seen"].values()) > 0 and not record["data"]["bad"]
    return record


# ---------------------------------------------------------------- img2dataset
def img2dataset_shard(path: Path, n: int = 6, with_txt: bool = True) -> Path:
    """The layout img2dataset writes: 000000000.jpg, .txt (caption), .json (metadata) per sample."""
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            key = f"{i:09d}"
            meta = {
                "url": f"http://x/{i}.jpg",
                "key": key,
                "status": "success",
                "caption": f"meta caption {i}",
            }
            members = {f"{key}.jpg": jpeg((20 * i, 80, 160)), f"{key}.json": json.dumps(meta).encode()}
            if with_txt:
                members[f"{key}.txt"] = f"a red square number {i}".encode()
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_img2dataset_shards_are_caption_samples(tmp_path):
    shard = img2dataset_shard(tmp_path / "00000.tar")
    config = DataSourceConfig(name="coyo", kind="webdataset", path=str(shard), instruction="Caption it.")
    first, *_ = WebDatasetSource(config).samples_in_order()
    assert first["response"] == "a red square number 0" and first["kind"] == "caption"
    assert [s["type"] for s in first["segments"]] == ["image", "text"]
    assert first["segments"][1]["text"] == "Caption it." and first["segments"][0]["image"].size == (16, 16)
    no_txt = img2dataset_shard(tmp_path / "00001.tar", with_txt=False)
    meta_caption = next(
        WebDatasetSource(DataSourceConfig(kind="webdataset", path=str(no_txt))).samples_in_order()
    )
    assert meta_caption["response"] == "meta caption 0"
    missing = DataSourceConfig(name="coyo", kind="webdataset", path=str(no_txt), caption_field="text")
    with pytest.raises(ConfigError, match="coyo.*no caption.*'text'"):
        first_sample(missing)
    train_few_steps(tmp_path, {"name": "coyo", "kind": "webdataset", "path": str(shard)})


# ---------------------------------------------------------------- LLaVA
def llava_dataset(root: Path) -> Path:
    save(root / "images" / "coco" / "a.jpg", (250, 0, 0))
    save(root / "images" / "coco" / "b.jpg", (0, 0, 250))
    rows = [
        {
            "id": "multi-turn",
            "image": "coco/a.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is it?"},
                {"from": "gpt", "value": "Red."},
                {"from": "human", "value": "Are you sure?"},
                {"from": "gpt", "value": "Yes, red."},
            ],
        },
        {
            "id": "two-images",
            "image": ["coco/a.jpg", "coco/b.jpg"],
            "conversations": [
                {"from": "human", "value": "Left <image> and right <image>: which is blue?"},
                {"from": "gpt", "value": "The right one."},
            ],
        },
        {
            "id": "no-marker",
            "image": "coco/b.jpg",
            "conversations": [{"from": "human", "value": "Describe."}, {"from": "gpt", "value": "Blue."}],
        },
        {
            "id": "text-only",
            "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}],
        },
    ]
    return write_json(root / "llava.json", rows)


def test_llava_conversations_multi_turn_and_multi_image(tmp_path, tok, encoder):
    path = llava_dataset(tmp_path)
    source = LlavaSource(
        DataSourceConfig(name="llava", kind="llava", path=str(path), image_root=str(tmp_path / "images"))
    )
    multi, two, no_marker, text = source.samples_in_order()
    assert [m["role"] for m in multi["messages"]] == ["user", "assistant", "user", "assistant"]
    assert [s["type"] for s in multi["messages"][0]["content"]] == ["image", "text"]
    assert [s["type"] for s in two["messages"][0]["content"]] == ["text", "image", "text", "image", "text"]
    assert two["messages"][0]["content"][3]["image"].getpixel((0, 0))[2] > 200  # the second image is b.jpg
    assert [s["type"] for s in no_marker["messages"][0]["content"]] == ["image", "text"]  # image first
    assert text["prompt"] == "2+2?" and text["response"] == "4"  # single text turn: LoMo can rewrite it
    # every assistant turn is scored, nothing else
    encoded = encoder.encode(multi)
    labels = encoded["labels"]
    assert tok.decode(labels[labels >= 0]) == "Red.<|im_end|>Yes, red.<|im_end|>"
    assert int((encoded["input_ids"] == IMAGE_ID).sum()) == 4  # one image x tokens_per_image
    jsonl = tmp_path / "llava.jsonl"
    jsonl.write_text("\n".join(json.dumps(row) for row in json.loads(path.read_text())))
    config = {"name": "llava", "kind": "llava", "path": str(jsonl), "image_root": str(tmp_path / "images")}
    assert LlavaSource(DataSourceConfig(**config)).num_samples() == 4
    train_few_steps(tmp_path, config)


@pytest.mark.parametrize(
    "row, error",
    [
        (
            {
                "image": "missing.jpg",
                "conversations": [{"from": "human", "value": "<image>x"}, {"from": "gpt", "value": "y"}],
            },
            "llava.*image file .*missing.jpg' does not exist",
        ),
        ({"conversations": [{"from": "human", "value": "x"}]}, "llava.*ends on a user turn"),
        (
            {
                "image": "a.jpg",
                "conversations": [
                    {"from": "human", "value": "<image><image>x"},
                    {"from": "gpt", "value": "y"},
                ],
            },
            "llava.*2 <image> marker\\(s\\) but 1 image\\(s\\)",
        ),
    ],
)
def test_bad_llava_samples_are_one_clear_error(tmp_path, row, error):
    save(tmp_path / "a.jpg")
    path = write_json(tmp_path / "bad.json", [row])
    with pytest.raises(ConfigError, match=error):
        first_sample(DataSourceConfig(name="llava", kind="llava", path=str(path)))


# ---------------------------------------------------------------- Hugging Face datasets
def hf_rows(n: int = 6) -> dict:
    return {
        "img": [{"bytes": jpeg((40 * i, 10, 10)), "path": None} for i in range(n)],
        "question": [f"What is shown in picture {i}?" for i in range(n)],
        "answers": [["a square", "a square", "a box"] for _ in range(n)],
    }


def test_hf_save_to_disk_and_parquet_with_image_bytes(tmp_path):
    import datasets

    features = datasets.Features(
        {"img": datasets.Image(), "question": datasets.Value("string"), "answers": [datasets.Value("string")]}
    )
    dataset = datasets.Dataset.from_dict(hf_rows(), features=features)
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "saved"))
    saved = {"name": "hf", "kind": "hf", "path": str(tmp_path / "saved"), "fields": {"image": "img"}}
    source = HFSource(DataSourceConfig(**saved))
    first = next(source.samples_in_order())
    assert first["response"] == "a square" and first["segments"][0]["image"].size == (16, 16)
    assert first["segments"][1]["text"] == "What is shown in picture 0?"
    train_few_steps(tmp_path / "a", saved)

    parquet = tmp_path / "train-00000-of-00001.parquet"
    raw = datasets.Dataset.from_dict({**hf_rows(), "img": [jpeg((9, 9, 9)) for _ in range(6)]})
    raw.to_parquet(str(parquet))  # an image-bytes column, as many hub parquet files hold
    train_few_steps(
        tmp_path / "b", {"name": "pq", "kind": "hf", "path": str(parquet), "fields": {"image": "img"}}
    )

    with pytest.raises(
        ConfigError, match="hf.*field 'image' maps to column 'picture'.*columns: img, question, answers"
    ):
        first_sample(DataSourceConfig(**{**saved, "fields": {"image": "picture"}}))
    with pytest.raises(ConfigError, match="split 'validation' is not in"):
        HFSource(DataSourceConfig(**{**saved, "split": "validation"}))


def test_hf_streaming_splits_across_readers_and_resumes_exactly(tmp_path, encoder):
    import datasets

    parquet = tmp_path / "data.parquet"
    datasets.Dataset.from_dict({**hf_rows(12), "img": [jpeg((9, 9, 9 * i)) for i in range(12)]}).to_parquet(
        str(parquet)
    )
    config = DataSourceConfig(
        name="hfs", kind="hf", path=str(parquet), streaming=True, fields={"image": "img"}
    )
    source = HFSource(config)
    questions = []
    for reader_id in range(2):
        reader = source.reader(reader_id, 2, 0, health=DataHealth(0.0))
        questions += [source.text_sample(next(reader))["segments"][1]["text"] for _ in range(6)]
    assert sorted(questions) == sorted(hf_rows(12)["question"])  # disjoint shares, whole epoch

    def stream():
        return TrainStream([config], encoder, micro_batch_size=1, packing=False)

    loader = train_loader(stream(), keep=20)
    straight = list(itertools.islice(loader, 9))
    resumed = train_loader(stream())
    resumed.restore(loader.state_after(4))
    for a, b in zip(straight[4:], itertools.islice(resumed, 5), strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(
            a["pixel_values"], b["pixel_values"]
        )


# ---------------------------------------------------------------- the stage-2 mixture from official files
def official_stage2(root: Path) -> dict[str, Path]:
    """Tiny train splits of the six stage-2 datasets in their official layouts."""
    coco = root / "coco"
    save(coco / "train2017" / "000000000001.jpg")
    write_json(
        coco / "annotations" / "captions_train2017.json",
        {
            "images": [{"id": 1, "file_name": "000000000001.jpg"}],
            "annotations": [
                {"image_id": 1, "id": k, "caption": f"A red square, caption {k}."} for k in range(5)
            ],
        },
    )
    vqav2 = root / "vqav2"
    write_json(vqav2 / "v2_OpenEnded_mscoco_train2014_questions.json",
               {"questions": [{"image_id": 42, "question": "How many?", "question_id": 1}]})  # fmt: skip
    answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i} for i, a in enumerate("2223333334")]
    write_json(vqav2 / "v2_mscoco_train2014_annotations.json",
               {"annotations": [{"question_id": 1, "image_id": 42, "answers": answers,
                                 "multiple_choice_answer": "3"}]})  # fmt: skip
    save(vqav2 / "train2014" / "COCO_train2014_000000000042.jpg")
    docvqa = root / "docvqa"
    write_json(docvqa / "train" / "train_v1.0.json",
               {"data": [{"questionId": 9, "question": "Date?", "image": "documents/p1.png", "answers": ["1988"]}]})  # fmt: skip
    save(docvqa / "train" / "documents" / "p1.png")
    textvqa = root / "textvqa"
    write_json(textvqa / "TextVQA_0.5.1_train.json",
               {"data": [{"question_id": 5, "image_id": "abc", "question": "Brand?", "answers": ["nike"] * 10}]})  # fmt: skip
    save(textvqa / "train_images" / "abc.jpg")
    chartqa = root / "chartqa"
    write_json(chartqa / "train" / "train_human.json", [{"imgname": "a.png", "query": "Max?", "label": "45"}])
    save(chartqa / "train" / "png" / "a.png")
    aokvqa = root / "aokvqa"
    write_json(aokvqa / "aokvqa_v1p0_train.json",
               [{"question_id": "q1", "image_id": 7, "question": "Waiting for?", "choices": ["train", "cab"],
                 "correct_choice_idx": 1, "direct_answers": ["cab"] * 7 + ["taxi"] * 3}])  # fmt: skip
    save(aokvqa / "train2017" / "000000000007.jpg")
    return {"coco_captions": coco, "vqav2": vqav2, "docvqa": docvqa, "textvqa": textvqa, "chartqa": chartqa,
            "aokvqa": aokvqa}  # fmt: skip


def test_stage2_mixture_from_the_official_files(tmp_path, monkeypatch):
    roots = official_stage2(tmp_path)
    expected = {"coco_captions": "A red square, caption 0.", "vqav2": "3", "docvqa": "1988", "textvqa": "nike",
                "chartqa": "45", "aokvqa": "cab"}  # fmt: skip
    for benchmark, root in roots.items():
        source = VQASource(DataSourceConfig(kind="vqa", benchmark=benchmark, path=str(root)))
        sample = next(source.samples_in_order())
        assert sample["response"] == expected[benchmark], benchmark
        assert sample["kind"] == ("caption" if benchmark == "coco_captions" else "vqa")
    # one image, five captions: the image is stored once (a path) and decoded once per sample that uses it
    from vlmlab.data.sources import vqa

    decoded = []
    real = vqa.decode_or_skip
    monkeypatch.setattr(vqa, "decode_or_skip", lambda data, what: decoded.append(what) or real(data, what))
    coco = VQASource(
        DataSourceConfig(kind="vqa", benchmark="coco_captions", path=str(roots["coco_captions"]))
    )
    assert len(coco.items) == 5 and len({id(item[0]) for item in coco.items}) == 1
    texts = [coco.text_sample({"index": i}) for i in range(5)]  # counting tokens decodes nothing
    assert not decoded and all(t["segments"][0]["image"] is None for t in texts)
    samples = [coco.full_sample({"index": i}) for i in range(5)]
    assert len(decoded) == 5 and len({s["response"] for s in samples}) == 5
    mixture = [
        {"name": name, "kind": "vqa", "benchmark": name, "path": str(root)} for name, root in roots.items()
    ]
    config = load_config(
        ExperimentConfig,
        [
            {
                "model": {"backbone": "qwen3-tiny", "tokenizer": "clip-tiny", "random_tokenizer": True},
                "data": {"max_length": 256, "micro_batch_size": 2, "train": mixture},
                "train": {"stage": 2, "freeze": "unfreeze-all", "max_steps": 3, "global_batch_size": 2,
                          "output_dir": str(tmp_path / "run")},
            }
        ],
    )  # fmt: skip
    record = train(config)
    assert set(record["data"]["seen"]) == set(roots)  # every dataset of the mixture was read
    with pytest.raises(ConfigError, match="Unknown benchmark.*vqav3.*Valid choices: aokvqa, chartqa"):
        VQASource(DataSourceConfig(kind="vqa", benchmark="vqav3", path=str(tmp_path)))


def test_list_overrides_from_the_command_line(tmp_path):
    config = load_config(
        ExperimentConfig,
        [{"data": {"train": [{"kind": "synthetic"}, {"kind": "webdataset", "path": "/old"}]}}],
        ["data.train.1.path=/data/coyo/{00000..00009}.tar", "data.train.0.weight=3"],
    )
    assert config.data.train[1].path == "/data/coyo/{00000..00009}.tar" and config.data.train[0].weight == 3
    with pytest.raises(ConfigError, match="data.train has 2 item"):
        load_config(ExperimentConfig, [{"data": {"train": [{}, {}]}}], ["data.train.2.path=/x"])
    with pytest.raises(ConfigError, match="Did you mean 'data.train.0.path'"):
        load_config(ExperimentConfig, [{"data": {"train": [{}]}}], ["data.train.0.pth=/x"])


def test_inspect_shows_the_model_view_and_stats_work_on_any_source(tmp_path):
    from vlmlab.cli import main

    path = llava_dataset(tmp_path)
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"data:\n  train:\n    - {{name: llava, kind: llava, path: {path}, image_root: {tmp_path / 'images'}}}\n"
    )
    from vlmlab.data.inspect import inspect, stats

    report = inspect(str(config), [], 4, 2, tmp_path / "sheet.png")
    assert "-- multi-turn: " in report and "2 image(s)" in report
    assert (
        "<|im_start|>user\n<image>\nWhat colour is it?<|im_end|>\n<|im_start|>assistant\n[[Red.<|im_end|>]]"
        in report
    )
    assert Image.open(tmp_path / "sheet.png").size[1] >= 4 * 160
    summary = stats(str(config), [], 100, 2)
    assert "4 samples per epoch; first 100 read: 4 usable, 0 bad" in summary
    assert "images per sample: 0: 1, 1: 2, 2: 1" in summary
    shard = img2dataset_shard(tmp_path / "00000.tar")  # a bare path: the kind comes from its form
    assert "6 usable, 0 bad" in stats(str(shard), [], 100, 2)
    assert main(["data", "stats", str(shard), "-n", "6"]) == 0
    assert main(["data", "inspect", str(tmp_path / "nothing.tar")]) == 2


def test_a_bad_source_fails_vlmlab_train_in_one_line_before_the_model_is_built(tmp_path):
    from test_training import cli

    path = llava_dataset(tmp_path)
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"data:\n  train:\n    - {{name: mine, kind: llava, path: {path}, image_root: {tmp_path / 'images'}}}\n"
        f"train: {{output_dir: {tmp_path / 'run'}}}\n"
    )
    code, stderr = cli(str(config), f"data.train.0.image_root={tmp_path}")
    assert code == 2
    assert stderr.strip().splitlines()[-1].startswith("vlmlab: error: source 'mine': its first sample")
    assert "does not exist" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing heavy was started
