"""Resolution (`model.image_size`) and the resize rule (`model.image_resize`), each against an independent truth.

- a tiny tower per library saved at its native size in the library's own layout and loaded at another size:
  the loaded position embedding (or the forward output) equals the library's own resize of the saved weights;
- tokens per image equal (size / patch)^2 by hand; bad sizes stop the config in one line with the neighbours;
- `resize` equals torchvision's resize to (S, S); `letterbox` pads with round(255 * mean), content centred;
  `crop` is the transform of every earlier run;
- run ids unchanged when the keys are not set; a checkpoint of another resolution is refused; describe and
  export carry the size (letterbox refuses to export in one line).
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from test_export import assert_close_where, batch, checkpoint, vlmlab_logits
from torchvision.transforms import v2 as T

from vlmlab.cli import main
from vlmlab.config import IMAGE_RESIZE_RULES, ExperimentConfig, ModelConfig, load_config, to_dict
from vlmlab.errors import ConfigError
from vlmlab.models.checkpoint import load_stage_checkpoint
from vlmlab.models.describe import build_on_meta, describe
from vlmlab.models.tokenizers import build_image_transform, build_tokenizer, load_tokenizer_spec
from vlmlab.models.vlm import build_vlm
from vlmlab.sweep.expand import run_id


# -- (a) each library's own position-embedding resize ------------------------------------------------------
def test_open_clip_loads_a_saved_tower_at_another_size_through_its_own_resize(tmp_path):
    import open_clip
    from open_clip.model import resize_pos_embed

    spec = load_tokenizer_spec("clip-tiny")  # 64 px, 16 px patches: a 4 x 4 grid
    torch.manual_seed(0)
    saved = open_clip.create_model(spec.arch, **spec.arch_kwargs).state_dict()
    path = tmp_path / "clip.pt"
    torch.save(saved, path)  # open_clip's checkpoint layout: a plain state dict file
    tower = build_tokenizer(spec, pretrained=str(path), image_size=96)  # 6 x 6 grid
    # the truth: open_clip's resize of the saved grid to a model built at 96 px
    target = open_clip.create_model(
        spec.arch, **{**spec.arch_kwargs, "vision_cfg": {**spec.arch_kwargs["vision_cfg"], "image_size": 96}}
    )
    expected = dict(saved)
    resize_pos_embed(expected, target)
    assert expected["visual.positional_embedding"].shape == (1 + 36, 64)
    torch.testing.assert_close(
        tower.visual.positional_embedding, expected["visual.positional_embedding"], rtol=0, atol=0
    )
    assert tower.num_tokens == (96 // 16) ** 2
    assert tower(torch.randn(1, 3, 96, 96)).shape == (1, 36, 64)


@pytest.mark.parametrize("name", ["siglip2-tiny", "clip-tiny-timm"])
def test_timm_loads_a_saved_tower_at_another_size_through_its_own_resample(tmp_path, name):
    import timm
    from safetensors.torch import save_file
    from timm.layers import resample_abs_pos_embed

    spec = load_tokenizer_spec("siglip2-tiny")
    if name == "clip-tiny-timm":  # a tower with a class token: the prefix stays out of the resample
        spec = spec.replace(arch="vit_base_patch16_clip_224", name=name)
    saved = timm.create_model(spec.arch, num_classes=0, **spec.arch_kwargs)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in saved.state_dict().items()}, str(path))
    tower = build_tokenizer(spec, pretrained=str(path), image_size=96)
    prefix = 0 if saved.no_embed_class else saved.num_prefix_tokens
    expected = resample_abs_pos_embed(saved.pos_embed.detach(), new_size=(6, 6), num_prefix_tokens=prefix)
    torch.testing.assert_close(tower.model.pos_embed.detach(), expected, rtol=0, atol=0)
    assert tower.num_tokens == 36 and tower(torch.randn(1, 3, 96, 96)).shape == (1, 36, 64)


def test_transformers_clip_runs_at_another_size_with_its_own_interpolation(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        image_size=64,
        patch_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    torch.manual_seed(0)
    CLIPVisionModel(config).save_pretrained(tmp_path / "clip")  # transformers' folder layout
    spec = load_tokenizer_spec("dinov3-tiny-hf").replace(
        name="clip-hf-tiny",
        family="clip",
        arch="CLIPVisionModel",
        arch_kwargs={},
        pretrained=str(tmp_path / "clip"),
        image_size=96,
    )
    tower = build_tokenizer(spec).eval()
    reference = CLIPVisionModel.from_pretrained(tmp_path / "clip").eval()
    pixels = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 1:]
        torch.testing.assert_close(tower(pixels), expected, rtol=0, atol=0)
    assert tower.num_tokens == 36


def test_transformers_dinov3_places_its_rotary_patches_at_any_size():
    tower = build_tokenizer("dinov3-tiny-hf", image_size=112)  # RoPE: no table to resize
    assert tower.num_tokens == 49 and tower(torch.randn(1, 3, 112, 112)).shape == (1, 49, 64)


# tokenizer, size, tokens per image by hand: (size / patch)^2
TOKENS = [
    ("clip-tiny", 96, (96 // 16) ** 2),  # 36
    ("clip-tiny-p8", 96, (96 // 8) ** 2),  # 144
    ("siglip2-tiny", 128, (128 // 16) ** 2),  # 64
    ("dinov3-tiny", 32, (32 // 16) ** 2),  # 4
    ("aimv2-tiny", 84, (84 // 14) ** 2),  # 36
    ("dinov3-tiny-hf", 80, (80 // 16) ** 2),  # 25
]


@pytest.mark.parametrize(("tokenizer", "size", "tokens"), TOKENS)
def test_tokens_per_image_at_each_size_by_hand(tokenizer, size, tokens):
    info = describe(build_on_meta(ModelConfig(tokenizer=tokenizer, image_size=size)))
    assert (info["image_size"], info["tokenizer_tokens_per_image"], info["tokens_per_image"]) == (
        size,
        tokens,
        tokens,
    )


def test_vlmlab_describe_prints_the_size_and_tokens_per_image(capsys):
    for size, tokens in ((64, 16), (96, 36), (128, 64)):
        assert main(["describe", "model/tiny", f"model.image_size={size}"]) == 0
        out = capsys.readouterr().out
        assert (
            f"image: {size} x {size} px (crop), {tokens} tokenizer tokens, {tokens} tokens per image" in out
        )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            dict(image_size=100),
            r"model.image_size=100 is not a multiple of tokenizer 'clip-tiny''s 16 px.*96 or 112",
        ),
        (dict(tokenizer="aimv2-tiny", image_size=64), r"14 px patches \(valid neighbours: 56 or 70\)"),
        (dict(tokenizer="clip-tiny-p8", image_size=60), r"8 px patches \(valid neighbours: 56 or 64\)"),
        (
            dict(tokenizer="titok-tiny", image_size=128),
            "discrete tokenizer 'titok-tiny' only runs at its own 64",
        ),
        (dict(tokenizer="var-tiny", image_size=32), "discrete tokenizer 'var-tiny' only runs at its own 64"),
        (dict(image_size=0), r"model.image_size=0 is not a size in pixels"),
        (dict(open_weight="/models/qwen2.5-vl", image_size=448), "the open-weight model .* processor"),
        (
            dict(image_resize="pad"),
            r"image resize rule \(model.image_resize\) 'pad'.*crop, letterbox, resize",
        ),
    ],
)
def test_bad_sizes_and_rules_stop_the_config_in_one_line(settings, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(ModelConfig, [settings])
    assert "\n" not in str(error.value)


def test_a_size_the_preset_does_not_tell_apart_is_refused_at_build():
    spec = load_tokenizer_spec("dinov3-tiny-hf").replace(
        arch_kwargs={
            "patch_size": 16,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        }
    )
    with pytest.raises(ConfigError, match=r"image_size=72 is not a multiple.*16 px.*64 or 80") as error:
        build_tokenizer(spec.replace(arch_kwargs={**spec.arch_kwargs, "image_size": 64}), image_size=72)
    assert "\n" not in str(error.value)


# -- (b) the resize rule -----------------------------------------------------------------------------------
def test_letterbox_pads_a_wide_image_with_the_mean_colour_and_keeps_the_content():
    spec = load_tokenizer_spec("clip-tiny").replace(resize="letterbox", interpolation="nearest")
    content = torch.randint(
        0, 256, (3, 32, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    image = T.functional.to_pil_image(content)  # 2:1, 64 x 32 -> a 64 x 64 square, 16 rows above and below
    pixels = build_image_transform(spec)(image)
    mean, std = torch.tensor(spec.mean)[:, None, None], torch.tensor(spec.std)[:, None, None]
    fill = torch.tensor([round(255 * m) for m in spec.mean], dtype=torch.float32)[:, None, None]
    band = ((fill / 255 - mean) / std).expand(3, 16, 64)
    torch.testing.assert_close(pixels[:, :16], band)
    torch.testing.assert_close(pixels[:, -16:], band)
    torch.testing.assert_close(
        pixels[:, 16:48], (content.float() / 255 - mean) / std
    )  # unchanged (no resize)


def test_letterbox_centres_a_tall_image_then_resizes():
    spec = load_tokenizer_spec("siglip2-tiny").replace(resize="letterbox")  # mean 0.5: fill 128
    image = Image.new("RGB", (30, 60), (255, 0, 0))  # 1:2 -> pad 15 columns each side to 60 x 60
    padded = Image.new("RGB", (60, 60), (128, 128, 128))
    padded.paste(image, (15, 0))
    expected = T.Compose(
        [
            T.ToImage(),
            T.Resize((64, 64), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )(padded)
    torch.testing.assert_close(build_image_transform(spec)(image), expected, rtol=0, atol=0)


def test_resize_squashes_to_the_square_as_torchvision_does():
    spec = load_tokenizer_spec("clip-tiny").replace(resize="resize", image_size=96)
    array = torch.randint(0, 256, (3, 41, 90), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    image = T.functional.to_pil_image(array)
    squashed = T.functional.resize(array, [96, 96], interpolation=T.InterpolationMode.BICUBIC, antialias=True)
    expected = T.functional.normalize(squashed.float() / 255, spec.mean, spec.std)
    torch.testing.assert_close(build_image_transform(spec)(image), expected, rtol=0, atol=1e-6)


def test_crop_is_the_transform_of_every_earlier_run():
    spec = load_tokenizer_spec("clip-tiny")
    array = torch.randint(0, 256, (3, 41, 90), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    image = T.functional.to_pil_image(array)
    framed = T.functional.center_crop(
        T.functional.resize(array, 64, interpolation=T.InterpolationMode.BICUBIC, antialias=True), 64
    )
    expected = T.functional.normalize(framed.float() / 255, spec.mean, spec.std)
    got = build_image_transform(spec.replace(resize="crop"))(image)
    assert torch.equal(got, build_image_transform(spec)(image))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_the_model_carries_the_size_and_rule_to_the_data_transform():
    from vlmlab.runs.load import synthetic_image_size, text_side

    config = load_config(
        ExperimentConfig,
        [{"model": {"image_size": 96, "image_resize": "letterbox", "random_tokenizer": True}}],
    )
    model = build_vlm(config.model)
    assert synthetic_image_size(model) == 96 and model.image_tokenizer.spec.resize == "letterbox"
    _, encoder = text_side(config, model)
    sample = {
        "id": "s",
        "segments": [
            {"type": "image", "image": Image.new("RGB", (80, 40))},
            {"type": "text", "text": "What?"},
        ],
        "response": "a",
    }
    encoded = encoder.encode_prompt(sample)
    assert encoded["pixel_values"].shape[-2:] == (96, 96)
    assert int((encoded["input_ids"] == model.image_token_id).sum()) == 36
    assert sorted(IMAGE_RESIZE_RULES) == ["crop", "letterbox", "resize"]


# -- (c) run ids, checkpoints, export ----------------------------------------------------------------------
def test_the_new_keys_leave_run_ids_unchanged_unless_set():
    def ids(**model) -> str:
        config = to_dict(ExperimentConfig())
        config["model"].update(model)
        return run_id(1, config, [], {})

    before = to_dict(ExperimentConfig())  # a config resolved before the keys existed
    for key in ("image_size", "image_resize"):
        del before["model"][key]
    assert run_id(1, before, [], {}) == ids() == ids(image_size=None, image_resize="crop")
    assert ids(image_size=64) == ids()  # clip-tiny's own size, spelled out: the same model
    assert len({ids(), ids(image_size=96), ids(image_resize="letterbox"), ids(image_resize="resize")}) == 4


def test_a_checkpoint_of_another_resolution_is_refused(tmp_path):
    source = checkpoint(tmp_path, "96", image_size=96)
    load_stage_checkpoint(build_vlm(dict(random_tokenizer=True, image_size=96)), source)
    with pytest.raises(
        ConfigError, match="trained at 96 px images.*takes 64 px.*model.image_size=96"
    ) as error:
        load_stage_checkpoint(build_vlm(dict(random_tokenizer=True)), source)
    assert "\n" not in str(error.value)
    # dinov3's RoPE tower has the same weights at every size: only the check stands between them
    rope = checkpoint(tmp_path, "rope", tokenizer="dinov3-tiny-hf", image_size=96)
    with pytest.raises(ConfigError, match="trained at 96 px images.*takes 64 px"):
        load_stage_checkpoint(build_vlm(dict(random_tokenizer=True, tokenizer="dinov3-tiny-hf")), rope)


def test_llava_export_carries_a_non_native_size(tmp_path):
    from test_export import tokenizer_yaml
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from vlmlab.eval.export import export_run, load_for_export

    tokenizer = tokenizer_yaml(tmp_path, "clip-tiny", -2)  # a tower LLaVA maps (feature layer -2)
    source = checkpoint(tmp_path, "ckpt", tokenizer=tokenizer, image_size=96, image_resize="resize")
    out = export_run(source, tmp_path / "hf", format="llava")
    _, model, _, _ = load_for_export(source)
    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert llava.config.vision_config.image_size == 96 and llava.config.image_seq_length == 36
    processor = AutoProcessor.from_pretrained(out)
    image = Image.new("RGB", (90, 41), (10, 200, 30))
    pixels = processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(
        pixels[0], build_image_transform(model.image_tokenizer.spec)(image), atol=1e-5, rtol=0
    )
    input_ids, mask, pixels = batch(model, length=96, pad_last=3)
    with torch.no_grad():
        got = llava(input_ids=input_ids, pixel_values=pixels, attention_mask=mask).logits
    assert_close_where(got, vlmlab_logits(model, input_ids, mask, pixels), mask)


def test_remote_code_export_round_trips_at_a_non_native_size(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmlab.eval.export import export_run, load_for_export

    source = checkpoint(tmp_path, "ckpt", tokenizer="dinov3-tiny-hf", image_size=96, image_resize="resize")
    out = export_run(source, tmp_path / "hf")
    _, model, _, _ = load_for_export(source)
    hf = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
    assert hf.config.tokens_per_image == model.tokens_per_image == 36
    input_ids, mask, pixels = batch(model, length=96, pad_last=3)
    with torch.no_grad():
        got = hf(input_ids=input_ids, pixel_values=pixels, attention_mask=mask).logits
    assert_close_where(got, vlmlab_logits(model, input_ids, mask, pixels), mask)
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    inputs = processor(
        text="<|vision_start|><|image_pad|><|vision_end|>",
        images=Image.new("RGB", (90, 41)),
        return_tensors="pt",
    )
    assert inputs["pixel_values"].shape[-2:] == (96, 96)


def test_letterbox_export_refuses_in_one_line(tmp_path, capsys):
    source = checkpoint(tmp_path, "ckpt", image_resize="letterbox")
    assert main(["export", str(source), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.image_resize=letterbox" in err, err
    assert not (tmp_path / "out").exists()


# -- (d) training: each fusion at a non-native size ------------------------------------------------------------
# (an exact resume after a kill under letterbox and resize: tests/test_training.py KILL_CASES)
# one resize rule per fusion, so each rule trains too (the synthetic images are square: the rules frame them
# alike, and the size is what changes the model)
TRAINED = {"joint_decoder": "letterbox", "cross_attention": "resize", "mot": "crop"}


@pytest.mark.parametrize("fusion", sorted(TRAINED))
def test_each_fusion_trains_at_a_non_native_size(tmp_path, fusion):
    import dataclasses

    from test_training import experiment

    from vlmlab.train.run import train

    stage = 2 if fusion == "mot" else 1  # MoT has no stage 1 (paper, 2.3)
    config = experiment(
        tmp_path,
        "run",
        stage,
        fusion,
        max_steps=2,
        global_batch_size=4,  # one micro-batch a step
        checkpoint_every_n_steps=100,
        select_best=False,
        val_every_n_steps=None,
    )
    config.data.max_length = 160  # an image is 36 tokens at 96 px
    config.data.val = []  # validation (generation) would cost four times the two steps
    config.model = dataclasses.replace(config.model, image_size=96, image_resize=TRAINED[fusion])
    result = train(config)
    assert result["stage"] == stage
    saved = json.loads((tmp_path / "run" / "final" / "meta.json").read_text())["config"]["model"]
    assert (saved["image_size"], saved["image_resize"]) == (96, TRAINED[fusion])
    model = build_vlm(dict(random_tokenizer=True, fusion=fusion, image_size=96))
    load_stage_checkpoint(model, tmp_path / "run")  # the run's weights fit a 96 px model
    assert model.features_per_image == 36


# -- (e) the sweep and its table ---------------------------------------------------------------------------
def test_the_prismatic_resize_sweep_expands_to_its_header_count(capsys):
    import re

    from vlmlab import presets

    header = presets.resolve("sweeps", "prismatic_resize").read_text()
    stated = re.search(r"--dry-run\s+# (\d+) runs: (\d+) stage-1 \+ (\d+) stage-2", header)
    assert stated, "the header states the run count"
    total, first, second = map(int, stated.groups())
    assert main(["sweep", "prismatic_resize", "--dry-run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["grid"]["points"] == 3 * 2  # 3 rules x 2 tokenizers
    assert data["counts"]["by_stage"] == {"1": first, "2": second} and data["counts"]["total"] == total == 12
    ids = [run["id"] for run in data["runs"]]
    for rule in IMAGE_RESIZE_RULES:  # each rule is spelled in its runs' ids
        assert sum(f"_{rule}_" in run for run in ids) == 4, ids


def test_vlmlab_results_lays_out_the_resize_rules(tmp_path, capsys):
    from report_records import resize_records

    from vlmlab.runs.record import write_record

    for record in resize_records():
        write_record(record, tmp_path / f"{record['run_id']}.json")
    assert main(["results", str(tmp_path), "--layout", "resize", "--format", "md"]) == 0
    table = capsys.readouterr().out
    assert "| clip | 23.3 | 30.5 | 26.0 | **25.3** | **32.5** | **28.0** | 22.3 | 29.5 | 25.0 |" in table
