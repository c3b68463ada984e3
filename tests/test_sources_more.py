"""More published layouts as training sources (issue 28): The Cauldron (save_to_disk, parquet, hub snapshot),
hub snapshot folders, LLaVA-OneVision image + text-only subsets, interleaved web documents (OBELICS-style
HF datasets, MINT-1T-style webdataset shards), the MM1-style stage-1 mixture, the shared JSON index, and the
`vlmlab data inspect` / `stats` reports on bad data.

Each replica is written here with the published column names, features and folder layout; the expected labels
are written out by hand from the text, not computed by the code under test."""

from __future__ import annotations

import io
import itertools
import json
import multiprocessing
import tarfile
from pathlib import Path

import pytest
from data_helpers import IMAGE_ID, TPI, assert_batches_equal
from PIL import Image
from test_sources import jpeg, save, train_few_steps, write_json

from vlmlab.config import DataSourceConfig, ExperimentConfig, load_config
from vlmlab.data.sources import DataHealth, HFSource, LlavaSource, WebDatasetSource, first_sample, json_index
from vlmlab.data.stream import TrainStream, train_loader
from vlmlab.errors import ConfigError


def scored(tok, encoded: dict) -> str:
    labels = encoded["labels"]
    return tok.decode(labels[labels >= 0])


# ---------------------------------------------------------------- The Cauldron (HuggingFaceM4/the_cauldron)
def cauldron_features():
    import datasets

    turn = {
        "user": datasets.Value("string"),
        "assistant": datasets.Value("string"),
        "source": datasets.Value("string"),
    }
    return datasets.Features({"images": datasets.Sequence(datasets.Image()), "texts": [turn]})


def cauldron_rows(n: int = 4, source: str = "ai2d") -> dict:
    return {
        "images": [[{"bytes": jpeg((200, 20, 20)), "path": None}] for _ in range(n)],
        "texts": [
            [
                {"user": f"Question {i}: which colour?", "assistant": "Red.", "source": source},
                {"user": "Are you sure?", "assistant": "Yes, red.", "source": source},
            ]
            for i in range(n)
        ],
    }


def cauldron_snapshot(root: Path, subsets=("ai2d", "vqav2")) -> Path:
    """As `huggingface-cli download HuggingFaceM4/the_cauldron` leaves it: README.md with one config per
    subset, `<subset>/train-0000N-of-0000M-<hash>.parquet`."""
    import datasets

    card = ["---", "dataset_info:", "configs:"]
    for subset in subsets:
        card += [
            f"- config_name: {subset}",
            "  data_files:",
            "  - split: train",
            f"    path: {subset}/train-*",
        ]
        folder = root / subset
        folder.mkdir(parents=True)
        dataset = datasets.Dataset.from_dict(cauldron_rows(4, subset), features=cauldron_features())
        dataset.to_parquet(str(folder / "train-00000-of-00001-3c1e2b4f5a6d7e8f.parquet"))
    (root / "README.md").write_text("\n".join([*card, "---", "", "# The Cauldron", ""]))
    return root


@pytest.mark.slow(seconds=20)
def test_the_cauldron_as_save_to_disk_parquet_and_hub_snapshot(tmp_path, tok, encoder):
    import datasets

    dataset = datasets.Dataset.from_dict(cauldron_rows(), features=cauldron_features())
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "saved"))
    saved = {"name": "ai2d", "kind": "hf", "path": str(tmp_path / "saved")}
    sample = next(HFSource(DataSourceConfig(**saved)).samples_in_order())
    # the image before the first user text (no <image> markers: Idefics2's layout), each exchange two turns
    assert [m["role"] for m in sample["messages"]] == ["user", "assistant", "user", "assistant"]
    assert [s["type"] for s in sample["messages"][0]["content"]] == ["image", "text"]
    encoded = encoder.encode(sample)
    assert scored(tok, encoded) == "Red.<|im_end|>Yes, red.<|im_end|>"
    assert int((encoded["input_ids"] == IMAGE_ID).sum()) == TPI
    # the hint of the old error, `fields: {messages: texts}`, works too
    explicit = first_sample(DataSourceConfig(**saved, fields={"messages": "texts"}))
    assert explicit["messages"][1]["content"] == "Red."
    train_few_steps(tmp_path / "a", saved)

    snapshot = cauldron_snapshot(tmp_path / "the_cauldron")
    parquet = {"name": "vqav2", "kind": "hf", "path": str(snapshot / "vqav2" / "*.parquet")}
    assert first_sample(DataSourceConfig(**parquet))["messages"][0]["content"][1]["text"].startswith(
        "Question"
    )
    with pytest.raises(ConfigError, match="holds 2 subsets; pick one with `subset`: ai2d, vqav2"):
        HFSource(DataSourceConfig(kind="hf", path=str(snapshot)))
    with pytest.raises(ConfigError, match="Unknown subset .* 'ai2e'. Did you mean 'ai2d'"):
        HFSource(DataSourceConfig(kind="hf", path=str(snapshot), subset="ai2e"))
    with pytest.raises(ConfigError, match="split 'validation' is not in .*splits: train"):
        HFSource(DataSourceConfig(kind="hf", path=str(snapshot), subset="ai2d", split="validation"))
    train_few_steps(tmp_path / "b", {"name": "ai2d", "kind": "hf", "path": str(snapshot), "subset": "ai2d"})


def test_a_hub_snapshot_folder_with_a_data_folder(tmp_path):
    import datasets

    root = tmp_path / "snapshot"
    (root / "data").mkdir(parents=True)
    (root / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# A dataset card without configs\n")
    rows = {
        "image": [{"bytes": jpeg((10, 10, 30 * i)), "path": None} for i in range(4)],
        "caption": [f"a dark square {i}" for i in range(4)],
    }
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(
        str(root / "data" / "train-00000-of-00001.parquet")
    )
    source = HFSource(DataSourceConfig(kind="hf", path=str(root)))
    assert source.num_samples() == 4 and source.form == "caption"
    from vlmlab.data.inspect import stats

    assert "4 usable, 0 bad" in stats(str(root), [], 10, 2)  # a bare snapshot path is an hf source


# ---------------------------------------------------------------- LLaVA-OneVision: image and text-only subsets
def onevision_subset(path: Path, rows: list[dict]) -> Path:
    """lmms-lab/LLaVA-OneVision-Data's parquet schema: id, image (Image; None in text-only subsets),
    conversations (list of {from, value}), data_source."""
    import datasets

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
            "data_source": datasets.Value("string"),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


@pytest.mark.slow(seconds=20)
def test_onevision_image_and_text_only_subsets_in_one_glob(tmp_path, tok, encoder):
    image_rows = [
        {
            "id": f"ai2d_{i}",
            "image": {"bytes": jpeg((0, 200, 0)), "path": None},
            "conversations": [
                {"from": "human", "value": "<image>\nColour?"},
                {"from": "gpt", "value": "Green."},
            ],
            "data_source": "ai2d(gpt4v)",
        }
        for i in range(6)
    ]
    text_rows = [
        {
            "id": f"magpie_{i}",
            "image": None,
            "conversations": [
                {"from": "human", "value": f"What is {i}+1?"},
                {"from": "gpt", "value": str(i + 1)},
            ],
            "data_source": "magpie_pro(l3_80b_st)",
        }
        for i in range(6)
    ]
    onevision_subset(tmp_path / "ai2d(gpt4v)" / "train-00000-of-00001.parquet", image_rows)
    onevision_subset(tmp_path / "magpie_pro(l3_80b_st)" / "train-00000-of-00001.parquet", text_rows)
    config = {"name": "ov", "kind": "hf", "path": str(tmp_path / "*" / "train-*.parquet")}
    source = HFSource(DataSourceConfig(**config))
    by_id = {}
    for index in range(source.num_samples()):
        sample = source.full_sample({"index": index})
        by_id[source.key({"index": index})] = sample
    assert set(by_id) == {r["id"] for r in image_rows + text_rows}  # ids from the `id` column
    text = by_id["magpie_3"]
    assert text["kind"] == "text" and text["prompt"] == "What is 3+1?" and text["id"] == "magpie_3"
    assert scored(tok, encoder.encode(text)) == "4<|im_end|>"
    image = by_id["ai2d_0"]
    assert scored(tok, encoder.encode(image)) == "Green.<|im_end|>"
    record = train_few_steps(tmp_path, config, steps=3)
    assert record["data"]["seen"]["ov"] >= 6


# ---------------------------------------------------------------- interleaved documents
def obelics_dataset(root: Path) -> Path:
    """HuggingFaceM4/OBELICS' columns (images and texts aligned, None where the other modality sits;
    metadata and general_metadata as JSON strings), with the images downloaded into the dataset."""
    import datasets

    features = datasets.Features(
        {
            "images": datasets.Sequence(datasets.Image()),
            "metadata": datasets.Value("string"),
            "general_metadata": datasets.Value("string"),
            "texts": datasets.Sequence(datasets.Value("string")),
        }
    )
    red, blue = {"bytes": jpeg((230, 0, 0)), "path": None}, {"bytes": jpeg((0, 0, 230)), "path": None}
    rows = {
        "images": [[None, red, None, None, blue, None]] * 3,
        "metadata": [
            json.dumps([None, {"src": "http://x/a.jpg"}, None, None, {"src": "http://x/b.jpg"}, None])
        ]
        * 3,
        "general_metadata": [json.dumps({"url": "http://x/page.html"})] * 3,
        "texts": [["A red dot.", None, "It is round.", "Then:", None, "A blue dot."]] * 3,
    }
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(root))
    return root


def test_obelics_style_documents_are_interleaved_samples_with_loss_on_the_text(tmp_path, tok, encoder):
    path = obelics_dataset(tmp_path / "obelics")
    config = {"name": "obelics", "kind": "hf", "path": str(path)}
    source = HFSource(DataSourceConfig(**config))
    assert source.form == "document"
    sample = source.full_sample({"index": 0})
    assert sample["kind"] == "interleaved"
    assert [s["type"] for s in sample["document"]] == ["text", "image", "text", "image", "text"]
    assert sample["document"][1]["image"].getpixel((8, 8))[0] > 200  # red first, as in the document
    assert sample["document"][3]["image"].getpixel((8, 8))[2] > 200
    encoded = encoder.encode(sample)
    # all the text is scored (adjacent paragraphs joined by a blank line), the EOS too, images not
    assert scored(tok, encoded) == "A red dot.It is round.\n\nThen:A blue dot.<|im_end|>"
    assert int((encoded["input_ids"] == IMAGE_ID).sum()) == 2 * TPI
    assert not (encoded["labels"][encoded["input_ids"] == IMAGE_ID] >= 0).any()
    assert encoded["pixel_values"].shape[0] == 2
    capped = HFSource(DataSourceConfig(**config, max_images=1)).full_sample({"index": 0})
    assert [s["type"] for s in capped["document"]] == ["text", "image", "text"]  # cut before image 2
    assert scored(tok, encoder.encode(capped)) == "A red dot.It is round.\n\nThen:<|im_end|>"
    train_few_steps(tmp_path, config)
    with pytest.raises(ConfigError, match="max_images must be an integer >= 1"):
        load_config(ExperimentConfig, [{"data": {"train": [{**config, "max_images": 0}]}}])


def test_a_long_document_keeps_its_beginning_with_whole_images(tok, encoder):
    from vlmlab.data.encode import SampleEncoder

    short = SampleEncoder(tok, encoder.image_transform, TPI, IMAGE_ID, max_length=12)
    image = Image.new("RGB", (8, 8))
    words = " ".join(["cat"] * 20)
    sample = {"id": "d", "document": [{"type": "text", "text": "a b"}, {"type": "image", "image": image},
                                       {"type": "text", "text": words}], "kind": "interleaved"}  # fmt: skip
    tokens = short.tokenize(sample)
    assert len(tokens["input_ids"]) == 12 and tokens["input_ids"][-1] != tok.convert_tokens_to_ids(
        "<|im_end|>"
    )
    assert tokens["input_ids"].count(IMAGE_ID) == TPI and len(tokens["images"]) == 1
    lone = {"id": "e", "document": [{"type": "text", "text": words}, {"type": "image", "image": image}]}
    cut = short.tokenize(lone)
    assert cut["images"] == [] and IMAGE_ID not in cut["input_ids"]  # an image never half in


def tiff_frames(colours) -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in colours]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def mint_shard(path: Path, n: int = 6) -> Path:
    """MINT-1T's webdataset layout: `<key>.json` (texts / images aligned, image_metadata, url, ...) and one
    multi-page `<key>.tiff` holding the document's images in order; the last document uses numbered JPEG
    members (`<key>.0.jpg`, `<key>.1.jpg`), webdataset's own convention."""
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            key = f"{i:032x}"
            meta = {
                "bff_contained_ngram_count_before_dedupe": 0,
                "image_metadata": [
                    {"height": 16, "page": 0, "width": 16, "xref": 8},
                    {"height": 16, "page": 1},
                ],
                "images": ["page_0_image_8", None, "page_1_image_9", None],
                "texts": [None, f"Document {i} starts.", None, "It ends."],
                "url": f"http://x/{i}.pdf",
            }
            members = {f"{key}.json": json.dumps(meta).encode()}
            if i < n - 1:
                members[f"{key}.tiff"] = tiff_frames([(250, 0, 0), (0, 250, 0)])
            else:
                members[f"{key}.0.jpg"] = jpeg((250, 0, 0))
                members[f"{key}.1.jpg"] = jpeg((0, 250, 0))
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_interleaved_webdataset_shards_train_and_resume_exactly(tmp_path, tok, encoder):
    shards = [mint_shard(tmp_path / f"CC-MAIN-shard-{k:05d}.tar") for k in range(2)]
    config = DataSourceConfig(
        name="mint", kind="webdataset", path=str(tmp_path / "CC-MAIN-shard-{00000..00001}.tar")
    )
    samples = list(WebDatasetSource(config).samples_in_order())
    assert len(samples) == 12
    for sample in (samples[0], samples[5]):  # a TIFF document and a JPEG-member one
        assert [s["type"] for s in sample["document"]] == ["image", "text", "image", "text"]
        assert sample["document"][0]["image"].getpixel((8, 8))[0] > 200
        assert sample["document"][2]["image"].getpixel((8, 8))[1] > 200
    assert scored(tok, encoder.encode(samples[0])) == "Document 0 starts.It ends.<|im_end|>"
    assert shards[0].exists()

    def stream():
        return TrainStream([config], encoder, micro_batch_size=2, seed=1)

    loader = train_loader(stream(), keep=20)
    straight = list(itertools.islice(loader, 6))
    resumed = train_loader(stream())
    resumed.restore(loader.state_after(3))
    for a, b in zip(straight[3:], itertools.islice(resumed, 3), strict=True):
        assert_batches_equal(a, b)
    train_few_steps(tmp_path, {"name": "mint", "kind": "webdataset", "path": str(shards[0]), "max_images": 4})


@pytest.mark.slow(seconds=20)
def test_a_stage1_mixture_of_captions_documents_and_text(tmp_path):
    """MM1's stage-1 mixture (section 3.3): 45% captions, 45% interleaved documents, 10% text-only."""
    from test_sources import img2dataset_shard

    captions = img2dataset_shard(tmp_path / "coyo-00000.tar")
    documents = mint_shard(tmp_path / "mint-00000.tar")
    text = write_json(
        tmp_path / "text.json",
        [{"id": f"t{i}", "conversations": [{"from": "human", "value": f"Say {i}."}, {"from": "gpt", "value": str(i)}]}
         for i in range(8)],
    )  # fmt: skip
    mixture = [
        {"name": "captions", "kind": "webdataset", "path": str(captions), "weight": 0.45},
        {"name": "interleaved", "kind": "webdataset", "path": str(documents), "weight": 0.45},
        {"name": "text", "kind": "llava", "path": str(text), "mode": "text", "weight": 0.10},
    ]
    from vlmlab.train.run import train

    config = load_config(
        ExperimentConfig,
        [
            {
                "model": {"backbone": "qwen3-tiny", "tokenizer": "clip-tiny", "random_tokenizer": True},
                "data": {"max_length": 256, "micro_batch_size": 4, "train": mixture},
                "train": {
                    "stage": 1,
                    "max_steps": 3,
                    "global_batch_size": 4,
                    "output_dir": str(tmp_path / "run"),
                },
            }
        ],
    )
    record = train(config)
    assert set(record["data"]["seen"]) == {"captions", "interleaved", "text"} and not record["data"]["bad"]


def test_the_mm1_mixture_sweep_preset_varies_the_ratio():
    from vlmlab.presets import preset_dir
    from vlmlab.sweep.expand import expand
    from vlmlab.sweep.spec import load_sweep

    dag = expand(load_sweep(str(preset_dir("sweeps") / "mm1_mixture.yaml")))
    weights = sorted(tuple(s["weight"] for s in run.config["data"]["train"]) for run in dag if run.stage == 1)
    assert (0.45, 0.45, 0.1) in weights and len(set(weights)) == len(weights) >= 3


# ---------------------------------------------------------------- the shared JSON index
def test_json_index_matches_json_load_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(json_index, "CHUNK_CHARS", 7)  # every entry straddles chunks
    rows = [
        {"id": f"é{i}", "image": f"coco/{i}.jpg", "conversations": [{"from": "human", "value": "a [b], {c} \"d\" ü"},
                                                              {"from": "gpt", "value": "ok 😀"}]}
        for i in range(5)
    ] + [{"conversations": []}]  # fmt: skip
    path = tmp_path / "data.json"
    path.write_text(
        "  [\n" + " ,\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n] \n", encoding="utf-8"
    )
    index = json_index.JsonRows(path, "x")
    assert [index[i] for i in range(len(index))] == json.loads(path.read_text(encoding="utf-8"))
    assert [index.id(i) for i in range(len(index))] == ["é0", "é1", "é2", "é3", "é4", "5"]
    path.write_text('[{"id": 1}, {"id": 2', encoding="utf-8")
    with pytest.raises(ConfigError, match="data.json' is not valid JSON"):
        json_index.JsonRows(path, "x")
    path.write_text('[{"id": 1}, 3]', encoding="utf-8")
    with pytest.raises(ConfigError, match="entry 1 is a int; the file must hold a list of objects"):
        json_index.JsonRows(path, "x")


def _open_index(path: str, out: str) -> None:
    rows = json_index.JsonRows(Path(path), "race")
    Path(out).write_text(json.dumps([rows[i] for i in range(len(rows))]))


def test_json_index_is_built_once_under_a_race_and_rebuilt_when_the_json_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMLAB_CACHE_DIR", str(tmp_path / "cache"))
    rows = [{"id": str(i), "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": str(i)}]}
            for i in range(2000)]  # fmt: skip
    path = write_json(tmp_path / "mix.json", rows)
    builds = tmp_path / "builds.log"
    real_build = json_index._build

    def counting_build(*args, **kwargs):
        with builds.open("a") as log:
            log.write("build\n")
        return real_build(*args, **kwargs)

    monkeypatch.setattr(json_index, "_build", counting_build)
    context = multiprocessing.get_context("fork")  # the children inherit the counting builder
    workers = [
        context.Process(target=_open_index, args=(str(path), str(tmp_path / f"out{k}"))) for k in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert builds.read_text().count("build") == 1
    for k in range(4):
        assert json.loads((tmp_path / f"out{k}").read_text()) == rows
    indexes = list((tmp_path / "cache" / "json-index").glob("*.arrow"))
    assert len(indexes) == 1 and not list((tmp_path / "cache" / "json-index").glob("*.tmp-*"))
    source = LlavaSource(DataSourceConfig(name="mix", kind="llava", path=str(path)))
    assert source.num_samples() == 2000 and builds.read_text().count("build") == 1  # reused
    write_json(path, rows[:10])  # the JSON changes: a new index, the stale one removed
    assert LlavaSource(DataSourceConfig(name="mix", kind="llava", path=str(path))).num_samples() == 10
    assert builds.read_text().count("build") == 2
    assert len(list((tmp_path / "cache" / "json-index").glob("*.arrow"))) == 1


# ---------------------------------------------------------------- inspect / stats on bad data
def llava_pretrain(root: Path, missing_folder: bool = False) -> Path:
    """liuhaotian/LLaVA-Pretrain: blip_laion_cc_sbu_558k.json beside images.zip, whose folders (00000/,
    00453/, ...) unpack wherever the user puts them."""
    rows = []
    for i in range(4):
        image = f"0045{i}/0045{i}9375.jpg"
        if not missing_folder:
            save(root / "images" / image)
        rows.append(
            {
                "id": f"0045{i}9375",
                "image": image,
                "conversations": [
                    {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
                    {
                        "from": "gpt",
                        "value": "select luxury furniture 3 - inch gel memory foam mattress topper",
                    },
                ],
            }
        )
    return write_json(root / "blip_laion_cc_sbu_558k.json", rows)


def test_inspect_fails_when_every_sample_is_bad_and_names_the_image_root(tmp_path, capsys):
    from vlmlab.cli import main

    path = llava_pretrain(tmp_path)
    assert main(["data", "inspect", str(path), "--sheet", "", "-n", "4"]) == 2  # images are under images/
    captured = capsys.readouterr()
    assert "every sample read is bad (4 of 4)" in captured.out
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("vlmlab: error: source 'blip_laion_cc_sbu_558k': all 4 samples read are bad")
    assert (
        f"the images are missing under image_root {str(tmp_path)!r}" in error and "set `image_root`" in error
    )
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"data:\n  train:\n    - {{kind: llava, path: {path}, image_root: {tmp_path / 'images'}}}\n"
    )
    assert main(["data", "inspect", str(config), "--sheet", "", "-n", "4"]) == 0


def test_stats_names_bad_samples_and_their_reasons(tmp_path):
    from vlmlab.data.inspect import stats

    path = llava_pretrain(tmp_path)
    (tmp_path / "images" / "00452" / "004529375.jpg").unlink()
    summary = stats(str(path), [], 10, 2).replace(str(tmp_path), "ROOT")  # image_root: the JSON's folder
    assert "4 usable" not in summary and "0 usable, 4 bad" in summary
    fixed = tmp_path / "exp.yaml"
    fixed.write_text(
        f"data:\n  train:\n    - {{name: pre, kind: llava, path: {path}, image_root: {tmp_path / 'images'}}}\n"
    )
    summary = stats(str(fixed), [], 10, 2)
    assert "3 usable, 1 bad" in summary
    assert f"  bad '004529375' in {tmp_path / 'images' / '00452'}/: image file " in summary
    assert "00452/004529375.jpg' does not exist" in summary
    assert "bad by reason: image file '...' does not exist: 1" in summary


def test_a_missing_image_folder_is_named_as_the_worst_place(tmp_path, encoder):
    """mix665k's five image folders (coco, gqa, ocr_vqa, textvqa, vg) with ocr_vqa never unpacked."""
    folders = {"coco": "train2017/000000033471.jpg", "gqa": "images/2354786.jpg", "ocr_vqa": "images/{}.jpg",
               "textvqa": "train_images/0a0bc91825468c45.jpg", "vg": "VG_100K/2346.jpg"}  # fmt: skip
    rows = []
    for folder, image in folders.items():
        if folder != "ocr_vqa":
            save(tmp_path / folder / image)
    for i in range(100):
        folder = list(folders)[i % 5]
        rows.append(
            {
                "id": f"{folder}-{i}",
                "image": f"{folder}/{folders[folder].format(i)}",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat?"},
                    {"from": "gpt", "value": "This."},
                ],
            }
        )
    path = write_json(tmp_path / "llava_v1_5_mix665k.json", rows)
    stream = TrainStream(
        [DataSourceConfig(name="mix665k", kind="llava", path=str(path))], encoder, max_bad_fraction=0.0
    )
    with pytest.raises(ConfigError, match=r"worst: .*/ocr_vqa/ \(missing folder\) \(\d+ bad\)"):
        stream.planned_items(100)
    health = DataHealth(1.0)
    source = LlavaSource(DataSourceConfig(name="mix665k", kind="llava", path=str(path)))
    reader = source.reader(0, 1, 0, health)
    errors = []
    for _ in range(100):
        record = next(reader)
        try:
            source.text_sample(record)
        except Exception as error:  # noqa: BLE001
            errors.append((source.place(record, error), str(error)))
    assert len(errors) == 20 and {place for place, _ in errors} == {
        f"{tmp_path / 'ocr_vqa'}/ (missing folder)"
    }
    assert all(f"image folder {str(tmp_path / 'ocr_vqa')!r} does not exist" in e for _, e in errors)


def test_large_sources_are_permuted_by_numpy_with_disjoint_shares(monkeypatch):
    import random

    from vlmlab.data.sources import base

    small = base.epoch_order(10, "k")
    expected = list(range(10))
    random.Random("k").shuffle(expected)
    assert small == expected  # below the threshold: the order runs were made with
    monkeypatch.setattr(base, "NUMPY_ORDER_FROM", 8)
    big = base.epoch_order(50, "k")
    assert sorted(big.tolist()) == list(range(50)) and big.tolist() != list(range(50))
    assert big.tolist() == base.epoch_order(50, "k").tolist() != base.epoch_order(50, "k2").tolist()
    readers = [base.IndexedReader("s", 50, g, 3, 0, DataHealth(1.0)) for g in range(3)]
    first_epoch = [next(readers[position % 3])["index"] for position in range(50)]
    assert sorted(first_epoch) == list(range(50)) and all(type(i) is int for i in first_epoch)


def test_llava_json_through_the_index_resumes_exactly_with_two_workers(tmp_path, encoder):
    """Every worker opens the shared index (memory-mapped) and the restored loader continues exactly."""
    from test_sources import llava_dataset

    path = llava_dataset(tmp_path)
    config = DataSourceConfig(name="llava", kind="llava", path=str(path), image_root=str(tmp_path / "images"))

    def loader():
        return train_loader(
            TrainStream([config], encoder, micro_batch_size=1, seed=3), num_workers=2, keep=20
        )

    first = loader()
    straight = list(itertools.islice(first, 8))
    first.close()
    resumed = loader()
    resumed.restore(first.state_after(4))
    for a, b in zip(straight[4:], itertools.islice(resumed, 4), strict=True):
        assert_batches_equal(a, b)
    resumed.close()
