"""GPU checks (issues 13 and 27): sharded training, packed attention kernels, throughput and MFU, the loader.

1. FSDP2 vs DDP, bf16, for each fusion: one SGD step from the same weights on the same global batch
   (every GPU of the machine; one process per GPU); the two weight updates (= gradients) must agree
   (relative difference <= 5 %: bf16 rounding differs between a gathered-bf16 and an autocast forward).
2. Packed attention on packed rows (several samples per row, padding), for each fusion and each attention
   implementation the machine has (sdpa, eager, flex_attention, flash_attention_2 when flash-attn is
   installed): logits of every sample in its packed row against the sample run alone (SDPA, causal).
3. Throughput and MFU of Qwen3-0.6B and 1.7B (`--backbones`) + SigLIP 2 B/16 at 224 px, stage 2 (everything
   trained), per fusion, eager and compiled (`train.compile`'s per-block torch.compile, `--compile-fusions`),
   with the chunked loss, and the dense loss beside it once: packed rows of `--seq` tokens, bf16 autocast,
   AdamW, the fastest attention available; tokens/s, TFLOP/s, peak memory. Model FLOPs are the runs' own
   count (vlmlab/models/flops.py: vision tower, adapter, attention over the real packed lengths, backward of
   what trains), the peak the runs' table (vlmlab/train/throughput.py).
   Goal: MFU >= 45 % for the Joint-Decoder (published VLM trainers report 30-45 %).
4. The loader on the node's cores (one worker per core but one): samples/s on 256 and 384 px JPEG shards
   with SigLIP 2's preprocessing (benchmarks/bench_loader.py), to set beside 3.'s samples/s.

About 6-8 minutes on one H100 with the defaults (`--compile-fusions joint_decoder` to save about two).
Usage: python benchmarks/gpu_check.py [--steps 20] [--seq 8192] [--micro-batch 1] [--out gpu_check.json]
       python benchmarks/gpu_check.py --dry-run   # every check on tiny models on the CPU: no figures
Without a GPU (and without --dry-run) it says so, measures nothing and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlmlab.models.flops import BatchShape, flop_model
from vlmlab.models.vlm import build_vlm
from vlmlab.recipes import load_recipe
from vlmlab.train.compile import compile_blocks
from vlmlab.train.freezing import apply_freezing
from vlmlab.train.throughput import peak_tflops

FUSIONS = ("joint_decoder", "mot", "cross_attention")
MFU_GOAL = 0.45
REAL = dict(backbone="qwen3-0.6b", tokenizer="siglip2-b16-224")
TINY = dict(backbone="qwen3-tiny", tokenizer="clip-tiny")


def model_config(dry_run: bool, fusion: str, implementation: str = "sdpa") -> dict:
    return dict(
        **(TINY if dry_run else REAL),
        fusion=fusion,
        random_tokenizer=True,
        attn_implementation=implementation,
    )


def packed_rows(
    model, rows: int, length: int, sample_text: int, device, generator
) -> dict[str, torch.Tensor]:
    """Rows of back-to-back samples (image, then `sample_text` scored text tokens), padding at the end."""
    image = [model.image_token_id] * model.tokens_per_image
    size = model.image_tokenizer.spec.image_size
    ids = torch.zeros(rows, length, dtype=torch.long)
    segments = torch.full((rows, length), -1)
    images = 0
    for row in range(rows):
        position, segment = 0, 0
        while position + len(image) + sample_text <= length - 1:  # at least one padding position per row
            text = torch.randint(0, min(1000, model.image_token_id), (sample_text,), generator=generator)
            sample = torch.cat([torch.tensor(image), text])
            ids[row, position : position + len(sample)] = sample
            segments[row, position : position + len(sample)] = segment
            position, segment, images = position + len(sample), segment + 1, images + 1
    labels = torch.where((ids == model.image_token_id) | (segments < 0), -100, ids)
    pixels = torch.randn(images, 3, size, size, generator=generator)
    batch = {"input_ids": ids, "segment_ids": segments, "labels": labels, "pixel_values": pixels}
    return {k: v.to(device) for k, v in batch.items()}


# -- 1. FSDP2 vs DDP, one bf16 step
def _one_step(rank: int, world: int, port: int, fusion: str, dry_run: bool, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.nn.parallel import DistributedDataParallel

    from vlmlab.train.sharding import local_tensor, shard_model

    cuda = torch.cuda.is_available() and not dry_run
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    results = {}
    for strategy in ("ddp", "fsdp"):
        torch.manual_seed(0)
        model = build_vlm(model_config(dry_run, fusion)).to(device)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        generator = torch.Generator().manual_seed(1 + rank)
        batch = packed_rows(model, 2, 256 if dry_run else 2048, 40 if dry_run else 300, device, generator)
        if strategy == "ddp":
            wrapped = DistributedDataParallel(model, device_ids=[rank] if cuda else None)
        else:
            shard_model(model, init_device_mesh(device.type, (world,)), bf16=True)
            wrapped = model
        # plain SGD: the update is the gradient itself (Adam's first step is sign(gradient), which turns
        # bf16 rounding of near-zero gradients into full-size update differences)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = wrapped(**batch, return_logits=False).loss
        loss.backward()
        optimizer.step()
        if strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            after = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        else:
            after = {n: local_tensor(p).detach() for n, p in model.named_parameters()}
        results[strategy] = {
            "loss": float(loss),
            "update": {n: (after[n].to(device) - before[n]) for n in before},
        }
    ddp, fsdp = results["ddp"]["update"], results["fsdp"]["update"]
    diff = sum(float((fsdp[n] - ddp[n]).float().norm() ** 2) for n in ddp) ** 0.5
    size = sum(float(ddp[n].float().norm() ** 2) for n in ddp) ** 0.5
    if rank == 0:
        Path(out).write_text(
            json.dumps(
                {
                    "loss_ddp": results["ddp"]["loss"],
                    "loss_fsdp": results["fsdp"]["loss"],
                    "relative_update_difference": diff / max(size, 1e-30),
                }
            )
        )
    dist.barrier()
    dist.destroy_process_group()


def check_fsdp_vs_ddp(dry_run: bool, workdir: Path) -> list[dict]:
    world = 2 if dry_run else max(1, torch.cuda.device_count())
    rows = []
    for fusion in FUSIONS:
        out = workdir / f"fsdp-{fusion}.json"
        mp.spawn(_one_step, args=(world, _free_port(), fusion, dry_run, str(out)), nprocs=world, join=True)
        result = json.loads(out.read_text())
        result.update(fusion=fusion, processes=world, ok=result["relative_update_difference"] <= 0.05)
        rows.append(result)
        print(
            f"  {fusion:<16} loss ddp {result['loss_ddp']:.4f} fsdp {result['loss_fsdp']:.4f}  "
            f"update difference {result['relative_update_difference']:.2%} (goal <= 5%)  "
            f"{'ok' if result['ok'] else 'FAIL'}"
        )
    return rows


# -- 2. packed rows against each sample alone, per attention implementation
def available_implementations(device: torch.device) -> list[str]:
    names = ["sdpa", "eager", "flex_attention"]
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        names.append("flash_attention_2")
    return names


def check_attention(dry_run: bool, device: torch.device) -> list[dict]:
    dtype = torch.float32 if dry_run else torch.bfloat16
    rows = []
    for fusion in FUSIONS:
        torch.manual_seed(0)
        reference = build_vlm(model_config(dry_run, fusion)).to(device, dtype).eval()
        batch = packed_rows(
            reference,
            2,
            128 if dry_run else 1024,
            20 if dry_run else 200,
            device,
            torch.Generator().manual_seed(2),
        )
        expected = _alone(reference, batch)
        for implementation in available_implementations(device):
            model = build_vlm(model_config(dry_run, fusion, implementation)).to(device, dtype).eval()
            model.load_state_dict(reference.state_dict())
            if (
                dry_run and implementation == "flex_attention"
            ):  # inductor's CPU flex template: see test_attention
                from torch.nn.attention.flex_attention import flex_attention
                from transformers.integrations import flex_attention as integration

                integration.compile_friendly_flex_attention = lambda q, k, v, training=False, **kw: (
                    flex_attention(q, k, v, **kw)
                )
            with torch.no_grad():
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            worst = max(
                float((logits[row, start:end].float() - value.float()).abs().max())
                for (row, start, end), value in expected
            )
            scale = max(float(value.float().abs().max()) for _, value in expected)
            ok = worst <= (1e-4 if dtype == torch.float32 else 0.05 * scale)
            rows.append(dict(fusion=fusion, implementation=implementation, max_abs_difference=worst, ok=ok))
            print(
                f"  {fusion:<16} {implementation:<18} max |packed - alone| {worst:.2e}  {'ok' if ok else 'FAIL'}"
            )
    return rows


def _alone(model, batch) -> list[tuple[tuple[int, int, int], torch.Tensor]]:
    """Each packed sample run alone: [((row, start, end), logits)]."""
    out, image = [], 0
    segments = batch["segment_ids"].cpu()
    with torch.no_grad():
        for row in range(segments.shape[0]):
            for segment in sorted(set(segments[row].tolist()) - {-1}):
                where = torch.nonzero(segments[row] == segment).squeeze(1)
                start, end = int(where[0]), int(where[-1]) + 1
                ids = batch["input_ids"][row : row + 1, start:end]
                count = int((ids == model.image_token_id).sum()) // model.tokens_per_image
                pixels = batch["pixel_values"][image : image + count]
                image += count
                out.append(((row, start, end), model(ids, pixel_values=pixels).logits[0]))
    return out


# -- 3. throughput and MFU
def device_peak(device: torch.device) -> tuple[str, float | None]:
    """(device name, peak bf16 FLOP/s or None): the runs' own table (vlmlab/train/throughput.py)."""
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    peak = peak_tflops(name, "bf16-mixed", tf32=False)
    return name, peak * 1e12 if peak else None


def _shape(batch: dict[str, torch.Tensor], image_token_id: int) -> BatchShape:
    """The FLOP count's batch shape, as the collator counts it (vlmlab/data/collate.py)."""
    segments = batch["segment_ids"].cpu()
    return BatchShape(
        tokens=int((segments >= 0).sum()),
        square_lengths=sum(int((torch.bincount(row[row >= 0]) ** 2).sum()) for row in segments),
        images_per_row=tuple(
            int(n) for n in ((batch["input_ids"].cpu() == image_token_id) & (segments >= 0)).sum(dim=1)
        ),
        scored=int((batch["labels"][:, 1:] != -100).sum()),
    )


def _measure(model, batches: list[dict], steps: int, device: torch.device) -> tuple[float, float, float]:
    """(wall, CPU seconds per step, seconds of the warm-up steps: compilation) of `steps` AdamW steps."""
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=device.type == "cuda"
    )
    warm_started = time.perf_counter()
    for step in range(steps + 3):  # 3 warm-up steps (compilation, the allocator's first blocks)
        if step == 3:
            _sync(device)
            warmup = time.perf_counter() - warm_started
            started, cpu_started = time.perf_counter(), time.process_time()
        batch = batches[step % len(batches)]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch, return_logits=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return (time.perf_counter() - started) / steps, (time.process_time() - cpu_started) / steps, warmup


def throughput_cases(args: argparse.Namespace) -> list[tuple[str, str, bool, str]]:
    """(backbone, fusion, compiled, loss) to measure: every fusion of every backbone eager and compiled with
    the chunked loss, and the dense loss beside it for the first backbone's Joint-Decoder (eager)."""
    backbones = ["qwen3-tiny"] if args.dry_run else args.backbones
    cases = [
        (backbone, fusion, compiled, "chunked")
        for backbone in backbones
        for fusion in FUSIONS
        for compiled in (False, True)
        if not compiled or fusion in args.compile_fusions
    ]
    return [*cases, (backbones[0], "joint_decoder", False, "dense")]


def check_throughput(args: argparse.Namespace, device: torch.device) -> list[dict]:
    implementation = (
        "flash_attention_2" if "flash_attention_2" in available_implementations(device) else "sdpa"
    )
    seq = 256 if args.dry_run else args.seq
    sample_text = 40 if args.dry_run else 400
    name, peak = device_peak(device)
    rows = []
    for backbone, fusion, compiled, loss_impl in throughput_cases(args):
        torch.manual_seed(0)
        config = {**model_config(args.dry_run, fusion, implementation), "backbone": backbone}
        model = build_vlm(config).to(device).train()
        apply_freezing(model, load_recipe("unfreeze-all"), 2)  # stage 2, everything trained
        model.loss_impl = loss_impl
        flops = flop_model(model, model.config)
        if compiled:
            compile_blocks(model)
        generator = torch.Generator().manual_seed(3)
        batches = [
            packed_rows(model, args.micro_batch, seq, sample_text, device, generator) for _ in range(4)
        ]
        flops_per_step = sum(flops.step(_shape(b, model.image_token_id)) for b in batches) / len(batches)
        tokens_per_step = sum(int((b["segment_ids"] >= 0).sum()) for b in batches) / len(batches)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        steps = 2 if args.dry_run else args.steps
        step_time, cpu, warmup = _measure(model, batches, steps, device)
        mfu = flops_per_step / step_time / peak if peak else None
        row = dict(
            backbone=backbone,
            fusion=fusion,
            compiled=compiled,
            loss=loss_impl,
            attention=implementation,
            tokens_per_s=tokens_per_step / step_time,
            step_seconds=step_time,
            cpu_seconds_per_step=cpu,
            warmup_seconds=warmup,
            model_tflops_per_step=flops_per_step / 1e12,
            tflops_per_s=flops_per_step / step_time / 1e12,
            mfu=mfu,
            peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2**30
            if device.type == "cuda"
            else None,
        )
        rows.append(row)
        goal = f"(goal >= {MFU_GOAL:.0%})" if fusion == "joint_decoder" else ""
        memory = "n/a" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.1f} GiB"
        print(
            f"  {backbone:<11} {fusion:<16} {'compiled' if compiled else 'eager':<8} {loss_impl:<7} "
            f"{row['tokens_per_s']:>9,.0f} tokens/s  step {step_time:.3f} s wall {cpu:.3f} s CPU "
            f"(warm-up {warmup:.0f} s)  {row['tflops_per_s']:.1f} TFLOP/s  "
            f"MFU {'n/a' if mfu is None else f'{mfu:.1%}'} {goal}  peak memory {memory}"
        )
        del model, batches
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"  device {name}, peak bf16 {'unknown' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}")
    return rows


def check_loader(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """samples/s of the loader on this node's cores (benchmarks/bench_loader.py, one worker per core)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_data import write_shards
    from bench_loader import samples_per_second

    workers = 2 if args.dry_run else max(1, (os.cpu_count() or 2) - 1)
    rows = []
    for size in (256, 384):
        pattern = write_shards(workdir / f"gpu_check_photos{size}", max(2, workers), 100, size, 50)
        took, count, state = samples_per_second(
            pattern, "clip-tiny" if args.dry_run else "siglip2-b16-224", 1024, 40 if args.dry_run else 4000,
            num_workers=workers,
        )  # fmt: skip
        rows.append(
            dict(
                size=size,
                workers=workers,
                samples_per_s=took.rate(count),
                per_worker=took.rate(count) / workers,
            )
        )
        print(
            f"  {size} px JPEG, {workers} workers: {took.rate(count):,.0f} samples/s "
            f"({took.rate(count) / workers:,.0f} per worker; {took.describe()})"
        )
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny models on the CPU: checks the script only"
    )
    parser.add_argument("--only", choices=["fsdp", "attention", "throughput", "loader"], action="append")
    parser.add_argument("--backbones", nargs="+", default=["qwen3-0.6b", "qwen3-1.7b"])
    parser.add_argument(
        "--compile-fusions", nargs="*", default=list(FUSIONS), help="fusions also measured compiled"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.dry_run:
        print(
            "gpu_check: no CUDA device here: nothing measured (the FSDP, attention and MFU figures need a GPU)."
        )
        return 2
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    wall, cpu = time.perf_counter(), time.process_time()
    workdir = Path(args.out).resolve().parent
    report: dict = {"device": device_peak(device)[0], "dry_run": args.dry_run, "torch": torch.__version__}
    checks = args.only or ["fsdp", "attention", "throughput", "loader"]
    if "fsdp" in checks:
        print("1. FSDP2 vs DDP, one bf16 step")
        report["fsdp_vs_ddp"] = check_fsdp_vs_ddp(args.dry_run, workdir)
    if "attention" in checks:
        print("2. packed rows vs each sample alone")
        report["attention"] = check_attention(args.dry_run, device)
    if "throughput" in checks:
        print(
            f"3. training throughput, {'tiny (dry run)' if args.dry_run else 'Qwen3 + SigLIP 2 B/16'}, stage 2"
        )
        report["throughput"] = check_throughput(args, device)
    if "loader" in checks:
        print("4. the loader on this node's cores")
        report["loader"] = check_loader(args, workdir)
    report["seconds"] = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} ({report['seconds']['wall']:.0f} s wall, {report['seconds']['cpu']:.0f} s CPU)")
    failed = [r for key in ("fsdp_vs_ddp", "attention") for r in report.get(key, []) if not r["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
