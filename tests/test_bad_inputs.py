"""A catalogue of bad inputs through the CLI's entry point (`vlmlab.cli.main`, in process): each must end
with a non-zero exit, one line naming the offending value, no traceback, and nothing in the run folder that
a later run could mistake for progress (no checkpoint, final weights or result)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vlmlab.cli import main

TINY = {
    "model": {"backbone": "qwen3-tiny", "tokenizer": "clip-tiny", "random_tokenizer": True},
    "data": {"max_length": 96, "micro_batch_size": 4, "train": [{"kind": "synthetic", "mode": "caption"}]},
    "train": {"stage": 1, "freeze": "unfreeze-all", "max_steps": 2, "global_batch_size": 4},
}


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def tiny_config(tmp: Path, **sections) -> Path:
    data = OmegaConf.merge(OmegaConf.create(TINY), OmegaConf.create(sections))
    data.train.output_dir = str(tmp / "run")
    return write(tmp / "exp.yaml", OmegaConf.to_yaml(data))


def finished_run(tmp: Path) -> None:
    """A finished run's folder (result.json with its config), without training one."""
    config = tiny_config(tmp)
    from vlmlab.config import ExperimentConfig, load_config, to_dict

    resolved = to_dict(load_config(ExperimentConfig, [str(config)]))
    record = {"run_id": "run", "config": resolved, "metrics": {"spatialmap/accuracy": 0.5}, "stage": 1}
    write(tmp / "run" / "result.json", json.dumps(record))


def two_fusions(tmp: Path) -> None:
    """Finished Joint-Decoder and MoT runs whose records carry scores only (no per-sample outcomes)."""
    finished_run(tmp)
    record = json.loads((tmp / "run" / "result.json").read_text())
    record["run_id"], record["config"]["model"]["fusion"] = "mot", "mot"
    write(tmp / "mot" / "result.json", json.dumps(record))


def resumable_run(tmp: Path) -> None:
    from vlmlab.config import ExperimentConfig, load_config, to_dict

    config = tiny_config(tmp)
    resolved = to_dict(load_config(ExperimentConfig, [str(config)]))
    write(tmp / "run" / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    torch.save({"global_step": 1}, tmp / "stub.pt")
    write(tmp / "run" / "checkpoints" / "last.ckpt", (tmp / "stub.pt").read_bytes())


def fake_parent(tmp: Path, fusion: str = "cross_attention", weights: bytes | None = None) -> Path:
    from safetensors.torch import save_file

    folder = tmp / "parent" / "final"
    folder.mkdir(parents=True)
    if weights is None:
        save_file({}, str(folder / "weights.safetensors"))
    else:
        write(folder / "weights.safetensors", weights)
    write(folder / "meta.json", json.dumps({"parent": None, "fusion": fusion, "stage": 1}))
    return folder


def llava(tmp: Path, image: str = "a.jpg") -> Path:
    rows = [
        {
            "image": image,
            "conversations": [{"from": "human", "value": "<image>hi"}, {"from": "gpt", "value": "x"}],
        }
    ]
    return write(tmp / "llava.json", json.dumps(rows))


def parquet(tmp: Path) -> Path:
    import datasets

    path = tmp / "d.parquet"
    datasets.Dataset.from_dict({"q": ["a?"], "a": ["b"]}).to_parquet(str(path))
    return path


def shard_with_an_empty_response(tmp: Path) -> Path:
    from PIL import Image

    path = tmp / "s.tar"
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(buffer, format="PNG")
    with tarfile.open(path, "w") as tar:
        for key, response in (("k0", "a red square"), ("k1", "  "), ("k2", "a red one"), ("k3", "red")):
            record = {
                "segments": [{"type": "image"}, {"type": "text", "text": "Describe."}],
                "response": response,
            }
            for name, data in (
                (f"{key}.json", json.dumps(record).encode()),
                (f"{key}.png", buffer.getvalue()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def wrong_family(tmp: Path) -> Path:
    """Weights of another architecture: a long list of missing keys."""
    from safetensors.torch import save_file

    save_file({f"blocks.{i}.weight": torch.zeros(2) for i in range(300)}, str(tmp / "w.safetensors"))
    return tmp / "w.safetensors"


def malicious_pickle(path: Path, marker: Path) -> Path:
    """A torch.save file whose pickle would create `marker` when loaded without weights_only."""

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": Payload()}, path)
    return path


def poisoned_backbone_folder(tmp: Path) -> Path:
    """A save_pretrained-like folder for the qwen3-tiny preset whose pytorch_model.bin would run code."""
    from vlmlab.models.backbone import load_backbone_spec

    folder = tmp / "poisoned"
    load_backbone_spec("qwen3-tiny").to_hf_config("sdpa").save_pretrained(str(folder))
    malicious_pickle(folder / "pytorch_model.bin", tmp / "PWNED")
    return folder


def running_run(tmp: Path) -> Path:
    """A run folder still training: config.yaml and a resume checkpoint, no best/ or final/ yet."""
    resumable_run(tmp)
    return tmp / "run"


def not_a_tar(tmp: Path) -> Path:
    return write(tmp / "shards" / "notes.tar", "these are my notes, not a tar archive\n")


HELD_LOCKS = []


def locked_run(tmp: Path) -> Path:
    """A run folder that another process holds (a child taking the run lock and sleeping)."""
    import subprocess
    import sys
    import time

    config = tiny_config(tmp)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from vlmlab.train.preflight import "
         "RunLock; lock = RunLock(Path(sys.argv[1])).__enter__(); print('held', flush=True); time.sleep(60)",
         str(tmp / "run")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    HELD_LOCKS.append(holder)
    time.sleep(0.1)
    return config


# (id, argv builder: tmp -> list[str], text the error must contain)
CASES = [
    ("yaml-tab", lambda t: ["train", str(write(t / "a.yaml", "train:\n\tmax_steps: 3\n"))], "not valid YAML"),
    ("yaml-bracket", lambda t: ["train", str(write(t / "a.yaml", "data: {train: [\n"))], "a.yaml' is not valid YAML"),
    ("override-no-value", lambda t: ["train", str(tiny_config(t)), "model.fusion"], "model.fusion=..."),
    ("override-bad-value", lambda t: ["train", str(tiny_config(t)), "data.train=[1"], "data.train=[1"),
    ("override-empty-key", lambda t: ["train", str(tiny_config(t)), "train..max_steps=3"], "empty key part"),
    ("config-is-folder", lambda t: ["train", str(t)], "is a folder"),
    ("config-missing", lambda t: ["train", str(t / "nope.yaml")], "nope.yaml' does not exist"),
    ("typo", lambda t: ["train", str(tiny_config(t)), "train.max_stpes=3"], "Did you mean 'train.max_steps'"),
    ("fusion", lambda t: ["train", str(tiny_config(t)), "model.fusion=moe"], "'moe'"),
    ("micro-batch-0", lambda t: ["train", str(tiny_config(t)), "data.micro_batch_size=0"], "data.micro_batch_size"),
    ("global-batch-0", lambda t: ["train", str(tiny_config(t)), "train.global_batch_size=0"], "global_batch_size"),
    ("global-batch-negative", lambda t: ["train", str(tiny_config(t)), "train.global_batch_size=-8"], "-8"),
    ("max-steps-0", lambda t: ["train", str(tiny_config(t)), "train.max_steps=0"], "train.max_steps"),
    ("max-steps-negative", lambda t: ["train", str(tiny_config(t)), "train.max_steps=-5"], "-5"),
    ("lr-nan", lambda t: ["train", str(tiny_config(t)), "optim.lr.adapter=nan"], "optim.lr.adapter"),
    ("lr-inf", lambda t: ["train", str(tiny_config(t)), "optim.lr.language_model=inf"], "optim.lr.language_model"),
    ("lr-negative", lambda t: ["train", str(tiny_config(t)), "optim.lr.adapter=-1"], "optim.lr.adapter"),
    ("indivisible", lambda t: ["train", str(tiny_config(t)), "train.global_batch_size=6"], "not a multiple"),
    ("freeze-file", lambda t: ["train", str(tiny_config(t)), "train.freeze=nothere.yaml"], "nothere.yaml"),
    ("freeze-name", lambda t: ["train", str(tiny_config(t)), "train.freeze=nothere"], "'nothere'"),
    ("tokenizer-preset", lambda t: ["train", str(tiny_config(t)), "model.tokenizer=clip-huge-x"], "clip-huge-x"),
    ("backbone-preset", lambda t: ["train", str(tiny_config(t)), "model.backbone=qwen9"], "qwen9"),
    ("backbone-missing", lambda t: ["train", str(tiny_config(t)), "model.backbone_weights=/no/such"], "/no/such"),
    ("backbone-no-config", lambda t: ["train", str(tiny_config(t)), f"model.backbone_weights={t}"], "config.json"),
    ("tokenizer-weights-missing", lambda t: ["train", str(tiny_config(t)), "model.tokenizer_weights=/no/w.pt"], "/no/w.pt"),
    ("tokenizer-other-family", lambda t: ["train", str(tiny_config(t)), "model.random_tokenizer=false", f"model.tokenizer_weights={wrong_family(t)}"], "more characters"),
    ("text-tokenizer-folder", lambda t: ["train", str(tiny_config(t)), f"data.text_tokenizer={t}"], "Could not load text tokenizer"),
    ("init-from-missing", lambda t: ["train", str(tiny_config(t)), f"train.init_from={t}/none"], "init_from"),
    ("init-from-not-a-run", lambda t: ["train", str(tiny_config(t)), f"train.init_from={t}"], "No vlmlab checkpoint"),
    ("init-from-truncated", lambda t: ["train", str(tiny_config(t)), f"train.init_from={fake_parent(t, 'joint_decoder', b'xx')}"], "weights.safetensors cannot be read"),
    ("init-from-other-fusion", lambda t: ["train", str(tiny_config(t)), "model.fusion=mot", f"train.init_from={fake_parent(t)}"], "trained with fusion 'cross_attention'"),
    ("source-kind", lambda t: ["train", str(tiny_config(t)), "data.train.0.kind=parquet"], "'parquet'"),
    ("source-mode", lambda t: ["train", str(tiny_config(t)), "data.train.0.mode=vqqa"], "'vqqa'"),
    ("source-index", lambda t: ["train", str(tiny_config(t)), "data.train.3.path=/x"], "data.train has 1 item"),
    ("shards-missing", lambda t: ["train", str(tiny_config(t)), "data.train.0.kind=webdataset", f"data.train.0.path={t}/x-{{0..3}}.tar"], "x-0.tar"),
    ("llava-missing", lambda t: ["train", str(tiny_config(t)), "data.train.0.kind=llava", f"data.train.0.path={t}/l.json"], "l.json"),
    ("llava-image-missing", lambda t: ["train", str(tiny_config(t)), "data.train.0.kind=llava", f"data.train.0.path={llava(t)}"], "a.jpg' does not exist"),
    ("hf-column", lambda t: ["train", str(tiny_config(t)), "data.train.0.kind=hf", f"data.train.0.path={parquet(t)}", "data.train.0.fields.question=question"], "columns: q, a"),
    ("hf-no-form", lambda t: ["train", str(tiny_config(t)), "data.train.0.kind=hf", f"data.train.0.path={parquet(t)}"], "no columns for messages"),
    ("empty-sample", lambda t: ["train", str(tiny_config(t)), "data.train.0.kind=webdataset", f"data.train.0.path={shard_with_an_empty_response(t)}", "data.train.0.name=tiny", "data.max_bad_fraction=1"], None),
    ("workers-negative", lambda t: ["train", str(tiny_config(t)), "data.num_workers=-1"], "data.num_workers"),
    ("max-length", lambda t: ["train", str(tiny_config(t)), "data.max_length=4"], "data.max_length"),
    ("bad-fraction", lambda t: ["train", str(tiny_config(t)), "data.max_bad_fraction=2"], "max_bad_fraction"),
    ("strategy", lambda t: ["train", str(tiny_config(t)), "train.strategy=foo"], "'foo'"),
    ("strategy-deepspeed", lambda t: ["train", str(tiny_config(t)), "train.strategy=deepspeed_stage_1"], "auto, ddp, fsdp"),
    ("attention-kernel", lambda t: ["train", str(tiny_config(t)), "model.attn_implementation=fast"], "'fast'"),
    ("stage", lambda t: ["train", str(tiny_config(t)), "train.stage=4"], "train.stage"),
    ("betas", lambda t: ["train", str(tiny_config(t)), "optim.betas=[0.9]"], "optim.betas"),
    ("ckpt-truncated", lambda t: (resumable_run(t), write(t / "run/checkpoints/last.ckpt", b"PK\x03\x04junk"), ["train", str(t / "exp.yaml")])[-1], "last.ckpt is truncated"),
    ("ckpt-empty", lambda t: (resumable_run(t), write(t / "run/checkpoints/last.ckpt", b""), ["train", str(t / "exp.yaml")])[-1], "last.ckpt is truncated"),
    ("resume-other-lr", lambda t: (resumable_run(t), ["train", str(t / "exp.yaml"), "optim.lr.adapter=1e-3"])[-1], "optim.lr.adapter was 0.0002, now 0.001"),
    ("result-empty", lambda t: (tiny_config(t), write(t / "run" / "result.json", ""), ["train", str(t / "exp.yaml")])[-1], "result.json is damaged"),
    ("finished-other-config", lambda t: (finished_run(t), ["train", str(t / "exp.yaml"), "train.seed=3"])[-1], "train.seed was 0, now 3"),
    ("output-under-a-file", lambda t: ["train", str(tiny_config(t)), f"train.output_dir={write(t / 'f', 'x')}/run"], "/f/run"),
    ("folder-in-use", lambda t: ["train", str(locked_run(t))], "is in use by another vlmlab train (pid"),
    ("sweep-yaml", lambda t: ["sweep", str(write(t / "s.yaml", "name: [x\n")), "--dry-run"], "s.yaml' is not valid YAML"),
    ("sweep-missing", lambda t: ["sweep", str(t / "none.yaml"), "--dry-run"], "none.yaml"),
    ("sweep-seeds-negative", lambda t: ["sweep", str(write(t / "s.yaml", "extends: quickstart\nseeds: -1\n")), "--dry-run"], "Invalid `seeds: -1`; valid: a count of at least 1"),
    ("sweep-seeds-text", lambda t: ["sweep", str(write(t / "s.yaml", "extends: quickstart\nseeds: [0, one]\n")), "--dry-run"], "Invalid seed 'one' in `seeds: [0, 'one']`"),
    ("sweep-seeds-twice", lambda t: ["sweep", str(write(t / "s.yaml", "extends: quickstart\nseeds: [2, 2]\n")), "--dry-run"], "`seeds: [2, 2]` lists a seed twice"),
    ("sweep-seeds-and-axis", lambda t: ["sweep", str(write(t / "s.yaml", "extends: quickstart\nseeds: 2\naxes: {train.seed: [0, 1]}\n")), "--dry-run"], "`seeds` and an axis on train.seed"),
    ("results-compare-form", lambda t: (finished_run(t), ["results", str(t / "run"), "--compare", "model.fusion"])[-1], "--compare expects KEY=A,B (a config key and two of its values), got 'model.fusion'"),
    ("results-compare-value", lambda t: (finished_run(t), ["results", str(t / "run"), "--compare", "model.fusion=joint_decoder,moe"])[-1], "no record has model.fusion='moe'. Valid choices: joint_decoder."),
    ("results-compare-key", lambda t: (finished_run(t), ["results", str(t / "run"), "--compare", "model.fusoin=a,b"])[-1], "no record has the config key 'model.fusoin'"),
    ("results-compare-no-outcomes", lambda t: (two_fusions(t), ["results", str(t), "--compare", "model.fusion=joint_decoder,mot"])[-1], "no design point has both with per-item outcomes"),
    ("results-output-under-a-file", lambda t: (finished_run(t), ["results", str(t / "run"), "--out", f"{write(t / 'g', 'x')}/out"])[-1], "g/out"),
    ("ckpt-not-lightning", lambda t: (resumable_run(t), ["train", str(t / "exp.yaml")])[-1], "not a training checkpoint"),
    ("synth-output-under-a-file", lambda t: ["data", "synth", "grid", "--num", "2", "--quiet", "--out", f"{write(t / 'h', 'x')}/o"], "h/o"),
    ("index-missing", lambda t: ["data", "index", f"{t}/none-{{0..2}}.tar"], "none-0.tar"),
    # issue 30: wrong types, one line naming key, value and expected type (no OmegaConf trailer)
    ("type-max-steps-word", lambda t: ["train", str(tiny_config(t)), "train.max_steps=ten"], "train.max_steps='ten' has the wrong type: expected an integer"),
    ("type-max-steps-yaml", lambda t: ["train", str(write(t / "a.yaml", "train: {max_steps: ten}\n"))], "train.max_steps='ten' (in "),
    ("type-max-steps-float", lambda t: ["train", str(tiny_config(t)), "train.max_steps=1.5"], "train.max_steps=1.5 has the wrong type"),
    ("type-stage-word", lambda t: ["train", str(tiny_config(t)), "train.stage=two"], "train.stage='two' has the wrong type"),
    ("type-lr-word", lambda t: ["train", str(tiny_config(t)), "optim.lr.adapter=abc"], "optim.lr.adapter='abc' has the wrong type: expected a number"),
    ("type-bool-word", lambda t: ["train", str(tiny_config(t)), "train.keep_resume_state=maybe"], "expected true or false"),
    ("type-lr-list-yaml", lambda t: ["train", str(write(t / "a.yaml", "optim: {lr: [1]}\n"))], "optim.lr=[1] is a list, but optim.lr is a mapping"),
    ("type-lr-list-override", lambda t: ["train", str(tiny_config(t)), "optim.lr=[1]"], "optim.lr=[1] is a list"),
    # enumerations, on load
    ("precision", lambda t: ["train", str(tiny_config(t)), "train.precision=fp8"], "Unknown precision (train.precision) 'fp8'"),
    ("accelerator", lambda t: ["train", str(tiny_config(t)), "train.accelerator=tpu9"], "Unknown accelerator (train.accelerator) 'tpu9'"),
    ("lr-group", lambda t: ["train", str(tiny_config(t)), "optim.lr.projector=1e-3"], "learning-rate group (optim.lr) 'projector'"),
    ("lomo-key", lambda t: ["train", str(tiny_config(t)), "data.lomo.foo=1"], "LoMo setting (data.lomo) 'foo'"),
    # ranges and relations
    ("min-lr-ratio", lambda t: ["train", str(tiny_config(t)), "optim.min_lr_ratio=5"], "optim.min_lr_ratio=5.0"),
    ("source-image-size-0", lambda t: ["train", str(tiny_config(t)), "data.train.0.image_size=0"], "data.train.0.image_size=0"),
    ("schedule-shorter", lambda t: ["train", str(tiny_config(t)), "train.schedule_steps=1"], "train.schedule_steps=1 ends"),
    ("source-weight-negative", lambda t: ["train", str(tiny_config(t)), "data.train.0.weight=-1"], "data.train.0.weight=-1.0"),
    ("source-weight-0", lambda t: ["train", str(tiny_config(t)), "data.train.0.weight=0"], "data.train.0.weight=0.0"),
    ("source-weight-inf", lambda t: ["train", str(tiny_config(t)), "data.train.0.weight=inf"], "data.train.0.weight=inf"),
    # command-line arguments and other commands
    ("inspect-n-negative", lambda t: ["data", "inspect", str(tiny_config(t)), "-n", "-1"], "argument -n: '-1' is not a count"),
    ("index-not-a-tar", lambda t: ["data", "index", str(not_a_tar(t))], "notes.tar' is not a tar shard"),
    ("tokenizer-path-missing", lambda t: ["train", str(tiny_config(t)), f"data.text_tokenizer={t}/no-tokenizer"], "no-tokenizer' does not exist"),
    ("eval-still-training", lambda t: ["eval", str(running_run(t)), "--num-samples", "2"], "holds no trained model yet"),
    ("results-empty", lambda t: (tiny_config(t), write(t / "run" / "result.json", ""), ["results", str(t / "run"), "--out", str(t / "out")])[-1], "No result records"),
    ("results-truncated", lambda t: (tiny_config(t), write(t / "run" / "result.json", '{"run_id": "x", "metr'), ["results", str(t / "run"), "--out", str(t / "out")])[-1], "No result records"),
    # nothing loaded from disk runs code, and a refusal is one line naming the file
    ("tokenizer-weights-pickle", lambda t: ["train", str(tiny_config(t)), "model.random_tokenizer=false", f"model.tokenizer_weights={malicious_pickle(t / 'w.pt', t / 'PWNED')}"], "would run code"),
    ("ckpt-pickle", lambda t: (resumable_run(t), malicious_pickle(t / "run/checkpoints/last.ckpt", t / "PWNED"), ["train", str(t / "exp.yaml")])[-1], "last.ckpt is not a plain checkpoint: loading it would run code (Unsupported"),
    ("backbone-weights-pickle", lambda t: ["train", str(tiny_config(t)), f"model.backbone_weights={poisoned_backbone_folder(t)}"], "pytorch_model.bin is not plain tensors: loading it would run code (Unsupported"),
]  # fmt: skip


@pytest.fixture(autouse=True)
def _log_handlers_follow_the_capture():
    """Libraries (Lightning) bind stream handlers to the stderr of the test that imported them; point every
    handler at the current stderr so in-process runs never log into a closed capture."""
    import logging
    import sys

    def rebind() -> None:
        loggers = [logging.getLogger(), *(logging.getLogger(n) for n in logging.root.manager.loggerDict)]
        for logger in loggers:
            for handler in getattr(logger, "handlers", []):
                stream = getattr(handler, "stream", None)
                if type(handler) is logging.StreamHandler and getattr(stream, "closed", False):
                    handler.stream = sys.stderr

    rebind()
    yield
    rebind()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(tmp_path, capfd, case):
    name, argv, expected = case
    args = argv(tmp_path)
    had_result = (tmp_path / "run" / "result.json").exists()
    had_run = (tmp_path / "run").exists()
    code = main(args)
    err = capfd.readouterr().err
    if expected is None:  # bad data: skipped and counted, the run itself succeeds
        assert code == 0, err
        record = json.loads((tmp_path / "run" / "result.json").read_text())
        assert record["data"]["bad"]["tiny"], record["data"]
        return
    assert code != 0, f"{name}: exit 0"
    lines = [line for line in err.strip().splitlines() if line.startswith("vlmlab: ")]
    assert lines, err
    assert "Traceback" not in err and "Warning:" not in err, err
    assert "full_key" not in err and "object_type" not in err, err  # no OmegaConf trailer
    assert expected in lines[-1], (expected, lines[-1])
    assert not (tmp_path / "PWNED").exists()  # no pickle ran
    run = tmp_path / "run"
    if not had_run:  # a later run would take a config.yaml or logs for progress
        assert not (run / "config.yaml").exists() and not (run / "logs").exists(), sorted(run.rglob("*"))
    assert not (run / "checkpoints" / "last.ckpt").exists() or name.startswith(("ckpt-", "resume-", "eval-"))
    assert not (run / "final").exists() and (had_result or not (run / "result.json").exists())


@pytest.fixture(autouse=True, scope="module")
def _release_held_locks():
    yield
    for holder in HELD_LOCKS:
        holder.kill()
        holder.wait()


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 85


def test_the_declared_choices_are_what_the_libraries_take():
    """The torch-free lists config.py checks on load against the libraries that act on them."""
    import dataclasses
    from typing import get_args

    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    from vlmlab.config import LOMO_KEYS, LR_GROUPS, PRECISIONS
    from vlmlab.data.lomo import LomoConfig
    from vlmlab.recipes import ALWAYS_TRAINABLE, LORA_GROUPS

    assert set(PRECISIONS) <= set(get_args(_PRECISION_INPUT_STR)) | set(get_args(_PRECISION_INPUT_STR_ALIAS))
    assert set(LOMO_KEYS) == {f.name for f in dataclasses.fields(LomoConfig)}
    assert set(LR_GROUPS) == set(ALWAYS_TRAINABLE) | set(LORA_GROUPS)


def test_an_offline_hub_tokenizer_is_one_line_before_anything_is_built(tmp_path, capfd, monkeypatch):
    """HF_HUB_OFFLINE and an id the cache lacks: answered by the preflight, not after transformers' retries."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code = main(["train", str(tiny_config(tmp_path)), "data.text_tokenizer=vlmlab-tests/no-such-tokenizer"])
    err = capfd.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert (
        "'vlmlab-tests/no-such-tokenizer' is not in the Hugging Face cache" in err and "HF_HUB_OFFLINE" in err
    )
    assert not (tmp_path / "run").exists()


def shard_with_a_corrupt_image(tmp: Path) -> Path:
    """One shard of four samples, the second's PNG cut to garbage."""
    from PIL import Image

    path = tmp / "one.tar"
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 200)).save(buffer, format="PNG")
    with tarfile.open(path, "w") as tar:
        for key in ("s000", "s001", "s002", "s003"):
            record = {
                "segments": [{"type": "image"}, {"type": "text", "text": "Describe."}],
                "response": "blue",
            }
            png = b"not a png at all" if key == "s001" else buffer.getvalue()
            for name, data in ((f"{key}.json", json.dumps(record).encode()), (f"{key}.png", png)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_a_bad_sample_of_a_one_shard_source_is_named_once(tmp_path, capfd):
    """Three steps of four rows over a four-sample shard pass it several times: the bad sample is counted on
    every pass but logged once, readably ("skipped sample 's001'", no object repr)."""
    shard = shard_with_a_corrupt_image(tmp_path)
    args = ["train", str(tiny_config(tmp_path)), "data.train.0.kind=webdataset", f"data.train.0.path={shard}"]
    args += ["data.train.0.name=one", "data.max_bad_fraction=1", "train.max_steps=3", "data.packing=false"]
    code = main(args)  # its log lines go to stderr (vlmlab train sets up logging itself)
    err = capfd.readouterr().err
    assert code == 0, err[-3000:]
    lines = [line for line in err.splitlines() if "skipped" in line]
    assert len(lines) == 1, lines
    assert "skipped sample 's001'" in lines[0] and "sample sample" not in lines[0], lines[0]
    assert " object at 0x" not in lines[0] and "(in memory)" in lines[0], lines[0]
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert sum(record["data"]["bad"]["one"].values()) > 1  # counted on every pass
