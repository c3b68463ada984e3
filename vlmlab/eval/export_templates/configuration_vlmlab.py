"""The configuration of a vlmlab model exported by `vlmlab export` in the remote-code format.

`vlmlab_model` is vlmlab's own model configuration (the fields of `vlmlab.config.ModelConfig`) with the
backbone and image-tokenizer presets resolved into their full specs, so the folder rebuilds the architecture
without vlmlab's preset files. Every weight comes from the folder's safetensors: nothing is downloaded.
"""

from __future__ import annotations

from transformers import PretrainedConfig


class VlmlabConfig(PretrainedConfig):
    model_type = "vlmlab"

    def __init__(
        self,
        vlmlab_model: dict | None = None,
        image_token_id: int | None = None,
        tokens_per_image: int | None = None,
        vocab_size: int | None = None,
        hidden_size: int | None = None,
        **kwargs,
    ) -> None:
        self.vlmlab_model = dict(vlmlab_model or {})
        self.image_token_id = image_token_id
        self.tokens_per_image = tokens_per_image  # placeholder ids per image in input_ids (1: a marker)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        kwargs.setdefault("tie_word_embeddings", False)  # vlmlab's head is always its own parameter
        super().__init__(**kwargs)


__all__ = ["VlmlabConfig"]
