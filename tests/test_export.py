"""`vlmlab export`: Hugging Face folders that transformers loads from the folder alone, with vlmlab's logits.

LLaVA where the model is one (Joint-Decoder + CLIP / SigLIP whose features LLaVA can select + MLP adapter),
remote code otherwise; the processor reproduces vlmlab's pixels and prompt ids; nothing is a pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from vlmlab.cli import main
from vlmlab.config import ExperimentConfig, load_config, to_dict
from vlmlab.errors import ConfigError
from vlmlab.eval.export import export_run, load_for_export
from vlmlab.models.checkpoint import save_stage_checkpoint
from vlmlab.models.generation import greedy_generate
from vlmlab.models.tokenizers import build_image_transform
from vlmlab.models.vlm import build_vlm
from vlmlab.presets import preset_dir
from vlmlab.runs.load import load_run, text_side

ATOL = 1e-4  # fp32 on the CPU


def tokenizer_yaml(tmp: Path, base: str, feature_layer: int | None = None, **changes) -> str:
    """A variant of a shipped tokenizer preset (e.g. feature_layer -2, LLaVA's usual choice)."""
    spec = OmegaConf.load(preset_dir("tokenizer") / f"{base}.yaml")
    if feature_layer is not None:
        spec.feature_layer = feature_layer
    for key, value in changes.items():
        spec[key] = value
    spec.name = f"{base}-fl{spec.get('feature_layer', -1)}"
    path = tmp / f"{spec.name}.yaml"
    OmegaConf.save(spec, path)
    return str(path)


def checkpoint(tmp: Path, name: str, **model) -> Path:
    """A stage checkpoint of a tiny model with randomised weights (gates open, MoT copies distinct)."""
    fields = {"backbone": "qwen3-tiny", "tokenizer": "clip-tiny", "random_tokenizer": True, **model}
    config = load_config(ExperimentConfig, [{"model": fields}])
    torch.manual_seed(len(name))
    vlm = build_vlm(config.model)
    with torch.no_grad():
        for param in vlm.parameters():
            if param.dtype.is_floating_point:
                param.add_(torch.randn_like(param) * 0.05)
    return save_stage_checkpoint(vlm, tmp / name, to_dict(config), None, include_frozen=True)


def batch(model, images_per_row=(2, 1), length=48, pad_last=0, seed=0):
    """Rows of random text ids with each image's placeholders inside; the last row right-padded."""
    generator = torch.Generator().manual_seed(seed)
    size = model.image_tokenizer.spec.image_size
    rows = []
    for count in images_per_row:
        ids = torch.randint(3, 500, (length,), generator=generator)
        for index in range(count):
            start = 2 + index * (model.tokens_per_image + 3)
            ids[start : start + model.tokens_per_image] = model.image_token_id
        rows.append(ids)
    input_ids = torch.stack(rows)
    mask = torch.ones_like(input_ids)
    if pad_last:
        input_ids[-1, -pad_last:] = 0
        mask[-1, -pad_last:] = 0
    pixels = torch.randn(sum(images_per_row), 3, size, size, generator=generator)
    return input_ids, mask, pixels


def vlmlab_logits(model, input_ids, mask, pixels):
    with torch.no_grad():
        return model(input_ids, pixel_values=pixels, attention_mask=mask).logits


def assert_close_where(got, expected, mask):
    real = mask.bool()
    difference = (got[real] - expected[real]).abs().max().item()
    assert difference <= ATOL, difference
    return difference


def assert_no_pickles(folder: Path) -> None:
    names = sorted(p.name for p in folder.rglob("*") if p.is_file())
    assert any(name.endswith(".safetensors") for name in names), names
    for path in folder.rglob("*"):
        if path.is_file():
            assert path.suffix in {".json", ".safetensors", ".jinja", ".py", ".txt", ".md"}, path.name
            head = path.read_bytes()[:4]
            assert not head.startswith(b"\x80") and head != b"PK\x03\x04", (
                path.name
            )  # pickle / torch.save zip


def photo(width=93, height=61, mode="RGB", seed=0) -> Image.Image:
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(array).convert(mode)


def check_processor(out: Path, model, config, **load):
    """Pixels as vlmlab's transform; the chat template + expansion give the ids of vlmlab's encoder."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(out, **load)
    transform = build_image_transform(model.image_tokenizer.spec)
    for image in (photo(), photo(40, 170, seed=1), photo(64, 64, mode="L", seed=2), photo(80, 50, "RGBA", 3)):
        got = processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        expected = transform(image.convert("RGB"))
        assert (got - expected).abs().max().item() < 1e-5
    _, encoder = text_side(config, model)
    image = photo(seed=4)
    question = "Which color is the square at the top left?"
    sample = {"id": "q", "segments": [{"type": "image", "image": image}, {"type": "text", "text": question}]}
    encoded = encoder.encode_prompt({**sample, "response": "red"})
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=image, return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == encoded["input_ids"].tolist()
    torch.testing.assert_close(inputs["pixel_values"], encoded["pixel_values"], rtol=0, atol=1e-5)
    return inputs


def two_prompts(out: Path, **load):
    """The processor's inputs for two left-padded chat prompts with an image each."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(out, **load)
    questions = ["What is shown?", "Which shape is at the top left of the red square?"]
    messages = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in questions
    ]
    prompts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in messages]
    images = [photo(seed=5), photo(70, 90, seed=6)]
    inputs = processor(text=prompts, images=images, padding=True, padding_side="left", return_tensors="pt")
    assert (inputs["attention_mask"][:, 0] == 0).any()  # the shorter prompt is left-padded
    return inputs


def assert_same_generation(hf_model, model, out: Path, **load) -> None:
    """Greedy decoding of two left-padded prompts through the folder equals vlmlab's greedy decoding."""
    inputs = two_prompts(out, **load)
    generated = hf_model.generate(**inputs, max_new_tokens=6, do_sample=False)
    segments = torch.where(inputs["attention_mask"].bool(), 0, -1)
    stops = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    stops = stops if isinstance(stops, list) else [stops]
    expected = greedy_generate(model, inputs["input_ids"], segments, inputs["pixel_values"], 6, stops)
    start = inputs["input_ids"].shape[1]
    for row, tokens in enumerate(expected):
        assert generated[row, start : start + len(tokens)].tolist() == tokens


# -- LLaVA -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("base", "changes", "vision_type", "strategy"),
    [
        ("clip-tiny", {}, "clip_vision_model", "default"),
        ("clip-tiny", {"arch_kwargs": {"force_quick_gelu": True}}, "clip_vision_model", "default"),
        ("siglip2-tiny", {}, "siglip_vision_model", "full"),
    ],
    ids=["clip", "clip-quickgelu", "siglip2"],
)
def test_llava_round_trip(tmp_path, base, changes, vision_type, strategy):
    from transformers import LlavaForConditionalGeneration

    if changes.get("arch_kwargs"):
        spec = OmegaConf.load(preset_dir("tokenizer") / f"{base}.yaml")
        changes = {"arch_kwargs": {**OmegaConf.to_container(spec.arch_kwargs), **changes["arch_kwargs"]}}
    tokenizer = tokenizer_yaml(tmp_path, base, feature_layer=-2, **changes)
    source = checkpoint(tmp_path, "ckpt", tokenizer=tokenizer, fusion="joint_decoder")
    out = export_run(source, tmp_path / "hf")
    record = json.loads((out / "vlmlab_export.json").read_text())
    assert record["format"] == "llava"
    assert record["checks"]["max_logit_difference"] <= ATOL
    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == ["LlavaForConditionalGeneration"] and "auto_map" not in saved
    assert not (out / "modeling_vlmlab.py").exists()
    assert_no_pickles(out)

    config, model, _, _ = load_for_export(source)
    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert llava.config.vision_config.model_type == vision_type
    assert llava.config.vision_feature_select_strategy == strategy
    assert llava.config.image_token_index == model.image_token_id == 511
    assert llava.config.image_seq_length == model.tokens_per_image == 16
    if "force_quick_gelu" in str(changes):
        assert llava.config.vision_config.hidden_act == "quick_gelu"

    # the vision tower + projector alone: the converted weights give vlmlab's features
    _, _, pixels = batch(model)
    with torch.no_grad():
        features = llava.model.get_image_features(
            pixel_values=pixels,
            vision_feature_layer=llava.config.vision_feature_layer,
            vision_feature_select_strategy=strategy,
        ).pooler_output
        expected = model.image_features(pixels)
    assert (torch.stack(list(features)) - expected).abs().max().item() <= ATOL

    # two rows, three images, the second row right-padded
    input_ids, mask, pixels = batch(model, pad_last=5)
    with torch.no_grad():
        got = llava(input_ids=input_ids, pixel_values=pixels, attention_mask=mask).logits
    assert_close_where(got, vlmlab_logits(model, input_ids, mask, pixels), mask)
    # the images matter: other pixels, other logits
    with torch.no_grad():
        other = llava(input_ids=input_ids, pixel_values=pixels.flip(0), attention_mask=mask).logits
    assert (other - got).abs().max().item() > 1e-3

    # the processor: vlmlab's pixels and prompt ids, and then vlmlab's logits
    inputs = check_processor(out, model, config)
    with torch.no_grad():
        got = llava(**inputs).logits
    expected = vlmlab_logits(model, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"])
    assert_close_where(got, expected, inputs["attention_mask"])
    assert_same_generation(llava, model, out, trust_remote_code=False)


def test_a_transformers_clip_tower_maps_at_its_last_layer(tmp_path):
    """transformers' CLIPVisionModel: its last hidden state has no norm (post_layernorm only pools CLS)."""
    from transformers import LlavaForConditionalGeneration

    spec = {
        "name": "hf-clip-tiny",
        "family": "clip",
        "text_aware": True,
        "kind": "continuous",
        "library": "transformers",
        "arch": "CLIPVisionModel",
        "image_size": 64,
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "arch_kwargs": {
            "image_size": 64,
            "patch_size": 16,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
    }
    OmegaConf.save(OmegaConf.create(spec), tmp_path / "hf-clip-tiny.yaml")
    source = checkpoint(tmp_path, "ckpt", tokenizer=str(tmp_path / "hf-clip-tiny.yaml"))
    out = export_run(source, tmp_path / "hf", format="llava")
    _, model, _, _ = load_for_export(source)
    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()
    input_ids, mask, pixels = batch(model)
    with torch.no_grad():
        got = llava(input_ids=input_ids, pixel_values=pixels).logits
    assert_close_where(got, vlmlab_logits(model, input_ids, mask, pixels), mask)


# -- remote code ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fusion", "tokenizer", "format"),
    [
        ("mot", "clip-tiny", "auto"),
        ("cross_attention", "clip-tiny", "auto"),
        ("joint_decoder", "clip-tiny", "auto"),  # feature_layer -1: after ln_post, which LLaVA cannot apply
        ("joint_decoder", "titok-tiny", "auto"),  # discrete
        ("joint_decoder", "siglip2-tiny", "remote-code"),  # asked for
    ],
    ids=["mot", "cross-attention", "clip-final-norm", "titok", "requested"],
)
def test_remote_code_round_trip(tmp_path, fusion, tokenizer, format):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    source = checkpoint(tmp_path, "ckpt", tokenizer=tokenizer, fusion=fusion)
    out = export_run(source, tmp_path / "hf", format=format)
    record = json.loads((out / "vlmlab_export.json").read_text())
    assert record["format"] == "remote-code"
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "vlmlab" and saved["auto_map"]["AutoModelForCausalLM"].startswith(
        "modeling_vlmlab."
    )
    assert (out / "modeling_vlmlab.py").exists() and (out / "configuration_vlmlab.py").exists()
    assert "vlmlab package" in (out / "modeling_vlmlab.py").read_text()  # says what it needs
    assert_no_pickles(out)

    config, model, _, _ = load_for_export(source)
    hf = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
    input_ids, mask, pixels = batch(model, pad_last=3)
    with torch.no_grad():
        got = hf(input_ids=input_ids, pixel_values=pixels, attention_mask=mask).logits
        other = hf(input_ids=input_ids, pixel_values=pixels.flip(0), attention_mask=mask).logits
    expected = vlmlab_logits(model, input_ids, mask, pixels)
    assert_close_where(got, expected, mask)
    if not model.image_tokenizer.is_discrete:  # (a random tiny TiTok gives every image the same ids)
        assert (other - got).abs().max().item() > 1e-3  # the images matter (gates open, MoT copies differ)
    causal = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        assert_close_where(causal(input_ids, pixel_values=pixels, attention_mask=mask).logits, expected, mask)

    inputs = check_processor(out, model, config, trust_remote_code=True)
    with torch.no_grad():
        got = hf(**inputs).logits
    assert_close_where(
        got, vlmlab_logits(model, inputs["input_ids"], None, inputs["pixel_values"]), inputs["attention_mask"]
    )
    assert saved["eos_token_id"] == [2]  # the tiny tokenizer's <|im_end|>, also its EOS
    assert_same_generation(hf, model, out, trust_remote_code=True)


# -- generate: transformers' own loop (GenerationMixin) over the remote-code model ------------------------------
SAMPLING = {"do_sample": True, "temperature": 0.8, "top_k": 20}


def sample_by_hand(model, inputs, steps: int, stops: list[int], pad: int, seed: int) -> torch.Tensor:
    """Sampling written out over vlmlab's own forward (the whole sequence each step, no cache): the image id
    suppressed, temperature, top-k, softmax, one multinomial draw per step; finished rows take the pad id."""
    torch.manual_seed(seed)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    unfinished = torch.ones(ids.shape[0], dtype=torch.bool)
    for _ in range(steps):
        logits = vlmlab_logits(model, ids, mask, inputs["pixel_values"])[:, -1].clone()
        logits[:, model.image_token_id] = float("-inf")
        logits = logits / SAMPLING["temperature"]
        kth = logits.topk(SAMPLING["top_k"]).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
        token = torch.multinomial(logits.softmax(dim=-1), num_samples=1)[:, 0]
        token = torch.where(unfinished, token, torch.full_like(token, pad))
        unfinished &= ~torch.isin(token, torch.tensor(stops))
        ids = torch.cat([ids, token[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if not unfinished.any():
            break
    return ids


@pytest.mark.parametrize("fusion", ["mot", "cross_attention"])
def test_remote_code_generate_is_transformers_generate(tmp_path, fusion):
    """Return dicts with logits and scores, sampling and beams through the folder, against vlmlab's own forward
    (logits per step, sampling written out by hand) and against decoding without the cache."""
    from transformers import AutoModelForImageTextToText
    from transformers.generation.utils import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput

    source = checkpoint(tmp_path, "ckpt", tokenizer="clip-tiny", fusion=fusion)
    out = export_run(source, tmp_path / "hf", format="remote-code")
    record = json.loads((out / "vlmlab_export.json").read_text())
    assert record["checks"]["max_logit_difference"] <= ATOL  # the folder loaded back, against vlmlab
    assert "trust_remote_code" in record["checks"]["logit_check"]
    _, model, _, _ = load_for_export(source)
    hf = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
    inputs = two_prompts(out, trust_remote_code=True)
    start, image = inputs["input_ids"].shape[1], model.image_token_id

    # greedy with a return dict: each step's raw logits are vlmlab's logits at that position of the result
    result = hf.generate(
        **inputs, max_new_tokens=6, return_dict_in_generate=True, output_logits=True, output_scores=True
    )
    assert isinstance(result, GenerateDecoderOnlyOutput)
    sequences = result.sequences
    assert len(result.logits) == len(result.scores) == sequences.shape[1] - start > 0
    mask = torch.ones_like(sequences)
    mask[:, :start] = inputs["attention_mask"]
    full = vlmlab_logits(model, sequences, mask, inputs["pixel_values"])
    for step, (logits, scores) in enumerate(zip(result.logits, result.scores)):
        assert (logits - full[:, start - 1 + step]).abs().max().item() <= ATOL
        assert torch.isinf(scores[:, image]).all()  # the generation config suppresses the image placeholder
        assert torch.equal(sequences[:, start + step], scores.argmax(dim=-1))

    # sampling: the same draws as sampling by hand over vlmlab's forward with the same seed
    config = hf.generation_config
    stops = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    torch.manual_seed(3)
    sampled = hf.generate(**inputs, max_new_tokens=6, **SAMPLING)
    expected = sample_by_hand(model, inputs, 6, stops, config.pad_token_id, seed=3)
    assert torch.equal(sampled, expected)
    torch.manual_seed(4)
    assert not torch.equal(hf.generate(**inputs, max_new_tokens=6, **SAMPLING), sampled)  # it does sample

    # beams with several returned sequences: the cached decoding equals decoding without the cache
    beams = {
        "num_beams": 3,
        "num_return_sequences": 2,
        "return_dict_in_generate": True,
        "output_scores": True,
    }
    cached = hf.generate(**inputs, max_new_tokens=5, **beams)
    uncached = hf.generate(**inputs, max_new_tokens=5, use_cache=False, **beams)
    assert isinstance(cached, GenerateBeamDecoderOnlyOutput) and cached.sequences.shape[0] == 4
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, rtol=0, atol=ATOL)


def test_beams_repeat_each_rows_images_with_it(tmp_path):
    """pixel_values hold images, not rows: expanding for beams repeats a row's own images (rows of 2 and 1)."""
    from transformers import AutoModelForCausalLM

    source = checkpoint(tmp_path, "ckpt", tokenizer="clip-tiny", fusion="cross_attention")
    out = export_run(source, tmp_path / "hf", format="remote-code")
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    _, model, _, _ = load_for_export(source)
    input_ids, mask, pixels = batch(model, images_per_row=(2, 1), length=12)
    ids, kwargs = hf._expand_inputs_for_generation(
        expand_size=3, input_ids=input_ids, attention_mask=mask, pixel_values=pixels
    )
    assert torch.equal(ids, input_ids.repeat_interleave(3, dim=0))
    assert torch.equal(kwargs["attention_mask"], mask.repeat_interleave(3, dim=0))
    row_images = [pixels[0:2], pixels[2:3]]
    assert torch.equal(kwargs["pixel_values"], torch.cat([images for images in row_images for _ in range(3)]))


def test_remote_code_generates_as_the_llava_class_does(tmp_path):
    """One LLaVA-shaped model exported twice: transformers' LlavaForConditionalGeneration and the remote-code
    model give the same greedy (with logits and scores), sampled and beam-searched answers."""
    from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration

    tokenizer = tokenizer_yaml(tmp_path, "clip-tiny", feature_layer=-2)
    source = checkpoint(tmp_path, "ckpt", tokenizer=tokenizer, fusion="joint_decoder")
    llava_dir = export_run(source, tmp_path / "llava", format="llava")
    remote_dir = export_run(source, tmp_path / "remote", format="remote-code")
    llava = LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()
    remote = AutoModelForImageTextToText.from_pretrained(remote_dir, trust_remote_code=True).eval()
    inputs = two_prompts(llava_dir)
    remote_inputs = two_prompts(remote_dir, trust_remote_code=True)
    assert torch.equal(inputs["input_ids"], remote_inputs["input_ids"])
    torch.testing.assert_close(inputs["pixel_values"], remote_inputs["pixel_values"], rtol=0, atol=1e-5)

    options = [
        {"return_dict_in_generate": True, "output_logits": True, "output_scores": True},
        {**SAMPLING, "return_dict_in_generate": True, "output_scores": True},
        {"num_beams": 3, "num_return_sequences": 2, "return_dict_in_generate": True, "output_scores": True},
    ]
    for index, option in enumerate(options):
        results = []
        for hf in (llava, remote):
            torch.manual_seed(index)
            results.append(hf.generate(**inputs, max_new_tokens=5, **option))
        reference, got = results
        assert type(got) is type(reference)
        assert torch.equal(got.sequences, reference.sequences), option
        for name in ("logits", "scores"):
            for theirs, ours in zip(getattr(reference, name) or (), getattr(got, name) or ()):
                finite = torch.isfinite(theirs)
                assert torch.equal(finite, torch.isfinite(ours))
                assert (theirs[finite] - ours[finite]).abs().max().item() <= ATOL
        if "num_beams" in option:
            torch.testing.assert_close(got.sequences_scores, reference.sequences_scores, rtol=0, atol=ATOL)


def test_an_export_whose_logits_drift_is_refused(tmp_path, capsys, monkeypatch):
    """The logit check reads the written folder back: a weight altered on the way out is caught, nothing left."""
    import vlmlab.eval.export as export

    source = checkpoint(tmp_path, "ckpt")
    honest = export.remote_state

    def altered(model):
        state = honest(model)
        state["model.lm.lm_head.weight"] = state["model.lm.lm_head.weight"] + 0.01
        return state

    monkeypatch.setattr(export, "remote_state", altered)
    assert main(["export", str(source), "--out", str(tmp_path / "x"), "--format", "remote-code"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trust_remote_code" in err and "differ from vlmlab's" in err
    assert not (tmp_path / "x").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".x")]


# -- the command line on a trained run --------------------------------------------------------------------
def trained_run(tmp: Path, tokenizer: str, freeze: str = "unfreeze-all") -> Path:
    from vlmlab.train.run import train

    config = {
        "model": {"backbone": "qwen3-tiny", "tokenizer": tokenizer, "random_tokenizer": True},
        "data": {
            "max_length": 96,
            "micro_batch_size": 4,
            "train": [
                {
                    "kind": "synthetic",
                    "task": "spatialmap",
                    "mode": "caption",
                    "difficulty": {"num_objects": 2},
                }
            ],
        },
        "train": {
            "stage": 1,
            "freeze": freeze,
            "max_steps": 2,
            "global_batch_size": 4,
            "output_dir": str(tmp / "run"),
        },
    }
    train(load_config(ExperimentConfig, [config]))
    return tmp / "run"


def test_cli_exports_a_trained_run(tmp_path, capsys):
    from transformers import LlavaForConditionalGeneration

    run = trained_run(tmp_path, tokenizer_yaml(tmp_path, "clip-tiny", feature_layer=-2))
    out = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert "llava" in capsys.readouterr().out
    record = json.loads((out / "vlmlab_export.json").read_text())
    assert record["format"] == "llava" and record["source"].endswith("final")
    assert_no_pickles(out)
    config, model = load_run(run)
    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()
    input_ids, mask, pixels = batch(model)
    with torch.no_grad():
        got = llava(input_ids=input_ids, pixel_values=pixels).logits
    assert_close_where(got, vlmlab_logits(model, input_ids, mask, pixels), mask)
    check_processor(out, model, config)

    # an existing folder is not overwritten without --overwrite, then replaced whole
    assert main(["export", str(run), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    (out / "stale.txt").write_text("old")
    assert (
        main(["export", str(run / "final"), "--out", str(out), "--format", "remote-code", "--overwrite"]) == 0
    )
    assert not (out / "stale.txt").exists() and (out / "modeling_vlmlab.py").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exported")]  # no temporary leftovers


def var_release_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """VAR's own evaluation transform (FoundationVision/VAR utils/data.py), written from the release, not vlmlab:
    Resize(round(1.125 * size), Lanczos) and CenterCrop on the PIL image, ToTensor, x.add(x).add_(-1)."""
    from torchvision import transforms

    release = transforms.Compose(
        [
            transforms.Resize(round(1.125 * size), interpolation=transforms.InterpolationMode.LANCZOS),
            transforms.CenterCrop((size, size)),
            transforms.ToTensor(),
        ]
    )
    pixels = release(image.convert("RGB"))
    return pixels.add(pixels).add_(-1)


def test_a_var_run_exports_a_pixel_exact_processor(tmp_path, capsys):
    """No stock processor reproduces VAR's PIL Lanczos resize and torchvision's crop; the folder's own one does."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    run = trained_run(tmp_path, "var-tiny", freeze="unfreeze-lm")  # a discrete tokenizer stays frozen
    out = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert "remote-code" in capsys.readouterr().out
    record = json.loads((out / "vlmlab_export.json").read_text())
    assert record["image_processor"] == "VlmlabImageProcessor"
    assert record["checks"]["max_pixel_difference"] == 0.0
    saved = json.loads((out / "processor_config.json").read_text())["image_processor"]
    assert saved["auto_map"]["AutoImageProcessor"] == "image_processing_vlmlab.VlmlabImageProcessor"
    assert (saved["short_side"], saved["crop_size"]) == (72, 64)  # round(1.125 * 64), the 64 px crop
    assert (out / "image_processing_vlmlab.py").exists()
    assert_no_pickles(out)

    config, model = load_run(run)
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert type(processor.image_processor).__name__ == "VlmlabImageProcessor"
    transform = build_image_transform(model.image_tokenizer.spec)
    images = [
        photo(93, 61),
        photo(80, 50, seed=1),  # 115 px wide: margin 51, torchvision's crop rounds 25.5 up, a floor would not
        photo(40, 170, seed=2),  # tall
        photo(64, 64, mode="L", seed=3),  # grey, upscaled
        photo(72, 72, seed=4),  # already at the short side: not resized
        photo(30, 23, mode="RGBA", seed=5),  # tiny, upscaled, with an (opaque) alpha channel
        photo(333, 257, seed=6),  # downscaled
    ]
    batch_pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    assert batch_pixels.shape == (len(images), 3, 64, 64) and batch_pixels.dtype == torch.float32
    for image, got in zip(images, batch_pixels):
        assert torch.equal(got, transform(image.convert("RGB")))  # vlmlab, bit for bit
        assert torch.equal(got, var_release_pixels(image, 64))  # and so the release
    array = np.asarray(images[0])  # a uint8 array (H x W x C, or C x H x W) gives the image's pixels
    for layout in (array, array.transpose(2, 0, 1)):
        got = processor.image_processor(images=layout, return_tensors="pt")["pixel_values"]
        assert torch.equal(got, batch_pixels[:1])

    # the folder's model on the folder's processor output = vlmlab on vlmlab's own encoding of the prompt
    inputs = check_processor(out, model, config, trust_remote_code=True)
    _, encoder = text_side(config, model)
    question = "Which color is the square at the top left?"
    sample = {
        "id": "q",
        "segments": [{"type": "image", "image": photo(seed=4)}, {"type": "text", "text": question}],
    }
    encoded = encoder.encode_prompt({**sample, "response": "red"})
    assert torch.equal(inputs["pixel_values"], encoded["pixel_values"])
    hf = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        got = hf(**inputs).logits
    expected = vlmlab_logits(model, encoded["input_ids"][None], None, encoded["pixel_values"])
    assert_close_where(got, expected, inputs["attention_mask"])
    assert_same_generation(hf, model, out, trust_remote_code=True)

    # an option the fixed transform would ignore is refused, naming it and what the transform is fixed by
    with pytest.raises(ValueError, match=r"no option\(s\) size: .*short_side, crop_size"):
        processor.image_processor(images=images[0], size={"shortest_edge": 10})
    with pytest.raises(ValueError, match="dtype float32 .* uint8"):
        processor.image_processor(images=np.zeros((8, 8, 3), np.float32))


# -- refusals and bad inputs ---------------------------------------------------------------------------------
def test_format_llava_refuses_what_is_not_llava(tmp_path, capsys):
    mot = checkpoint(tmp_path, "mot", fusion="mot")
    assert main(["export", str(mot), "--out", str(tmp_path / "a"), "--format", "llava"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a LLaVA architecture" in err and "'mot'" in err
    assert "joint_decoder" in err and "--format remote-code" in err
    assert not (tmp_path / "a").exists()

    final_norm = checkpoint(tmp_path, "jd", fusion="joint_decoder")  # clip-tiny, feature_layer -1
    with pytest.raises(ConfigError, match="final LayerNorm"):
        export_run(final_norm, tmp_path / "b", format="llava")
    discrete = checkpoint(tmp_path, "titok", tokenizer="titok-tiny")
    with pytest.raises(ConfigError, match="discrete"):
        export_run(discrete, tmp_path / "c", format="llava")
    wide = checkpoint(
        tmp_path, "wide", tokenizer=tokenizer_yaml(tmp_path, "clip-tiny", -2), adapter_hidden=96
    )
    with pytest.raises(ConfigError, match="96 wide"):
        export_run(wide, tmp_path / "d", format="llava")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_inputs_are_one_line(tmp_path, capsys, monkeypatch):
    source = checkpoint(tmp_path, "ckpt")
    assert main(["export", str(source), "--out", str(tmp_path / "x"), "--format", "lava"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'lava'" in err and "llava" in err and "remote-code" in err
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2  # neither run nor checkpoint
    assert "checkpoint" in capsys.readouterr().err

    # a write that fails half-way leaves neither the folder nor a temporary one
    import vlmlab.eval.export as export

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "write_remote", broken)
    assert main(["export", str(source), "--out", str(tmp_path / "x"), "--format", "remote-code"]) == 2
    assert "No space left" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".x")]
