"""`vlmlab export`: a trained model as a Hugging Face folder that `transformers` loads.

    vlmlab export RUN_OR_CHECKPOINT --out DIR [--format auto|llava|remote-code] [--overwrite]

Two formats, both with the weights as safetensors, a `generation_config.json`, and a `LlavaProcessor`
(`AutoProcessor.from_pretrained(DIR)`): vlmlab's image transform as a `CLIPImageProcessor` (resize the
short side, centre crop, the tokenizer's mean / std and interpolation) or, for a tokenizer whose transform
resizes the PIL image (VAR), which no stock processor reproduces, as vlmlab's own remote-code
`VlmlabImageProcessor` (export_templates/image_processing_vlmlab.py); the run's text tokenizer; and
vlmlab's chat template (ChatML; an image part renders as `<|image_pad|>`, which the processor expands to the
model's image tokens, as vlmlab's encoder does):

- `llava`: `LlavaForConditionalGeneration`, the class lmms-eval, VLMEvalKit and vLLM know. Only where it
  computes exactly what vlmlab computes: the Joint-Decoder fusion, the MLP adapter (LLaVA's projector:
  linear, exact GELU, linear, at the language model's width, one token per patch: no pixel_shuffle,
  perceiver, avgpool or c_abstractor connector), and a continuous CLIP (open_clip or transformers) or SigLIP (timm or
  transformers) tower whose features LLaVA can select. LLaVA takes
  `hidden_states[vision_feature_layer]` of the vision tower, which come *before* its final LayerNorm, and
  its projector cannot apply one; vlmlab's `feature_layer: -1` features come after the final norm (of
  open_clip's `ln_post`, timm's `norm`, transformers SigLIP's `post_layernorm`), so those towers have no
  exact LLaVA form. A transformers CLIP tower's last hidden state carries no norm (its post-layernorm only
  touches the pooled CLS) and maps at every layer. vlmlab's tower is kept up to its feature layer (the
  blocks after it are pruned and were never trained) and LLaVA selects that last layer
  (`vision_feature_layer: -1`); CLIP's CLS is dropped by `vision_feature_select_strategy: default`. The
  export checks itself: vision features and logits of the converted model against vlmlab's.
- `remote-code`: everything else (MoT, Cross-Attention, the other connectors, discrete and other
  continuous tokenizers, final norms). `config.json` maps the Auto classes to `modeling_vlmlab.py` /
  `configuration_vlmlab.py`, written into the folder; they rebuild the model with the installed vlmlab
  package from the vlmlab configuration stored in config.json and load the folder's safetensors, so
  `AutoModelForImageTextToText` / `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` load
  it offline. Its processor is the same LlavaProcessor, with `patch_size` = the image size and
  `num_additional_image_tokens` set so that one `<|image_pad|>` expands to vlmlab's `tokens_per_image` (the
  connector's count; one for Cross-Attention's marker).

  Its `generate` is transformers' own (GenerationMixin over a cached forward): sampling, beams, return
  dicts with scores / logits, as for any transformers model.

`auto` picks `llava` where it applies, else `remote-code`; `llava` refuses any other model with one line
saying why. The folder is written under a temporary name next to DIR and renamed into place when complete,
after its last check: the written folder, loaded back as a client loads it (LlavaForConditionalGeneration,
or the Auto class with trust_remote_code), must give vlmlab's logits (else one line, nothing exported).
`generation_config.json` stops at vlmlab's stop tokens and suppresses the image placeholder id, as vlmlab's
decoding does. `vlmlab_export.json` records the source checkpoint chain, the format and why, and the checks'
differences (`max_logit_difference` of every export, `max_feature_difference` of LLaVA's vision features,
`max_pixel_difference` of the processor).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmlab.errors import ConfigError, unknown_choice
from vlmlab.files import atomic_write_text, fsync_file, shareable, writing
from vlmlab.models.lora import merge_all

FORMATS = ("auto", "llava", "remote-code")
TEMPLATES = Path(__file__).resolve().parent / "export_templates"
REMOTE_FILES = ("configuration_vlmlab.py", "modeling_vlmlab.py")
_CHECK_TOLERANCE = 1e-4  # the self-checks' allowed max |difference|, relative to max(1, max |reference|)
_PIL_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling values


class NotLlava(Exception):
    """Why a model has no exact LlavaForConditionalGeneration form (the message completes 'because ...')."""


# -- loading the run --------------------------------------------------------------------------------------
def refuse_open_weight(run: Path) -> None:
    """An open-weight run's checkpoints are transformers folders already: nothing to export, say where."""
    from vlmlab.config import ExperimentConfig, load_config

    if not (run / "config.yaml").exists():
        return
    config = load_config(ExperimentConfig, [run / "config.yaml"])
    if config.model.open_weight:
        saved = next((run / n for n in ("best", "final") if (run / n / "config.json").exists()), None)
        raise ConfigError(
            f"{str(run)!r} trained the open-weight model {config.model.open_weight!r}; its checkpoint "
            f"{str(saved) if saved else '(none yet)'} is a save_pretrained folder already: load it with "
            "AutoModelForImageTextToText / AutoProcessor, or give it to lmms-eval's own model for its family."
        )


def load_for_export(run_or_checkpoint: str | Path) -> tuple[Any, Any, Path, list[Path]]:
    """(ExperimentConfig, model in eval mode, the checkpoint folder used, its chain) of a run or checkpoint."""
    from vlmlab.config import ExperimentConfig, load_config
    from vlmlab.models.checkpoint import (
        META,
        checkpoint_chain,
        load_stage_checkpoint,
        resolve_checkpoint,
    )
    from vlmlab.models.vlm import build_vlm
    from vlmlab.runs.load import load_run

    path = Path(run_or_checkpoint)
    if not path.exists():
        raise ConfigError(
            f"{str(path)!r} does not exist (expected a vlmlab run folder or checkpoint folder)."
        )
    if (path / "config.yaml").exists():  # a run folder: its best/ (else final/) checkpoint
        refuse_open_weight(path)
        checkpoint = resolve_checkpoint(path)
        config, model = load_run(path)
        return config, model, checkpoint, checkpoint_chain(checkpoint)
    checkpoint = resolve_checkpoint(path)
    try:
        stored = json.loads((checkpoint / META).read_text())["config"]
    except (OSError, json.JSONDecodeError, KeyError) as error:
        raise ConfigError(f"{checkpoint / META} holds no run configuration ({error}).") from None
    config = load_config(ExperimentConfig, [stored])
    torch.manual_seed(config.train.seed)
    model = build_vlm(config.model)
    chain = load_stage_checkpoint(model, checkpoint)
    return config, model.eval(), checkpoint, chain


# -- LLaVA: which vision towers map, and how ----------------------------------------------------------------
@dataclass
class VisionPlan:
    """How a vlmlab image tokenizer becomes LLaVA's vision tower."""

    config: Any  # CLIPVisionConfig | SiglipVisionConfig
    state: dict[str, torch.Tensor]  # the tower's weights under the transformers model's own names
    feature_layer: int  # LLaVA's vision_feature_layer (an index into hidden_states)
    strategy: str  # vision_feature_select_strategy: "default" drops the CLS token, "full" keeps all
    prefix_tokens: int  # tokens before the patches (CLS): the processor's num_additional_image_tokens
    patch_size: int


def _activation_name(module: nn.Module) -> str:
    """The transformers ACT2FN name computing exactly this activation module."""
    if type(module) is nn.GELU:
        return "gelu" if module.approximate == "none" else "gelu_pytorch_tanh"
    if type(module).__name__ == "QuickGELU":  # x * sigmoid(1.702 x), open_clip's and transformers' alike
        return "quick_gelu"
    raise NotLlava(f"its vision MLP uses {type(module).__name__}, which transformers' CLIP / SigLIP lack")


def _common_eps(norms: list[nn.Module], what: str) -> float:
    for norm in norms:
        if not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine or norm.bias is None:
            raise NotLlava(
                f"its {what} has a {type(norm).__name__} where transformers has an affine LayerNorm"
            )
    eps = {float(norm.eps) for norm in norms}
    if len(eps) != 1:
        raise NotLlava(f"its {what} mixes LayerNorm eps values {sorted(eps)}; transformers uses one")
    return eps.pop()


def _final_norm_refusal(spec: Any, tower: str) -> NotLlava:
    return NotLlava(
        f"image tokenizer {spec.name!r} takes its features after the vision tower's final LayerNorm "
        f"({tower}; feature_layer -1), while LLaVA takes hidden_states[vision_feature_layer], which precede "
        "that norm, and its projector cannot apply one: no exact LLaVA mapping exists (a tokenizer with "
        "feature_layer -2, LLaVA's usual choice, maps exactly)"
    )


def _split_qkv(weight: torch.Tensor | None, width: int, like: torch.Tensor) -> list[torch.Tensor]:
    """A packed [3 * width, ...] q/k/v tensor as three separate copies (a missing bias becomes zeros)."""
    if weight is None:
        return [like.new_zeros(width) for _ in range(3)]
    return [part.detach().clone().contiguous() for part in weight.split(width, dim=0)]


def _open_clip_plan(tokenizer: Any) -> VisionPlan:
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
    from transformers import CLIPVisionConfig

    visual = tokenizer.visual
    if type(visual) is not VisionTransformer:
        raise NotLlava(f"its open_clip tower is a {type(visual).__name__}, not the CLIP VisionTransformer")
    blocks = list(visual.transformer.resblocks)
    width = int(visual.transformer.width)
    patch, size = visual.conv1.kernel_size, visual.image_size
    problems = [
        (visual.conv1.bias is not None, "a patch embedding bias"),
        (tuple(visual.conv1.stride) != tuple(patch), "overlapping patches"),
        (len(set(patch)) != 1 or len(set(size)) != 1, "a non-square image or patch"),
        (
            not isinstance(visual.positional_embedding, nn.Parameter),
            "fixed (non-learned) position embeddings",
        ),
        (any(type(b) is not ResidualAttentionBlock for b in blocks), "custom attention blocks"),
        (any(not isinstance(m, nn.Identity) for b in blocks for m in (b.ls_1, b.ls_2)), "layer scale"),
        (any(hasattr(b, "ln_1_kv") for b in blocks), "cross-attention blocks"),
        (
            any(list(dict(b.mlp.named_children())) != ["c_fc", "gelu", "c_proj"] for b in blocks),
            "an MLP norm",
        ),
        (
            any(not b.attn._qkv_same_embed_dim or b.attn.bias_k is not None for b in blocks),
            "a custom attention",
        ),
    ]
    for problem, what in problems:
        if problem:
            raise NotLlava(f"its open_clip tower has {what}, which transformers' CLIPVisionModel lacks")
    if tokenizer._layer != len(blocks) - 1:
        raise NotLlava(f"its tower keeps {len(blocks)} blocks but takes features at block {tokenizer._layer}")
    norms = [visual.ln_pre] + [n for b in blocks for n in (b.ln_1, b.ln_2)]
    eps = _common_eps(norms, "open_clip tower")
    acts = {_activation_name(b.mlp.gelu) for b in blocks}
    if len(acts) != 1:
        raise NotLlava(f"its vision blocks mix activations {sorted(acts)}")
    if not isinstance(visual.ln_post, nn.Identity) and tokenizer.spec.feature_layer == -1:
        raise _final_norm_refusal(tokenizer.spec, "open_clip's ln_post")
    config = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=int(blocks[0].mlp.c_fc.out_features),
        num_hidden_layers=len(blocks),
        num_attention_heads=int(blocks[0].attn.num_heads),
        num_channels=int(visual.conv1.in_channels),
        image_size=int(size[0]),
        patch_size=int(patch[0]),
        hidden_act=acts.pop(),
        layer_norm_eps=eps,
        attention_dropout=0.0,
    )
    prefix = ""  # transformers 5 names the tower's weights without a vision_model. level
    state = {
        f"{prefix}embeddings.class_embedding": visual.class_embedding,
        f"{prefix}embeddings.patch_embedding.weight": visual.conv1.weight,
        f"{prefix}embeddings.position_embedding.weight": visual.positional_embedding,
        f"{prefix}pre_layrnorm.weight": visual.ln_pre.weight,
        f"{prefix}pre_layrnorm.bias": visual.ln_pre.bias,
        # transformers' CLIP applies it to the pooled CLS only, never to LLaVA's features, so its values do
        # not matter: a LayerNorm's initial ones / zeros (vlmlab pruned ln_post, as its features precede it)
        f"{prefix}post_layernorm.weight": torch.ones(width),
        f"{prefix}post_layernorm.bias": torch.zeros(width),
    }
    for index, block in enumerate(blocks):
        layer = f"{prefix}encoder.layers.{index}."
        weights = _split_qkv(block.attn.in_proj_weight, width, block.attn.out_proj.weight)
        biases = _split_qkv(block.attn.in_proj_bias, width, block.attn.out_proj.weight)
        for name, weight, bias in zip("qkv", weights, biases):
            state[f"{layer}self_attn.{name}_proj.weight"] = weight
            state[f"{layer}self_attn.{name}_proj.bias"] = bias
        state[f"{layer}self_attn.out_proj.weight"] = block.attn.out_proj.weight
        state[f"{layer}self_attn.out_proj.bias"] = _bias(block.attn.out_proj)
        for ours, theirs in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2")):
            state[f"{layer}{theirs}.weight"] = getattr(block, ours).weight
            state[f"{layer}{theirs}.bias"] = getattr(block, ours).bias
        for ours, theirs in (("c_fc", "fc1"), ("c_proj", "fc2")):
            state[f"{layer}mlp.{theirs}.weight"] = getattr(block.mlp, ours).weight
            state[f"{layer}mlp.{theirs}.bias"] = _bias(getattr(block.mlp, ours))
    return VisionPlan(config, state, -1, "default", 1, int(patch[0]))


def _bias(linear: nn.Linear) -> torch.Tensor:
    return linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)


def _timm_plan(tokenizer: Any) -> VisionPlan:
    from timm.layers import Mlp
    from timm.models.vision_transformer import Attention, Block, VisionTransformer
    from transformers import SiglipVisionConfig

    vit = tokenizer.model
    if type(vit) is not VisionTransformer:
        raise NotLlava(
            f"its timm model is a {type(vit).__name__}; only timm's plain VisionTransformer without prefix "
            "tokens (SigLIP) has a transformers counterpart LLaVA loads"
        )
    if vit.num_prefix_tokens or vit.cls_token is not None or getattr(vit, "reg_token", None) is not None:
        raise NotLlava(
            f"its timm ViT has {vit.num_prefix_tokens} prefix (CLS / register) token(s); transformers' SigLIP "
            "has none and its CLIP needs open_clip's layout"
        )
    blocks = list(vit.blocks)
    width = int(vit.embed_dim)
    proj = vit.patch_embed.proj
    grid = tuple(vit.patch_embed.grid_size)

    def plain_attention(block: Any) -> bool:
        attn = block.attn
        return (
            type(attn) is Attention
            and all(
                isinstance(getattr(attn, n, nn.Identity()), nn.Identity) for n in ("q_norm", "k_norm", "norm")
            )
            and getattr(attn, "gate", None) is None
            and abs(float(attn.scale) - attn.head_dim**-0.5) < 1e-12
        )

    problems = [
        (
            vit.pos_embed is None or tuple(vit.pos_embed.shape) != (1, grid[0] * grid[1], width),
            "no learned position table",
        ),
        (getattr(vit, "dynamic_img_size", False), "dynamic image sizes"),
        (not isinstance(vit.patch_embed.norm, nn.Identity), "a patch-embedding norm"),
        (
            not isinstance(proj, nn.Conv2d) or tuple(proj.stride) != tuple(proj.kernel_size),
            "overlapping patches",
        ),
        (len(set(proj.kernel_size)) != 1 or len(set(grid)) != 1, "a non-square image or patch"),
        (not isinstance(vit.norm_pre, nn.Identity), "a pre-norm"),
        (any(type(b) is not Block for b in blocks), "custom blocks"),
        (any(not plain_attention(b) for b in blocks), "a non-standard attention (q/k norm, gate, scale)"),
        (any(not isinstance(m, nn.Identity) for b in blocks for m in (b.ls1, b.ls2)), "layer scale"),
        (
            any(type(b.mlp) is not Mlp or not isinstance(b.mlp.norm, nn.Identity) for b in blocks),
            "a gated / normed MLP",
        ),
    ]
    for problem, what in problems:
        if problem:
            raise NotLlava(f"its timm ViT has {what}, which transformers' SiglipVisionModel lacks")
    if tokenizer._layer != len(blocks) - 1:
        raise NotLlava(f"its tower keeps {len(blocks)} blocks but takes features at block {tokenizer._layer}")
    eps = _common_eps([n for b in blocks for n in (b.norm1, b.norm2)], "timm ViT")
    acts = {_activation_name(b.mlp.act) for b in blocks}
    if len(acts) != 1:
        raise NotLlava(f"its vision blocks mix activations {sorted(acts)}")
    if not isinstance(vit.norm, nn.Identity) and tokenizer.spec.feature_layer == -1:
        raise _final_norm_refusal(tokenizer.spec, "timm's norm")
    patch = int(proj.kernel_size[0])
    config = SiglipVisionConfig(
        hidden_size=width,
        intermediate_size=int(blocks[0].mlp.fc1.out_features),
        num_hidden_layers=len(blocks),
        num_attention_heads=int(blocks[0].attn.num_heads),
        num_channels=int(proj.in_channels),
        image_size=patch * grid[0],
        patch_size=patch,
        hidden_act=acts.pop(),
        layer_norm_eps=eps,
        attention_dropout=0.0,
        vision_use_head=False,  # the pooling head is not used by LLaVA (timm's was pruned by vlmlab)
    )
    prefix = ""  # transformers 5 names the tower's weights without a vision_model. level
    state = {
        f"{prefix}embeddings.patch_embedding.weight": proj.weight,
        f"{prefix}embeddings.patch_embedding.bias": proj.bias
        if proj.bias is not None
        else proj.weight.new_zeros(width),
        f"{prefix}embeddings.position_embedding.weight": vit.pos_embed[0],
        # applied to last_hidden_state only, never to hidden_states (LLaVA's features): its values do not
        # matter, a LayerNorm's initial ones / zeros (vlmlab pruned timm's norm, as its features precede it)
        f"{prefix}post_layernorm.weight": torch.ones(width),
        f"{prefix}post_layernorm.bias": torch.zeros(width),
    }
    for index, block in enumerate(blocks):
        layer = f"{prefix}encoder.layers.{index}."
        qkv = block.attn.qkv
        weights = _split_qkv(qkv.weight, width, qkv.weight)
        biases = _split_qkv(qkv.bias, width, qkv.weight)
        for name, weight, bias in zip("qkv", weights, biases):
            state[f"{layer}self_attn.{name}_proj.weight"] = weight
            state[f"{layer}self_attn.{name}_proj.bias"] = bias
        state[f"{layer}self_attn.out_proj.weight"] = block.attn.proj.weight
        state[f"{layer}self_attn.out_proj.bias"] = _bias(block.attn.proj)
        for ours, theirs in (("norm1", "layer_norm1"), ("norm2", "layer_norm2")):
            state[f"{layer}{theirs}.weight"] = getattr(block, ours).weight
            state[f"{layer}{theirs}.bias"] = getattr(block, ours).bias
        for ours in ("fc1", "fc2"):
            state[f"{layer}mlp.{ours}.weight"] = getattr(block.mlp, ours).weight
            state[f"{layer}mlp.{ours}.bias"] = _bias(getattr(block.mlp, ours))
    return VisionPlan(config, state, -1, "full", 0, patch)


def _transformers_plan(tokenizer: Any) -> VisionPlan:
    from transformers import CLIPVisionModel, SiglipVisionModel

    model = tokenizer.model
    if type(model) not in (CLIPVisionModel, SiglipVisionModel):
        raise NotLlava(
            f"its transformers tower is a {type(model).__name__}; LLaVA's vision tower here is CLIPVisionModel "
            "or SiglipVisionModel"
        )
    layers = int(model.config.num_hidden_layers)
    clip = type(model) is CLIPVisionModel
    if not clip and tokenizer.spec.feature_layer == -1:
        raise _final_norm_refusal(tokenizer.spec, "SiglipVisionModel's post_layernorm")
    # hidden_states[0] is the embedding output, hidden_states[i + 1] block i's: block i is index i - layers
    feature_layer = tokenizer._layer - layers
    config = copy.deepcopy(model.config)
    state = dict(model.state_dict())
    return VisionPlan(
        config, state, feature_layer, "default" if clip else "full", int(clip), config.patch_size
    )


def vision_plan(model: Any) -> VisionPlan:
    """The LLaVA form of the model's image tokenizer; raises NotLlava saying why there is none."""
    from vlmlab.models.adapters import MLPAdapter, adapter_name

    spec = model.image_tokenizer.spec
    if model.config.fusion != "joint_decoder":
        raise NotLlava(
            f"its fusion is {model.config.fusion!r}: LLaVA runs image tokens through the language model's own "
            "layers, which is vlmlab's 'joint_decoder' fusion only"
        )
    if model.image_tokenizer.is_discrete:
        raise NotLlava(
            f"its image tokenizer {spec.name!r} is discrete (token ids through an embedding table); LLaVA "
            "projects continuous CLIP / SigLIP features"
        )
    adapter = model.adapter
    if (
        type(adapter) is not MLPAdapter
    ):  # pixel_shuffle, perceiver, avgpool, c_abstractor regroup or resample the patches
        raise NotLlava(
            f"its adapter is {adapter_name(adapter)!r} ({model.image_tokenizer.num_tokens} patches -> "
            f"{adapter.num_tokens} image tokens); LLaVA's projector is vlmlab's 'mlp' adapter, one token per "
            "patch, and cannot express it"
        )
    hidden = model.backbone_spec.hidden_size
    if adapter.fc1.out_features != hidden:
        raise NotLlava(
            f"its MLP adapter is {adapter.fc1.out_features} wide; LLaVA's projector is the language model's "
            f"width ({hidden})"
        )
    if type(adapter.act) is not nn.GELU or adapter.act.approximate != "none":
        raise NotLlava("its adapter's activation is not the exact GELU of LLaVA's projector")
    if adapter.fc1.bias is None or adapter.fc2.bias is None:
        raise NotLlava("its adapter has no biases, LLaVA's projector does")
    builders = {"open_clip": _open_clip_plan, "timm": _timm_plan, "transformers": _transformers_plan}
    if spec.library not in builders:
        raise NotLlava(
            f"its image tokenizer {spec.name!r} ({spec.library} {spec.arch}) has no transformers vision model "
            "LLaVA loads (CLIP or SigLIP)"
        )
    plan = builders[spec.library](model.image_tokenizer)
    grid = plan.config.image_size // plan.patch_size
    if grid * grid != model.tokens_per_image or plan.config.image_size != spec.image_size:
        raise NotLlava(
            f"its {model.tokens_per_image} image tokens at {spec.image_size} px do not match a "
            f"{plan.config.image_size} px tower of {plan.patch_size} px patches"
        )
    return plan


def build_llava(model: Any, plan: VisionPlan) -> Any:
    """A LlavaForConditionalGeneration holding a copy of the model's weights under transformers' names."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, Qwen3Config
    from transformers.initialization import no_init_weights

    text_config = Qwen3Config.from_dict(model.lm.config.to_dict())
    text_config.tie_word_embeddings = False
    config = LlavaConfig(
        vision_config=plan.config,
        text_config=text_config,
        image_token_index=int(model.image_token_id),
        image_seq_length=int(model.tokens_per_image),
        projector_hidden_act="gelu",  # ACT2FN["gelu"]: the exact GELU of vlmlab's MLP adapter
        vision_feature_select_strategy=plan.strategy,
        vision_feature_layer=plan.feature_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    with no_init_weights():  # every weight is assigned below
        llava = LlavaForConditionalGeneration(config)
    state = {f"model.language_model.{k}": v for k, v in model.lm.model.state_dict().items()}
    state["lm_head.weight"] = model.lm.lm_head.weight
    for ours, theirs in (("fc1", "linear_1"), ("fc2", "linear_2")):
        linear = getattr(model.adapter, ours)
        state[f"model.multi_modal_projector.{theirs}.weight"] = linear.weight
        state[f"model.multi_modal_projector.{theirs}.bias"] = linear.bias
    state.update({f"model.vision_tower.{k}": v for k, v in plan.state.items()})
    expected = set(llava.state_dict())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise NotLlava(f"the weight mapping is incomplete (missing {missing[:3]}, unexpected {extra[:3]})")
    llava.load_state_dict({k: v.detach() for k, v in state.items()}, strict=True)
    return llava.eval()


def _dummy_inputs(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """One image and a short text around its placeholders, reproducibly random (no image token in the text)."""
    generator = torch.Generator().manual_seed(0)
    size = model.image_tokenizer.spec.image_size
    pixels = torch.randn(1, 3, size, size, generator=generator)
    text = torch.randint(0, model.backbone_spec.vocab_size - 1, (1, 12), generator=generator)
    text = torch.where(text == model.image_token_id, text + 1, text)
    image = torch.full((1, model.tokens_per_image), model.image_token_id)
    return torch.cat([text[:, :4], image, text[:, 4:]], dim=1), pixels


def _relative_difference(got: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    difference = float((got.float() - reference.float()).abs().max())
    return difference, difference / max(1.0, float(reference.float().abs().max()))


@torch.no_grad()
def check_llava(model: Any, llava: Any) -> dict[str, float]:
    """Vision features and logits of the converted model against vlmlab's on the same inputs."""
    input_ids, pixels = _dummy_inputs(model)
    dtype = next(model.parameters()).dtype
    pixels = pixels.to(dtype)
    reference = model.image_features(pixels)
    got = llava.model.get_image_features(
        pixel_values=pixels,
        vision_feature_layer=llava.config.vision_feature_layer,
        vision_feature_select_strategy=llava.config.vision_feature_select_strategy,
    ).pooler_output
    got = torch.stack(list(got)) if isinstance(got, (list, tuple)) else got
    features, features_relative = _relative_difference(got, reference)
    if features_relative > _CHECK_TOLERANCE:
        raise NotLlava(f"the converted vision features differ from vlmlab's by {features:.3g}")
    reference_logits = model(input_ids, pixel_values=pixels).logits
    logits = llava(input_ids=input_ids, pixel_values=pixels).logits
    logit_difference, relative = _relative_difference(logits, reference_logits)
    if relative > _CHECK_TOLERANCE:
        raise NotLlava(f"the converted model's logits differ from vlmlab's by {logit_difference:.3g}")
    return {"max_feature_difference": features, "max_logit_difference": logit_difference}


@torch.no_grad()
def check_folder(model: Any, folder: Path, llava: bool) -> dict[str, Any]:
    """Load the written folder back the way a client does (plain transformers for LLaVA, the Auto class with
    trust_remote_code otherwise) and compare its logits with vlmlab's on the same inputs."""
    from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration
    from transformers.utils import HF_MODULES_CACHE
    from transformers.utils import logging as hf_logging

    dtype = next(model.parameters()).dtype
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a self-check, not the user's load: no "Loading weights" bar
    modules = Path(HF_MODULES_CACHE) / "transformers_modules"  # where trust_remote_code copies the code
    before = set(modules.iterdir()) if modules.is_dir() else set()
    try:
        if llava:
            loaded = LlavaForConditionalGeneration.from_pretrained(str(folder), dtype=dtype)
            how = "LlavaForConditionalGeneration.from_pretrained"
        else:
            loaded = AutoModelForImageTextToText.from_pretrained(
                str(folder), dtype=dtype, trust_remote_code=True
            )
            how = "AutoModelForImageTextToText.from_pretrained(trust_remote_code=True)"
    finally:
        if bar:
            hf_logging.enable_progress_bar()
        # the copy made for the folder's temporary name would stay in the user's cache for good
        suffix = folder.name.rsplit(".", 1)[-1]
        for path in set(modules.iterdir()) - before if modules.is_dir() else ():
            if path.name.endswith(suffix):
                shutil.rmtree(path, ignore_errors=True)
    input_ids, pixels = _dummy_inputs(model)
    pixels = pixels.to(dtype)
    reference = model(input_ids, pixel_values=pixels).logits
    got = loaded.eval()(input_ids=input_ids, pixel_values=pixels).logits
    del loaded
    difference, relative = _relative_difference(got, reference)
    if not relative <= _CHECK_TOLERANCE:  # (NaN fails too)
        raise ConfigError(
            f"vlmlab export: the written folder, loaded back with {how}, gives logits that differ from "
            f"vlmlab's by {difference:.3g} (allowed {_CHECK_TOLERANCE:g} relative); nothing was exported."
        )
    return {"max_logit_difference": difference, "logit_check": f"{how} against vlmlab, {dtype}"}


# -- the processor (both formats) ---------------------------------------------------------------------------
PIL_PROCESSOR_FILE = "image_processing_vlmlab.py"


def needs_pil_processor(spec: Any) -> bool:
    """Whether the tokenizer's transform resizes the PIL image (VAR), which no stock processor reproduces.

    transformers 5's `CLIPImageProcessor` resizes a uint8 tensor with torch's antialiased kernel (int16
    weights: one or two levels from Pillow's Lanczos), and all its backends place the centre crop at
    floor((size - crop) / 2) where torchvision rounds half to even: such a folder gets vlmlab's own
    processor class (export_templates/image_processing_vlmlab.py) as remote code instead. (Only VAR does
    this; it is discrete, so never LLaVA, whose folders load without remote code.)
    """
    from vlmlab.models.tokenizers.preprocess import _RELEASE_SHORT_SIDE_RATIO

    # `resize` squashes the tensor as for every library (vlmlab.models.tokenizers.preprocess)
    return spec.library in _RELEASE_SHORT_SIDE_RATIO and spec.resize == "crop"


def _pil_image_processor(spec: Any) -> Any:
    """vlmlab's remote-code image processor for a PIL-resizing tokenizer, mapped for AutoImageProcessor."""
    import importlib

    from vlmlab.models.tokenizers.preprocess import release_short_side

    module = importlib.import_module("vlmlab.eval.export_templates.image_processing_vlmlab")
    processor = module.VlmlabImageProcessor(
        short_side=release_short_side(spec),
        crop_size=int(spec.image_size),
        resample=_PIL_RESAMPLE[spec.interpolation],
        image_mean=list(spec.mean),
        image_std=list(spec.std),
    )
    # saved into preprocessor_config.json: AutoImageProcessor (trust_remote_code) loads the folder's copy
    stem = PIL_PROCESSOR_FILE.removesuffix(".py")
    processor.auto_map = {"AutoImageProcessor": f"{stem}.{type(processor).__name__}"}
    return processor


def refuse_letterbox(model: Any) -> None:
    """No transformers image processor pads an image to a square with a colour before resizing (CLIP's
    resizes and crops; LLaVA-NeXT's pads tiles, not this), so neither format can reproduce `letterbox`."""
    spec = model.image_tokenizer.spec
    if spec.resize == "letterbox":
        raise ConfigError(
            "vlmlab export: model.image_resize=letterbox (pad to a square with the mean colour) has no "
            "transformers image processor to express it; export a run trained with crop or resize."
        )


def build_processor(model: Any, tokenizer: Any, patch_size: int, strategy: str, additional: int) -> Any:
    """LlavaProcessor: vlmlab's image transform (a CLIPImageProcessor, or vlmlab's own processor where the
    tokenizer resizes the PIL image), the text tokenizer, the chat template."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    from vlmlab.data.text_tokenizer import CHAT_TEMPLATE, IMAGE_PAD

    spec = model.image_tokenizer.spec
    if spec.interpolation not in _PIL_RESAMPLE:
        raise unknown_choice(f"interpolation (tokenizer {spec.name!r})", spec.interpolation, _PIL_RESAMPLE)
    size = int(spec.image_size)
    # `resize` squashes to the square: the stock processor's exact (height, width) resize without a crop
    square = spec.resize == "resize"
    if needs_pil_processor(spec):
        image_processor = _pil_image_processor(spec)
    else:
        image_processor = CLIPImageProcessor(
            do_resize=True,
            size={"height": size, "width": size} if square else {"shortest_edge": size},
            resample=_PIL_RESAMPLE[spec.interpolation],
            do_center_crop=not square,
            crop_size={"height": size, "width": size},
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=list(spec.mean),
            image_std=list(spec.std),
            do_convert_rgb=True,
        )
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=strategy,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_PAD,
        num_additional_image_tokens=additional,
    )
    count = (size // patch_size) ** 2 + additional - (strategy == "default")
    if processor.image_token_id != model.image_token_id or count != model.tokens_per_image:
        raise ConfigError(
            f"The processor would write {count} x id {processor.image_token_id} per image; the model expects "
            f"{model.tokens_per_image} x id {model.image_token_id}."
        )
    return processor


def check_processor(model: Any, processor: Any) -> float:
    """Max |difference| of the processor's pixels and vlmlab's transform on non-square test images."""
    from PIL import Image

    from vlmlab.models.tokenizers import build_image_transform

    spec = model.image_tokenizer.spec
    transform = build_image_transform(spec)
    exact = needs_pil_processor(spec)
    # vlmlab's own processor must be bit-exact; a CLIPImageProcessor fuses rescale and normalise (an ulp off)
    tolerance = 0.0 if exact else 1e-5
    # (50, 80) and (97, 40) crop at a margin = 3 (mod 4) at some sizes, where torchvision's offset (vlmlab)
    # rounds up and CLIPImageProcessor's floors: a known one-pixel shift of the stock processor, not checked
    shapes = ((45, 71), (50, 80), (97, 40)) if exact else ((45, 71),)
    generator = torch.Generator().manual_seed(1)
    difference = 0.0
    for height, width in shapes:
        array = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy()
        image = Image.fromarray(array)
        reference = transform(image)
        got = processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        difference = max(
            difference, float((got - reference).abs().max()) if got.shape == reference.shape else float("inf")
        )
    if difference > tolerance:
        raise ConfigError(
            f"The exported image processor's pixels differ from vlmlab's transform by {difference:.3g} "
            f"(tokenizer {spec.name!r}); the export would not be faithful."
        )
    return difference


# -- the remote-code format --------------------------------------------------------------------------------
def remote_config(model: Any, tokenizer: Any) -> Any:
    """The VlmlabConfig of config.json: vlmlab's model configuration with the presets resolved."""
    import importlib

    module = importlib.import_module("vlmlab.eval.export_templates.configuration_vlmlab")
    fields = dataclasses.asdict(model.config)
    fields["backbone"] = dataclasses.asdict(model.backbone_spec)
    fields["tokenizer"] = dataclasses.asdict(model.image_tokenizer.spec)
    for name in ("backbone_weights", "tokenizer_weights"):
        fields[name] = None  # the folder's safetensors hold every weight
    fields["tokenizer"]["pretrained"] = None
    fields["random_tokenizer"] = True
    fields["gradient_checkpointing"] = False
    config = module.VlmlabConfig(
        vlmlab_model=fields,
        image_token_id=int(model.image_token_id),
        tokens_per_image=int(model.tokens_per_image),
        vocab_size=int(model.backbone_spec.vocab_size),
        hidden_size=int(model.backbone_spec.hidden_size),
        eos_token_id=stop_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    config.architectures = ["VlmlabForConditionalGeneration"]
    target = "modeling_vlmlab.VlmlabForConditionalGeneration"
    config.auto_map = {
        "AutoConfig": "configuration_vlmlab.VlmlabConfig",
        "AutoModel": target,
        "AutoModelForCausalLM": target,
        "AutoModelForImageTextToText": target,
    }
    config.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return config


def remote_state(model: Any) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (non-persistent ones too: the remote model stores them all), as `model.*`."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return {f"model.{name}": tensor.detach().contiguous() for name, tensor in tensors}


def write_remote(model: Any, tokenizer: Any, folder: Path) -> None:
    from huggingface_hub import save_torch_state_dict

    remote_config(model, tokenizer).save_pretrained(str(folder))
    for name in REMOTE_FILES:
        shutil.copyfile(TEMPLATES / name, folder / name)
    save_torch_state_dict(remote_state(model), str(folder), max_shard_size="5GB")


# -- the command ---------------------------------------------------------------------------------------------
def stop_ids(tokenizer: Any) -> list[int]:
    """What ends an answer, as vlmlab's own decoding has it: <|im_end|> (every trained turn ends with it), and
    the tokenizer's EOS where that is another token (a base Qwen3 tokenizer's <|endoftext|>)."""
    ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
    return list(dict.fromkeys(int(token) for token in ids if token is not None))


def _generation_config(tokenizer: Any, image_token_id: int) -> Any:
    """Greedy by default; stops as vlmlab's decoding does and, like it, never emits the image placeholder id
    (as an input it would mark an image slot that has no image)."""
    from transformers import GenerationConfig

    stops = stop_ids(tokenizer)
    return GenerationConfig(
        eos_token_id=stops if len(stops) > 1 else stops[0],
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=[int(image_token_id)],
        do_sample=False,
        max_new_tokens=64,
    )


def _choose(model: Any, fmt: str, source: Path) -> tuple[VisionPlan | None, str]:
    """(the LLaVA plan or None, why this format) for `fmt`; ConfigError for `llava` on another model."""
    if fmt == "remote-code":
        return None, "requested (--format remote-code)"
    try:
        plan = vision_plan(model)
    except NotLlava as reason:
        if fmt == "llava":
            raise ConfigError(
                f"--format llava: {str(source)!r} is not a LLaVA architecture: {reason}. Export it with "
                "--format remote-code (or auto)."
            ) from None
        return None, f"not a LLaVA architecture: {reason}"
    return plan, "Joint-Decoder + CLIP / SigLIP + MLP adapter: LlavaForConditionalGeneration"


def export_run(
    run_or_checkpoint: str | Path, out_dir: str | Path, format: str = "auto", overwrite: bool = False
) -> Path:
    """Write the run's (or checkpoint's) model as a Hugging Face folder at `out_dir` (see the module doc)."""
    if format not in FORMATS:
        raise unknown_choice("export format", format, FORMATS)
    out = Path(out_dir).expanduser()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {str(out)!r} already exists; choose a new folder or pass --overwrite.")
    from vlmlab.runs.load import text_side

    config, model, checkpoint, chain = load_for_export(run_or_checkpoint)
    if model.config.is_encoder_set:
        # LLaVA holds one vision tower, and the remote-code processor gives one normalised image per input
        raise ConfigError(
            f"{str(run_or_checkpoint)!r} encodes images with several towers ({model.image_tokenizer.spec.name}); "
            f"no export format expresses an encoder set yet (requested --format {format}): evaluate it in vlmlab."
        )
    # both formats are plain architectures: LoRA adapters (vlmlab.models.lora) are folded into the base
    # weights with peft's merge first, so the export computes what the trained model computes
    merged_lora = merge_all(model)
    if model.config.tiling != "none":
        # LLaVA-NeXT's processor and model carry their own tiling (unpadded feature map, a learned
        # image_newline), not vlmlab's (whole tiles, newline text tokens), and the remote-code processor
        # gives one tokenizer input per image
        raise ConfigError(
            f"{str(run_or_checkpoint)!r} tiles its images (model.tiling={model.config.tiling}); no export "
            f"format expresses vlmlab's tiling yet (requested --format {format}): evaluate it in vlmlab."
        )
    refuse_letterbox(model)
    tokenizer, _ = text_side(config, model)
    plan, why = _choose(model, format, Path(run_or_checkpoint))
    record: dict[str, Any] = {
        "source": str(checkpoint.resolve()),
        "chain": [str(path.resolve()) for path in chain],
        "stage": config.train.stage,
        "fusion": model.config.fusion,
        "backbone": model.backbone_spec.name,
        "image_tokenizer": model.image_tokenizer.spec.name,
        "tokens_per_image": int(model.tokens_per_image),
        "image_token_id": int(model.image_token_id),
        "lora_merged": merged_lora,  # groups whose LoRA adapters were merged into the exported weights
    }
    llava = None
    if plan is not None:
        try:
            llava = build_llava(model, plan)
            record["checks"] = check_llava(model, llava)
        except NotLlava as reason:  # the mapping did not reproduce vlmlab: never write it as LLaVA
            if format == "llava":
                raise ConfigError(
                    f"--format llava: {str(run_or_checkpoint)!r} cannot be exported: {reason}."
                ) from None
            print(f"vlmlab export: {reason}; writing the remote-code format instead.", file=sys.stderr)
            plan, llava, why = None, None, f"LLaVA conversion failed its check: {reason}"
    if plan is not None:
        processor = build_processor(model, tokenizer, plan.patch_size, plan.strategy, plan.prefix_tokens)
    else:
        size = model.image_tokenizer.spec.image_size  # one "patch" per image; the rest as additional tokens
        processor = build_processor(model, tokenizer, size, "full", model.tokens_per_image - 1)
    record["checks"] = {**record.get("checks", {}), "max_pixel_difference": check_processor(model, processor)}
    record["image_processor"] = type(processor.image_processor).__name__
    record.update(format="llava" if plan is not None else "remote-code", why=why)

    import vlmlab

    record["vlmlab_version"] = vlmlab.__version__
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        shareable(tmp, folder=True)
        if llava is not None:
            llava.generation_config = _generation_config(tokenizer, model.image_token_id)
            llava.save_pretrained(str(tmp))
        else:
            write_remote(model, tokenizer, tmp)
            _generation_config(tokenizer, model.image_token_id).save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        if needs_pil_processor(model.image_tokenizer.spec):  # the class its preprocessor_config.json maps
            shutil.copyfile(TEMPLATES / PIL_PROCESSOR_FILE, tmp / PIL_PROCESSOR_FILE)
        llava = None  # the written folder is checked from disk: the in-memory copy is not needed any more
        record["checks"] = {**record["checks"], **check_folder(model, tmp, record["format"] == "llava")}
        atomic_write_text(tmp / "vlmlab_export.json", json.dumps(record, indent=2))
        for path in tmp.rglob("*"):
            if path.is_file():
                shareable(path)  # save_pretrained writes some files 0600: the group may read results
                fsync_file(path)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        with writing(out):  # a full disk names the export folder
            raise
    return out


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished folder into place (an existing `out` is swapped out, then deleted)."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
    os.replace(out, old / out.name)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["FORMATS", "NotLlava", "export_run", "vision_plan"]
