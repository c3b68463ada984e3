"""The training engine end to end on tiny models: three stages with hand-offs, exact resume, DDP, guards."""

import contextlib
import io
import json
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from ports import unused_port
from processes import TrainRun, start_train
from safetensors.torch import load_file

from vlmlab.cli import main as vlmlab_main
from vlmlab.config import ExperimentConfig, load_config
from vlmlab.models.checkpoint import load_stage_checkpoint, resolve_checkpoint
from vlmlab.train.module import NonFiniteLossError, VLMModule
from vlmlab.train.run import build_model, train

REPO = Path(__file__).resolve().parent.parent
EASY = {"num_objects": 2}


def experiment(tmp: Path, name: str, stage: int, fusion: str, **train_overrides) -> ExperimentConfig:
    mode = {1: "caption", 2: "vqa", 3: "tqa"}[stage]
    data = {
        "max_length": 96,
        "micro_batch_size": 4,
        "train": [{"kind": "synthetic", "task": "spatialmap", "mode": mode, "difficulty": EASY}],
        "val": [
            {"kind": "synthetic", "task": "spatialmap", "mode": "vqa", "split": "test", "difficulty": EASY}
        ],
        "val_samples": 8,
    }
    train_cfg = {
        "stage": stage,
        "freeze": "unfreeze-all",
        "max_steps": 4,
        "global_batch_size": 8,
        "checkpoint_every_n_steps": 2,
        "output_dir": str(tmp / name),
        "select_best": stage == 2,
        "val_every_n_steps": 2 if stage == 2 else None,
        **train_overrides,
    }
    model = {"backbone": "qwen3-tiny", "tokenizer": "clip-tiny", "random_tokenizer": True, "fusion": fusion}
    return load_config(ExperimentConfig, [{"model": model, "data": data, "train": train_cfg}])


def trained_weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[
        "state_dict"
    ]
    return {k.removeprefix("model."): v for k, v in state.items()}


def test_three_stages_with_joint_decoder_to_mot_hand_off(tmp_path):
    keep = {"keep_resume_state": True}  # this test reads the full states in last.ckpt afterwards
    stage1 = train(experiment(tmp_path, "s1", 1, "joint_decoder", **keep))
    s1 = tmp_path / "s1"
    assert stage1["stage"] == 1 and (s1 / "result.json").exists()

    # the hand-off: MoT's image transformer starts as a copy of the stage-1 backbone layers
    mot_config = experiment(tmp_path, "s2", 2, "mot", init_from=str(s1), **keep)
    mot, parent = build_model(mot_config)
    assert parent == resolve_checkpoint(s1)
    stage1_weights = trained_weights(s1)
    for name, value in mot.lm.model.layers.state_dict().items():
        assert torch.equal(mot.fusion.image_layers.state_dict()[name], value)
        assert torch.equal(value, stage1_weights[f"lm.model.layers.{name}"])
    torch.testing.assert_close(mot.adapter.fc1.weight, stage1_weights["adapter.fc1.weight"], rtol=0, atol=0)

    stage2 = train(mot_config)
    s2 = tmp_path / "s2"
    assert stage2["best"]["step"] in (2, 4) and (s2 / "best" / "meta.json").exists()
    # the stage-2 checkpoint stores only what stage 2 trained, plus a pointer to its parent
    meta = json.loads((s2 / "final" / "meta.json").read_text())
    assert not Path(meta["parent"]).is_absolute()  # relative: a moved runs/ tree still loads
    assert (s2 / "final" / meta["parent"]).resolve() == resolve_checkpoint(s1).resolve()
    saved = load_file(str(s2 / "final" / "weights.safetensors"))
    assert not any(k.startswith("image_tokenizer.") and "mask_token" in k for k in saved)
    assert all(not k.startswith("buffer:") for k in saved)

    # stage 3 starts from the best stage-2 checkpoint and loads back into an identical model
    stage3_config = experiment(tmp_path, "s3", 3, "mot", init_from=str(s2), **keep)
    assert resolve_checkpoint(s2) == s2 / "best"
    train(stage3_config)
    s3 = tmp_path / "s3"
    rebuilt, _ = build_model(experiment(tmp_path, "check", 3, "mot"))
    load_stage_checkpoint(rebuilt, s3)
    expected = trained_weights(s3)
    for name, value in rebuilt.state_dict().items():
        assert torch.equal(value, expected[name]), name
    # the whole runs tree moved elsewhere: the chain s3 -> s2 -> s1 still loads, to the same weights
    moved = tmp_path / "moved"
    moved.mkdir()
    for run in ("s1", "s2", "s3"):
        shutil.move(str(tmp_path / run), str(moved / run))
    again, _ = build_model(experiment(tmp_path, "check2", 3, "mot"))
    load_stage_checkpoint(again, moved / "s3")
    for name, value in again.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_rerunning_a_finished_run_does_nothing(tmp_path):
    config = experiment(tmp_path, "done", 1, "cross_attention", max_steps=2)
    config.data.num_workers = 1
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGUSR1)}
    first = train(config)
    # throughput in the record: model FLOPs per second from the model's own count; no MFU on a CPU
    throughput = first["timings"]["throughput"]
    assert throughput["device"] == "cpu" and throughput["mfu"] is None and throughput["tflops"] > 0
    assert throughput["tokens_per_s_per_device"] > 0
    # a run inside a process that goes on (a notebook, a sweep driver) leaves it as it found it: the signal
    # handlers of before (the run's would keep it alive and checkpoint it on the next signal) and no
    # data-loader worker still running
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers
    assert multiprocessing.active_children() == []
    stamp = (tmp_path / "done" / "result.json").stat().st_mtime_ns
    assert train(config) == first
    assert (tmp_path / "done" / "result.json").stat().st_mtime_ns == stamp
    # done: the resume state (optimizer moments, data positions) is gone, the weight delta stays
    assert not (tmp_path / "done" / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "done" / "final" / "weights.safetensors").exists()


def write_config(
    tmp: Path, name: str, stage: int = 1, fusion: str = "joint_decoder", **train_overrides
) -> Path:
    config = experiment(tmp, name, stage, fusion, **train_overrides)
    from omegaconf import OmegaConf

    path = tmp / f"{name}.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
    return path


def run_cli(
    *args: str,
    fault: str | None = None,
    env: dict | None = None,
    ranks: int = 1,
    nodes: int = 1,
    fault_rank: int | None = None,
    audit: tuple[Path, list[Path]] | None = None,
) -> TrainRun:
    """`vlmlab train ARGS` in a new process; `ranks=2`: two processes started together with torchrun's
    environment, as srun starts a job's tasks (Lightning's own launcher starts rank 1 from rank 0 only once
    rank 0 has built its model, ten seconds later: tests/test_open_weight.py's FSDP test keeps that path);
    `nodes=2`: as two node ranks of torchrun on one host. `fault` (vlmlab/faults.py: SIGKILL, or
    VLMLAB_FAULT_SIGNAL, at that point) hits every rank, or only `fault_rank`. The processes fork from one
    that has imported the training stack already (tests/processes.py)."""
    env = {**(env or os.environ), "PYTHONWARNINGS": "ignore", "MASTER_PORT": str(unused_port())}
    rank_env = {}
    if fault and fault_rank is None:
        env["VLMLAB_FAULT"] = fault
    elif fault:
        rank_env[fault_rank] = {"VLMLAB_FAULT": fault}
    return start_train(list(args), env, cwd=REPO, ranks=ranks, nodes=nodes, rank_env=rank_env, audit=audit)


def cli(*args: str) -> tuple[int, str]:
    """`vlmlab train ARGS` inside this process: its exit code and what it wrote to stderr. For the runs whose
    process boundary is not under test (references, resumes, refusals): a run started in a new process pays
    about ten seconds of imports first. The numerics are those of a separate process: the same thread count
    (tests/conftest.py passes it on), the seeds set by the run itself."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = vlmlab_main(["train", *args])
    root = logging.getLogger()
    for handler in list(root.handlers):  # the run's handler wrote to the redirected stream
        root.removeHandler(handler)
    torch.use_deterministic_algorithms(False)  # a deterministic run switches it on for the whole process
    return code, stderr.getvalue()


def killed_and_resumed(
    tmp: Path,
    overrides: list[str],
    *,
    kill_at: int,
    saved_at: int,
    stage: int = 1,
    fusion: str = "joint_decoder",
    **steps,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The final weights of an uninterrupted run and of the same run SIGKILLed after step `kill_at` (its last
    checkpoint at step `saved_at`: the steps after it are lost and trained again on resume, from the data
    position saved with it) and then resumed. The victim is a process of its own; the reference and the
    resume run in this one (bit-identical to a separate process, tests above)."""
    settings = dict(deterministic=True, **steps)
    code, error = cli(str(write_config(tmp, "straight", stage, fusion, **settings)), *overrides)
    assert code == 0, error
    victim_config = write_config(tmp, "victim", stage, fusion, **settings)
    victim = run_cli(str(victim_config), *overrides, fault=f"step:{kill_at}")
    assert victim.wait(timeout=300) == -signal.SIGKILL, victim.stderr_text()
    last = tmp / "victim" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == saved_at
    assert not (tmp / "victim" / "result.json").exists()
    code, error = cli(str(victim_config), *overrides)
    assert code == 0, error
    straight = load_file(str(tmp / "straight" / "final" / "weights.safetensors"))
    resumed = load_file(str(tmp / "victim" / "final" / "weights.safetensors"))
    assert straight.keys() == resumed.keys()
    return straight, resumed


SHORT_RUN = dict(max_steps=4, checkpoint_every_n_steps=2, global_batch_size=4, val_every_n_steps=None)
NO_VALIDATION = ["data.val=[]", "train.select_best=false"]  # generation would cost more than the steps
TILED = ["model.tiling=anyres", "model.max_image_tokens=40", "data.val=[]"]


@dataclass(frozen=True)
class KillCase:
    """One setting resumed after a SIGKILL: what a resume restores (weights, AdamW moments, data position,
    RNG) is the same for every setting; what differs is the state each brings (the perceiver's learned
    latents, tiled rows of a variable number of tiles, another input size) and the path its batches take."""

    overrides: list[str]
    fusion: str = "joint_decoder"
    steps: dict = field(default_factory=lambda: dict(max_steps=12, checkpoint_every_n_steps=3))
    kill_at: int = 7
    saved_at: int = 6
    expect_in_weights: str | None = None  # a tensor name the setting must have put in the checkpoint


KILL_CASES = {
    # the engine's own case, in-process loading (0 workers); step 7 is lost and trained again on resume
    "mlp-0-workers": KillCase(["data.num_workers=0", "model.adapter=auto"]),
    # Idefics2's perceiver brings the most state of its own (learned latents, a bare parameter expanded over
    # the batch) and two loader workers whose positions are restored
    "perceiver-2-workers": KillCase(
        ["data.num_workers=2", "model.adapter=perceiver", "model.adapter_tokens=4"],
        expect_in_weights="adapter.latents",
    ),
    # AnyRes rows with a variable number of tiles per sample, pixel shuffle by 2 on each 4 x 4 tile grid
    "tiled-pixel-shuffle-joint-decoder": KillCase(
        [*TILED, "model.adapter=pixel_shuffle"],
        steps=SHORT_RUN,
        kill_at=3,
        saved_at=2,
    ),
    # tiled through the MoT and Cross-Attention paths of the CLI too, with the two other token-count
    # connectors (their thumbnail plus tiles still fit max_image_tokens=40)
    "tiled-c-abstractor-mot": KillCase(
        [*TILED, "model.adapter=c_abstractor", "model.adapter_tokens=4", *NO_VALIDATION],
        fusion="mot",
        steps=SHORT_RUN,
        kill_at=3,
        saved_at=2,
        expect_in_weights="fusion.image_layers.0.mlp.up_proj.weight",
    ),
    "tiled-avgpool-cross-attention": KillCase(
        [*TILED, "model.adapter=avgpool", "model.adapter_tokens=4"],
        fusion="cross_attention",
        steps=SHORT_RUN,
        kill_at=3,
        saved_at=2,
    ),
    # a non-native size (96 px: 6 x 6 patches) under both rules that are not the default crop
    "96px-letterbox-mlp": KillCase(
        ["model.image_size=96", "model.image_resize=letterbox", "data.max_length=160", "data.val=[]"],
        steps=SHORT_RUN,
        kill_at=3,
        saved_at=2,
        expect_in_weights="image_tokenizer.visual.positional_embedding",
    ),
    "96px-resize-pixel-shuffle-cross-attention": KillCase(
        ["model.image_size=96", "model.image_resize=resize", "model.adapter=pixel_shuffle", "data.val=[]"],
        fusion="cross_attention",
        steps=SHORT_RUN,
        kill_at=3,
        saved_at=2,
    ),
}


def test_the_kill_cases_cover_every_connector_and_fusion() -> None:
    from vlmlab.models.adapters import ADAPTERS
    from vlmlab.models.fusion import FUSIONS

    adapters = {
        option.split("=")[1]
        for case in KILL_CASES.values()
        for option in case.overrides
        if "adapter=" in option
    }
    assert set(ADAPTERS.names()) - {"mlp", "linear", "embedding"} <= adapters
    assert {case.fusion for case in KILL_CASES.values()} == set(FUSIONS.names())


@pytest.mark.slow(seconds=30)
@pytest.mark.parametrize("case", list(KILL_CASES.values()), ids=list(KILL_CASES))
def test_kill_9_mid_run_then_resume_gives_the_same_weights(tmp_path, case):
    """SIGKILL mid-interval: the resumed run's weights equal an uninterrupted run's, bit for bit."""
    stage = 2 if case.fusion == "mot" else 1  # MoT has no stage 1 (paper, 2.3)
    straight, resumed = killed_and_resumed(
        tmp_path,
        case.overrides,
        kill_at=case.kill_at,
        saved_at=case.saved_at,
        stage=stage,
        fusion=case.fusion,
        **case.steps,
    )
    if case.expect_in_weights:
        assert case.expect_in_weights in straight
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


@pytest.mark.slow(seconds=110)
def test_two_process_ddp_resumes_every_rank_exactly(tmp_path):
    """Each rank's stream position is checkpointed (rank 0 inside last.ckpt, rank 1 beside it): a 2-rank run
    killed after step 2 and resumed ends with the weights of an uninterrupted 4-step run."""
    ddp = ["train.strategy=ddp", "train.devices=2", "train.accelerator=cpu", "data.num_workers=1"]
    common = dict(checkpoint_every_n_steps=2, deterministic=True, schedule_steps=4)
    straight = run_cli(str(write_config(tmp_path, "straight", max_steps=4, **common)), *ddp, ranks=2)
    assert run_to_end(straight) == 0, straight.stderr_text()[-3000:]
    assert json.loads((tmp_path / "straight" / "result.json").read_text())["timings"]["steps"] == 4
    split = write_config(tmp_path, "split", max_steps=4, **common)
    first = run_cli(str(split), *ddp, fault="checkpoint:2", ranks=2)  # both killed once step 2 is saved
    assert run_to_end(first) != 0
    assert [p.name for p in (tmp_path / "split" / "checkpoints" / "data_state").iterdir()] == [
        "step000000002-rank1.pt"
    ]
    assert not (tmp_path / "split" / "result.json").exists()
    second = run_cli(str(split), *ddp, ranks=2)
    assert run_to_end(second) == 0, second.stderr_text()[-3000:]
    a = load_file(str(tmp_path / "straight" / "final" / "weights.safetensors"))
    b = load_file(str(tmp_path / "split" / "final" / "weights.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def webdataset_shards(folder: Path, shards: int = 4, per_shard: int = 50) -> Path:
    """Synthetic VQA samples written as `shards` webdataset tar shards: a source with shards to share out."""
    from vlmlab.config import DataSourceConfig
    from vlmlab.data.shards import write_shard
    from vlmlab.data.sources.synthetic import SyntheticSource

    source = SyntheticSource(
        DataSourceConfig(
            kind="synthetic", task="spatialmap", mode="vqa", difficulty=EASY, num_samples=shards * per_shard
        ),
        seed=5,
        image_size=64,
    )
    samples = list(source.samples_in_order(limit=shards * per_shard))
    for index in range(shards):
        write_shard(samples[index * per_shard : (index + 1) * per_shard], folder / f"shard-{index:04d}.tar")
    return folder


def audited(folder: Path, rank: int) -> list[tuple[str, str]]:
    """(what, path) of each file access the rank's audit log holds (tests/processes.py audit_file_access)."""
    lines = (folder / f"rank{rank}.log").read_text().splitlines()
    return [tuple(line.split(" ", 1)) for line in lines]


@pytest.mark.slow(seconds=120)
def test_two_nodes_train_validate_checkpoint_and_resume_as_one_node(tmp_path):
    """`train.num_nodes=2`: two node ranks of torchrun on this host, one process each, against one node with two
    processes and the same global batch. The two-node run, its node 1 process SIGKILLed after step 3 (its
    checkpoint of step 2 saved) and the run started again on both nodes, ends with the one-node run's weights
    and validation scores, bit for bit; each node read its own shards of a webdataset source; node 1 wrote
    nothing in the run folder but its own data-stream state (everything shared is global rank 0's)."""
    shards = webdataset_shards(tmp_path / "shards")
    steps = dict(max_steps=4, checkpoint_every_n_steps=2, val_every_n_steps=2, deterministic=True)
    # a row per sample (no packing, which reads up to its buffer ahead): every reader stays in its first epoch,
    # whose shares of the shards are disjoint (the next epoch deals the shards out anew)
    ddp = ["train.strategy=ddp", "train.accelerator=cpu", "data.num_workers=0", "data.packing=false"]
    one_node, two_nodes = ["train.devices=2"], ["train.devices=1", "train.num_nodes=2"]
    # one thread per process on both layouts (Lightning would give a node's only process both cores): the same
    # arithmetic in every process, so the weights can be compared bit for bit
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def config(name: str) -> Path:
        from omegaconf import OmegaConf

        config = experiment(tmp_path, name, 2, "joint_decoder", **steps)
        config.data.train = load_config(
            ExperimentConfig, [{"data": {"train": [{"kind": "webdataset", "path": str(shards)}]}}]
        ).data.train
        path = tmp_path / f"{name}.yaml"
        path.write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
        return path

    one = run_cli(str(config("one")), *ddp, *one_node, env=env, ranks=2)
    assert run_to_end(one) == 0, one.stderr_text()[-3000:]

    two, run = config("two"), tmp_path / "two"
    logs = [tmp_path / "audit-killed", tmp_path / "audit-resumed"]
    for folder in logs:
        folder.mkdir()
    killed = run_cli(
        str(two),
        *ddp,
        *two_nodes,
        env=env,
        ranks=2,
        nodes=2,
        fault="step:3",
        fault_rank=1,
        audit=(logs[0], [tmp_path]),
    )
    assert run_to_end(killed) != 0 and killed.processes[1].exitcode == -signal.SIGKILL
    assert (
        torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
        == 2
    )
    assert not (run / "result.json").exists()
    resumed = run_cli(str(two), *ddp, *two_nodes, env=env, ranks=2, nodes=2, audit=(logs[1], [tmp_path]))
    assert run_to_end(resumed) == 0, resumed.stderr_text()[-3000:]

    records = {name: json.loads((tmp_path / name / "result.json").read_text()) for name in ("one", "two")}
    assert records["two"]["timings"]["steps"] == 4 and records["two"]["config"]["train"]["num_nodes"] == 2
    assert (
        records["two"]["metrics"] == records["one"]["metrics"]
        and records["two"]["best"] == records["one"]["best"]
    )
    reference = load_file(str(tmp_path / "one" / "final" / "weights.safetensors"))
    weights = load_file(str(run / "final" / "weights.safetensors"))
    assert reference.keys() == weights.keys()
    for name in reference:
        assert torch.equal(reference[name], weights[name]), name

    # each node read its own shards (after the one-sample probe every process makes of a source before it
    # builds anything: its first shard read)
    shard_reads = [
        [Path(path).name for what, path in audited(logs[0], rank) if what == "read" and path.endswith(".tar")]
        for rank in (0, 1)
    ]
    node_reads = [set(reads[1:]) for reads in shard_reads]
    assert node_reads[0] and node_reads[1] and not node_reads[0] & node_reads[1], shard_reads
    # node 1 changed nothing in the run folder but its own stream state (making the folders on the way to it
    # changes nothing shared); the log sees what rank 0 writes
    state_dir = run / "checkpoints" / "data_state"
    for folder in logs:
        changes = [(what, path) for what, path in audited(folder, 1) if what != "read" and str(run) in path]
        for what, path in changes:
            target = Path(path.split(" -> ")[-1])
            assert (what == "mkdir" and target in (state_dir, *state_dir.parents)) or (
                target.parent == state_dir and "-rank1.pt" in target.name
            ), (what, path)
        assert any(what == "rename" for what, _ in changes), changes
    written = {
        Path(p.split(" -> ")[-1]).name for folder in logs for what, p in audited(folder, 0) if what != "read"
    }
    assert {"config.yaml", "last.ckpt", "result.json"} <= written


def test_the_global_rank_under_every_launcher(monkeypatch):
    """torchrun / srun name the global rank; Lightning's own launcher only the node rank (set by the user on
    each node) and the local rank: node 1's first process is rank `devices`, not 0 (it must not write the
    run's shared files or take its lock)."""
    from vlmlab.train.preflight import launcher_rank

    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launcher_rank(2) == 0  # not launched as a distributed job
    monkeypatch.setenv("NODE_RANK", "1")
    assert launcher_rank(2) == 2
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launcher_rank(2) == 3 and launcher_rank(4) == 5
    monkeypatch.setenv("SLURM_PROCID", "6")
    assert launcher_rank(2) == 6
    monkeypatch.setenv("RANK", "7")  # torchrun's, whatever else is set
    assert launcher_rank(2) == 7


def test_non_finite_values_stop_the_run_naming_step_and_groups():
    config = experiment(Path("/tmp"), "nan", 1, "joint_decoder")
    model, _ = build_model(config)
    module = VLMModule(config, model)
    with torch.no_grad():
        model.adapter.fc2.bias.fill_(float("nan"))
    ids = torch.cat(
        [torch.full((1, model.tokens_per_image), model.image_token_id), torch.randint(0, 400, (1, 6))], 1
    )
    labels = torch.where(ids == model.image_token_id, -100, ids)
    batch = {"input_ids": ids, "labels": labels, "pixel_values": torch.randn(1, 3, 64, 64)}
    with pytest.raises(NonFiniteLossError, match="step 0.*Groups holding non-finite weights: adapter"):
        module.training_step(batch, 0)


def test_cli_rejects_config_typos():
    """In a fresh process, answered before torch is imported (vlmlab/train/cli.py)."""
    run = subprocess.run(
        [sys.executable, "-m", "vlmlab.cli", "train", "train.max_stpes=3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "Did you mean 'train.max_steps'" in run.stderr and "Traceback" not in run.stderr


def test_bf16_mixed_precision_trains(tmp_path):
    """The GPU setting runs on the CPU too (autocast to bfloat16): finite loss, weights saved in float32."""
    record = train(experiment(tmp_path, "bf16", 1, "joint_decoder", max_steps=2, precision="bf16-mixed"))
    assert record["timings"]["steps"] == 2
    weights = load_file(str(tmp_path / "bf16" / "final" / "weights.safetensors"))
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())


def run_to_end(proc: TrainRun) -> int:
    """Its exit code, once every rank has ended."""
    return proc.wait(timeout=300)


@pytest.mark.slow(seconds=70)
def test_kills_twice_in_one_interval_and_during_export_then_resume_exactly(tmp_path):
    """Killed after step 6 (last checkpoint: 4), resumed and killed after step 7 (same interval), resumed and
    killed while exporting, resumed: the weights and result.json metrics are those of an uninterrupted run."""

    def config(name: str) -> Path:
        return write_config(
            tmp_path, name, max_steps=12, checkpoint_every_n_steps=4, deterministic=True, global_batch_size=8
        )

    stage2 = ["train.stage=2", "train.select_best=true", "train.val_every_n_steps=4", "data.train.0.mode=vqa"]
    assert cli(str(config("straight")), *stage2)[0] == 0
    victim = config("victim")
    for fault in ("step:6", "step:7", "export"):
        assert run_to_end(run_cli(str(victim), *stage2, fault=fault)) != 0, fault
        assert not (tmp_path / "victim" / "result.json").exists()
    last = tmp_path / "victim" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 12
    assert cli(str(victim), *stage2)[0] == 0
    for folder in ("final", "best"):
        a = load_file(str(tmp_path / "straight" / folder / "weights.safetensors"))
        b = load_file(str(tmp_path / "victim" / folder / "weights.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder
    straight = json.loads((tmp_path / "straight" / "result.json").read_text())
    resumed = json.loads((tmp_path / "victim" / "result.json").read_text())
    assert resumed["metrics"] == straight["metrics"] and resumed["metrics"]
    assert resumed["best"] == straight["best"] and resumed["data"] == straight["data"]
    leftovers = [
        p.name for p in (tmp_path / "victim").iterdir() if p.name.startswith(".") and p.name != ".lock"
    ]
    assert leftovers == []


def test_non_finite_weights_never_reach_a_checkpoint(tmp_path):
    config = write_config(tmp_path, "nan", max_steps=6, checkpoint_every_n_steps=1)
    code, stderr = cli(
        str(config), "optim.lr.adapter=1e20"
    )  # finite, but the weights overflow in a few steps
    assert code == 1
    assert stderr.strip().splitlines()[-1].startswith("vlmlab: stopped: Training stopped at step")
    assert "Groups holding non-finite" in stderr and "Traceback" not in stderr
    last = tmp_path / "nan" / "checkpoints" / "last.ckpt"
    if last.exists():  # whatever was saved is finite: the resume point is a good one
        state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_no_checkpoint_vlmlab_reads_can_run_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"global_step": 3, "payload": _Evil(str(marker))}, evil)
    # 1. the resume checkpoint
    config = write_config(tmp_path, "victim", max_steps=2)
    (tmp_path / "victim" / "checkpoints").mkdir(parents=True)
    (tmp_path / "victim" / "config.yaml").write_text(config.read_text())
    (tmp_path / "victim" / "checkpoints" / "last.ckpt").write_bytes(evil.read_bytes())
    code, stderr = cli(str(config))
    assert code == 2
    assert "last.ckpt is not a plain checkpoint: loading it would run code" in stderr
    # 2. a parent stage checkpoint (init_from) whose weights file is a pickle
    parent = tmp_path / "parent" / "final"
    parent.mkdir(parents=True)
    (parent / "weights.safetensors").write_bytes(evil.read_bytes())
    (parent / "meta.json").write_text(json.dumps({"parent": None, "fusion": "joint_decoder", "stage": 1}))
    code, stderr = cli(str(write_config(tmp_path, "child", max_steps=2)), f"train.init_from={parent}")
    assert code == 2
    assert f"{parent / 'weights.safetensors'} cannot be read" in stderr
    # 3. image-tokenizer weights
    code, stderr = cli(
        str(write_config(tmp_path, "tok", max_steps=2)),
        "model.random_tokenizer=false",
        f"model.tokenizer_weights={evil}",
    )
    assert code == 2
    assert "evil.pt" in stderr and "Traceback" not in stderr
    assert not marker.exists()


SIGNAL_STEPS = dict(max_steps=12, checkpoint_every_n_steps=1000, deterministic=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The reference both signals are compared against: the same run, never stopped."""
    root = tmp_path_factory.mktemp("uninterrupted")
    code, error = cli(str(write_config(root, "straight", **SIGNAL_STEPS)))
    assert code == 0, error
    return root / "straight"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_before_the_first_checkpoint_saves_the_next_step_and_resumes_exactly(
    tmp_path, signum, uninterrupted
):
    """Pre-emption (SIGTERM) or the time-limit signal (USR1) long before the first periodic checkpoint (the
    process signals itself after step 4: vlmlab/faults.py): the run saves the next optimizer step with its
    data position, stops in one line, and resumes exactly."""
    victim_config = write_config(tmp_path, "victim", **SIGNAL_STEPS)
    env = {**os.environ, "VLMLAB_FAULT_SIGNAL": signal.Signals(signum).name}
    victim = run_cli(str(victim_config), fault="step:4", env=env)
    assert victim.wait(timeout=300) == 1
    stderr = victim.stderr_text()
    assert f"vlmlab: stopped: {signal.Signals(signum).name} received: stopped after step" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "victim" / "result.json").exists()
    last = tmp_path / "victim" / "checkpoints" / "last.ckpt"
    stopped_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 4 <= stopped_at < 12
    code, error = cli(str(victim_config))
    assert code == 0, error
    a = load_file(str(uninterrupted / "final" / "weights.safetensors"))
    b = load_file(str(tmp_path / "victim" / "final" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
