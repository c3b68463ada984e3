"""LoMo rendering + perceptual-distortion throughput on one core (spans per second), online and offline.

Usage: python benchmarks/bench_lomo.py [--spans N] [--math-fraction F] [--seed S]

Spans are seeded synthetic texts of 1-4 sentences (~290 characters, the size of a middle third);
a `--math-fraction` of them carry LaTeX formulas in every supported delimiter (with random numbers, so
whole-formula caching rarely helps).  Each span is rendered and one sampled distortion is applied, one
span at a time, with the math engine the *online* `LomoTransform` uses (under `math_engine="auto"`:
mathtext, see `LomoConfig.math_engine`); the figure includes the cold start of all caches.  The goal is
>= 100 spans/s per core: it is judged on wall time (what a user waits) and on CPU time (spans per CPU
second, this process and any processes it starts: what one free core reaches; on a shared machine the two
differ) and both verdicts are printed.  The end-to-end online transform (span localisation, rendering,
distortion, RGB conversion) on longer prompts is timed too, in samples per wall and per CPU second.

Where LaTeX is installed, a few of them are also timed online with `math_engine="latex"` (one latex run
per sample: why online `auto` is mathtext).  Last, the same prompts go through the offline path, `write_rendered_shards` (PNG encoding and tar writing
included), whose `auto` engine is real LaTeX where latex and dvipng are installed, batched 64 samples per
latex run (the latex and dvipng processes count in its CPU time); its spans/s are judged against the same
goal.
"""

from __future__ import annotations

import argparse
import random
import tempfile

import torch
from timing import timed, verdict

from vlmlab.data.lomo.distort import DistortionConfig, distort
from vlmlab.data.lomo.render import resolve_math_engine
from vlmlab.data.lomo.spans import contains_math, scan_fragments
from vlmlab.data.lomo.synthetic import random_prompt
from vlmlab.data.lomo.transform import LomoConfig, LomoTransform, read_rendered_shard, write_rendered_shards

GOAL = 100.0  # spans per second per core


def make_spans(n: int, math_fraction: float, seed: int, sentences: tuple[int, int] = (1, 4)) -> list[str]:
    """``n`` texts, a ``math_fraction`` of them with at least one formula and the rest plain prose."""
    rng = random.Random(seed)
    spans = []
    while len(spans) < n:
        want_math = rng.random() < math_fraction
        text, formulas = random_prompt(rng, rng.randint(*sentences), math_prob=0.9 if want_math else 0.0)
        if bool(formulas) == want_math:
            spans.append(text)
    return spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=1000)
    parser.add_argument("--math-fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    spans = make_spans(args.spans, args.math_fraction, args.seed)
    n_math = sum(contains_math(s) for s in spans)
    n_formulas = sum(f.kind == "math" for s in spans for f in scan_fragments(s))
    chars = sum(len(s) for s in spans) / len(spans)
    # The renderer the online transform builds: its engine is what training actually uses.
    renderer = LomoTransform(LomoConfig(seed=args.seed)).renderer
    dcfg = DistortionConfig()

    counts: dict[str, int] = {}
    pixels = 0
    with timed(children=True) as took:  # rendering may run helper processes
        for i, span in enumerate(spans):
            img, name = distort(renderer.render(span), i, dcfg)
            img = img.convert("RGB")
            counts[name] = counts.get(name, 0) + 1
            pixels += img.width * img.height
    rate, cpu_rate = took.rate(len(spans)), took.cpu_rate(len(spans))

    print(
        f"{len(spans)} spans: {n_math} with math ({n_formulas} formulas), {chars:.0f} chars on average, "
        f"mean image {pixels / len(spans) / 1e3:.0f} kpx"
    )
    print(f"distortions applied: {dict(sorted(counts.items()))}")
    print(f"formulas drawn as text because no engine could typeset them: {renderer.math_failures}")
    print(
        f"online render + distort ({renderer.math_engine}, one span at a time, one torch thread): "
        f"{rate:.1f} spans/s wall ({1e3 / rate:.2f} ms/span), "
        f"{cpu_rate:.1f} spans per CPU second ({1e3 / cpu_rate:.2f} ms CPU/span); {took.describe()}"
    )
    print(
        f"goal >= {GOAL:.0f} spans/s per core: {verdict(rate, GOAL)} on wall time, {verdict(cpu_rate, GOAL)} "
        "on CPU time (CPU: what one free core reaches, unaffected by other jobs)"
    )

    prompts = make_spans(max(1, args.spans // 2), args.math_fraction, args.seed + 1, sentences=(4, 10))
    samples = [{"prompt": prompt, "response": "-"} for prompt in prompts]
    config = LomoConfig(rewrite_ratio=1.0, seed=args.seed)
    transform = LomoTransform(config)
    images = 0
    with timed(children=True) as took:  # rendering may run helper processes
        for i, sample in enumerate(samples):
            out = transform(sample, i)
            images += sum(s["type"] == "image" for s in out.get("segments", []))
    print(
        f"end-to-end online LomoTransform ({transform.renderer.math_engine}; middle position, 4-10 sentence "
        f"prompts): {took.rate(len(prompts)):.1f} samples/s wall, {took.cpu_rate(len(prompts)):.1f} per CPU "
        f"second, {images} images; {took.describe()}"
    )

    engine = resolve_math_engine(config.render_config())  # what write_rendered_shards takes under auto
    if engine == "latex":  # why online auto is mathtext: LaTeX one sample at a time, on a few samples
        few = samples[:24]
        forced = LomoTransform(LomoConfig(rewrite_ratio=1.0, seed=args.seed, math_engine="latex"))
        with timed(children=True) as took:
            for i, sample in enumerate(few):
                forced(sample, i)
        print(
            f"for reference, online LomoTransform with math_engine='latex' ({len(few)} samples, "
            f"{forced.renderer.latex_runs} latex runs): {took.rate(len(few)):.1f} samples/s wall, "
            f"{took.cpu_rate(len(few)):.1f} per CPU second; {took.describe()}"
        )
    with tempfile.TemporaryDirectory(prefix="bench-lomo-") as out_dir:
        with timed(children=True) as took:  # latex and dvipng run as child processes
            paths = write_rendered_shards(samples, out_dir, config, samples_per_shard=len(samples))
        spans = sum(
            s["type"] == "image" for p in paths for r in read_rendered_shard(p) for s in r["segments"]
        )
    rate, cpu_rate = took.rate(spans), took.cpu_rate(spans)
    batching = ", formulas batched per latex run" if engine == "latex" else ""
    print(
        f"offline write_rendered_shards ({engine}{batching}; PNG + tar included): {rate:.1f} spans/s wall, "
        f"{cpu_rate:.1f} spans per CPU second ({spans} spans, {took.rate(len(samples)):.1f} samples/s wall); "
        f"{took.describe()}"
    )
    print(
        f"offline goal >= {GOAL:.0f} spans/s per core: {verdict(rate, GOAL)} on wall time, "
        f"{verdict(cpu_rate, GOAL)} on CPU time"
    )


if __name__ == "__main__":
    main()
