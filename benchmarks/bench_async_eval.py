"""Training step time with and without asynchronous evaluation of its checkpoints (eval.every_n_checkpoints).

The same tiny run is trained twice by `vlmlab train`: once alone, once holding every checkpoint for an
evaluator (`vlmlab eval --checkpoints --follow`, a separate process, as `vlmlab sweep` starts it) that scores
each one on the transfer protocol while the training goes on. The step time is read from outside the training,
from the arrival times of its per-step progress lines (median of the gaps, so the checkpoint writes both runs
do at the same steps do not count). The evaluator's only work on the training path is a hard link per held
checkpoint; its cost is timed on its own too.

Goal: the median step time with the evaluator within 10 % of the time without it (the mean of a run before
and one after, whose difference shows the machine's own noise), and the training process's own CPU seconds
per step likewise. A control run puts a busy loop where the evaluator runs: what any process there costs. The evaluator runs where
`eval.device` puts it (here: the CPU); on a machine with spare cores (or the evaluator on another GPU / node)
it takes nothing from the training. On a machine whose cores the training already uses, give the evaluator
a core of its own (the default here: the training on core 0, the evaluator on core 1, one thread each), as a
real deployment gives it its own device.

    python benchmarks/bench_async_eval.py [--steps 300] [--checkpoint-every 25] [--samples 4] [--nice 0] [--no-pin]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import timed, verdict

GOAL = 1.10  # with / without, median step time

CONFIG = """
model: {{backbone: qwen3-tiny, tokenizer: clip-tiny, random_tokenizer: true, fusion: joint_decoder}}
data:
  max_length: 96
  micro_batch_size: 4
  train: [{{kind: synthetic, task: spatialmap, mode: vqa, difficulty: {{num_objects: 2}}}}]
  val: []
train:
  freeze: unfreeze-all
  max_steps: {steps}
  global_batch_size: 4
  checkpoint_every_n_steps: {every}
  log_every_n_steps: 1
  select_best: false
  output_dir: {out}
eval: {{every_n_checkpoints: {hold}, transfer_samples: {samples}, tasks: [spatialmap]}}
"""


def pinned(cpus: set[int] | None):
    """A preexec_fn that keeps a child process on `cpus` (None: anywhere)."""
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def step_times(
    command: list[str], env: dict[str, str], cpus: set[int] | None
) -> tuple[list[float], float, float]:
    """Gaps between consecutive `step k/N` lines of a training process, its wall and its CPU seconds."""
    started = time.perf_counter()
    arrivals = []
    run = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=pinned(cpus)
    )
    for line in run.stdout:
        if re.search(r"step \d+/\d+  loss", line):  # the progress bar shares the stream: search
            arrivals.append(time.perf_counter())
    # the training process's own CPU seconds (not the evaluator's, another child of this process)
    _, status, usage = os.wait4(run.pid, 0)
    run.returncode = os.waitstatus_to_exitcode(status)
    if run.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit code {run.returncode}")
    cpu = usage.ru_utime + usage.ru_stime
    return [b - a for a, b in zip(arrivals, arrivals[1:])], time.perf_counter() - started, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--checkpoint-every", type=int, default=25)
    parser.add_argument("--samples", type=int, default=4, help="transfer samples per cell per checkpoint")
    parser.add_argument("--nice", type=int, default=0, help="the evaluator's niceness (19: idle priority)")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let both processes use every core (default: the training on core 0, the evaluator on core 1, "
        "as an evaluator on its own device)",
    )
    args = parser.parse_args()
    many = len(os.sched_getaffinity(0)) >= 2 and not args.no_pin
    train_cpus, eval_cpus = ({0}, {1}) if many else (None, None)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    print(f"training on cores {train_cpus or 'any'}, evaluator on {eval_cpus or 'any'} (nice {args.nice})")
    python = sys.executable
    medians: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}  # the training process's CPU seconds per step
    with tempfile.TemporaryDirectory() as tmp:
        # without, with, without again: the two runs without evaluation show the machine's own noise
        # and a control: no evaluation, a busy loop where the evaluator would run (what any process there costs)
        variants = [("without", 0), ("with", 1), ("without (again)", 0), ("busy-loop control", 0)]
        for variant, hold in variants:
            out = Path(tmp) / variant
            config = Path(tmp) / f"{variant}.yaml"
            samples = args.samples if hold else 0
            config.write_text(
                CONFIG.format(
                    steps=args.steps, every=args.checkpoint_every, out=out, hold=hold, samples=samples
                )
            )
            evaluator = None
            if hold:
                out.mkdir(parents=True)
                evaluator = subprocess.Popen(
                    [
                        "nice",
                        "-n",
                        str(args.nice),
                        python,
                        "-m",
                        "vlmlab.cli",
                        "eval",
                        "--checkpoints",
                        "--follow",
                    ]
                    + [str(out)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                    preexec_fn=pinned(eval_cpus),
                )
            busy = None
            if variant.startswith("busy"):
                busy = subprocess.Popen([python, "-c", "while True: pass"], preexec_fn=pinned(eval_cpus))
            command = [python, "-m", "vlmlab.cli", "train", str(config)]
            gaps, wall, cpu = step_times(command, env, train_cpus)
            if busy is not None:
                busy.kill()
                busy.wait()
            evaluated_during = len(list((out / "eval" / "checkpoints").glob("step*.json")))
            if evaluator is not None:
                with timed(children=True) as waited:
                    evaluator.wait(timeout=1800)
                done = len(list((out / "eval" / "checkpoints").glob("step*.json")))
                print(
                    f"evaluator: {done} checkpoints scored ({evaluated_during} while the training ran), "
                    f"{waited.wall:.1f} s more after it ended"
                )
            medians.setdefault(variant.split()[0], []).append(statistics.median(gaps))
            cpus.setdefault(variant.split()[0], []).append(cpu / args.steps)
            print(
                f"{variant:>17}{'' if variant.startswith('busy') else ' asynchronous evaluation'}: median step {1000 * statistics.median(gaps):.1f} ms "
                f"(p90 {1000 * statistics.quantiles(gaps, n=10)[-1]:.1f} ms, {len(gaps)} steps); "
                f"the training process: {wall:.1f} s wall, {cpu:.1f} s CPU ({1000 * cpu / args.steps:.1f} ms a step)"
            )
        # the training path's own part: linking a checkpoint-sized file under a second name
        source = Path(tmp) / "held.bin"
        source.write_bytes(os.urandom(64 << 20))
        with timed() as linking:
            for index in range(100):
                os.link(source, Path(tmp) / f"link{index}")
        print(
            f"holding a checkpoint for the evaluator (hard link, 64 MiB file): {1e6 * linking.wall / 100:.0f} us"
        )
    ratio = medians["with"][0] / statistics.mean(medians["without"])
    noise = max(medians["without"]) / min(medians["without"])
    print(
        f"median step time with / without (mean of both): {ratio:.3f} (goal <= {GOAL:.2f}: "
        f"{verdict(ratio, GOAL, higher_is_better=False)}); the two runs without differ by {noise:.3f}x"
    )
    control = medians["busy-loop"][0] / statistics.mean(medians["without"])
    print(f"median step time with a busy loop where the evaluator runs / without: {control:.3f}")
    work = cpus["with"][0] / statistics.mean(cpus["without"])
    print(
        f"the training process's own CPU per step with / without: {work:.3f} (goal <= {GOAL:.2f}: "
        f"{verdict(work, GOAL, higher_is_better=False)}): what is left of a wall difference is the machine's "
        "cores shared with the evaluator and other jobs"
    )


if __name__ == "__main__":
    main()
