"""The sharded training stream: disjoint reader shares, exact constant-cost resume, bad data skipped and
counted, webdataset URLs, packing quality, mixture weights and LoMo's matched ratio.

Independent truths: shards written here with `tarfile`/`gzip` (so their contents are known), the keys
each sample carries in its response text (decoded back from the batches), uninterrupted streams, and
binomial bounds for the mixture."""

from __future__ import annotations

import gzip
import io
import itertools
import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import IMAGE_ID, SIZE, TPI, assert_batches_equal, mix
from PIL import Image

from vlmlab.config import DataConfig, DataSourceConfig
from vlmlab.data.shards import expand_shards, read_manifest, write_shard
from vlmlab.data.sources import DataHealth, WebDatasetSource
from vlmlab.data.sources.webdataset import decode_image
from vlmlab.data.stream import TrainStream, data_health, train_loader
from vlmlab.data.synthetic import generate_split
from vlmlab.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- shard fixtures
def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def jpeg(color: tuple[int, int, int], size: int = 24) -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(sum(color)).integers(0, 40, (size, size, 3), dtype=np.uint8)
    Image.fromarray(np.clip(np.array(color, dtype=np.uint8) + noise, 0, 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=90
    )
    return buffer.getvalue()


def caption_sample(key: str) -> bytes:
    """A sample whose response names its key, so the key can be read back from a batch's labels."""
    return json.dumps(
        {"segments": [{"type": "image"}, {"type": "text", "text": "Describe."}], "response": f"k {key} z"}
    ).encode()


def write_tar(path: Path, keys: list[str], images: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for i, key in enumerate(keys):
            add_member(tar, f"{key}.json", caption_sample(key))
            image = (images or {}).get(key, jpeg((10 * (i % 20), 80, 200)))
            add_member(tar, f"{key}.jpg", image)
    return path


def shard_set(folder: Path, num_shards: int, per_shard: int) -> list[str]:
    """Shards s000.tar ... with keys s<shard>x<i>; returns every key."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for s in range(num_shards):
        mine = [f"s{s}x{i}" for i in range(per_shard)]
        write_tar(folder / f"s{s:03d}.tar", mine)
        keys += mine
    return keys


def keys_in(batch: dict, tok) -> list[str]:
    """The sample keys a batch trains on, read back from its supervised tokens."""
    labels = batch["labels"]
    keys = []
    for row in range(labels.shape[0]):
        text = tok.decode(labels[row][labels[row] >= 0])
        keys += [word for word in text.split() if word.startswith("s") and "x" in word]
    return keys


def wds(path, **extra) -> DataSourceConfig:
    return DataSourceConfig(name="wds", kind="webdataset", path=str(path), **extra)


# ---------------------------------------------------------------- sharding
@pytest.mark.parametrize("num_shards", [8, 3])  # more shards than readers, and fewer (shared shards)
def test_readers_read_disjoint_shares_whose_union_is_the_epoch(tmp_path, num_shards):
    keys = shard_set(tmp_path / "shards", num_shards, 5)
    source = WebDatasetSource(wds(tmp_path / "shards"))
    shares = []
    for reader_id in range(4):  # 2 ranks x 2 workers
        reader = source.reader(reader_id, 4, seed=3, health=DataHealth(0.0))
        share = []
        while (record := next(reader)) and reader.epoch == 0:  # the shard end is found on the next read
            share.append(record["__key__"])
        shares.append(share)
        if num_shards >= 4:  # each reader owns whole shards
            owned = {k.split("x")[0] for k in shares[-1]}
            assert all(sum(k.startswith(o + "x") for k in shares[-1]) == 5 for o in owned)
    flat = [k for share in shares for k in share]
    assert len(flat) == len(set(flat)) and sorted(flat) == sorted(keys)


def test_two_ranks_by_two_workers_train_on_the_whole_epoch_once(tmp_path, tok, encoder):
    keys = shard_set(tmp_path / "shards", 8, 5)  # 40 samples: 10 per reader and epoch
    seen = []
    for rank in range(2):
        stream = TrainStream(
            [wds(tmp_path / "shards")], encoder, micro_batch_size=1, packing=False, rank=rank, world_size=2
        )
        for batch in itertools.islice(train_loader(stream, num_workers=2), 20):
            seen += keys_in(batch, tok)
    assert sorted(seen) == sorted(keys)


# ---------------------------------------------------------------- resume
@pytest.mark.parametrize("form", ["tar", "tar.gz", "pipe"])
def test_a_shard_reader_resumes_at_every_position(tmp_path, form):
    """Local tars resume by seeking to the next sample's byte offset; streams that cannot seek skip."""
    for name in ("a", "b"):
        plain = write_tar(tmp_path / f"{name}.tar", [f"s{name}x{i}" for i in range(7)])
        if form == "tar.gz":
            (tmp_path / f"{name}.tar.gz").write_bytes(gzip.compress(plain.read_bytes()))
    path = {"tar": f"{tmp_path}/{{a,b}}.tar", "tar.gz": f"{tmp_path}/{{a,b}}.tar.gz"}.get(form)
    path = path or f"pipe:cat {tmp_path}/{{a,b}}.tar"
    source = WebDatasetSource(wds(path))
    reader = source.reader(0, 1, seed=1, health=DataHealth(0.0))
    states, walk = [], []
    for _ in range(30):  # two epochs and more
        states.append(reader.state_dict())
        walk.append(next(reader)["__key__"])
    assert sorted(walk[:14]) == sorted(f"s{n}x{i}" for n in "ab" for i in range(7))
    for position, state in enumerate(states):
        resumed = source.reader(0, 1, seed=1, health=DataHealth(0.0))
        resumed.load_state_dict(state)
        assert [next(resumed)["__key__"] for _ in range(30 - position)] == walk[position:], position
    seeks = [state["byte"] for state in states if state["offset"]]
    assert all(seeks) if form == "tar" else not any(seeks)


def mixed_sources(folder: Path) -> list[DataSourceConfig]:
    shard_set(folder, 4, 6)
    return [*mix(), wds(folder, weight=2.0)]


@pytest.mark.parametrize("num_workers,packing", [(0, True), (2, True), (2, False)])
def test_resume_at_any_batch_gives_the_uninterrupted_batches(tmp_path, encoder, num_workers, packing):
    sources = mixed_sources(tmp_path / "shards")

    def stream():
        return TrainStream(sources, encoder, seed=5, micro_batch_size=2, packing=packing)

    loader = train_loader(stream(), num_workers=num_workers, keep=40)
    straight = list(itertools.islice(loader, 14))
    for k in (0, 1, 5, 9):
        resumed_loader = train_loader(stream(), num_workers=num_workers)
        resumed_loader.restore(loader.state_after(k))
        resumed = list(itertools.islice(resumed_loader, 14 - k))
        assert len(resumed) == 14 - k
        for a, b in zip(straight[k:], resumed):
            assert_batches_equal(a, b)
    other_seed = next(iter(train_loader(TrainStream(sources, encoder, seed=6, micro_batch_size=2))))
    assert not torch.equal(other_seed["input_ids"], straight[0]["input_ids"])
    for batch in straight:
        assert int((batch["input_ids"] == IMAGE_ID).sum()) == TPI * batch["pixel_values"].shape[0]


def test_resume_state_is_constant_size_and_survives_torch_load_weights_only(tmp_path, encoder):
    loader = train_loader(TrainStream(mixed_sources(tmp_path / "shards"), encoder, seed=0), keep=300)
    sizes = {}
    for count, _ in enumerate(itertools.islice(loader, 200), start=1):
        if count in (20, 200):
            buffer = io.BytesIO()
            torch.save(loader.state_after(count), buffer)
            sizes[count] = len(buffer.getvalue())
            buffer.seek(0)
            assert torch.load(buffer, weights_only=True)["batches"] == count
    # the state holds positions and the packer's pending records, not the history
    assert sizes[200] < 1.5 * sizes[20], sizes
    # and a pending sample of a local tar as where it starts in its shard, not its image bytes
    state = loader.state_after(200)
    assert bytes_in(state) == 0 and "__shard_sample__" in repr(state)


def bytes_in(value) -> int:
    """Bytes held by bytes objects anywhere inside `value` (a stream state)."""
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, dict):
        return sum(bytes_in(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(bytes_in(v) for v in value)
    return 0


def test_a_shard_changed_under_a_pending_sample_is_refused_on_resume(tmp_path, encoder):
    """A pending sample is kept as (shard, byte offset, key): a shard rewritten before the resume would give
    other samples, so the resume refuses it naming the shard and the sample."""
    sources = [wds(tmp_path / "shards")]
    shard_set(tmp_path / "shards", 2, 6)
    loader = train_loader(TrainStream(sources, encoder, seed=0, micro_batch_size=2), keep=10)
    next(iter(loader))
    state = loader.state_after(1)
    assert "__shard_sample__" in repr(state["loader"])  # the packer holds samples not yet trained on
    again = train_loader(TrainStream(sources, encoder, seed=0, micro_batch_size=2))
    again.restore(state)
    next(iter(again))  # the same shards: resumes
    for shard in (tmp_path / "shards").glob("*.tar"):
        write_tar(shard, [f"other{shard.stem}x{i}" for i in range(6)])
    changed = train_loader(TrainStream(sources, encoder, seed=0, micro_batch_size=2))
    changed.restore(state)
    with pytest.raises(
        ConfigError, match=r"s00\d\.tar.* holds .*other.* where the checkpoint's stream had 's"
    ):
        next(iter(changed))


def test_a_changed_world_size_or_worker_count_is_refused(tmp_path, encoder):
    sources = mixed_sources(tmp_path / "shards")
    loader = train_loader(TrainStream(sources, encoder, seed=0, micro_batch_size=2), num_workers=2)
    next(iter(loader))
    state = loader.state_after(1)
    with pytest.raises(ConfigError, match="Exact resume needs the same layout"):
        train_loader(TrainStream(sources, encoder, seed=0, micro_batch_size=2), num_workers=1).restore(state)
    with pytest.raises(ConfigError, match="world_size=1 x data.num_workers=2.*world_size=2"):
        train_loader(
            TrainStream(sources, encoder, seed=0, micro_batch_size=2, rank=0, world_size=2), num_workers=2
        ).restore(state)
    with pytest.raises(ConfigError, match="mixed sources"):
        train_loader(TrainStream(sources[:3], encoder, seed=0, micro_batch_size=2), num_workers=2).restore(
            state
        )


# ---------------------------------------------------------------- bad data
def test_corrupt_images_and_a_truncated_shard_are_skipped_and_counted(tmp_path, tok, encoder):
    folder = tmp_path / "shards"
    folder.mkdir()
    good = jpeg((200, 10, 10), size=96)
    truncated_jpeg = good[: len(good) * 3 // 4]  # a valid header, then the data stops
    write_tar(
        folder / "a.tar", ["sax0", "sax1", "sax2", "sax3"], {"sax1": b"not an image", "sax2": truncated_jpeg}
    )
    whole = write_tar(tmp_path / "b-whole.tar", [f"sbx{i}" for i in range(6)]).read_bytes()
    (folder / "b.tar").write_bytes(whole[: len(whole) // 2])  # cut in the middle of the shard
    readable_b = [
        s["response"].split()[1] for s in WebDatasetSource(wds(folder / "b.tar")).samples_in_order()
    ]
    assert 0 < len(readable_b) < 6
    stream = TrainStream([wds(folder)], encoder, micro_batch_size=1, packing=False, max_bad_fraction=1.0)
    loader = train_loader(stream, keep=100)
    epoch = 2 + len(readable_b)  # one sample per batch; the first batch after it starts epoch 1
    trained = [k for batch in itertools.islice(loader, epoch + 1) for k in keys_in(batch, tok)]
    assert sorted(trained[:epoch]) == sorted(["sax0", "sax3", *readable_b])
    health = data_health(loader.state_after(epoch + 1))
    reasons = health["bad"]["wds"]
    assert reasons == {"bad sample": 1, "bad image": 1, "unreadable shard rest": 1}, reasons
    places = health["places"]["wds"]
    assert places[str(folder / "a.tar")] == 2 and places[str(folder / "b.tar")] == 1


def test_a_shard_cut_at_a_member_boundary_is_counted_not_silent(tmp_path):
    """tarfile ends quietly when a tar stops exactly between members; the missing end blocks give it away."""
    whole = write_tar(tmp_path / "whole.tar", [f"scx{i}" for i in range(8)])
    with tarfile.open(whole) as tar:
        cut = next(m.offset for m in tar.getmembers() if m.name == "scx5.json")  # a header boundary
    (tmp_path / "cut.tar").write_bytes(whole.read_bytes()[:cut])
    health = DataHealth(1.0)
    source = WebDatasetSource(wds(tmp_path / "cut.tar"))
    reader = source.reader(0, 1, 0, health)
    keys = [next(reader)["__key__"] for _ in range(5)]
    assert keys == [f"scx{i}" for i in range(5)]
    next(reader)  # the next read finds the end: counted, then the epoch starts again
    assert health.bad["wds"] == {"unreadable shard rest": 1}


def test_16_bit_images_are_scaled_not_clipped():
    array = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    decoded = np.asarray(decode_image(buffer.getvalue()))
    expected = np.round(array.astype(np.float64) / 65535 * 255).astype(np.uint8)
    assert decoded.shape == (8, 8, 3) and np.abs(decoded[..., 0].astype(int) - expected).max() <= 1
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red: white on a white background
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    assert np.asarray(decode_image(buffer.getvalue()))[0, 0].tolist() == [255, 255, 255]


def test_too_many_bad_samples_stop_the_run_naming_the_worst_shard(tmp_path, encoder):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_tar(folder / "good.tar", [f"sgx{i}" for i in range(40)])
    write_tar(folder / "bad.tar", [f"sbx{i}" for i in range(12)], {f"sbx{i}": b"garbage" for i in range(12)})
    stream = TrainStream([wds(folder)], encoder, micro_batch_size=4)
    with pytest.raises(
        ConfigError, match=r"more than data.max_bad_fraction=0.001; worst: .*bad.tar \(1[0-2] bad\)"
    ):
        list(itertools.islice(train_loader(stream), 30))
    with pytest.raises(ConfigError, match="max_bad_fraction"):
        TrainStream([wds(folder)], encoder, max_bad_fraction=2.0)


def test_the_cli_reports_a_worker_error_in_one_line(tmp_path):
    from vlmlab.cli import one_line

    stream_error = ConfigError(
        "Caught ConfigError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        "  File \"x.py\", line 1, in f\nvlmlab.errors.ConfigError: source 'wds': 12 of 40 samples read are bad"
    )
    assert one_line(stream_error) == "source 'wds': 12 of 40 samples read are bad"


# ---------------------------------------------------------------- URLs, compression, manifest
def test_pipe_and_tar_gz_urls_read_the_same_samples(tmp_path):
    plain = write_tar(tmp_path / "p.tar", [f"spx{i}" for i in range(5)])
    (tmp_path / "p.tar.gz").write_bytes(gzip.compress(plain.read_bytes()))
    expected = [s["response"] for s in WebDatasetSource(wds(plain)).samples_in_order()]
    assert len(expected) == 5
    for path in (f"pipe:cat {plain}", str(tmp_path / "p.tar.gz")):
        got = list(WebDatasetSource(wds(path)).samples_in_order())
        assert [s["response"] for s in got] == expected, path
        assert got[0]["segments"][0]["image"].size == (24, 24)


def test_manifest_gives_epoch_sizes_without_opening_shards(tmp_path, encoder):
    shard_set(tmp_path / "shards", 3, 4)
    run = subprocess.run(
        [sys.executable, "-m", "vlmlab.cli", "data", "index", str(tmp_path / "shards" / "s{000..002}.tar")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    manifest = tmp_path / "shards" / "shards.json"
    index = json.loads(manifest.read_text())
    assert (
        index["__kind__"] == "wids-shard-index-v1" and [e["nsamples"] for e in index["shardlist"]] == [4] * 3
    )
    assert index["shardlist"][0]["url"] == "s000.tar"  # relative to the manifest
    listed = read_manifest(manifest)
    assert listed.num_samples == 12 and listed.urls[0] == str(tmp_path / "shards" / "s000.tar")
    assert expand_shards(str(tmp_path / "shards")).counts == (4, 4, 4)  # a directory uses its manifest
    with_manifest = TrainStream([wds(manifest)], encoder).describe()
    assert with_manifest == ["wds: weight 1.000, 12 samples per epoch"]
    without = TrainStream([wds(tmp_path / "shards" / "s{000..002}.tar")], encoder).describe()
    assert "epoch size unknown (no shard manifest" in without[0]


# ---------------------------------------------------------------- writing shards
def test_written_shards_keep_the_original_image_encoding(tmp_path):
    photo = jpeg((120, 60, 30), size=64)
    source = WebDatasetSource(wds(write_tar(tmp_path / "in.tar", ["sjx0"], {"sjx0": photo})))
    sample = next(source.samples_in_order())
    copy = write_shard([{**sample, "id": "copy"}], tmp_path / "out.tar")
    with tarfile.open(copy) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert members["copy.0.jpg"] == photo  # the same bytes, not a PNG re-encoding
    fresh = write_shard(
        [{**sample, "id": "fresh", "segments": [{"type": "image", "image": Image.new("RGB", (4, 4))}]}],
        tmp_path / "f.tar",
    )
    with tarfile.open(fresh) as tar:
        assert "fresh.0.png" in tar.getnames()  # a generated image is stored losslessly
    assert decode_image(photo).info["vlmlab.encoded"] == photo


def test_webdataset_shard_in_the_documented_schema_reads_back(tmp_path, encoder):
    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    red, blue = Image.new("RGB", (12, 10), (200, 10, 10)), Image.new("RGB", (9, 9), (10, 10, 200))
    path = tmp_path / "shard-000.tar"
    s1 = {
        "segments": [
            {"type": "text", "text": "Compare "},
            {"type": "image", "image": "0.png"},
            {"type": "text", "text": " and "},
            {"type": "image", "image": "1.png"},
        ],
        "response": "Final answer: red",
        "answer": "red",
        "options": ["red", "blue"],
        "kind": "interleaved",
    }
    s2 = {
        "id": "second",
        "segments": [{"type": "image"}, {"type": "text", "text": "Describe."}],
        "response": "b",
    }
    with tarfile.open(path, "w") as tar:
        add_member(tar, "s1.json", json.dumps(s1).encode())
        add_member(tar, "s1.0.png", png(red))
        add_member(tar, "s1.1.png", png(blue))
        add_member(tar, "s2.json", json.dumps(s2).encode())
        add_member(tar, "s2.png", png(blue))
        add_member(
            tar, "s3.json", json.dumps({"prompt": "What is 2+2?", "response": "4", "kind": "text"}).encode()
        )
    first, second, third = WebDatasetSource(wds(path)).samples_in_order()
    assert first["id"] == "s1" and first["source"] == "wds" and first["options"] == ["red", "blue"]
    assert [s["type"] for s in first["segments"]] == ["text", "image", "text", "image"]
    assert np.array_equal(np.asarray(first["segments"][1]["image"]), np.asarray(red))
    assert np.array_equal(np.asarray(first["segments"][3]["image"]), np.asarray(blue))
    assert second["id"] == "second" and np.array_equal(
        np.asarray(second["segments"][0]["image"]), np.asarray(blue)
    )
    assert third["prompt"] == "What is 2+2?" and "segments" not in third
    again = list(
        WebDatasetSource(wds(write_shard([first, second, third], tmp_path / "copy.tar"))).samples_in_order()
    )
    for original, copy in zip((first, second, third), again):
        assert copy.keys() == original.keys() and copy["response"] == original["response"]
    stream = TrainStream([wds(tmp_path / "{shard-000,copy}.tar")], encoder, micro_batch_size=2)
    batch = next(iter(train_loader(stream)))
    assert int((batch["input_ids"] == IMAGE_ID).sum()) == TPI * batch["pixel_values"].shape[0]


def test_webdataset_reads_written_synthetic_splits(tmp_path):
    from vlmlab.data.samples import synthetic_to_sample
    from vlmlab.data.synthetic import write_split

    files = write_split("grid", "test", tmp_path, num=3, image_size=SIZE)
    got = list(
        WebDatasetSource(
            DataSourceConfig(kind="webdataset", path=str(files.shards[0]), mode="vqa")
        ).samples_in_order()
    )
    for raw, sample in zip(generate_split("grid", "test", 3, image_size=SIZE), got, strict=True):
        expected = synthetic_to_sample(raw, "vqa")
        assert sample["response"] == expected["response"] and sample["segments"][1] == expected["segments"][1]
        assert np.array_equal(
            np.asarray(sample["segments"][0]["image"]), np.asarray(raw["image"].convert("RGB"))
        )


def test_missing_shards_and_bad_configs_are_one_clear_error(tmp_path, encoder):
    with pytest.raises(ConfigError, match="does not exist"):
        TrainStream([wds(tmp_path / "absent.tar")], encoder)
    with pytest.raises(ConfigError, match="no .tar / .tar.gz shards"):
        TrainStream([wds(tmp_path)], encoder)
    data = DataConfig(train=mix(), max_length=256, micro_batch_size=3, packing=True)
    assert next(iter(train_loader(TrainStream.from_config(data, encoder, seed=0))))["input_ids"].shape == (
        3,
        256,
    )
    with pytest.raises(ConfigError, match="max_length"):
        TrainStream.from_config(DataConfig(train=mix(), max_length=128), encoder, seed=0)
    with pytest.raises(ConfigError, match="kind"):
        TrainStream([DataSourceConfig(kind="parquet")], encoder)
    with pytest.raises(ConfigError, match="mode"):
        TrainStream([DataSourceConfig(mode="vqqa")], encoder)
    with pytest.raises(ConfigError, match="at least one"):
        TrainStream([], encoder)
    with pytest.raises(ConfigError, match="weights"):
        TrainStream(mix((0.0, 0.0, 0.0)), encoder)


# ---------------------------------------------------------------- mixture, epochs, packing, LoMo
def test_mixture_frequencies_match_the_weights(encoder):
    weights = (5.0, 2.0, 1.0)
    n = 1500
    items = TrainStream(mix(weights), encoder, seed=0, packing=False).planned_items(n)
    counts = np.bincount([source for source, _, _ in items], minlength=3)
    for count, weight in zip(counts, weights):
        p = weight / sum(weights)
        assert abs(count - n * p) <= 4.5 * math.sqrt(n * p * (1 - p)), (counts, weights)
    zero = TrainStream(mix((1.0, 0.0, 1.0)), encoder, seed=0).planned_items(2000)
    assert all(source != 1 for source, _, _ in zero)


def test_fixed_split_cycles_through_every_sample_each_epoch(encoder):
    source = DataSourceConfig(name="tqa", task="grid", mode="tqa", num_samples=7)
    for num_workers in (1, 2):
        shares = [
            [
                record["index"]
                for _, record, _ in TrainStream([source], encoder).planned_items(
                    21 // num_workers * 2, w, num_workers
                )
            ]
            for w in range(num_workers)
        ]
        walk = [i for step in itertools.zip_longest(*shares) for i in step if i is not None][:21]
        for epoch in range(3):
            assert sorted(walk[7 * epoch : 7 * epoch + 7]) == list(range(7))
        assert walk[:7] != walk[7:14]  # reshuffled per epoch


def test_packing_fills_rows_on_a_realistic_mix(encoder):
    difficulty = {
        "spatialmap": {"num_objects": [3, 8]},
        "grid": {"min_steps": 1, "max_steps": 8},
        "ring": {"num_objects": [3, 12], "max_steps": 12},
    }
    sources = [
        DataSourceConfig(name=f"{mode}-{task}", task=task, mode=mode, difficulty=knobs, image_size=SIZE)
        for task, knobs in difficulty.items()
        for mode in ("vqa", "tqa", "caption")
    ]
    packed = list(
        itertools.islice(train_loader(TrainStream(sources, encoder, seed=0, micro_batch_size=8)), 100)
    )
    fill = sum(b["num_real_tokens"] for b in packed) / sum(b["input_ids"].numel() for b in packed)
    assert fill >= 0.95
    padded_stream = TrainStream(sources, encoder, seed=0, micro_batch_size=8, packing=False)
    padded = list(itertools.islice(train_loader(padded_stream), 50))
    assert sum(b["num_real_tokens"] for b in padded) / sum(b["input_ids"].numel() for b in padded) < fill


def test_lomo_rewrites_text_only_samples_on_the_fly(tok):
    from vlmlab.data.encode import SampleEncoder

    lomo_encoder = SampleEncoder(tok, lambda image: torch.zeros(3, 16, 16), 4, IMAGE_ID, max_length=400)
    source = DataSourceConfig(kind="synthetic", task="ring", mode="tqa", difficulty={"num_objects": 4})
    data = DataConfig(
        train=[source], max_length=400, micro_batch_size=2, lomo={"rewrite_ratio": 1.0, "seed": 3}
    )
    # building each batch checks every encoded length against the length counted without rendering
    batches = list(itertools.islice(train_loader(TrainStream.from_config(data, lomo_encoder, seed=0)), 3))
    for batch in batches:
        placeholders = int((batch["input_ids"] == IMAGE_ID).sum())
        assert placeholders > 0 and placeholders == batch["pixel_values"].shape[0] * 4
    off = DataConfig(train=[source], max_length=400, micro_batch_size=2)
    plain = next(iter(train_loader(TrainStream.from_config(off, lomo_encoder, seed=0))))
    assert int((plain["input_ids"] == IMAGE_ID).sum()) == 0


def test_lomo_matched_ratio_resamples_the_mixture(tok):
    """Table 5 'matched': with half the text rewritten, image-bearing : text-only comes back to 1:1."""
    from vlmlab.data.encode import SampleEncoder

    lomo_encoder = SampleEncoder(tok, lambda image: torch.zeros(3, 16, 16), 4, IMAGE_ID, max_length=400)
    easy = {"num_objects": 4}
    sources = [
        DataSourceConfig(kind="synthetic", task="ring", mode="vqa", difficulty=easy, weight=1.0),
        DataSourceConfig(kind="synthetic", task="ring", mode="tqa", difficulty=easy, weight=1.0),
    ]
    counts = {}
    for ratio in (None, 1.0):
        lomo = {"rewrite_ratio": 0.5, "seed": 1, "image_text_ratio": ratio}
        data = DataConfig(train=sources, max_length=400, micro_batch_size=1, packing=False, lomo=lomo)
        stream = TrainStream.from_config(data, lomo_encoder, seed=0)
        opened = stream.open_sources()
        groups = {"multimodal": 0, "rendered": 0, "text_only": 0}
        for source, record, _ in stream.planned_items(4000):
            groups[opened[source].group(record)] += 1
        counts[ratio] = groups
    natural = counts[None]
    # natural mix: image-bearing = 1/2 + 1/4, text-only = 1/4 -> 3:1 (LoMo's 2M + 2M at 50%)
    assert 2.6 < (natural["multimodal"] + natural["rendered"]) / natural["text_only"] < 3.4
    matched = counts[1.0]
    assert 0.9 < (matched["multimodal"] + matched["rendered"]) / matched["text_only"] < 1.1
