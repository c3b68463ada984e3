"""FSDP2 sharding against unsharded training: the same steps on 2 CPU processes (gloo) and on one.

Each rank gets half of the global batch; both halves score the same number of tokens, so the mean loss the
two ranks average equals the one-process loss over the whole batch, and the sharded run must follow the
unsharded one: loss trajectory, final weights, and greedy generation through the sharded model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from ports import unused_port
from processes import spawn

from vlmlab.models.fusion import FUSIONS as FUSION_REGISTRY
from vlmlab.models.generation import greedy_generate
from vlmlab.models.vlm import build_vlm

FUSIONS = FUSION_REGISTRY.names()
STEPS = 3


def tiny_model(fusion: str, **model: object) -> torch.nn.Module:
    """The tiny VLM of `fusion`, with `model` keys over the defaults (a connector and its settings); a `lora`
    entry (train.lora settings) puts the language model in the LoRA state of stage 2 instead (lora-lm)."""
    from vlmlab.config import LoraSettings
    from vlmlab.recipes import load_recipe
    from vlmlab.train.freezing import apply_freezing

    torch.manual_seed(0)
    lora = model.pop("lora", None)
    settings = dict(backbone="qwen3-tiny", tokenizer="clip-tiny", random_tokenizer=True, fusion=fusion)
    vlm = build_vlm({**settings, **model})
    if lora is not None:
        apply_freezing(vlm, load_recipe("lora-lm"), 2, LoraSettings(**lora))
    return vlm


def global_batch(model, step: int) -> dict[str, torch.Tensor]:
    """4 rows, each two packed samples (text, image, text | text) with every text token scored."""
    generator = torch.Generator().manual_seed(100 + step)
    rows, segments = [], []
    image = [model.image_token_id] * model.tokens_per_image
    for _ in range(4):
        first = torch.randint(0, 400, (5,), generator=generator).tolist()
        second = torch.randint(0, 400, (6,), generator=generator).tolist()
        rows.append(first[:2] + image + first[2:] + second)
        segments.append([0] * (5 + len(image)) + [1] * 6)
    ids = torch.tensor(rows)
    size = model.image_tokenizer.spec.image_size
    channels = 3 * len(getattr(model.image_tokenizer, "towers", [None]))  # an encoder set: 3 per tower
    return {
        "input_ids": ids,
        "segment_ids": torch.tensor(segments),
        "labels": torch.where(ids == model.image_token_id, -100, ids),
        "pixel_values": torch.randn(4, channels, size, size, generator=generator),
    }


def half(batch: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    return {k: v[rank * 2 : rank * 2 + 2] for k, v in batch.items()}  # one image per row


def train_steps(model, batches, clip: float = 1.0) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, foreach=False)
    losses = []
    for batch in batches:
        loss = model(**batch, return_logits=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def prompts(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch = global_batch(model, 99)
    length = 2 + model.tokens_per_image + 3  # text, the image, text
    ids, segments = batch["input_ids"][:2, :length], batch["segment_ids"][:2, :length]
    return ids, segments, batch["pixel_values"][:2]


def _sharded_worker(rank: int, cases: list[tuple[str, dict]], port: int, out: str) -> None:
    """Each (fusion, model keys) case in turn in the same two ranks (one process group: a rendezvous per
    model would cost more than its training): shard, train STEPS steps on this rank's half, generate."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    from vlmlab.train.sharding import shard_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (2,))
    results = []
    for fusion, overrides in cases:
        model = tiny_model(fusion, **dict(overrides))
        model.adapter.requires_grad_(False) if fusion == "cross_attention" else None  # frozen parts in units
        units = shard_model(model, mesh)
        local = [half(global_batch(model, step), rank) for step in range(STEPS)]
        losses = train_steps(model, local)
        mean = torch.tensor(losses)
        dist.all_reduce(mean)
        generated = greedy_generate(model, *prompts(model), max_new_tokens=5, stop_ids=[])
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        results.append(
            {"losses": (mean / 2).tolist(), "state": state, "units": units, "generated": generated}
        )
    if rank == 0:
        torch.save(results, out)
    dist.barrier()  # neither process tears its connections down while the other still uses them
    dist.destroy_process_group()


def assert_follows_one_process(sharded: dict, fusion: str, overrides: dict) -> torch.nn.Module:
    """The sharded run's losses, final weights and generation against the same steps in one process;
    -> the one-process model."""
    model = tiny_model(fusion, **dict(overrides))
    model.adapter.requires_grad_(False) if fusion == "cross_attention" else None
    losses = train_steps(model, [global_batch(model, step) for step in range(STEPS)])
    assert sharded["losses"] == pytest.approx(losses, rel=1e-4, abs=1e-5)
    assert losses[-1] < losses[0]  # the steps did train
    reference = model.state_dict()
    assert sharded["state"].keys() == reference.keys()
    for name, value in reference.items():
        # a tenth of one AdamW step (lr 1e-3): Adam divides by the gradient's own scale, so an element whose
        # gradient is near zero moves by float noise of the summation order (two all-reduced halves against
        # one batch); 2.7e-5 was seen for MoT on transformers 5.25
        torch.testing.assert_close(sharded["state"][name], value, rtol=1e-4, atol=1e-4, msg=name)
    assert sharded["generated"] == greedy_generate(model, *prompts(model), max_new_tokens=5, stop_ids=[])
    return model


def _preset_depth(tokenizer: str) -> int:
    """A tower's transformer blocks as its preset states them (timm `depth`, open_clip `vision_cfg.layers`,
    transformers `num_hidden_layers`)."""
    from vlmlab.config import tokenizer_preset

    kwargs = tokenizer_preset(tokenizer)["arch_kwargs"]
    return kwargs.get("depth") or kwargs.get("num_hidden_layers") or kwargs["vision_cfg"]["layers"]


def expected_units(model: torch.nn.Module, fusion: str) -> int:
    """One unit per decoder layer of every kind, per tokenizer block (open_clip's residual attention blocks)
    and per connector block, + the root: no layer's weights are ever all gathered at once."""
    from open_clip.transformer import ResidualAttentionBlock

    layers = model.lm.config.num_hidden_layers
    decoder = {
        "joint_decoder": layers,
        "mot": 2 * layers,
        "cross_attention": layers + len(getattr(model.fusion, "cross_attn_layers", [])),
    }[fusion]
    if hasattr(model.image_tokenizer, "towers"):  # an encoder set: each tower's depth, from its preset
        blocks = sum(_preset_depth(tower.spec.name) for tower in model.image_tokenizer.towers)
    else:
        blocks = sum(isinstance(m, ResidualAttentionBlock) for m in model.image_tokenizer.modules())
    assert blocks >= 2
    return decoder + blocks + len(model.adapter.fsdp_units()) + 1


@pytest.mark.slow(seconds=30)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_two_process_fsdp2_follows_one_process_training(tmp_path: Path, fusion: str) -> None:
    out = tmp_path / "sharded.pt"
    spawn(_sharded_worker, ([(fusion, {})], unused_port(), str(out)))
    (sharded,) = torch.load(out, weights_only=True)
    model = assert_follows_one_process(sharded, fusion, {})
    assert len(sharded["units"]) == expected_units(model, fusion)


# The settings of issue 25, each with a fusion: the connectors (every fusion covered, the perceiver's and
# C-Abstractor's blocks trained by a fusion whose gradient reaches them) at token counts the tiny 4 x 4 grid
# allows, and a non-native input size (clip-tiny at 96 px: a 6 x 6 grid whose position embeddings open_clip
# built for that size)
DESIGN_CASES = [
    ("mot", {"adapter": "perceiver", "adapter_tokens": 4}),
    ("joint_decoder", {"adapter": "c_abstractor", "adapter_tokens": 4}),
    ("joint_decoder", {"adapter": "pixel_shuffle", "pixel_shuffle_ratio": 2}),
    ("cross_attention", {"adapter": "avgpool", "adapter_tokens": 4}),
    ("joint_decoder", {"image_size": 96}),
    # issue 26: two encoders at once, DINOv3 + SigLIP 2 concatenated on channels (each tower's blocks are
    # units, cut as when it runs alone)
    ("joint_decoder", {"tokenizer": ["dinov3-tiny", "siglip2-tiny"], "encoder_fusion": "channel"}),
    # issue 26: LoRA (DoRA, whose weight norm needs the gathered base weight) on the language model, whose
    # frozen base weights share their FSDP units with the trained adapters
    ("joint_decoder", {"lora": {"rank": 4, "alpha": 8, "dora": True}}),
]


def test_the_design_cases_cover_every_connector_with_blocks_or_a_token_count() -> None:
    from vlmlab.models.adapters import ADAPTERS

    new = set(ADAPTERS.names()) - {"mlp", "linear", "embedding"}  # those three: the fusion tests above
    assert {case["adapter"] for _, case in DESIGN_CASES if "adapter" in case} == new


@pytest.mark.slow(seconds=30)
def test_two_process_fsdp2_follows_one_process_for_every_connector_and_a_new_size(tmp_path: Path) -> None:
    """Every new connector, a non-native input size and a pair of encoders, sharded in the same two ranks one model after the
    other: the same losses, weights and generation as one process, the perceiver's and C-Abstractor's
    blocks units of their own."""
    out = tmp_path / "sharded.pt"
    spawn(_sharded_worker, (DESIGN_CASES, unused_port(), str(out)))
    results = torch.load(out, weights_only=True)
    for sharded, (fusion, overrides) in zip(results, DESIGN_CASES, strict=True):
        model = assert_follows_one_process(sharded, fusion, overrides)
        assert len(sharded["units"]) == expected_units(model, fusion)
        adapter_units = [unit for unit in sharded["units"] if unit.startswith("adapter.")]
        assert len(adapter_units) == {"perceiver": 3, "c_abstractor": 6}.get(overrides.get("adapter"), 0)
        if "image_size" in overrides:
            assert model.image_tokenizer.num_tokens == (overrides["image_size"] // 16) ** 2
        if "tokenizer" in overrides:  # both towers' weights trained and gathered under their own names
            towers = {name.split(".")[2] for name in sharded["state"] if name.startswith("image_tokenizer.")}
            assert towers == {"0", "1"} and model.image_tokenizer.embed_dim == 64 + 64
        if "lora" in overrides:  # what trained is the adapters: the base weights are the initial ones
            trained = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("lm.")]
            assert trained and all(".lora_" in name for name in trained)
            base = tiny_model(fusion).state_dict()
            for name, value in sharded["state"].items():
                if name.startswith("lm.") and ".lora_" not in name:
                    plain = name.replace(".base_layer.", ".")
                    torch.testing.assert_close(value, base[plain], rtol=0, atol=0, msg=name)


def _jd_then_mot(model_for, shard, batches_for) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Stage 1 Joint-Decoder, then the stage-2 MoT hand-off (its weights in, the image copy reset from the
    trained backbone), then MoT training; `shard(model)` and `batches_for(model, offset)` set the layout."""
    jd = model_for("joint_decoder")
    shard(jd)
    train_steps(jd, batches_for(jd, 0))
    trained = _full_state(jd)
    mot = model_for("mot")
    with torch.no_grad():
        for name, param in mot.named_parameters():
            if name in trained:
                param.copy_(trained[name])
    mot.fusion.reset_image_copy(mot.lm)
    shard(mot)
    losses = train_steps(mot, batches_for(mot, 10))
    return losses, _full_state(mot)


def _full_state(model) -> dict[str, torch.Tensor]:
    if not dist.is_initialized():
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))  # on every rank


def _handoff_worker(rank: int, port: int, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    from vlmlab.train.sharding import shard_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (2,))
    losses, state = _jd_then_mot(
        tiny_model,
        lambda model: shard_model(model, mesh),
        lambda model, offset: [half(global_batch(model, offset + s), rank) for s in range(STEPS)],
    )
    mean = torch.tensor(losses)
    dist.all_reduce(mean)
    if rank == 0:
        torch.save({"losses": (mean / 2).tolist(), "state": state}, out)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow(seconds=30)
def test_mot_stage_2_from_a_sharded_joint_decoder_stage_1_follows_one_process(tmp_path: Path) -> None:
    out = tmp_path / "handoff.pt"
    port = unused_port()
    spawn(_handoff_worker, (port, str(out)))
    sharded = torch.load(out, weights_only=True)
    losses, state = _jd_then_mot(
        tiny_model,
        lambda model: None,
        lambda model, offset: [global_batch(model, offset + s) for s in range(STEPS)],
    )
    assert sharded["losses"] == pytest.approx(losses, rel=1e-4, abs=1e-5)
    assert state.keys() == sharded["state"].keys()
    for name, value in state.items():
        # a tenth of one AdamW step (lr 1e-3): Adam divides by the gradient's own scale, so an element whose
        # gradient is near zero moves by float noise of the summation order (two all-reduced halves against
        # one batch); 2.7e-5 was seen for MoT on transformers 5.25
        torch.testing.assert_close(sharded["state"][name], value, rtol=1e-4, atol=1e-4, msg=name)
    # the hand-off happened: the image copy left the backbone's layers and both trained
    image, text = (
        state["fusion.image_layers.0.mlp.up_proj.weight"],
        state["lm.model.layers.0.mlp.up_proj.weight"],
    )
    assert not torch.equal(image, text)


# -- the training engine with train.strategy=fsdp (Lightning's ModelParallelStrategy) against DDP, both ranks
# started together with torchrun's environment (tests/test_training.py run_cli)
TWO_CPUS = ["train.devices=2", "train.accelerator=cpu", "train.deterministic=true"]


def _run(
    tmp: Path,
    name: str,
    stage: int,
    fusion: str,
    strategy: str,
    fault: str | None = None,
    overrides: tuple[str, ...] = (),
    **train,
):
    from omegaconf import OmegaConf
    from test_training import experiment, run_cli

    path = tmp / f"{name}.yaml"
    if not path.exists():
        config = experiment(tmp, name, stage, fusion, **train)
        path.write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
    proc = run_cli(str(path), f"train.strategy={strategy}", *TWO_CPUS, *overrides, fault=fault, ranks=2)
    _, error = proc.communicate(timeout=600)
    return proc.returncode, error[-3000:]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "final" / "weights.safetensors"))


def _same_under_fsdp_as_under_ddp(tmp: Path, run: str) -> dict:
    """The run's weights and metrics under FSDP equal those under DDP; returns the FSDP record."""
    import json

    records = {s: json.loads((tmp / f"{run}-{s}" / "result.json").read_text()) for s in ("ddp", "fsdp")}
    ddp, fsdp = _weights(tmp / f"{run}-ddp"), _weights(tmp / f"{run}-fsdp")
    assert ddp.keys() == fsdp.keys()
    for name in ddp:
        torch.testing.assert_close(fsdp[name], ddp[name], rtol=1e-4, atol=1e-5, msg=f"{run}: {name}")
    assert records["fsdp"]["metrics"] == records["ddp"]["metrics"]
    return records["fsdp"]


@pytest.mark.slow(seconds=200)
def test_fsdp_equals_ddp_through_the_mot_hand_off_and_a_killed_sharded_run_resumes_exactly(
    tmp_path: Path,
) -> None:
    """Stage 1 Joint-Decoder under FSDP, then a stage-2 MoT started from it (the hand-off of a gathered
    sharded checkpoint; validating, i.e. generating, on the sharded model) under FSDP and under DDP: the same
    weights and metrics. (Sharded Joint-Decoder training itself follows one process in
    test_two_process_fsdp2_follows_one_process_training; both stage-2 runs start from the same stage-1 run, so
    the comparison is of stage 2 alone.) Then the sharded MoT run again, killed once its step-2 checkpoint is
    saved: the gathered last.ckpt (and each rank's stream state) resumes to the bit-identical weights,
    metrics and best step of the unbroken run, which is the reference."""
    import json

    code, error = _run(tmp_path, "jd-fsdp", 1, "joint_decoder", "fsdp")
    assert code == 0, error
    for strategy in ("ddp", "fsdp"):
        code, error = _run(
            tmp_path, f"mot-{strategy}", 2, "mot", strategy, init_from=str(tmp_path / "jd-fsdp")
        )
        assert code == 0, error
    mot = _same_under_fsdp_as_under_ddp(tmp_path, "mot")
    assert any(name.startswith("fusion.image_layers.") for name in _weights(tmp_path / "mot-fsdp"))

    split = dict(init_from=str(tmp_path / "jd-fsdp"))
    assert _run(tmp_path, "split", 2, "mot", "fsdp", fault="checkpoint:2", **split)[0] != 0
    assert not (tmp_path / "split" / "result.json").exists()
    code, error = _run(tmp_path, "split", 2, "mot", "fsdp", **split)
    assert code == 0, error
    straight, resumed = _weights(tmp_path / "mot-fsdp"), _weights(tmp_path / "split")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    record = json.loads((tmp_path / "split" / "result.json").read_text())
    # the score of step 2 was on disk when its checkpoint was: the resumed run picks the same best step
    assert record["metrics"] == mot["metrics"] and record["best"] == mot["best"]


# AnyRes tiles through the training engine: a 64 px synthetic square becomes its thumbnail and a 1 x 2 grid
# (the smallest canvas that keeps all its pixels, LLaVA-NeXT's rule), three tiles pooled to 4 tokens each
TILED_AVGPOOL = ("model.tiling=anyres", "model.adapter=avgpool", "model.adapter_tokens=4")


@pytest.mark.slow(seconds=80)
def test_fsdp_equals_ddp_for_a_tiled_cross_attention_stage_2_run(tmp_path: Path) -> None:
    """A stage-2 Cross-Attention run (its gated cross-attention layers sharded) on tiled images, validating
    (generating from tiled prompts) on the sharded model: the same weights and metrics under FSDP as under
    DDP."""
    for strategy in ("ddp", "fsdp"):
        code, error = _run(
            tmp_path, f"xattn-{strategy}", 2, "cross_attention", strategy, overrides=TILED_AVGPOOL
        )
        assert code == 0, error
    fsdp = _same_under_fsdp_as_under_ddp(tmp_path, "xattn")
    assert fsdp["config"]["model"]["tiling"] == "anyres"


@pytest.mark.parametrize(
    "tokenizer", ["clip-tiny", "siglip2-tiny", "aimv2-tiny", "dinov3-tiny", "dinov3-tiny-hf"]
)
def test_every_continuous_tower_is_cut_into_its_blocks(tokenizer: str) -> None:
    """Each tower's FSDP units are its transformer blocks, as many as its preset's depth, whatever container
    its library keeps them in (open_clip and transformers: a ModuleList; timm: an nn.Sequential)."""
    from vlmlab.models.tokenizers import build_tokenizer, load_tokenizer_spec
    from vlmlab.train.sharding import tokenizer_blocks

    tower = build_tokenizer(load_tokenizer_spec(tokenizer), pretrained=None)
    blocks = tokenizer_blocks(tower)
    assert len(blocks) == _preset_depth(tokenizer) >= 2
    assert len({type(block) for _, block in blocks}) == 1
    assert all(any(p.numel() for p in block.parameters()) for _, block in blocks)


@pytest.mark.slow(seconds=60)
def test_compiled_blocks_under_fsdp_and_activation_checkpointing_train_as_eager_fsdp(tmp_path: Path) -> None:
    """train.compile with FSDP2 and activation checkpointing: a stage-2 MoT run (its split layers compiled
    before they are sharded, recomputed inside checkpointing) ends with the eager FSDP run's weights and
    metrics, with no graph break."""
    import json

    compiled = ("train.compile=true", "model.gradient_checkpointing=true")
    for name, overrides in (("mot-eager", ()), ("mot-compiled", compiled)):
        code, error = _run(tmp_path, name, 2, "mot", "fsdp", overrides=overrides, max_steps=2)
        assert code == 0, error
    eager, done = _weights(tmp_path / "mot-eager"), _weights(tmp_path / "mot-compiled")
    assert eager.keys() == done.keys()
    for name in eager:
        torch.testing.assert_close(done[name], eager[name], rtol=1e-4, atol=1e-5, msg=name)
    records = {
        n: json.loads((tmp_path / n / "result.json").read_text()) for n in ("mot-eager", "mot-compiled")
    }
    assert records["mot-compiled"]["metrics"] == records["mot-eager"]["metrics"]
    assert records["mot-compiled"]["timings"]["compile"]["graph_breaks"] == 0
    assert "compile" not in records["mot-eager"]["timings"]
