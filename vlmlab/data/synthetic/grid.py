"""Grid: an n x n grid with one distinct object per cell; follow a sequence of unit moves from a start object.

The walk never leaves the grid and never immediately undoes its previous move (a move followed by its reverse
would teach nothing), but it may revisit cells, so any length works on any grid of at least 2 x 2.

Shortcut: such walks often come back to where they started. With the paper's settings (3 x 3, 8 moves) the
answer is the start object in 197/648 = 30.4 % of samples (`return_probability`, averaged over the 9 start
cells: 11/48 from a corner, 13/36 from an edge, 3/8 from the centre), against a chance level of 1/9 =
11.1 %, so "answer the object you start on" beats guessing threefold without any navigation. The
paper's generator (Appendix C) samples "a start cell and a valid sequence of directional moves" and says
nothing about this, so the default keeps it.

`balance_start=True` removes it: a walk that ends on its start cell is kept only with probability
a = min(1, c (1 - p) / (p (1 - c))), where p is the exact probability that a walk of this length from this
start cell ends there (`return_probability`) and c = 1 / n^2 is chance; a rejected walk is redrawn from the
same start cell with the same length. Then P(answer = start | start cell, length) = min(p, c): exactly
chance whenever the walk returns more often than chance, as it does from every cell of the paper's
3 x 3 / 8-move splits. Start cells and lengths keep their distributions; only where the walk lands changes.
A walk of odd length can never end on its start (cells alternate like a chessboard's colours), so on the
OOD split (8-12 moves) the rate ends below chance. The option is off by default and, when off, draws
nothing extra from the sample's RNG: default samples are byte-identical to those without the option.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any

from PIL import Image

from vlmlab.data.synthetic.base import TaskSpec, check_int, check_steps
from vlmlab.data.synthetic.objects import (
    ALL_KINDS,
    LINE_COLOR,
    NUM_OBJECT_KINDS,
    ObjectKind,
    draw_object,
    new_canvas,
    object_record,
    sample_objects,
    steps_phrase,
)
from vlmlab.errors import ConfigError

MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
REVERSE = {"up": "down", "down": "up", "left": "right", "right": "left"}
MAX_GRID = int(NUM_OBJECT_KINDS**0.5)
MAX_STEPS = 99


@dataclass(frozen=True)
class Layout:
    size: int
    kinds: tuple[ObjectKind, ...]  # row-major


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    size = check_int(
        "grid_size",
        params["grid_size"],
        2,
        MAX_GRID,
        f"a 1x1 grid is too small for any path, and a grid holds at most {NUM_OBJECT_KINDS} distinct "
        "colour-shape pairs",
    )
    check_steps(params, 1, MAX_STEPS)
    balance = params.get("balance_start", False)
    if not isinstance(balance, bool):
        raise ConfigError(f"balance_start must be true or false, got {balance!r}.")
    checked = {"grid_size": size, "min_steps": params["min_steps"], "max_steps": params["max_steps"]}
    if balance:  # only when on, so the default settings stay what they always were
        checked["balance_start"] = True
    return checked


def sample_layout(rng: random.Random, params: dict[str, Any]) -> Layout:
    n = params["grid_size"]
    return Layout(n, tuple(sample_objects(rng, n * n)))


def layout_key(layout: Layout) -> str:
    return f"grid|{layout.size}|" + ",".join(k.name for k in layout.kinds)


def _runs(moves: list[str]) -> list[tuple[str, int]]:
    runs: list[tuple[str, int]] = []
    for move in moves:
        if runs and runs[-1][0] == move:
            runs[-1] = (move, runs[-1][1] + 1)
        else:
            runs.append((move, 1))
    return runs


def _allowed(n: int, row: int, col: int, last: str | None) -> list[str]:
    """Moves that stay on the grid and do not undo `last`, in MOVES order (the RNG draws index this list)."""
    return [
        m
        for m, (dr, dc) in MOVES.items()
        if 0 <= row + dr < n and 0 <= col + dc < n and not (last and REVERSE[m] == last)
    ]


def _walk(rng: random.Random, n: int, row: int, col: int, length: int) -> list[str]:
    moves: list[str] = []
    for _ in range(length):
        move = rng.choice(_allowed(n, row, col, moves[-1] if moves else None))  # never empty on >= 2x2
        row, col = row + MOVES[move][0], col + MOVES[move][1]
        moves.append(move)
    return moves


@functools.cache
def return_probability(n: int, row: int, col: int, length: int) -> float:
    """Exact probability that the generator's walk of `length` moves from (row, col) ends on (row, col).

    Dynamic programming over (cell, last move) with each allowed move equally likely, as `_walk` draws.
    """
    states = {(row, col, None): 1.0}
    for _ in range(length):
        after: dict[tuple[int, int, str | None], float] = {}
        for (r, c, last), p in states.items():
            allowed = _allowed(n, r, c, last)
            for move in allowed:
                key = (r + MOVES[move][0], c + MOVES[move][1], move)
                after[key] = after.get(key, 0.0) + p / len(allowed)
        states = after
    return sum(p for (r, c, _), p in states.items() if (r, c) == (row, col))


def _keep_return(n: int, row: int, col: int, length: int) -> float:
    """Acceptance probability of a walk that ends on its start, so that such walks occur at chance 1/n^2."""
    p, chance = return_probability(n, row, col, length), 1.0 / (n * n)
    return 1.0 if p <= chance else chance * (1.0 - p) / (p * (1.0 - chance))


def make_example(rng: random.Random, layout: Layout, params: dict[str, Any]) -> dict[str, Any]:
    n = layout.size
    names = [k.name for k in layout.kinds]
    start = (rng.randrange(n), rng.randrange(n))
    length = rng.randint(params["min_steps"], params["max_steps"])
    moves = _walk(rng, n, *start, length)
    if params.get("balance_start"):
        keep = _keep_return(n, *start, length)
        while _end(start, moves) == start and keep < 1.0 and rng.random() >= keep:
            moves = _walk(rng, n, *start, length)
    row, col = start
    trace = []
    for move in moves:
        row, col = row + MOVES[move][0], col + MOVES[move][1]
        trace.append(f"Move {move} one step to row {row + 1}, column {col + 1}: the {names[row * n + col]}.")

    start_name = names[start[0] * n + start[1]]
    answer = names[row * n + col]
    program = ", then ".join(f"{m} {steps_phrase(k)}" for m, k in _runs(moves))
    query = f"Start at the {start_name}, move {program}. Which object do you land on?"
    rows_text = "\n".join(f"Row {r + 1}: {', '.join(names[r * n : (r + 1) * n])}." for r in range(n))
    question = (
        f"Consider a {n}x{n} grid where every cell holds one object. The objects in row-major order "
        f"(left to right within a row, rows from top to bottom) are:\n{rows_text}\n{query}"
    )
    question_direct = (
        f"Consider the {n}x{n} grid shown in the image. It contains the following objects: "
        f"{', '.join(rng.sample(names, len(names)))}.\n{query}"
    )
    solution = "\n".join(
        [
            f"Start at the {start_name} in row {start[0] + 1}, column {start[1] + 1}.",
            *trace,
            f"We land on the {answer}.",
        ]
    )
    meta = {
        "grid_size": n,
        "objects": [
            object_record(k, ((i % n + 0.5) / n, (i // n + 0.5) / n), row=i // n, col=i % n)
            for i, k in enumerate(layout.kinds)
        ],
        "start": start_name,
        "moves": moves,
        "path_length": len(moves),
    }
    return {
        "question": question,
        "question_direct": question_direct,
        "solution": solution,
        "solution_direct": solution,  # the paper uses the same step-by-step trace for both modalities
        "answer": answer,
        "options": sorted(names),
        "meta": meta,
    }


def _end(start: tuple[int, int], moves: list[str]) -> tuple[int, int]:
    row, col = start
    for move in moves:
        row, col = row + MOVES[move][0], col + MOVES[move][1]
    return row, col


def render(meta: dict[str, Any], size: int) -> Image.Image:
    n = meta["grid_size"]
    image, draw = new_canvas(size)
    width = max(1, round(size / 256))
    for i in range(n + 1):
        p = min(round(i * size / n), size - width)
        draw.rectangle([p, 0, p + width - 1, size - 1], fill=LINE_COLOR)
        draw.rectangle([0, p, size - 1, p + width - 1], fill=LINE_COLOR)
    radius = max(1.5, 0.32 * size / n)
    for obj in meta["objects"]:
        x, y = obj["center"]
        draw_object(draw, _KIND[obj["name"]], x * size, y * size, radius)
    return image


_KIND = {k.name: k for k in ALL_KINDS}


def caption(meta: dict[str, Any]) -> str:
    n = meta["grid_size"]
    names = [o["name"] for o in sorted(meta["objects"], key=lambda o: (o["row"], o["col"]))]
    rows = "; ".join(f"row {r + 1}: {', '.join(names[r * n : (r + 1) * n])}" for r in range(n))
    return f"{n}x{n} grid, {rows}"


SPEC = TaskSpec(
    name="grid",
    title="Grid",
    split_defaults={
        "train": {"grid_size": 3, "min_steps": 8, "max_steps": 8, "balance_start": False},
        "test": {"grid_size": 3, "min_steps": 8, "max_steps": 8, "balance_start": False},
        # "Up to 12 moves" on a 4x4 grid; never shorter than in training so OOD is never easier.
        "ood": {"grid_size": 4, "min_steps": 8, "max_steps": 12, "balance_start": False},
    },
    check_params=check_params,
    sample_layout=sample_layout,
    layout_key=layout_key,
    make_example=make_example,
    render=render,
    caption=caption,
)
