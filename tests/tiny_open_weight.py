"""Tiny random open-weight VLMs in their released layout (config classes + processors, nothing downloaded).

`save_tiny(family, folder)` writes what `from_pretrained` finds in a released repository: config.json, the
safetensors weights, the tokenizer, the image processor and a chat template in the family's layout (our
own template text, written to render the same markup as the release: Qwen2.5-VL's ChatML with
<|vision_start|><|image_pad|><|vision_end|>, Gemma 3's <start_of_turn> turns with <start_of_image>). The
tokenizer is vlmlab's tiny offline one plus the family's special tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlmlab.data.text_tokenizer import build_tiny_tokenizer

FAMILIES = ("qwen2_5_vl", "gemma3")
VOCAB = 544  # the tiny tokenizer's 512 ids + the families' special tokens, rounded up

QWEN_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
GEMMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<start_of_image>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)


def _tokenizer(extra: list[str], named: dict[str, str] | None = None):
    """The tiny tokenizer plus special tokens; `named` ones also as attributes (e.g. boi_token), as the
    released Gemma 3 tokenizer_config declares them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        build_tiny_tokenizer(512, 511), extra_special_tokens=named or {}
    )
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


def build_tiny(family: str, seed: int = 0):
    """(model, processor) of one family, random and tiny."""
    torch.manual_seed(seed)
    if family == "qwen2_5_vl":
        return _qwen()
    if family == "gemma3":
        return _gemma()
    raise ValueError(f"unknown family {family!r}; valid: {FAMILIES}")


def _qwen():
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = _tokenizer(["<|vision_start|>", "<|vision_end|>", "<|video_pad|>"])
    ids = {
        t: tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
    }
    # 56 x 56 .. 112 x 112 pixels: 4-16 image tokens (one per 28 x 28)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_TEMPLATE,
    )
    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            vocab_size=VOCAB,
            max_position_embeddings=2048,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
            bos_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            fullatt_block_indexes=[1],
            window_size=56,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    return model, processor


def _gemma():
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
    )

    named = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    tokenizer = _tokenizer(["<start_of_turn>", "<end_of_turn>"], named)
    ids = {
        t: tokenizer.convert_tokens_to_ids(t)
        for t in ("<start_of_image>", "<end_of_image>", "<image_soft_token>")
    }
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        chat_template=GEMMA_TEMPLATE,
        image_seq_length=4,
    )
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    config = Gemma3Config(
        text_config=dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=128,
            vocab_size=VOCAB,
            max_position_embeddings=2048,
            sliding_window=64,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.pad_token_id,
            eos_token_id=end_of_turn,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        mm_tokens_per_image=4,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    model = Gemma3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = [end_of_turn]
    return model, processor


def save_tiny(family: str, folder: str | Path, seed: int = 0) -> Path:
    """Build one family's tiny model and save it (weights, config, processor) in the released layout."""
    folder = Path(folder)
    model, processor = build_tiny(family, seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


REMOTE_CONFIG = """from transformers import Qwen2_5_VLConfig


class TinyRemoteConfig(Qwen2_5_VLConfig):
    model_type = "tiny_remote_vl"
"""
REMOTE_MODELING = """from transformers import Qwen2_5_VLForConditionalGeneration

from .configuration_tiny_remote import TinyRemoteConfig


class TinyRemoteVL(Qwen2_5_VLForConditionalGeneration):
    config_class = TinyRemoteConfig
"""


def save_tiny_remote(folder: str | Path, seed: int = 0) -> Path:
    """A model whose repository ships its own code, as Kimi-VL's does: config.json names a model type
    transformers does not know and maps the auto classes onto the folder's Python files (auto_map)."""
    import importlib.util
    import json
    import sys

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configuration_tiny_remote.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_tiny_remote.py").write_text(REMOTE_MODELING)
    package = f"tiny_remote_{seed}_{abs(hash(str(folder)))}"  # import the files as the hub would
    spec = importlib.util.spec_from_file_location(
        package, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    (folder / "__init__.py").write_text("")
    sys.modules[package] = importlib.util.module_from_spec(spec)
    configuration = importlib.import_module(f"{package}.configuration_tiny_remote")
    modeling = importlib.import_module(f"{package}.modeling_tiny_remote")
    reference, processor = build_tiny("qwen2_5_vl", seed)
    config = configuration.TinyRemoteConfig(**reference.config.to_dict())
    model = modeling.TinyRemoteVL(config)
    model.load_state_dict(reference.state_dict())
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "__init__.py").unlink()
    data = json.loads((folder / "config.json").read_text())
    data["model_type"] = "tiny_remote_vl"
    data["auto_map"] = {
        "AutoConfig": "configuration_tiny_remote.TinyRemoteConfig",
        "AutoModelForImageTextToText": "modeling_tiny_remote.TinyRemoteVL",
    }
    (folder / "config.json").write_text(json.dumps(data, indent=2))
    return folder
