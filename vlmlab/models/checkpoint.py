"""Stage checkpoints that hold only what a run changed, plus a pointer to their parent.

A stage-run folder holds `final/` (and `best/` when validation picks a checkpoint) with:
- `weights.safetensors`: the parameters this run trained (plus the random initial weights of a run
  whose base model was randomly initialised, since nothing else could reproduce them);
- `meta.json`: the resolved config (whose connector settings a load must match), the stage, the fusion
  (and a Cross-Attention checkpoint's `cross_attention_layout`), `parent` — the parent checkpoint folder or
  None — and `base_weights`: the backbone and tokenizer weights the delta sits on (source, hub revision,
  file sha256); loading onto a model built from other base weights is refused (vlmlab/models/provenance.py).

Loading replays the chain root -> ... -> this run onto a model built from the config. A MoT stage 2 whose
parent is a Joint-Decoder stage 1 gets the backbone's layers copied into its image transformer after the
parent's weights are in (the hand-off of section 2.3).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vlmlab.errors import ConfigError
from vlmlab.files import atomic_write_text, fsync_file, replace_folder, shareable, writing
from vlmlab.models.lora import add_lora, lora_adapters, merge_lora
from vlmlab.models.provenance import PART_PREFIX, check_base_weights

WEIGHTS, META = "weights.safetensors", "meta.json"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its `best/` if validation chose one, else `final/`)."""
    path = Path(path)
    for candidate in (path, path / "best", path / "final"):
        if (candidate / META).exists():
            return candidate
    raise ConfigError(
        f"No vlmlab checkpoint at {str(path)!r} (expected {META} and {WEIGHTS} there or in its best/ or final/)."
    )


def save_stage_checkpoint(
    model: torch.nn.Module,
    folder: Path,
    config: dict[str, Any],
    parent: Path | None,
    include_frozen: bool,
    metrics: dict[str, float] | None = None,
    full_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the delta atomically: a temporary folder renamed into place.

    `full_state` is the model's complete state dict when the live parameters are sharded (FSDP gathers it
    on rank 0); otherwise the parameters are read from `model` directly.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    source = full_state if full_state is not None else dict(model.named_parameters())
    wanted = {name for name, param in model.named_parameters() if param.requires_grad or include_frozen}
    tensors = {name: source[name].detach().contiguous().cpu() for name in sorted(wanted)}
    if include_frozen:  # random-init base: buffers too (e.g. rotary frequencies are deterministic, but cheap)
        tensors.update({f"buffer:{n}": b.detach().contiguous().cpu() for n, b in model.named_buffers()})
    meta = {
        "stage": config["train"]["stage"],
        "fusion": config["model"]["fusion"],
        # relative to this checkpoint folder, so a moved runs/ tree still loads (absolute when on another root)
        "parent": _relative(Path(parent), folder) if parent else None,
        "trained": sorted(n for n, p in model.named_parameters() if p.requires_grad),
        # LoRA (vlmlab/models/lora.py): the adapters the weights hold ({group: settings}), and the groups whose
        # inherited adapters this run folded into the base weights when it started; loading replays both
        "lora": lora_adapters(model),
        "lora_merged": list(getattr(model, "lora_merged", [])),
        # what the delta sits on: the base weights' source, hub revision and file sha256 (provenance.py)
        "base_weights": getattr(model, "base_weights", None),
        "config": config,
        "metrics": metrics or {},
    }
    if config["model"]["fusion"] == "cross_attention":
        # where its layers sit: another layout has the same parameter names at other depths (load refuses it)
        meta["cross_attention_layout"] = config["model"].get("cross_attention_layout", "every")
    with writing(folder):  # a full disk names the checkpoint folder, and leaves no partial one behind
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        try:
            shareable(tmp, folder=True)
            save_file(tensors, str(tmp / WEIGHTS))
            fsync_file(tmp / WEIGHTS)
            atomic_write_text(tmp / META, json.dumps(meta, indent=2))
            replace_folder(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder


def _relative(parent: Path, folder: Path) -> str:
    try:
        return os.path.relpath(parent.resolve(), folder.resolve())
    except ValueError:  # another drive / root
        return str(parent.resolve())


def parent_of(checkpoint: Path, pointer: str | None) -> Path | None:
    """The parent checkpoint a meta.json names: relative pointers are relative to the checkpoint folder."""
    if not pointer:
        return None
    path = Path(pointer)
    return path if path.is_absolute() else (checkpoint / path).resolve()


def checkpoint_chain(path: str | Path) -> list[Path]:
    """[root, ..., path]: every checkpoint whose weights must be applied, oldest first."""
    chain, current = [], resolve_checkpoint(path)
    while current is not None:
        if current in chain:
            raise ConfigError(f"Checkpoint parents form a loop at {current}.")
        chain.append(current)
        try:
            parent = json.loads((current / META).read_text())["parent"]
        except (json.JSONDecodeError, KeyError, OSError) as error:
            raise ConfigError(f"{current / META} is damaged ({error}); is the checkpoint complete?") from None
        current = resolve_checkpoint(parent_of(current, parent)) if parent else None
    return chain[::-1]


def _weights_file_error(checkpoint: Path, error: Exception) -> ConfigError:
    return ConfigError(f"{checkpoint / WEIGHTS} cannot be read ({error}); is the file complete?")


def _check_base_weights(model: torch.nn.Module, chain: list[Path]) -> None:
    """Refuse a chain whose deltas were trained on other base weights than the model was built from.

    Only parts of the base that the chain does not overwrite entirely matter: a backbone or tokenizer whose
    every parameter is in some delta ends up the same whatever it was built from.
    """
    built = getattr(model, "base_weights", None)
    if not built or not any(built.values()):  # random init throughout: nothing to compare
        return
    stored: set[str] = set()
    for checkpoint in chain:
        try:
            with safe_open(str(checkpoint / WEIGHTS), framework="pt") as handle:
                stored.update(handle.keys())
        except Exception as error:  # safetensors raises its own error types for truncated / foreign files
            raise _weights_file_error(checkpoint, error) from error
    names = [name for name, _ in model.named_parameters()]
    parts = [
        part
        for part, prefix in PART_PREFIX.items()
        if any(name.startswith(prefix) and name not in stored for name in names)
    ]
    for checkpoint in chain:
        recorded = json.loads((checkpoint / META).read_text()).get("base_weights")
        check_base_weights(checkpoint, recorded, built, parts)


def _cross_attention_placement(meta: dict[str, Any]) -> tuple[str, int | None]:
    """(layout, every) a Cross-Attention checkpoint's layers were trained at.

    A checkpoint written before the layout was recorded has neither key: it can only be `every`, the one
    layout there was. `every` comes from the stored config (None where a checkpoint has none).
    """
    model = (meta.get("config") or {}).get("model") or {}
    layout = meta.get("cross_attention_layout", model.get("cross_attention_layout", "every"))
    return layout, model.get("cross_attention_every")


def _check_cross_attention_placement(model: torch.nn.Module, checkpoint: Path, meta: dict[str, Any]) -> None:
    """Refuse Cross-Attention weights trained at other depths: the parameter names match, the layers do not."""
    config = getattr(model, "config", None)
    if getattr(config, "fusion", None) != "cross_attention" or meta.get("fusion") != "cross_attention":
        return
    layout, every = _cross_attention_placement(meta)
    every = config.cross_attention_every if every is None else every  # unknown: only the layout is checked
    if (layout, every) != (config.cross_attention_layout, config.cross_attention_every):
        raise ConfigError(
            f"Checkpoint {checkpoint} was trained with cross_attention_layout {layout!r}, "
            f"cross_attention_every {every}; this model has {config.cross_attention_layout!r}, "
            f"{config.cross_attention_every}, so its cross-attention weights would sit at other depths "
            f"(set model.cross_attention_layout={layout} model.cross_attention_every={every})."
        )


def _connector_setting(model_config: dict[str, Any], fusion: str | None, discrete: bool) -> str:
    """A stored model config's connector as the overrides that set it (`model.adapter=avgpool
    model.adapter_tokens=16`); `auto` resolved, keys a checkpoint predates at their defaults."""
    from vlmlab.config import TOKEN_COUNT_ADAPTERS, ModelConfig
    from vlmlab.models.adapters import default_adapter

    defaults = {field.name: field.default for field in dataclasses.fields(ModelConfig)}
    adapter = model_config.get("adapter", "auto")
    if adapter == "auto":
        adapter = default_adapter(discrete, fusion or "joint_decoder")
    setting = [f"model.adapter={adapter}"]
    if adapter in TOKEN_COUNT_ADAPTERS:
        tokens = model_config.get("adapter_tokens", defaults["adapter_tokens"])
        setting.append(f"model.adapter_tokens={tokens}")
    if adapter == "pixel_shuffle":
        ratio = model_config.get("pixel_shuffle_ratio", defaults["pixel_shuffle_ratio"])
        setting.append(f"model.pixel_shuffle_ratio={ratio}")
    return " ".join(setting)


def _check_connector(model: torch.nn.Module, checkpoint: Path, meta: dict[str, Any]) -> None:
    """Refuse adapter weights trained as another connector: avgpool's MLP has the same shapes at any token
    count, so its weights alone would load silently; other mismatches would fail on a name or a shape."""
    config = getattr(model, "config", None)
    stored = (meta.get("config") or {}).get("model")
    if config is None or not stored or not hasattr(model, "image_tokenizer"):
        return
    discrete = model.image_tokenizer.is_discrete
    trained = _connector_setting(stored, meta.get("fusion"), discrete)
    ours = _connector_setting(vars(config), config.fusion, discrete)
    if trained != ours:
        raise ConfigError(
            f"Checkpoint {checkpoint} was trained with {trained}; this model has {ours}, so its adapter "
            f"weights do not fit (set {trained})."
        )


def _check_resolution(model: torch.nn.Module, checkpoint: Path, meta: dict[str, Any]) -> None:
    """Refuse weights trained at another input size: a tower's resized position embeddings (and a connector
    sized to its patch grid) were learned at that size; a timm or open_clip tower's would not even fit."""
    from vlmlab.config import tokenizer_preset

    stored = (meta.get("config") or {}).get("model")
    tokenizer = getattr(model, "image_tokenizer", None)
    if not stored or tokenizer is None:
        return
    tokenizers = stored.get("tokenizer", model.config.tokenizer)
    towers = list(getattr(tokenizer, "towers", [tokenizer]))
    for name, tower in zip(
        tokenizers if isinstance(tokenizers, list) else [tokenizers], towers, strict=False
    ):
        size = stored.get("image_size")
        if size is None:  # the stored tokenizer preset's own size (a checkpoint from before the key, or null)
            try:
                size = tokenizer_preset(name).get("image_size")
            except ConfigError:
                continue  # a tokenizer file that moved: the tensor shapes are still checked below
        if size is not None and size != tower.spec.image_size:
            raise ConfigError(
                f"Checkpoint {checkpoint} was trained at {size} px images; this model's tokenizer "
                f"{tower.spec.name} takes {tower.spec.image_size} px (set model.image_size={size})."
            )


def _check_encoders(model: torch.nn.Module, checkpoint: Path, meta: dict[str, Any]) -> None:
    """Refuse weights of another encoder set (or a set's onto one tower, or the reverse): the towers' names
    would not match, and a set fused another way hands the adapter other features in the same shape."""
    config = getattr(model, "config", None)
    stored = (meta.get("config") or {}).get("model")
    if config is None or not stored or not hasattr(model, "image_tokenizer"):
        return
    then, now = stored.get("tokenizer"), config.tokenizer
    if not isinstance(then, list) and not isinstance(now, list | tuple):
        return  # one tower each: as before encoder sets (the tensor shapes are checked below)

    def setting(tokenizer: Any, fusion: str) -> str:
        if not isinstance(tokenizer, list | tuple):
            return f"model.tokenizer={tokenizer}"
        return f"model.tokenizer=[{','.join(map(str, tokenizer))}] model.encoder_fusion={fusion}"

    trained = setting(then, stored.get("encoder_fusion", "channel"))
    ours = setting(now, config.encoder_fusion)
    if trained != ours:
        raise ConfigError(
            f"Checkpoint {checkpoint} was trained with {trained}; this model has {ours}, so its image "
            f"encoder weights do not fit (set {trained})."
        )


def load_stage_checkpoint(model: torch.nn.Module, path: str | Path) -> list[Path]:
    """Apply the chain of deltas ending at `path` onto `model`. Returns the chain applied.

    Raises ConfigError when a delta was trained on base weights (file sha256) other than the model's.
    """
    chain = checkpoint_chain(path)
    _check_base_weights(model, chain)
    fusion = getattr(getattr(model, "config", None), "fusion", None)
    for checkpoint in chain:
        meta = json.loads((checkpoint / META).read_text())
        _replay_lora(model, meta)
        params = dict(model.named_parameters())  # after the replay: LoRA renames the layers it wraps
        buffers = dict(model.named_buffers())
        trained_with = meta.get("fusion")
        compatible = {trained_with} | (
            {"joint_decoder", "mot"} if trained_with in ("joint_decoder", "mot") else set()
        )
        if fusion is not None and trained_with is not None and fusion not in compatible:
            raise ConfigError(
                f"Checkpoint {checkpoint} was trained with fusion {trained_with!r}; a {fusion!r} model cannot "
                f"start from it (a stage can continue its own fusion, and MoT can start from a Joint-Decoder "
                "stage 1)."
            )
        _check_cross_attention_placement(model, checkpoint, meta)
        _check_connector(model, checkpoint, meta)
        _check_encoders(model, checkpoint, meta)
        _check_resolution(model, checkpoint, meta)
        try:
            tensors = load_file(str(checkpoint / WEIGHTS))
        except Exception as error:  # safetensors raises its own error types for truncated / foreign files
            raise _weights_file_error(checkpoint, error) from error
        for name, value in tensors.items():
            target = buffers.get(name[7:]) if name.startswith("buffer:") else params.get(name)
            if target is None:
                if name.startswith(("fusion.image_layers.", "buffer:fusion.image_layers.")):
                    continue  # a MoT checkpoint loaded into a non-MoT model: the image copy has no home
                raise ConfigError(f"Checkpoint {checkpoint} holds {name!r}, which this model does not have.")
            if target.shape != value.shape:
                raise ConfigError(
                    f"Checkpoint {checkpoint}: {name!r} has shape {tuple(value.shape)}, the model "
                    f"{tuple(target.shape)}; was it made with another backbone or tokenizer?"
                )
            with torch.no_grad():
                target.copy_(value)
        if meta["fusion"] != "mot" and getattr(model.config, "fusion", None) == "mot":
            model.fusion.reset_image_copy(model.lm)  # hand-off: both modality transformers start as the LLM
    model.lora_merged = []  # the merges replayed belong to the chain; a new run records its own
    return chain


def _replay_lora(model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Bring the model's LoRA layers to what the checkpoint's run trained: merge the adapters it merged when
    it started (their weights came from its parents), add the adapters it holds (their weights follow)."""
    for group in meta.get("lora_merged", []):
        if group in lora_adapters(model):
            merge_lora(model, group)
    for group, settings in (meta.get("lora") or {}).items():
        if group not in lora_adapters(model):
            add_lora(model, group, settings)
