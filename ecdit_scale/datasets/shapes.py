"""Shapes: procedurally generated GenEval-style scenes (Ghosh et al., 2023).

A ``SceneSpec`` is what a caption promises: groups of coloured shapes with counts, or two
objects in a relation ("a blue square to the left of a yellow triangle"). ``make_shapes`` draws
scenes that keep that promise; ``evaluation.alignment`` checks whether an image does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..errors import ConfigError

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 215, 30),
    "green": (40, 170, 60),
    "blue": (40, 90, 220),
    "purple": (150, 60, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUND = (255, 255, 255)
MAX_OBJECTS = 4
_COUNT_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}


class Relation(str, enum.Enum):
    """Where objects[0] lies relative to objects[1]."""

    LEFT_OF = "left of"
    RIGHT_OF = "right of"
    ABOVE = "above"
    BELOW = "below"

    @property
    def phrase(self) -> str:
        """'to the left of', 'to the right of', 'above', 'below'."""
        return f"to the {self.value}" if self.value.endswith(" of") else self.value


class SpecError(ConfigError):
    """A scene spec that cannot be drawn or scored; one line naming the bad value."""


@dataclass(frozen=True)
class ShapeGroup:
    """`count` objects of one colour and shape."""

    colour: str
    shape: str
    count: int = 1

    def __post_init__(self) -> None:
        if self.colour not in PALETTE:
            valid = ", ".join(PALETTE)
            raise SpecError(f"colour {self.colour!r} is not valid; choose one of {valid}")
        if self.shape not in SHAPES:
            raise SpecError(f"shape {self.shape!r} is not valid; choose one of {', '.join(SHAPES)}")
        if not 1 <= self.count <= MAX_OBJECTS:
            raise SpecError(f"count = {self.count!r}: must be in 1..{MAX_OBJECTS}")

    @property
    def phrase(self) -> str:
        """'a red circle', 'an orange square', 'three blue triangles'."""
        if self.count == 1:
            article = "an" if self.colour[0] in "aeiou" else "a"
            return f"{article} {self.colour} {self.shape}"
        return f"{_COUNT_WORDS[self.count]} {self.colour} {self.shape}s"


@dataclass(frozen=True)
class SceneSpec:
    """What a caption promises: groups of distinct colours, and optionally one relation."""

    objects: tuple[ShapeGroup, ...]
    relation: Relation | None = None
    task: str = ""  # single_object | counting | two_object | position (for per-task reports)

    def __post_init__(self) -> None:
        colours = [g.colour for g in self.objects]
        if not colours or len(set(colours)) != len(colours):
            raise SpecError(f"colours {colours}: need 1+ groups, each of a distinct colour")
        if sum(g.count for g in self.objects) > MAX_OBJECTS:
            raise SpecError(f"{sum(g.count for g in self.objects)} objects: at most {MAX_OBJECTS}")
        if self.relation is not None and [g.count for g in self.objects] != [1, 1]:
            raise SpecError(f"relation {self.relation.value!r} needs exactly two single objects")

    @property
    def caption(self) -> str:
        a = self.objects[0].phrase
        if self.relation is not None:
            return f"{a} {self.relation.phrase} {self.objects[1].phrase}"
        return " and ".join(g.phrase for g in self.objects)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    """Draw `shape` filling the inclusive pixel box (x0, y0, x1, y1); triangles point up."""
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    else:
        raise SpecError(f"shape {shape!r} is not valid; choose one of {', '.join(SHAPES)}")


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------

TASKS = ("single_object", "counting", "two_object", "position")
_RELATION_CELLS = {  # (row, col) of objects[0] and objects[1] in a 2x2 grid, given row/col r
    Relation.LEFT_OF: lambda r: ((r, 0), (r, 1)),
    Relation.RIGHT_OF: lambda r: ((r, 1), (r, 0)),
    Relation.ABOVE: lambda r: ((0, r), (1, r)),
    Relation.BELOW: lambda r: ((1, r), (0, r)),
}


def sample_scene(rng: np.random.Generator) -> SceneSpec:
    """One spec: a task drawn uniformly, then colours (distinct per group), shapes, counts."""
    task = TASKS[rng.integers(len(TASKS))]
    colours = [str(c) for c in rng.choice(list(PALETTE), size=2, replace=False)]
    shapes = [SHAPES[i] for i in rng.integers(len(SHAPES), size=2)]
    if task == "single_object":
        return SceneSpec((ShapeGroup(colours[0], shapes[0]),), task=task)
    if task == "counting":
        return SceneSpec((ShapeGroup(colours[0], shapes[0], int(rng.integers(2, 5))),), task=task)
    if task == "two_object":
        c0 = int(rng.integers(1, 4))
        counts = (c0, int(rng.integers(1, 5 - c0)))
        groups = tuple(ShapeGroup(c, s, n) for c, s, n in zip(colours, shapes, counts, strict=True))
        return SceneSpec(groups, task=task)
    relation = list(Relation)[rng.integers(len(Relation))]
    return SceneSpec(tuple(ShapeGroup(c, s) for c, s in zip(colours, shapes, strict=True)),
                     relation, task)


def _layout_cells(spec: SceneSpec, rng: np.random.Generator) -> list[tuple[int, int]]:
    """One 2x2 grid cell per object; relation scenes share a row (or column)."""
    if spec.relation is not None:
        return list(_RELATION_CELLS[spec.relation](int(rng.integers(2))))
    n = sum(g.count for g in spec.objects)
    return [divmod(int(i), 2) for i in rng.permutation(4)[:n]]


def render_scene(spec: SceneSpec, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """(S, S, 3) uint8: each object spans 60-85% of its grid cell, jittered, on white."""
    im = Image.new("RGB", (image_size, image_size), "white")
    draw = ImageDraw.Draw(im)
    cell, margin = image_size / 2, max(1, image_size // 32)
    objects = [g for g in spec.objects for _ in range(g.count)]
    for g, (row, col) in zip(objects, _layout_cells(spec, rng), strict=True):
        lo_x, lo_y = int(col * cell) + margin, int(row * cell) + margin
        room = int(cell) - 2 * margin
        size = min(room, max(3, int(cell * rng.uniform(0.6, 0.85))))
        x0 = lo_x + int(rng.integers(room - size + 1))
        y0 = lo_y + int(rng.integers(room - size + 1))
        draw_shape(draw, g.shape, (x0, y0, x0 + size - 1, y0 + size - 1), PALETTE[g.colour])
    return np.asarray(im)


def make_shapes(n: int, image_size: int, seed: int) -> tuple[np.ndarray, list[SceneSpec]]:
    """n scenes; sample i depends only on (seed, i), so a larger n extends a smaller one."""
    images, specs = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        spec = sample_scene(rng)
        images.append(render_scene(spec, image_size, rng))
        specs.append(spec)
    return np.stack(images), specs


def all_scene_specs() -> list[SceneSpec]:
    """Every spec ``sample_scene`` can draw (2,772): the stream's caption table is encoded once
    for all of them, whatever a run draws."""
    specs: list[SceneSpec] = []
    colours = list(PALETTE)
    pairs = [(a, b) for a in colours for b in colours if a != b]
    for c in colours:
        for s in SHAPES:
            specs.append(SceneSpec((ShapeGroup(c, s),), task="single_object"))
            specs += [SceneSpec((ShapeGroup(c, s, n),), task="counting") for n in range(2, 5)]
    for a, b in pairs:
        for sa in SHAPES:
            for sb in SHAPES:
                specs += [SceneSpec((ShapeGroup(a, sa, n0), ShapeGroup(b, sb, n1)),
                                    task="two_object")
                          for n0 in range(1, 4) for n1 in range(1, 5 - n0)]
                specs += [SceneSpec((ShapeGroup(a, sa), ShapeGroup(b, sb)), rel, "position")
                          for rel in Relation]
    return specs
