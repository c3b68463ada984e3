"""Fusion architectures against independent truths: transformers' own Qwen3 and cross-fusion invariants."""

from pathlib import Path

import pytest
import torch
from transformers import Qwen3ForCausalLM

from vlmlab.models.fusion import FUSIONS
from vlmlab.models.vlm import build_vlm
from vlmlab.presets import preset_dir

TOL = 1e-5


def reference_lm(vlm) -> Qwen3ForCausalLM:
    """transformers' own Qwen3ForCausalLM holding exactly the VLM's backbone weights."""
    ref = Qwen3ForCausalLM(vlm.lm.config).eval()
    ref.load_state_dict(vlm.lm.state_dict())
    return ref


def interleaved_batch(vlm, layout, pad_to=None):
    """layout: per row, a list of ints (text lengths) and 'I' (an image). Returns ids, segment ids, #images."""
    rows, n_images = [], 0
    for pieces in layout:
        ids = []
        for piece in pieces:
            if piece == "I":
                ids += [vlm.image_token_id] * vlm.tokens_per_image
                n_images += 1
            else:
                ids += torch.randint(0, vlm.image_token_id - 1, (piece,)).tolist()
        rows.append(ids)
    length = pad_to or max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    segments = torch.full((len(rows), length), -1)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        segments[i, : len(row)] = 0
    size = vlm.image_tokenizer.spec.image_size
    return input_ids, segments, torch.randn(n_images, 3, size, size)


@pytest.fixture(scope="module")
def joint():
    torch.manual_seed(1)
    return build_vlm(dict(fusion="joint_decoder", random_tokenizer=True)).eval()


def test_joint_decoder_text_matches_transformers_single_sample(joint):
    ref = reference_lm(joint)
    ids = torch.randint(0, 500, (1, 37))
    assert (joint(ids).logits - ref(ids).logits).abs().max() < TOL


def test_joint_decoder_text_matches_transformers_padded_batch(joint):
    ref = reference_lm(joint)
    lengths = [23, 9, 16]
    ids = torch.randint(0, 500, (3, 23))
    mask = (torch.arange(23)[None] < torch.tensor(lengths)[:, None]).long()
    ours = joint(ids, attention_mask=mask).logits
    theirs = ref(ids, attention_mask=mask).logits
    for row, n in enumerate(lengths):
        assert (ours[row, :n] - theirs[row, :n]).abs().max() < TOL


def test_joint_decoder_packed_row_equals_samples_run_alone(joint):
    ref = reference_lm(joint)
    a, b, c = (torch.randint(0, 500, (1, n)) for n in (11, 7, 5))
    packed = torch.cat([a, b, c], dim=1)
    segments = torch.tensor([[0] * 11 + [1] * 7 + [2] * 5])
    ours = joint(packed, segment_ids=segments).logits
    expected = torch.cat([ref(a).logits, ref(b).logits, ref(c).logits], dim=1)
    assert (ours - expected).abs().max() < TOL


def test_mot_with_identical_copies_equals_joint_decoder_then_diverges():
    torch.manual_seed(2)
    mot = build_vlm(dict(fusion="mot", random_tokenizer=True))
    joint = build_vlm(dict(fusion="joint_decoder", random_tokenizer=True))
    joint.load_state_dict(mot.state_dict(), strict=False)  # same backbone, tokenizer, adapter
    mot.eval(), joint.eval()
    ids, segments, pixels = interleaved_batch(mot, [[3, "I", 5, "I", 2], [4, "I", 6], [7]])
    out_mot = mot(ids, pixel_values=pixels, segment_ids=segments).logits
    out_joint = joint(ids, pixel_values=pixels, segment_ids=segments).logits
    real = segments >= 0
    assert (out_mot - out_joint)[real].abs().max() < TOL

    mot.train()
    labels = torch.where(ids == mot.image_token_id, -100, ids)
    optimizer = torch.optim.SGD(mot.fusion.image_layers.parameters(), lr=0.1)
    mot(ids, pixel_values=pixels, segment_ids=segments, labels=labels).loss.backward()
    optimizer.step()
    changed = [
        name
        for (name, p_img), (_, p_txt) in zip(
            mot.fusion.image_layers.named_parameters(), mot.lm.model.layers.named_parameters()
        )
        if not torch.equal(p_img, p_txt)
    ]
    assert any("q_proj" in n for n in changed) and any("mlp" in n for n in changed)


def test_mot_text_only_matches_transformers():
    mot = build_vlm(dict(fusion="mot", random_tokenizer=True)).eval()
    ids = torch.randint(0, 500, (2, 13))
    assert (mot(ids).logits - reference_lm(mot)(ids).logits).abs().max() < TOL


def test_cross_attention_at_init_is_the_backbone_and_gates_get_gradients():
    xattn = build_vlm(dict(fusion="cross_attention", random_tokenizer=True))
    assert len(xattn.fusion.cross_attn_layers) == xattn.lm.config.num_hidden_layers // 4
    ids, segments, pixels = interleaved_batch(xattn, [[3, "I", 5, "I", 2], [4, "I", 6]])
    xattn.eval()
    ours = xattn(ids, pixel_values=pixels, segment_ids=segments).logits
    theirs = reference_lm(xattn)(ids, attention_mask=(segments >= 0).long()).logits
    real = segments >= 0
    assert (ours - theirs)[real].abs().max() < TOL

    xattn.train()
    labels = torch.where(ids == xattn.image_token_id, -100, ids)
    xattn(ids, pixel_values=pixels, segment_ids=segments, labels=labels).loss.backward()
    for layer in xattn.fusion.cross_attn_layers:
        assert layer.attn_gate.grad is not None and layer.attn_gate.grad.abs().item() > 0
        assert layer.mlp_gate.grad is not None and layer.mlp_gate.grad.abs().item() > 0


def test_cross_attention_sees_only_earlier_images_of_its_own_sample():
    xattn = build_vlm(dict(fusion="cross_attention", random_tokenizer=True)).eval()
    for layer in xattn.fusion.cross_attn_layers:  # open the gates so images matter
        layer.attn_gate.data.fill_(1.0)
        layer.mlp_gate.data.fill_(1.0)
    marker = xattn.image_token_id
    # one row packing two samples: [t t M t t | t M t t M t]
    ids = torch.tensor([[5, 6, marker, 7, 8, 9, marker, 10, 11, marker, 12]])
    segments = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]])
    pixels = torch.randn(3, 3, 64, 64)
    base = xattn(ids, pixel_values=pixels, segment_ids=segments).logits
    changed_second = pixels.clone()
    changed_second[1] = torch.randn(3, 64, 64)  # the first image of sample 1 (marker at position 6)
    after = xattn(ids, pixel_values=changed_second, segment_ids=segments).logits
    differs = (after - base).abs().amax(dim=-1)[0] > 1e-6
    assert differs.tolist() == [False] * 6 + [True] * 5
    # text before any image in its sample is exactly the language model
    reference = reference_lm(xattn)(ids[:, :2]).logits
    assert (base[:, :2] - reference).abs().max() < TOL


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_packed_interleaved_equals_separate_rows(fusion):
    """Packing two interleaved samples in one row gives the same logits as running them apart."""
    vlm = build_vlm(dict(fusion=fusion, random_tokenizer=True)).eval()
    if fusion == "cross_attention":
        for layer in vlm.fusion.cross_attn_layers:
            layer.attn_gate.data.fill_(0.5)
            layer.mlp_gate.data.fill_(0.5)
    a_ids, _, a_pix = interleaved_batch(vlm, [[2, "I", 4]])
    b_ids, _, b_pix = interleaved_batch(vlm, [[3, "I", 1, "I", 2]])
    packed = torch.cat([a_ids, b_ids], dim=1)
    segments = torch.cat([torch.zeros_like(a_ids), torch.ones_like(b_ids)], dim=1)
    ours = vlm(packed, pixel_values=torch.cat([a_pix, b_pix]), segment_ids=segments).logits
    apart = torch.cat([vlm(a_ids, pixel_values=a_pix).logits, vlm(b_ids, pixel_values=b_pix).logits], dim=1)
    assert (ours - apart).abs().max() < TOL


@pytest.mark.parametrize("tokenizer", ["titok-tiny", "var-tiny"])
@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_discrete_tokenizers_train_one_step_in_every_fusion(fusion, tokenizer):
    vlm = build_vlm(dict(fusion=fusion, tokenizer=tokenizer)).train()
    assert type(vlm.adapter).__name__ == "EmbeddingAdapter"
    frozen = {k: v.clone() for k, v in vlm.image_tokenizer.state_dict().items()}
    ids, segments, pixels = interleaved_batch(vlm, [[3, "I", 5], [2, "I", 4, "I", 1]])
    labels = torch.where(ids == vlm.image_token_id, -100, ids)
    trainable = [p for p in vlm.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in vlm.image_tokenizer.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    adapter_before = vlm.adapter.embed.weight.clone()
    loss = vlm(ids, pixel_values=pixels, segment_ids=segments, labels=labels).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(vlm.adapter.embed.weight, adapter_before) or fusion == "cross_attention"
    for key, value in vlm.image_tokenizer.state_dict().items():
        assert torch.equal(value, frozen[key]), key


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_gradient_checkpointing_gives_the_same_gradients(fusion):
    torch.manual_seed(3)
    plain = build_vlm(dict(fusion=fusion, random_tokenizer=True)).train()
    if fusion == "cross_attention":
        for layer in plain.fusion.cross_attn_layers:
            layer.attn_gate.data.fill_(0.5)
    checkpointed = build_vlm(dict(fusion=fusion, random_tokenizer=True, gradient_checkpointing=True)).train()
    checkpointed.load_state_dict(plain.state_dict())
    ids, segments, pixels = interleaved_batch(plain, [[3, "I", 5], [2, "I", 4]])
    labels = torch.where(ids == plain.image_token_id, -100, ids)
    for model in (plain, checkpointed):
        model(ids, pixel_values=pixels, segment_ids=segments, labels=labels).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


# --------------------------------------------------------------------------------------------------------------
# Where the gated cross-attention layers sit (model.cross_attention_layout)

# Llama 3.2-Vision 11B (transformers' MllamaTextConfig of meta-llama/Llama-3.2-11B-Vision): 40 text layers,
# the cross-attention ones at these indices, i.e. 8 interleaved with Llama 3.1 8B's 32 self-attention layers.
LLAMA32_11B_CROSS_ATTENTION_LAYERS = [3, 8, 13, 18, 23, 28, 33, 38]


def combined_stack(num_layers: int, positions: list[int]) -> list[str]:
    """The forward order as 'S' (decoder layer) / 'X' (cross-attention) from positions (#S before each X)."""
    order = []
    for index in range(num_layers + 1):
        order += ["X"] * positions.count(index)
        if index < num_layers:
            order.append("S")
    return order


@pytest.mark.parametrize("num_layers", [28, 32, 40])
def test_every_layout_puts_a_cross_attention_layer_after_every_fourth_decoder_layer(num_layers):
    from vlmlab.models.fusion.cross_attention import cross_attention_positions

    positions = cross_attention_positions(num_layers, 4)
    assert positions == cross_attention_positions(num_layers, 4, "every")  # the default
    order = combined_stack(num_layers, positions)
    assert order == (["S"] * 4 + ["X"]) * (num_layers // 4)  # after layers 4, 8, ..., num_layers
    assert order[-1] == "X"  # on 28 layers the 7th is after layer 28, before the final norm


def test_llama32_layout_reproduces_llama_32_vision_11b():
    from vlmlab.models.fusion.cross_attention import cross_attention_positions

    order = combined_stack(32, cross_attention_positions(32, 4, "llama32"))
    assert len(order) == 40
    assert [i for i, kind in enumerate(order) if kind == "X"] == LLAMA32_11B_CROSS_ATTENTION_LAYERS


@pytest.mark.parametrize("num_layers", [28, 40])
def test_llama32_layout_is_every_fifth_layer_from_index_3_with_a_decoder_layer_last(num_layers):
    from vlmlab.models.fusion.cross_attention import cross_attention_positions

    order = combined_stack(num_layers, cross_attention_positions(num_layers, 4, "llama32"))
    count = num_layers // 4  # as many as the paper's layout: the same parameters, other places
    assert [i for i, kind in enumerate(order) if kind == "X"] == [3 + 5 * j for j in range(count)]
    assert order[:4] == ["S", "S", "S", "X"] and order[-1] == "S"
    assert order.count("S") == num_layers


@pytest.mark.parametrize(
    ("every", "layout", "message"),
    [
        (4, "lama32", "Unknown cross-attention layout .*'lama32'. Did you mean 'llama32'.*every, llama32"),
        (0, "llama32", "cross_attention_every=0 is impossible .*valid: 1..8"),
        (9, "every", "cross_attention_every=9 is impossible .*valid: 1..8"),
    ],
)
def test_bad_cross_attention_placement_is_one_clear_line(every, layout, message):
    from vlmlab.errors import ConfigError

    settings = dict(fusion="cross_attention", cross_attention_every=every, cross_attention_layout=layout)
    with pytest.raises(ConfigError, match=message) as error:
        build_vlm(dict(random_tokenizer=True, **settings))
    assert "\n" not in str(error.value)


def forward_order(vlm, ids, pixels, segments) -> list[str]:
    """'S' / 'X' in the order the decoder and cross-attention layers actually run in one forward pass."""
    order: list[str] = []
    hooks = [layer.register_forward_hook(lambda *_: order.append("S")) for layer in vlm.lm.model.layers]
    hooks += [
        layer.register_forward_hook(lambda *_: order.append("X")) for layer in vlm.fusion.cross_attn_layers
    ]
    try:
        with torch.no_grad():
            vlm(ids, pixel_values=pixels, segment_ids=segments)
    finally:
        for hook in hooks:
            hook.remove()
    return order


@pytest.mark.parametrize("layout", ["every", "llama32"])
def test_cross_attention_layers_run_where_the_layout_says(tmp_path, layout):
    # a 28-layer backbone (Qwen3 0.6B's depth) at the tiny width
    spec = (preset_dir("backbone") / "qwen3-tiny.yaml").read_text()
    backbone = tmp_path / "qwen3-tiny-28.yaml"
    backbone.write_text(
        spec.replace("name: qwen3-tiny", "name: qwen3-tiny-28").replace(
            "num_hidden_layers: 8", "num_hidden_layers: 28"
        )
    )
    vlm = build_vlm(
        dict(
            fusion="cross_attention",
            random_tokenizer=True,
            backbone=str(backbone),
            cross_attention_layout=layout,
        )
    ).eval()
    assert vlm.lm.config.num_hidden_layers == 28 and len(vlm.fusion.cross_attn_layers) == 7
    ids, segments, pixels = interleaved_batch(vlm, [[3, "I", 5]])
    order = forward_order(vlm, ids, pixels, segments)
    crosses = [i for i, kind in enumerate(order) if kind == "X"]
    if layout == "every":
        assert crosses == [4, 9, 14, 19, 24, 29, 34] and order[-1] == "X"  # after layers 4, 8, ..., 28
    else:
        assert crosses == [3, 8, 13, 18, 23, 28, 33] and order[-1] == "S"
    assert len(order) == 35
    # a text-only batch skips the cross-attention layers wherever they are
    text = torch.randint(0, 500, (1, 9))
    assert forward_order(vlm, text, None, torch.zeros_like(text)) == ["S"] * 28


def test_llama32_layout_generates_the_same_with_and_without_the_cache():
    from vlmlab.models.generation import _cached_steps

    torch.manual_seed(5)
    vlm = build_vlm(
        dict(fusion="cross_attention", random_tokenizer=True, cross_attention_layout="llama32")
    ).eval()
    assert vlm.fusion.positions == [3, 7]  # 8 layers: before decoder layers 3 and 7, then layer 7 runs last
    with torch.no_grad():
        for name, param in vlm.named_parameters():
            if param.dim() == 2 and "image_tokenizer" not in name:
                param.normal_(0, 0.3)
        for layer in vlm.fusion.cross_attn_layers:
            layer.attn_gate.fill_(1.0)
            layer.mlp_gate.fill_(1.0)
    ids, segments, pixels = interleaved_batch(vlm, [[2, "I", 4], [3, "I", 1, "I", 2]])
    # left-pad the shorter row for generation (padding segment -1 first)
    real = segments[0] >= 0
    shift = int((~real).sum())
    ids[0], segments[0] = ids[0].roll(shift), segments[0].roll(shift)
    forced = torch.randint(0, 500, (2, 4))
    with torch.no_grad():
        steps = _cached_steps(vlm, ids, segments, pixels)
        cached = [next(steps)] + [steps.send(forced[:, t]) for t in range(forced.shape[1])]
        full = vlm(
            torch.cat([ids, forced], dim=1),
            pixel_values=pixels,
            segment_ids=torch.cat([segments, torch.zeros_like(forced)], dim=1),
        ).logits
    for t, logits in enumerate(cached):
        torch.testing.assert_close(logits, full[:, ids.shape[1] - 1 + t], atol=1e-4, rtol=1e-4)
    # the image matters, so the layers that consume it did run in this layout
    with torch.no_grad():
        other = vlm(ids, pixel_values=torch.randn_like(pixels), segment_ids=segments).logits
    assert not torch.allclose(other[:, -1], full[:, ids.shape[1] - 1])


def test_default_layout_keeps_the_run_ids_of_existing_sweeps():
    from vlmlab.config import ExperimentConfig, to_dict
    from vlmlab.sweep.expand import run_id

    def ids(fusion, layout=None):
        config = to_dict(ExperimentConfig())
        config["model"]["fusion"] = fusion
        if layout is None:  # a config as resolved before the layout key existed
            del config["model"]["cross_attention_layout"]
        else:
            config["model"]["cross_attention_layout"] = layout
        return run_id(1, config, [], {})

    for fusion in FUSIONS.names():
        assert ids(fusion, "every") == ids(fusion)
    assert ids("cross_attention", "llama32") != ids("cross_attention")  # a new placement is a new run
    assert ids("joint_decoder", "llama32") == ids("joint_decoder")  # another fusion's setting changes nothing


# --------------------------------------------------------------------------------------------------------------
# A checkpoint's cross-attention layout travels with it (vlmlab/models/checkpoint.py)


def cross_attention_checkpoint(folder: Path, layout: str, every: int = 4) -> tuple[Path, dict]:
    """A stage-1 Cross-Attention checkpoint with perturbed weights, and those fusion weights."""
    from vlmlab.config import ExperimentConfig, load_config, to_dict
    from vlmlab.models.checkpoint import save_stage_checkpoint

    fields = dict(fusion="cross_attention", cross_attention_layout=layout, cross_attention_every=every)
    config = load_config(ExperimentConfig, [{"model": dict(random_tokenizer=True, **fields)}])
    torch.manual_seed(3)
    vlm = build_vlm(config.model)
    with torch.no_grad():
        for param in vlm.fusion.parameters():
            param.add_(torch.randn_like(param))
    save_stage_checkpoint(vlm, folder, to_dict(config), None, include_frozen=True)
    return folder, {name: p.detach().clone() for name, p in vlm.fusion.named_parameters()}


def cross_attention_model(layout: str, every: int = 4):
    fields = dict(cross_attention_layout=layout, cross_attention_every=every)
    return build_vlm(dict(fusion="cross_attention", random_tokenizer=True, **fields))


def assert_fusion_weights(vlm, expected: dict) -> None:
    for name, param in vlm.fusion.named_parameters():
        assert torch.equal(param, expected[name]), name


def test_a_checkpoint_loads_only_into_the_cross_attention_layout_it_was_trained_with(tmp_path):
    import json

    from vlmlab.errors import ConfigError
    from vlmlab.models.checkpoint import load_stage_checkpoint

    every, llama32 = cross_attention_model("every"), cross_attention_model("llama32")
    # why it needs a check: the same parameter names and shapes, at other depths
    shapes = {model: {n: p.shape for n, p in model.fusion.named_parameters()} for model in (every, llama32)}
    assert shapes[every] == shapes[llama32] and every.fusion.positions != llama32.fusion.positions

    folder, trained = cross_attention_checkpoint(tmp_path / "llama32", "llama32")
    assert json.loads((folder / "meta.json").read_text())["cross_attention_layout"] == "llama32"
    with pytest.raises(ConfigError) as error:
        load_stage_checkpoint(every, folder)
    message = str(error.value)
    assert "\n" not in message
    assert "trained with cross_attention_layout 'llama32'" in message and "this model has 'every'" in message
    load_stage_checkpoint(llama32, folder)  # its own layout loads it, weights and all
    assert_fusion_weights(llama32, trained)

    # another spacing: every 4th of 8 layers (2) would have loaded silently into the first 2 of every 2nd (4)
    folder, _ = cross_attention_checkpoint(tmp_path / "every", "every")
    with pytest.raises(ConfigError, match="cross_attention_every 4; this model has 'every', 2,"):
        load_stage_checkpoint(cross_attention_model("every", every=2), folder)


def test_a_checkpoint_from_before_the_layout_was_recorded_is_the_every_layout(tmp_path):
    import json

    from vlmlab.errors import ConfigError
    from vlmlab.models.checkpoint import load_stage_checkpoint

    folder, trained = cross_attention_checkpoint(tmp_path / "old", "every")
    meta = json.loads((folder / "meta.json").read_text())
    del meta["cross_attention_layout"], meta["config"]["model"]["cross_attention_layout"]  # as written then
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="cross_attention_layout 'every'.*this model has 'llama32'"):
        load_stage_checkpoint(cross_attention_model("llama32"), folder)
    model = cross_attention_model("every")
    load_stage_checkpoint(model, folder)
    assert_fusion_weights(model, trained)


@pytest.mark.parametrize(
    ("sweep", "expected"),
    [
        (  # an axis value
            "axes: {fusion: [cross_attention], model.cross_attention_layout: [every, lama32]}\nstages: {1: {}}",
            "'lama32'. Did you mean 'llama32'? Valid choices: every, llama32.",
        ),
        (  # a stage config
            "axes: {}\nstages: {1: {config: {model: {fusion: cross_attention, cross_attention_layout: llama-32}}}}",
            "'llama-32'. Did you mean 'llama32'? Valid choices: every, llama32.",
        ),
        (  # the fusion, checked at expansion before this: the layout now stops there too
            "axes: {fusion: [cross_attention, moe]}\nstages: {1: {}}",
            "'moe'",
        ),
    ],
    ids=["axis", "stage-config", "fusion"],
)
def test_a_misspelled_layout_stops_a_sweep_at_expansion(tmp_path, sweep, expected):
    from vlmlab.errors import ConfigError
    from vlmlab.sweep.expand import expand
    from vlmlab.sweep.spec import load_sweep

    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: {preset_dir('model') / 'tiny.yaml'}\n{sweep}\n")
    with pytest.raises(ConfigError) as error:
        expand(load_sweep(path))
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_the_fusion_registry_builds_exactly_the_declared_fusions():
    """vlmlab.config.FUSIONS names the fusions for config checks, run ids and tables; the models' registry
    has one class for each, and no other (a new fusion is one declared name and one registered class)."""
    from vlmlab.config import FUSIONS as DECLARED

    assert FUSIONS.names() == sorted(DECLARED)
