"""Base-weight provenance: what a model was built from is recorded (source, hub revision, file sha256),
written into stage checkpoints, and a delta is refused on top of other base weights."""

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vlmlab.config import ExperimentConfig, load_config, to_dict
from vlmlab.errors import ConfigError
from vlmlab.models import provenance
from vlmlab.models.backbone import build_backbone
from vlmlab.models.checkpoint import load_stage_checkpoint, save_stage_checkpoint
from vlmlab.models.provenance import file_sha256, pretrained_files, weight_record
from vlmlab.models.tokenizers import build_tokenizer, load_tokenizer_spec
from vlmlab.models.vlm import build_vlm
from vlmlab.recipes import load_recipe
from vlmlab.train.freezing import apply_freezing

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_backbone(folder: Path, seed: int) -> Path:
    """A tiny Qwen3 as save_pretrained writes it (config.json + model.safetensors), weights from `seed`."""
    torch.manual_seed(seed)
    build_backbone("qwen3-tiny").save_pretrained(folder)
    return folder / "model.safetensors"


def model_config(**model) -> dict:
    return {"backbone": "qwen3-tiny", "tokenizer": "clip-tiny", "random_tokenizer": True, **model}


def save_delta(model, folder: Path, recipe: str, stage: int) -> Path:
    """A stage checkpoint of `model` trained under `recipe` (only the trained groups are stored)."""
    apply_freezing(model, load_recipe(recipe), stage)
    config = load_config(
        ExperimentConfig,
        [{"model": dataclasses.asdict(model.config), "train": {"stage": stage, "freeze": recipe}}],
    )
    return save_stage_checkpoint(model, folder, to_dict(config), parent=None, include_frozen=False)


def test_backbone_record_is_the_sha256_of_the_safetensors_file(tmp_path):
    weights = save_backbone(tmp_path / "base", seed=0)
    model = build_vlm(model_config(backbone_weights=str(tmp_path / "base")))
    record = model.base_weights["backbone"]
    assert record["source"] == str(tmp_path / "base")
    assert record["sha256"] == sha256_of(weights)
    assert record["files"] == [
        {"path": str(weights), "bytes": weights.stat().st_size, "sha256": sha256_of(weights)}
    ]
    assert record["revision"] is None  # a plain folder, not the hub cache
    assert model.base_weights["image_tokenizer"] is None  # random init


def test_random_init_records_nothing():
    model = build_vlm(model_config())
    assert model.base_weights == {"backbone": None, "image_tokenizer": None}


def test_delta_on_changed_backbone_weights_is_refused(tmp_path):
    base = tmp_path / "base"
    old = sha256_of(save_backbone(base, seed=0))
    model = build_vlm(model_config(backbone_weights=str(base)))
    folder = save_delta(model, tmp_path / "run" / "final", "all-frozen", stage=1)  # the adapter only
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["base_weights"] == model.base_weights
    assert meta["base_weights"]["backbone"]["sha256"] == old

    # the same base: loads
    load_stage_checkpoint(build_vlm(model_config(backbone_weights=str(base))), folder)
    # the base re-saved with other weights: the delta would silently sit on another model
    new = sha256_of(save_backbone(base, seed=1))
    assert new != old
    changed = build_vlm(model_config(backbone_weights=str(base)))
    with pytest.raises(ConfigError) as error:
        load_stage_checkpoint(changed, folder.parent)
    message = str(error.value)
    assert "\n" not in message
    assert f"{folder} was trained on backbone weights sha256 {old[:12]}" in message
    assert f"built from sha256 {new[:12]}" in message


def test_a_delta_that_overwrites_the_whole_backbone_does_not_care_about_its_base(tmp_path):
    base = tmp_path / "base"
    save_backbone(base, seed=0)
    model = build_vlm(model_config(backbone_weights=str(base)))
    folder = save_delta(model, tmp_path / "s2" / "final", "unfreeze-lm", stage=2)  # every LM parameter
    save_backbone(base, seed=1)
    load_stage_checkpoint(build_vlm(model_config(backbone_weights=str(base))), folder)


def test_checkpoints_without_records_and_random_models_are_not_checked(tmp_path):
    base = tmp_path / "base"
    save_backbone(base, seed=0)
    model = build_vlm(model_config(backbone_weights=str(base)))
    folder = save_delta(model, tmp_path / "run" / "final", "all-frozen", stage=1)
    load_stage_checkpoint(build_vlm(model_config()), folder)  # random-init model: nothing to compare
    meta = json.loads((folder / "meta.json").read_text())
    del meta["base_weights"]  # a checkpoint written before vlmlab recorded base weights
    (folder / "meta.json").write_text(json.dumps(meta))
    save_backbone(base, seed=1)
    load_stage_checkpoint(build_vlm(model_config(backbone_weights=str(base))), folder)


def save_tokenizer_weights(name: str, folder: Path, seed: int) -> Path:
    """`name`'s tiny tokenizer saved in its library's real format; returns what `tokenizer_weights` names."""
    torch.manual_seed(seed)
    spec = load_tokenizer_spec(name)
    folder.mkdir(parents=True, exist_ok=True)
    if spec.library == "open_clip":
        import open_clip

        state = open_clip.create_model(spec.arch, pretrained=None, **spec.arch_kwargs).state_dict()
    elif spec.library == "timm":
        import timm

        state = timm.create_model(spec.arch, pretrained=False, num_classes=0, **spec.arch_kwargs).state_dict()
    elif spec.library == "transformers":
        build_tokenizer(spec, pretrained=None).model.save_pretrained(folder)
        return folder
    else:  # vlmlab's own TiTok / VAR: their state dict is the release format
        state = build_tokenizer(spec, pretrained=None).state_dict()
    path = folder / "weights.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return path


@pytest.mark.parametrize("name", ["clip-tiny", "siglip2-tiny", "dinov3-tiny-hf", "titok-tiny", "var-tiny"])
def test_tokenizer_weights_are_recorded_and_checked(tmp_path, name):
    weights = save_tokenizer_weights(name, tmp_path / "tok", seed=0)
    config = model_config(tokenizer=name, random_tokenizer=False, tokenizer_weights=str(weights))
    model = build_vlm(config)
    record = model.base_weights["image_tokenizer"]
    file = weights / "model.safetensors" if weights.is_dir() else weights
    assert record["source"] == str(weights)
    assert [entry["path"] for entry in record["files"]] == [str(file)]
    old = sha256_of(file)
    assert record["sha256"] == old
    folder = save_delta(model, tmp_path / "run" / "final", "all-frozen", stage=1)  # tokenizer frozen
    assert json.loads((folder / "meta.json").read_text())["base_weights"]["image_tokenizer"]["sha256"] == old

    save_tokenizer_weights(name, tmp_path / "tok", seed=1)
    new = sha256_of(file)
    assert new != old
    with pytest.raises(
        ConfigError, match=f"trained on image tokenizer weights sha256 {old[:12]}.*{new[:12]}"
    ):
        load_stage_checkpoint(build_vlm(config), folder)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache in tmp: `snapshot(repo_id)` makes models--org--name/snapshots/<COMMIT>/."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def snapshot(repo_id: str) -> Path:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(COMMIT)
        (repo / "snapshots" / COMMIT).mkdir(parents=True)
        return repo / "snapshots" / COMMIT

    return snapshot


def test_backbone_from_the_hub_cache_records_its_commit(hub_cache):
    snapshot = hub_cache("org/tiny")
    weights = save_backbone(snapshot, seed=0)
    for source in ("org/tiny", str(snapshot)):  # a hub id, and the snapshot folder given as a path
        record = build_backbone("qwen3-tiny", weights=source).base_weight_record
        assert record["source"] == source and record["revision"] == COMMIT
        assert record["sha256"] == sha256_of(weights)
    assert pretrained_files("org/absent") is None  # not cached: the loader could not have read it either


@pytest.mark.parametrize(
    "name, tag, repo, filename",
    [
        ("siglip2-tiny", "v2_webli", "timm/vit_base_patch16_siglip_224.v2_webli", "model.safetensors"),
        ("clip-tiny", "openai", "timm/vit_base_patch16_clip_224.openai", "open_clip_model.safetensors"),
    ],
)
def test_library_tags_record_the_cached_hub_file(hub_cache, tmp_path, name, tag, repo, filename):
    # the tiny architecture's weights where the library looks for the tag's release in the hub cache
    source = save_tokenizer_weights(name, tmp_path / "tok", seed=0)
    weights = hub_cache(repo) / filename
    source.rename(weights)
    record = build_tokenizer(name, pretrained=tag).base_weight_record
    assert record["source"] == tag and record["revision"] == COMMIT
    assert [entry["path"] for entry in record["files"]] == [str(weights)]
    assert record["sha256"] == sha256_of(weights)


def test_sharded_folders_record_every_shard(tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    shards = []
    for i in range(2):
        shards.append(folder / f"model-0000{i + 1}-of-00002.safetensors")
        save_file({f"w{i}": torch.full((3,), float(i))}, str(shards[-1]))
    index = {"metadata": {}, "weight_map": {"w0": shards[0].name, "w1": shards[1].name}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert provenance.pretrained_folder_files(folder) == shards
    record = weight_record("sharded", shards)
    assert [entry["sha256"] for entry in record["files"]] == [sha256_of(s) for s in shards]
    assert record["sha256"] not in {sha256_of(s) for s in shards}  # one digest over both


def test_hashes_are_cached_per_file_version(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 1000)
    first = file_sha256(path)
    cached = len(provenance._HASHES)
    assert file_sha256(path) == first and len(provenance._HASHES) == cached
    path.write_bytes(b"b" * 1001)
    assert file_sha256(path) == sha256_of(path) != first


def test_a_loader_that_cannot_tell_its_files_records_the_source_only():
    def unknown():
        raise OSError("not traceable")

    record = provenance.record_loaded("some/tag", unknown)
    assert record == {"source": "some/tag", "revision": None, "sha256": None, "files": None}


def test_training_records_base_weights_and_a_later_stage_refuses_a_changed_base(tmp_path):
    from vlmlab.train.run import train

    base = tmp_path / "base"
    old = sha256_of(save_backbone(base, seed=0))

    def experiment(name: str, stage: int, **train) -> ExperimentConfig:
        mode = "caption" if stage == 1 else "vqa"
        data = {"max_length": 96, "micro_batch_size": 4, "train": [{"kind": "synthetic", "mode": mode}]}
        settings = {"stage": stage, "freeze": "all-frozen", "max_steps": 1, "global_batch_size": 4, **train}
        settings["output_dir"] = str(tmp_path / name)
        model = model_config(backbone_weights=str(base))
        return load_config(ExperimentConfig, [{"model": model, "data": data, "train": settings}])

    train(experiment("s1", 1))
    meta = json.loads((tmp_path / "s1" / "final" / "meta.json").read_text())
    assert meta["base_weights"]["backbone"]["sha256"] == old
    new = sha256_of(save_backbone(base, seed=1))
    with pytest.raises(ConfigError, match=f"sha256 {old[:12]}.* built from sha256 {new[:12]}"):
        train(experiment("s2", 2, init_from=str(tmp_path / "s1")))
