"""The vision-language model: image tokenizer -> adapter -> fusion over a Qwen3 backbone.

Batch contract (the same for every fusion):
- `input_ids` [B, T]: text token ids with the backbone's `image_token_id` wherever an image sits. In
  Joint-Decoder and MoT each image occupies `tokens_per_image` consecutive placeholder positions (the
  adapter's output count: the tokenizer's, or fewer after pixel_shuffle / perceiver / avgpool); in
  Cross-Attention one marker position. Any number of images may sit anywhere among the text.
- `pixel_values` [N, 3, H, W]: the images in the order their placeholders appear (row by row), each as the
  image tokenizer's own preprocessing made it (`image_tokenizer.image_transform()`). With several encoders
  (`model.tokenizer` a list) [N, 3 * towers, S, S]: tower i's own view (its size, framing and normalisation) in
  channels 3i..3i+2, top-left, S the largest tower input (vlmlab/models/tokenizers/encoder_set.py).
- `segment_ids` [B, T] (optional): which packed sample each position belongs to (0, 1, ...), -1 padding.
  Without it, every row is one sample; `attention_mask` [B, T] (1 real, 0 pad) is accepted instead.
- `position_ids` [B, T] (optional): default restart at 0 for every segment.
- `labels` [B, T] (optional): target ids aligned with `input_ids`, -100 where not scored (prompt, image
  tokens, padding); position t's logits predict `labels[t + 1]`, as in transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Qwen3ForCausalLM

from vlmlab.config import ModelConfig, load_config
from vlmlab.errors import ConfigError
from vlmlab.models.adapters import Adapter, AdapterShape, build_adapter, default_adapter
from vlmlab.models.backbone import BackboneSpec, build_backbone, load_backbone_spec
from vlmlab.models.fusion import FUSIONS, FusionContext
from vlmlab.models.fusion.context import attention_masking, positions_from_segments
from vlmlab.models.fusion.cross_attention import image_bank_and_mask
from vlmlab.models.loss import linear_cross_entropy
from vlmlab.models.tokenizers import ImageTokenizer, build_tokenizer, load_tokenizer_spec
from vlmlab.models.tokenizers.encoder_set import EncoderSet
from vlmlab.tiling import TilingPlan

# Named parameter groups: what training freezes and gives learning rates to (paper, Appendix D).
PARAMETER_GROUPS = ("image_tokenizer", "adapter", "language_model", "cross_attention", "mot_image")
_GROUP_OF_PREFIX = {
    "image_tokenizer.": "image_tokenizer",
    "adapter.": "adapter",
    "lm.": "language_model",
    "fusion.cross_attn_layers.": "cross_attention",
    "fusion.image_layers.": "mot_image",
}
IGNORE_INDEX = -100


def parameter_group(name: str) -> str:
    for prefix, group in _GROUP_OF_PREFIX.items():
        if name.startswith(prefix):
            return group
    raise KeyError(f"parameter {name!r} belongs to no group")


@dataclass
class VLMOutput:
    loss: torch.Tensor | None  # mean cross-entropy over scored tokens
    logits: torch.Tensor | None  # [B, T, V] when requested
    hidden_states: torch.Tensor  # [B, T, D] after the final norm
    num_scored_tokens: int


class VisionLanguageModel(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        backbone_spec: BackboneSpec,
        lm: Qwen3ForCausalLM,
        image_tokenizer: ImageTokenizer,
        adapter: Adapter,
        fusion: nn.Module,
    ) -> None:
        super().__init__()
        self.config = config
        self.backbone_spec = backbone_spec
        self.image_token_id = backbone_spec.image_token_id
        self.lm = lm
        self.image_tokenizer = image_tokenizer
        self.adapter = adapter
        self.fusion = fusion
        # the loss over the vocabulary head (vlmlab/models/loss.py); training sets it from train.loss_impl
        self.loss_impl = "chunked"
        # the base weights loaded (source, hub revision, file sha256; None: random init), which a stage
        # checkpoint's delta is only valid on top of (vlmlab/models/provenance.py)
        self.base_weights: dict[str, dict | None] = {
            "backbone": getattr(lm, "base_weight_record", None),
            "image_tokenizer": getattr(image_tokenizer, "base_weight_record", None),
        }
        if image_tokenizer.is_discrete:
            image_tokenizer.requires_grad_(False)  # never trained (no straight-through estimator)

    @property
    def attn_implementation(self) -> str:
        """The attention kernel the backbone's layers call (eager, sdpa, flash_attention_2, flex_attention)."""
        return self.lm.config._attn_implementation

    # -- what the data pipeline needs to know
    @property
    def features_per_image(self) -> int:
        """Vectors one image becomes after the adapter (the connector sets the count, not the tokenizer)."""
        return self.adapter.num_tokens

    @property
    def tokens_per_image(self) -> int:
        """Placeholder positions one image takes in `input_ids`: its adapter's tokens in Joint-Decoder and
        MoT, one marker in Cross-Attention (which reads the adapter's tokens from its image bank)."""
        return self.features_per_image if self.fusion.images_in_sequence else 1

    @property
    def tiling_plan(self) -> TilingPlan | None:
        """AnyRes tiling (model.tiling; None: one tokenizer input per image): tiles of the tokenizer's input
        size, each taking `tokens_per_image` placeholder positions (the connector's count, or one marker)."""
        if self.config.tiling == "none":
            return None
        return TilingPlan(
            tuple(tuple(grid) for grid in self.config.tile_grids),
            self.image_tokenizer.spec.image_size,
            self.tokens_per_image,
            self.config.max_image_tokens,
        )

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {name: [] for name in PARAMETER_GROUPS}
        for name, param in self.named_parameters():
            groups[parameter_group(name)].append((name, param))
        return groups

    def train(self, mode: bool = True) -> VisionLanguageModel:
        super().train(mode)
        if self.image_tokenizer.is_discrete:
            self.image_tokenizer.eval()  # frozen quantizers keep inference behaviour
        return self

    # -- forward
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, features_per_image, D] in the language model's width."""
        if self.image_tokenizer.is_discrete:
            with torch.no_grad():
                tokens = self.image_tokenizer(pixel_values)
        else:
            tokens = self.image_tokenizer(pixel_values)
        return self.adapter(tokens)

    def embed(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text embeddings with image features scattered in (in-sequence fusions)."""
        placeholder = input_ids == self.image_token_id
        embeds = self.lm.model.embed_tokens(input_ids)
        if pixel_values is None or pixel_values.shape[0] == 0:
            if bool(placeholder.any()):
                raise ConfigError(
                    f"The batch has {int(placeholder.sum())} image placeholder tokens but no pixel_values."
                )
            return embeds, None
        features = self.image_features(pixel_values).to(embeds.dtype)
        if not self.fusion.images_in_sequence:
            return embeds, features
        expected = features.shape[0] * features.shape[1]
        if int(placeholder.sum()) != expected:
            raise ConfigError(
                f"The batch has {int(placeholder.sum())} image placeholder tokens but {features.shape[0]} "
                f"images x {features.shape[1]} tokens = {expected} image tokens; each image needs "
                f"{self.tokens_per_image} consecutive placeholder ids ({self.image_token_id})."
            )
        embeds = embeds.masked_scatter(placeholder[..., None], features.reshape(-1, features.shape[-1]))
        return embeds, features

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_logits: bool = True,
    ) -> VLMOutput:
        if segment_ids is None:
            segment_ids = (
                torch.zeros_like(input_ids)
                if attention_mask is None
                else torch.where(attention_mask.bool(), 0, -1)
            )
        embeds, features = self.embed(input_ids, pixel_values)
        ctx = self._context(embeds, input_ids, segment_ids, position_ids, features)
        hidden = self.fusion(self.lm, embeds, ctx)
        hidden = self.lm.model.norm(hidden)
        return self._head(hidden, labels, return_logits)

    # -- generation with a key-value cache: prompt once, then one token at a time (models/generation.py).
    # Both are methods of the model itself so that a sharded model gathers its weights for them too.
    def prefill(
        self,
        input_ids: torch.Tensor,  # [B, T] left-padded prompts
        segment_ids: torch.Tensor,  # [B, T] 0 on prompt tokens, -1 on left padding
        pixel_values: torch.Tensor | None,
        cache: object,
        all_logits: bool = False,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Encode the prompts into `cache`; -> (last-position logits [B, V], or every position's [B, T, V] with
        `all_logits`, last positions [B, 1], extras). Positions default to counting each row's tokens from 0."""
        embeds, features = self.embed(input_ids, pixel_values)
        ctx = self._context(embeds, input_ids, segment_ids, position_ids, features, cache=cache)
        hidden = self.fusion(self.lm, embeds, ctx)
        extras = ctx.extras
        if "image_mask" in extras:  # a new token sees what the last prompt token sees: every image of its row
            extras["image_mask"] = extras["image_mask"][:, :, -1:]
            extras["sees_image"] = extras["sees_image"][:, -1:]
        logits = self.lm.lm_head(self.lm.model.norm(hidden if all_logits else hidden[:, -1]))
        return logits, ctx.position_ids[:, -1:], extras

    def decode_step(
        self,
        token: torch.Tensor,  # [B] the tokens just generated
        positions: torch.Tensor,  # [B, 1] their position ids
        segment_ids: torch.Tensor,  # [B, T + 1] the whole sequence's segments, the new token included
        cache: object,
        extras: dict,
    ) -> torch.Tensor:
        """One cached decoding step -> next-token logits [B, V]."""
        embeds = self.lm.model.embed_tokens(token[:, None])
        mask, kwargs = attention_masking(self.attn_implementation, segment_ids, 1, embeds.dtype, True)
        ctx = FusionContext(
            position_embeddings=self.lm.model.rotary_emb(embeds, positions),
            position_ids=positions,
            attn_mask=mask,
            is_image=torch.zeros_like(token[:, None], dtype=torch.bool),
            cache=cache,
            extras=extras,
            attention_kwargs=kwargs,
        )
        hidden = self.fusion(self.lm, embeds, ctx)
        return self.lm.lm_head(self.lm.model.norm(hidden[:, -1]))

    def _context(
        self,
        embeds: torch.Tensor,
        input_ids: torch.Tensor,
        segment_ids: torch.Tensor,
        position_ids: torch.Tensor | None,
        features: torch.Tensor | None,
        cache: object | None = None,
    ) -> FusionContext:
        if position_ids is None:
            position_ids = positions_from_segments(segment_ids)
        mask, kwargs = attention_masking(
            self.attn_implementation, segment_ids, input_ids.shape[1], embeds.dtype, cache is not None
        )
        ctx = FusionContext(
            position_embeddings=self.lm.model.rotary_emb(embeds, position_ids),
            position_ids=position_ids,
            attn_mask=mask,
            is_image=input_ids == self.image_token_id,
            cache=cache,
            gradient_checkpointing=self.config.gradient_checkpointing and self.training,
            attention_kwargs=kwargs,
        )
        if features is not None and not self.fusion.images_in_sequence:
            bank, image_mask, sees_image = image_bank_and_mask(
                features, ctx.is_image, segment_ids, embeds.dtype
            )
            ctx.extras.update(image_bank=bank, image_mask=image_mask, sees_image=sees_image)
        return ctx

    def _head(self, hidden: torch.Tensor, labels: torch.Tensor | None, return_logits: bool) -> VLMOutput:
        loss, scored = None, 0
        if labels is not None:
            targets = labels[:, 1:]
            selected = targets != IGNORE_INDEX
            # only scored positions go through the (large) vocabulary head. Selecting them is the step's one
            # host sync (the count sets a shape); running the head on every position instead would cost up to
            # three times its FLOPs on caption batches, more than the stall.
            rows, picked = hidden[:, :-1][selected], targets[selected]
            scored = picked.shape[0]
            head = self.lm.lm_head
            if type(head) is nn.Linear and head.bias is None:
                loss = linear_cross_entropy(rows, head.weight, picked, self.loss_impl)
            else:  # a head wrapped by peft (LoRA targeting lm_head) computes more than its weight: run it
                loss = nn.functional.cross_entropy(head(rows).float(), picked, reduction="sum")
            loss = loss / max(scored, 1)
        logits = self.lm.lm_head(hidden) if return_logits else None
        return VLMOutput(loss=loss, logits=logits, hidden_states=hidden, num_scored_tokens=scored)


def build_image_tokenizer(config: ModelConfig) -> ImageTokenizer:
    """The image tokenizer of `model.tokenizer`: one tower, or an encoder set of a list's towers
    (vlmlab/models/tokenizers/encoder_set.py) fused by `model.encoder_fusion`."""
    towers = []
    for name in config.towers:
        spec = load_tokenizer_spec(name)
        if config.random_tokenizer:
            spec = spec.replace(pretrained=None)
        if config.tokenizer_weights is not None:
            spec = spec.replace(pretrained=config.tokenizer_weights)
        # the effective input size and resize rule live in the tokenizer's spec alone: the data transform, the
        # synthetic rendering size, validation, describe and the export processor all read
        # model.image_tokenizer.spec (a set's spec: the largest tower's size, its towers' rule)
        spec = spec.replace(image_size=config.image_size or spec.image_size, resize=config.image_resize)
        towers.append(build_tokenizer(spec))
    return EncoderSet(towers, config.encoder_fusion) if config.is_encoder_set else towers[0]


def build_vlm(config: ModelConfig | dict | None = None, **overrides: object) -> VisionLanguageModel:
    """The one factory for every (backbone, tokenizer, fusion) combination."""
    if config is None or isinstance(config, dict):
        config = load_config(ModelConfig, [config or {}])
    if overrides:
        import dataclasses

        config = dataclasses.replace(config, **overrides)
    backbone_spec = load_backbone_spec(config.backbone)
    lm = build_backbone(backbone_spec, config.backbone_weights, config.attn_implementation)
    tokenizer = build_image_tokenizer(config)
    tokenizer_spec = tokenizer.spec
    adapter_name = config.adapter
    if adapter_name == "auto":
        adapter_name = default_adapter(tokenizer.is_discrete, config.fusion)
    shape = AdapterShape(
        in_dim=tokenizer.codebook_size if tokenizer.is_discrete else tokenizer.embed_dim,
        in_tokens=tokenizer.num_tokens,
        out_dim=backbone_spec.hidden_size,
        hidden_dim=config.adapter_hidden,
        tokens=config.adapter_tokens,
        ratio=config.pixel_shuffle_ratio,
        heads=backbone_spec.num_attention_heads,
        kv_heads=backbone_spec.num_key_value_heads,
        head_dim=backbone_spec.head_dim,
        norm_eps=backbone_spec.rms_norm_eps,
        tokenizer=tokenizer_spec.name,
    )
    adapter = build_adapter(adapter_name, tokenizer.is_discrete, shape)
    fusion = FUSIONS.get(config.fusion)(
        lm,
        cross_attention_every=config.cross_attention_every,
        cross_attention_layout=config.cross_attention_layout,
    )
    model = VisionLanguageModel(config, backbone_spec, lm, tokenizer, adapter, fusion)
    model.tiling_plan  # noqa: B018 -- the budget against the connector's real count: one line, before training
    return model
