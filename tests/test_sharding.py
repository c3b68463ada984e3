"""FSDP2 sharding against unsharded training: the same steps on 2 CPU processes (gloo) and on one.

Each rank gets half of the global batch; both halves score the same number of tokens, so the mean loss the
two ranks average equals the one-process loss over the whole batch, and the sharded run must follow the
unsharded one: loss trajectory, final weights, and greedy generation through the sharded model.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlmlab.models.generation import greedy_generate
from vlmlab.models.vlm import build_vlm

FUSIONS = ("joint_decoder", "mot", "cross_attention")
STEPS = 3


def tiny_model(fusion: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_vlm(dict(backbone="qwen3-tiny", tokenizer="clip-tiny", random_tokenizer=True, fusion=fusion))


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
    return {
        "input_ids": ids,
        "segment_ids": torch.tensor(segments),
        "labels": torch.where(ids == model.image_token_id, -100, ids),
        "pixel_values": torch.randn(4, 3, size, size, generator=generator),
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


def _sharded_worker(rank: int, fusion: str, port: int, out: str) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    from vlmlab.train.sharding import shard_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model = tiny_model(fusion)
    model.adapter.requires_grad_(False) if fusion == "cross_attention" else None  # frozen parts inside units
    units = shard_model(model, init_device_mesh("cpu", (2,)))
    local = [half(global_batch(model, step), rank) for step in range(STEPS)]
    losses = train_steps(model, local)
    mean = torch.tensor(losses)
    dist.all_reduce(mean)
    generated = greedy_generate(model, *prompts(model), max_new_tokens=5, stop_ids=[])
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save(
            {"losses": (mean / 2).tolist(), "state": state, "units": units, "generated": generated}, out
        )
    dist.barrier()  # neither process tears its connections down while the other still uses them
    dist.destroy_process_group()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_two_process_fsdp2_follows_one_process_training(tmp_path: Path, fusion: str) -> None:
    out = tmp_path / "sharded.pt"
    with socket.socket() as probe:  # a port nothing else listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_sharded_worker, args=(fusion, port, str(out)), nprocs=2, join=True)
    sharded = torch.load(out, weights_only=True)

    model = tiny_model(fusion)
    model.adapter.requires_grad_(False) if fusion == "cross_attention" else None
    losses = train_steps(model, [global_batch(model, step) for step in range(STEPS)])
    assert sharded["losses"] == pytest.approx(losses, rel=1e-4, abs=1e-5)
    assert losses[-1] < losses[0]  # the steps did train
    reference = model.state_dict()
    assert sharded["state"].keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(sharded["state"][name], value, rtol=1e-4, atol=2e-5, msg=name)
    assert sharded["generated"] == greedy_generate(model, *prompts(model), max_new_tokens=5, stop_ids=[])
    # one unit per decoder layer of every kind and per tokenizer block, so no layer's weights are ever
    # all gathered at once; the tokenizer's blocks are open_clip's residual attention blocks
    from open_clip.transformer import ResidualAttentionBlock

    layers = model.lm.config.num_hidden_layers
    expected = {
        "joint_decoder": layers,
        "mot": 2 * layers,
        "cross_attention": layers + len(getattr(model.fusion, "cross_attn_layers", [])),
    }[fusion]
    blocks = sum(isinstance(m, ResidualAttentionBlock) for m in model.image_tokenizer.modules())
    assert blocks >= 2
    assert len(sharded["units"]) == expected + blocks + 1  # + the root
