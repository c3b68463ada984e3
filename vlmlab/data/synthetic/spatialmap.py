"""SpatialMap: coloured shapes on an open canvas; where is one relative to another (a diagonal direction)?

Objects get distinct ranks along two independent orderings (columns west->east, rows north->south), so no
two objects share a row or a column and every pair has exactly one diagonal relation in the image. The text
version gives only a random subset of pairwise relations (a spanning tree plus a few extra edges), as in the
paper: it does not pin down the layout, but the queried relation is always derivable from it by chaining,
and the query pair is never stated directly (except with two objects, where there is nothing to chain).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from PIL import Image

from vlmlab.data.synthetic.base import TaskSpec, check_int_range
from vlmlab.data.synthetic.objects import (
    ALL_KINDS,
    NUM_OBJECT_KINDS,
    ObjectKind,
    draw_object,
    new_canvas,
    object_record,
    sample_objects,
)
from vlmlab.errors import ConfigError

RELATIONS = ("Northeast", "Northwest", "Southeast", "Southwest")
OPPOSITE = {
    "Northeast": "Southwest",
    "Southwest": "Northeast",
    "Northwest": "Southeast",
    "Southeast": "Northwest",
}
MARGIN = 0.06  # fraction of the canvas kept empty on each side
JITTER = 0.15  # fraction of a slot an object may move off its slot centre; < 0.5 keeps the rank order


@dataclass(frozen=True)
class Layout:
    kinds: tuple[ObjectKind, ...]
    cols: tuple[int, ...]  # 0 = westmost
    rows: tuple[int, ...]  # 0 = northmost
    centers: tuple[tuple[float, float], ...]  # normalised (x, y), y grows southwards as in images


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    lo, hi = check_int_range(
        "num_objects",
        params["num_objects"],
        2,
        NUM_OBJECT_KINDS,
        f"SpatialMap needs two objects for a query and at most {NUM_OBJECT_KINDS} distinct colour-shape pairs",
    )
    checked: dict[str, Any] = {"num_objects": [lo, hi] if lo != hi else lo}
    scale = params.get("object_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.5 <= scale <= 4:
        raise ConfigError(
            f"object_scale {scale!r} is invalid. Valid choices: a number from 0.5 to 4 (1 = paper size)."
        )
    if scale != 1:  # left out at the paper's size, so default samples stay byte-identical
        checked["object_scale"] = float(scale)
    return checked


def _count(value: Any, rng: random.Random) -> int:
    return rng.randint(value[0], value[1]) if isinstance(value, list) else value


def sample_layout(rng: random.Random, params: dict[str, Any]) -> Layout:
    n = _count(params["num_objects"], rng)
    kinds = tuple(sample_objects(rng, n))
    cols = tuple(rng.sample(range(n), n))
    rows = tuple(rng.sample(range(n), n))
    slot = (1.0 - 2 * MARGIN) / n
    centers = tuple(
        (
            MARGIN + (c + 0.5 + rng.uniform(-JITTER, JITTER)) * slot,
            MARGIN + (r + 0.5 + rng.uniform(-JITTER, JITTER)) * slot,
        )
        for c, r in zip(cols, rows)
    )
    return Layout(kinds, cols, rows, centers)


def layout_key(layout: Layout) -> str:
    # Ranks, not jittered centres: two canvases with the same orderings are the same layout.
    cells = sorted(f"{k.name}@{c},{r}" for k, c, r in zip(layout.kinds, layout.cols, layout.rows))
    return "spatialmap|" + ";".join(cells)


def relation(layout: Layout, a: int, b: int) -> str:
    """The relation of object `a` to object `b`, read off the layout."""
    vertical = "North" if layout.rows[a] < layout.rows[b] else "South"
    horizontal = "east" if layout.cols[a] > layout.cols[b] else "west"
    return vertical + horizontal


def _random_edges(rng: random.Random, n: int) -> list[tuple[int, int]]:
    """A random spanning tree (so the statements connect every object) plus up to n // 2 extra edges."""
    order = rng.sample(range(n), n)
    edges = {frozenset((order[i], order[rng.randrange(i)])) for i in range(1, n)}
    all_pairs = [frozenset((a, b)) for a in range(n) for b in range(a + 1, n)]
    spare = [p for p in all_pairs if p not in edges]
    edges.update(rng.sample(spare, min(len(spare), rng.randint(0, n // 2))))
    return [tuple(sorted(e)) for e in sorted(edges, key=sorted)]


def _path(graph: list[list[tuple[int, int]]], src: int, dst: int) -> list[tuple[int, int, int]] | None:
    """Shortest chain src -> dst as (from, to, statement index) hops, or None if the chain does not exist."""
    previous: dict[int, tuple[int, int]] = {src: (-1, -1)}
    queue = deque([src])
    while queue:
        node = queue.popleft()
        if node == dst:
            hops = []
            while node != src:
                before, statement = previous[node]
                hops.append((before, node, statement))
                node = before
            return hops[::-1]
        for nxt, statement in graph[node]:
            if nxt not in previous:
                previous[nxt] = (node, statement)
                queue.append(nxt)
    return None


def make_example(rng: random.Random, layout: Layout, params: dict[str, Any]) -> dict[str, Any] | None:
    n = len(layout.kinds)
    names = [k.name for k in layout.kinds]
    target = rng.choice(RELATIONS)  # chosen first so answers stay balanced across the four options

    statements = []  # (subject, reference, relation)
    for a, b in _random_edges(rng, n):
        subject, reference = (a, b) if rng.random() < 0.5 else (b, a)
        statements.append((subject, reference, relation(layout, subject, reference)))
    rng.shuffle(statements)

    # One directed graph per axis: north_of[a] holds (b, statement) for "a is north of b".
    north_of: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    east_of: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for i, (s, r, rel) in enumerate(statements):
        hi, lo = (s, r) if rel.startswith("North") else (r, s)
        north_of[hi].append((lo, i))
        ea, we = (s, r) if rel.endswith("east") else (r, s)
        east_of[ea].append((we, i))

    def derivable(a: int, b: int) -> bool:
        vertical = _path(north_of, a, b) or _path(north_of, b, a)
        horizontal = _path(east_of, a, b) or _path(east_of, b, a)
        return vertical is not None and horizontal is not None

    stated = {frozenset((s, r)) for s, r, _ in statements}
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    chained = [p for p in pairs if frozenset(p) not in stated]
    pool = chained if n > 2 else pairs
    candidates = []
    for a, b in pool:
        rel = relation(layout, a, b)
        if rel in (target, OPPOSITE[target]) and derivable(a, b):
            candidates.append((a, b) if rel == target else (b, a))
    if not candidates:
        return None
    q, r = rng.choice(candidates)
    answer = relation(layout, q, r)

    sentences = [f"The {names[s]} is to the {rel} of the {names[ref]}." for s, ref, rel in statements]
    query = f"Where is the {names[q]} relative to the {names[r]}? Possible options: {', '.join(RELATIONS)}."
    listed = rng.sample(names, n)
    question = (
        f"Consider a map with {n} objects. Their relative positions are described by the following "
        "statements.\n" + "\n".join(sentences) + "\n" + query
    )
    question_direct = (
        f"Consider the map shown in the image. It contains the following {n} objects: "
        f"{', '.join(listed)}.\n{query}"
    )

    vertical = _path(north_of, q, r)
    north = vertical is not None
    vertical = vertical if north else _path(north_of, r, q)
    horizontal = _path(east_of, q, r)
    east = horizontal is not None
    horizontal = horizontal if east else _path(east_of, r, q)
    assert vertical is not None and horizontal is not None  # guaranteed by `derivable`

    def explain(hops: list[tuple[int, int, int]], word: str) -> str:
        parts = []
        for a, b, i in hops:
            s, ref, rel = statements[i]
            parts.append(
                f"the {names[s]} is to the {rel} of the {names[ref]}, so the {names[a]} is {word} of the {names[b]}"
            )
        return "; ".join(parts)

    ns, ew = ("north" if north else "south"), ("east" if east else "west")
    solution = (
        f"We need the vertical and the horizontal position of the {names[q]} relative to the {names[r]}.\n"
        f"Vertical: {explain(vertical, 'north')}. So the {names[q]} is {ns} of the {names[r]}.\n"
        f"Horizontal: {explain(horizontal, 'east')}. So the {names[q]} is {ew} of the {names[r]}.\n"
        f"Therefore, the {names[q]} is to the {answer} of the {names[r]}."
    )
    above, side = ("above" if north else "below"), ("right" if east else "left")
    solution_direct = (
        f"In the image, the {names[q]} is {above} and to the {side} of the {names[r]}. "
        f"So the {names[q]} is to the {answer} of the {names[r]}."
    )
    used = {i for _, _, i in vertical} | {i for _, _, i in horizontal}
    meta = {
        "num_objects": n,
        "objects": [
            object_record(k, center, col=c, row=rw)
            for k, c, rw, center in zip(layout.kinds, layout.cols, layout.rows, layout.centers)
        ],
        "statements": [
            {"subject": names[s], "relation": rel, "reference": names[ref]} for s, ref, rel in statements
        ],
        "query": {"object": names[q], "reference": names[r]},
        "path_length": len(used),
    }
    if "object_scale" in params:
        meta["object_scale"] = params["object_scale"]
    return {
        "question": question,
        "question_direct": question_direct,
        "solution": solution,
        "solution_direct": solution_direct,
        "answer": answer,
        "options": list(RELATIONS),
        "meta": meta,
    }


def object_radius(num_objects: int, scale: float = 1.0) -> float:
    """Normalised radius: the paper-like size (0.08) times `scale`, capped so that diagonal neighbours
    (>= 0.7 slot apart per axis) never touch."""
    return min(0.34 * (1.0 - 2 * MARGIN) / num_objects, 0.08 * scale)


def render(meta: dict[str, Any], size: int) -> Image.Image:
    image, draw = new_canvas(size)
    radius = max(1.5, object_radius(len(meta["objects"]), meta.get("object_scale", 1.0)) * size)
    for obj in meta["objects"]:
        x, y = obj["center"]
        draw_object(draw, _KIND[obj["name"]], x * size, y * size, radius)
    return image


_KIND = {k.name: k for k in ALL_KINDS}


def _zone(x: float, y: float) -> str:
    vertical = "top" if y < 1 / 3 else ("middle" if y < 2 / 3 else "bottom")
    horizontal = "left" if x < 1 / 3 else ("center" if x < 2 / 3 else "right")
    return "center" if (vertical, horizontal) == ("middle", "center") else f"{vertical} {horizontal}"


def caption(meta: dict[str, Any]) -> str:
    ordered = sorted(meta["objects"], key=lambda o: (o["center"][1], o["center"][0]))
    return "; ".join(f"{o['name']} at {_zone(*o['center'])}" for o in ordered)


SPEC = TaskSpec(
    name="spatialmap",
    title="SpatialMap",
    split_defaults={
        "train": {"num_objects": 7, "object_scale": 1.0},
        "test": {"num_objects": 7, "object_scale": 1.0},
        "ood": {"num_objects": 8, "object_scale": 1.0},
    },
    check_params=check_params,
    sample_layout=sample_layout,
    layout_key=layout_key,
    make_example=make_example,
    render=render,
    caption=caption,
)
