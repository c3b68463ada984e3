"""Checks before a run writes anything: value ranges, batch divisibility, referenced files, the run folder.

Each failure is one ConfigError naming the key, the bad value and what is allowed. The run folder check makes
re-running safe: a finished run with the same config is "already done", with a different config an error
naming the first differing key; a resumable run must resume with the config it was started with; a lock
keeps a second `vlmlab train` out of a folder in use.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from vlmlab.config import ExperimentConfig
from vlmlab.data.text_tokenizer import check_hub_tokenizer
from vlmlab.errors import ConfigError, unknown_choice
from vlmlab.models.backbone import ATTENTION_IMPLEMENTATIONS
from vlmlab.models.loss import resolve_loss_impl
from vlmlab.recipes import list_recipes, load_recipe

# keys that change how a run executes or logs, not what it computes: they may differ on a re-run
# (a key names itself and everything under it: train.tracking covers train.tracking.uri)
EXECUTION_KEYS = (
    "train.log_every_n_steps",
    "train.accelerator",
    "train.loss_impl",
    "train.compile",
    "train.loggers",
    "train.tracking",
    "eval",
)


def _positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")


def _finite(name: str, value: Any, minimum: float = 0.0) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{name} must be a finite number >= {minimum:g}, got {value!r}.")


def _check_attention_kernel(implementation: str) -> None:
    """Kernels that need a package or a GPU fail here, not at the first forward of a queued job."""
    import importlib.util

    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise unknown_choice("model.attn_implementation", implementation, ATTENTION_IMPLEMENTATIONS)
    if implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available():
            raise ConfigError(
                "model.attn_implementation=flash_attention_2 needs a CUDA GPU and the flash-attn package "
                "(pip install flash-attn); here use sdpa (or flex_attention)."
            )


def validate(config: ExperimentConfig) -> int:
    """Raise on the first impossible setting; return the gradient-accumulation steps per optimizer step."""
    train, data, optim = config.train, config.data, config.optim
    for name in ("max_steps", "global_batch_size", "checkpoint_every_n_steps", "devices", "num_nodes"):
        _positive(f"train.{name}", getattr(train, name))
    _positive("train.val_every_n_steps", train.val_every_n_steps, allow_none=True)
    _positive("train.schedule_steps", train.schedule_steps, allow_none=True)
    _positive("train.log_every_n_steps", train.log_every_n_steps)
    if train.stage not in (1, 2, 3):
        raise ConfigError(f"train.stage must be 1, 2 or 3, got {train.stage!r}.")
    for name in ("micro_batch_size", "val_samples", "val_max_new_tokens"):
        _positive(f"data.{name}", getattr(data, name))
    if not isinstance(data.num_workers, int) or data.num_workers < 0:
        raise ConfigError(f"data.num_workers must be an integer >= 0, got {data.num_workers!r}.")
    if data.max_length < 8:
        raise ConfigError(f"data.max_length must be >= 8 tokens, got {data.max_length!r}.")
    if not data.train:
        raise ConfigError("data.train lists no sources: a run needs at least one.")
    for group, lr in optim.lr.items():
        _finite(f"optim.lr.{group}", lr)
    _finite("optim.weight_decay", optim.weight_decay)
    _finite("optim.min_lr_ratio", optim.min_lr_ratio)
    if optim.grad_clip is not None:
        _finite("optim.grad_clip", optim.grad_clip, minimum=1e-12)
    if len(optim.betas) != 2 or not all(isinstance(b, int | float) and 0 <= b < 1 for b in optim.betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {list(optim.betas)!r}.")
    if not isinstance(optim.warmup_steps, int) or optim.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps must be an integer >= 0, got {optim.warmup_steps!r}.")
    world = train.devices * train.num_nodes
    per_step = data.micro_batch_size * world
    if train.global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size={train.global_batch_size} is not a multiple of "
            f"data.micro_batch_size x devices x nodes = {data.micro_batch_size} x {train.devices} x "
            f"{train.num_nodes} = {per_step}."
        )
    if not config.model.open_weight:  # an open-weight model brings its own processor
        check_hub_tokenizer(data.text_tokenizer)  # offline: one line now, not a minute of retries later
    _check_attention_kernel(config.model.attn_implementation)
    resolve_loss_impl(config.train.loss_impl, train_device(config))  # liger without CUDA: one line
    if not isinstance(train.compile, bool):
        raise ConfigError(f"train.compile must be true or false, got {train.compile!r}.")
    if train.compile and train.method != "sft":
        raise ConfigError(
            f"train.compile=true compiles the sft training step; train.method={train.method!r} runs TRL's own "
            "loop (use its settings): set train.compile=false."
        )
    for key in ("backbone_weights", "tokenizer_weights"):
        value = getattr(config.model, key)
        if value and _looks_like_path(value) and not Path(value).expanduser().exists():
            raise ConfigError(f"model.{key}={value!r} does not exist.")
    weights = config.model.backbone_weights
    if (
        weights
        and Path(weights).expanduser().is_dir()
        and not (Path(weights).expanduser() / "config.json").exists()
    ):
        raise ConfigError(
            f"model.backbone_weights={weights!r} holds no config.json: point it at a folder written by "
            "save_pretrained (config.json + *.safetensors)."
        )
    if config.model.open_weight:
        _check_open_weight(config)
    elif train.method != "sft":
        raise ConfigError(
            f"train.method={train.method!r} is for open-weight models (model.open_weight); vlmlab's own models "
            "train with sft."
        )
    if train.init_from and not Path(train.init_from).exists():
        raise ConfigError(f"train.init_from={train.init_from!r} does not exist (a run folder or checkpoint).")
    if not config.model.open_weight:
        _check_single_stage(config)
    return train.global_batch_size // per_step


def train_device(config: ExperimentConfig) -> torch.device:
    """The device type the run's steps will run on (Lightning picks a GPU for `auto` when one is visible)."""
    accelerator = config.train.accelerator
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _check_single_stage(config: ExperimentConfig) -> None:
    """A single-stage recipe (skip_stage1) has no stage 1, and its stage 2 starts from the base weights: a
    parent there would make it the two-stage recipe under another name."""
    recipe = load_recipe(config.train.freeze)
    recipe.trainable_groups(config.train.stage)  # stage 1 of a single-stage recipe: one line
    if recipe.skip_stage1 and config.train.stage == 2 and config.train.init_from:
        two_stage = [name for name in list_recipes() if not load_recipe(name).skip_stage1]
        raise ConfigError(
            f"Recipe {recipe.name!r} is single-stage (skip_stage1: true): its stage 2 starts from the base "
            f"weights, but train.init_from={config.train.init_from!r} names a parent (drop it, or pick one "
            f"of the two-stage recipes: {', '.join(two_stage)})."
        )


def _check_open_weight(config: ExperimentConfig) -> None:
    """What an open-weight run (vlmlab/models/open_weight.py) needs of the rest of the config."""
    where = config.model.open_weight
    if _looks_like_path(where) and not (Path(where).expanduser() / "config.json").exists():
        raise ConfigError(
            f"model.open_weight={where!r} holds no config.json: point it at a folder written by save_pretrained "
            "or at a hub id (org/name)."
        )
    if config.data.packing:
        raise ConfigError(
            "Open-weight models train on padded rows: set data.packing: false (their processors' position "
            "layouts, e.g. Qwen2.5-VL's 3-D rotary positions, are computed by the model from whole rows)."
        )
    if config.train.init_from:
        raise ConfigError(
            "train.init_from is for vlmlab's stage hand-off; an open-weight run starts from model.open_weight "
            "(point it at a trained run's best/ or final/ folder to continue from one)."
        )
    world = config.train.devices * config.train.num_nodes
    if config.train.method == "eval" and world > 1:
        raise ConfigError(
            f"train.method: eval evaluates in one process; set train.devices=1 and train.num_nodes=1 (got {world})."
        )
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if config.train.method == "grpo" and world != launched:
        raise ConfigError(
            f"train.method: grpo with {world} processes runs under TRL's launcher, which sets WORLD_SIZE (here "
            f"{launched}): `accelerate launch --num_processes {world} -m vlmlab.cli train ...` (or torchrun), "
            "or train.devices=1."
        )
    rl = config.rl
    for name in (
        "epochs",
        "prompts_per_step",
        "num_generations",
        "max_completion_length",
        "micro_batch_size",
    ):
        _positive(f"rl.{name}", getattr(rl, name))
    _positive("rl.max_steps", rl.max_steps, allow_none=True)
    _positive("rl.eval_every_n_steps", rl.eval_every_n_steps, allow_none=True)
    _finite("rl.lr", rl.lr, minimum=1e-12)
    _finite("rl.kl_coef", rl.kl_coef)
    _finite("rl.temperature", rl.temperature, minimum=1e-6)
    if config.train.method == "grpo" and rl.num_generations < 2:
        raise ConfigError(
            f"rl.num_generations={rl.num_generations}: GRPO's advantages compare a prompt's samples, so it "
            "needs at least 2 (the paper uses 5)."
        )


def _looks_like_path(value: str) -> bool:
    """Local paths can be checked; hub ids (`org/name`) and library tags cannot."""
    return value.startswith(("/", "./", "../", "~")) or (
        os.sep in value and os.path.exists(os.path.dirname(value))
    )


def first_difference(old: Any, new: Any, where: str = "") -> str | None:
    """The first dotted key whose value differs between two resolved configs (None when equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        # a key only one side has is a setting added or removed between vlmlab versions: not a difference
        for key in sorted(set(old) & set(new), key=str):
            found = first_difference(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
            if found and not any(found == k or found.startswith(k + ".") for k in EXECUTION_KEYS):
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (a, b) in enumerate(zip(old, new)):
            found = first_difference(a, b, f"{where}.{index}")
            if found:
                return found
        return None
    return None if old == new else where


def _show(config: dict, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else (value or {}).get(part)
    return value


def check_run_folder(out: Path, resolved: dict[str, Any]) -> dict[str, Any] | None:
    """The finished run's record when `out` holds this very run (nothing to do); None when it should train.

    Raises when the folder holds a different run (finished or resumable), or a damaged result.
    """
    result = out / "result.json"
    if result.exists():
        try:
            record = json.loads(result.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(
                f"{result} is damaged ({error}); delete it to finish the run again from its last checkpoint."
            ) from error
        key = first_difference(record.get("config", {}), resolved)
        if key is not None:
            raise ConfigError(
                f"{out} holds a finished run with another config: {key} was {_show(record['config'], key)!r}, "
                f"now {_show(resolved, key)!r}. Use another train.output_dir."
            )
        return record
    saved = out / "config.yaml"
    if (out / "checkpoints" / "last.ckpt").exists() and saved.exists():
        try:
            old = OmegaConf.to_container(OmegaConf.load(saved))
        except Exception as error:
            raise ConfigError(f"{saved} cannot be read ({error}).") from error
        key = first_difference(old, resolved)
        if key is not None:
            raise ConfigError(
                f"{out} holds a resumable run started with another config: {key} was {_show(old, key)!r}, "
                f"now {_show(resolved, key)!r}. Resume with the same config, or use another train.output_dir."
            )
    return None


class RunLock:
    """An exclusive lock on `<out>/.lock` for the run's lifetime (released by the OS when the process dies)."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".lock"
        self.handle: Any = None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a+")  # noqa: SIM115 (held for the run's lifetime)
        except OSError as error:
            raise ConfigError(f"cannot write to the run folder {str(self.path.parent)!r}: {error}") from error
        try:
            # a POSIX record lock: not inherited by forked data-loader workers (which may outlive a killed
            # run by a few seconds), and honoured by NFS, unlike flock
            fcntl.lockf(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise ConfigError(
                f"{self.path.parent} is in use by another vlmlab train ({holder}); wait for it or use another "
                "train.output_dir."
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()} on {os.uname().nodename}")
        self.handle.flush()
        return self

    def __exit__(self, *args: Any) -> None:
        if self.handle is not None:
            self.handle.close()


def launcher_rank(devices_per_node: int = 1) -> int:
    """This process's global rank as the launcher set it (0 when not launched as a distributed job).

    torchrun and srun give it (RANK, SLURM_PROCID); Lightning's own launcher gives a node's processes only
    their node rank (NODE_RANK, which the user sets on each node) and local rank, from which the global rank
    follows: a node's first process is not global rank 0 unless its node is node 0."""
    for variable in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(variable)
        if value and value.isdigit():
            return int(value)
    local, node = (os.environ.get(name, "0") for name in ("LOCAL_RANK", "NODE_RANK"))
    return int(node) * devices_per_node + int(local) if local.isdigit() and node.isdigit() else 0


LEFTOVER_PREFIXES = (".final.", ".best.", ".result.json.", ".config.yaml.")


def remove_leftovers(out: Path) -> list[Path]:
    """Temporary files and folders of atomic writes a killed process left behind (never read)."""
    removed = []
    for folder in (out, out / "checkpoints"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            name = path.name
            leftover = ".tmp" in name or name.startswith(LEFTOVER_PREFIXES)
            if name == ".lock" or not name.startswith(".") or not leftover:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


__all__ = ["RunLock", "check_run_folder", "first_difference", "launcher_rank", "remove_leftovers", "validate"]
