"""GenEval-style alignment check for the procedural shapes set (no torch).

A `SceneSpec` is what a caption promises (colours, shapes, counts, one relation); an image is
scored against it by plain image analysis, as GenEval (Ghosh et al., 2023) scores generated
images against a prompt's objects, counts, colours and positions with a detector:

1. each pixel takes the nearest palette colour (white background and far-off pixels drop out);
2. per colour, connected components above a minimum area are the objects;
3. each object's shape is the best-IoU template (circle, square, triangle) drawn in its box;
4. centroids of the two objects decide left-of / right-of / above / below.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ecdit_scale.errors import ConfigError

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
# Image analysis
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """One connected component of one palette colour."""

    colour: str
    shape: str
    area: int
    centroid_yx: tuple[float, float]


@dataclass(frozen=True)
class AlignmentResult:
    """Per-criterion pass/fail; `score` is the fraction of applicable criteria passed."""

    colour_ok: bool  # every promised colour is present
    count_ok: bool  # each colour has exactly its promised number of objects
    shape_ok: bool  # every object of a promised colour has the promised shape
    relation_ok: bool | None  # None when the spec has no relation
    score: float


def colour_labels(image_HW3: np.ndarray, max_distance: float = 80.0) -> np.ndarray:
    """(H, W) int: index into PALETTE of each pixel's nearest colour, -1 for background/none."""
    refs_K3 = np.array([BACKGROUND, *PALETTE.values()], dtype=np.float32)
    pix_HW3 = np.asarray(image_HW3, dtype=np.float32)[..., :3]
    dist_HWK = np.linalg.norm(pix_HW3[..., None, :] - refs_K3, axis=-1)
    nearest_HW = dist_HWK.argmin(-1)
    ok_HW = (nearest_HW > 0) & (dist_HWK.min(-1) <= max_distance)
    return np.where(ok_HW, nearest_HW - 1, -1)


def _template(shape: str, h: int, w: int) -> np.ndarray:
    im = Image.new("1", (w, h), 0)
    draw_shape(ImageDraw.Draw(im), shape, (0, 0, w - 1, h - 1), 1)
    return np.asarray(im, dtype=bool)


def classify_shape(mask_HW: np.ndarray) -> str:
    """The SHAPES template (drawn in the mask's bounding box) with the highest IoU."""
    ys, xs = np.nonzero(mask_HW)
    crop = mask_HW[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]

    def iou(shape: str) -> float:
        t = _template(shape, *crop.shape)
        return (t & crop).sum() / max((t | crop).sum(), 1)

    return max(SHAPES, key=iou)


def find_blobs(image_HW3: np.ndarray, *, min_area_frac: float = 0.01) -> list[Blob]:
    """Connected components per palette colour with area >= max(3, min_area_frac * H * W)."""
    labels_HW = colour_labels(image_HW3)
    min_area = max(3, int(min_area_frac * labels_HW.size))
    blobs = []
    for k, colour in enumerate(PALETTE):
        comp_HW, n = ndimage.label(labels_HW == k)
        for i in range(1, n + 1):
            mask_HW = comp_HW == i
            area = int(mask_HW.sum())
            if area >= min_area:
                cy, cx = ndimage.center_of_mass(mask_HW)
                blobs.append(Blob(colour, classify_shape(mask_HW), area, (float(cy), float(cx))))
    return blobs


def _relation_holds(a: Blob, b: Blob, relation: Relation) -> bool:
    """Centroid offset along the dominant axis (image y grows downwards)."""
    dy, dx = b.centroid_yx[0] - a.centroid_yx[0], b.centroid_yx[1] - a.centroid_yx[1]
    horizontal = abs(dx) >= abs(dy)
    return {
        Relation.LEFT_OF: horizontal and dx > 0,
        Relation.RIGHT_OF: horizontal and dx < 0,
        Relation.ABOVE: not horizontal and dy > 0,
        Relation.BELOW: not horizontal and dy < 0,
    }[relation]


def alignment_score(image_HW3: np.ndarray, spec: SceneSpec) -> AlignmentResult:
    """Score one uint8 (H, W, 3) image against its spec."""
    blobs = find_blobs(image_HW3)
    by_colour = {g.colour: [b for b in blobs if b.colour == g.colour] for g in spec.objects}
    colour_ok = all(by_colour[g.colour] for g in spec.objects)
    count_ok = all(len(by_colour[g.colour]) == g.count for g in spec.objects)
    shape_ok = colour_ok and all(
        b.shape == g.shape for g in spec.objects for b in by_colour[g.colour]
    )
    relation_ok = None
    if spec.relation is not None:
        a, b = (by_colour[g.colour] for g in spec.objects)
        biggest = lambda bs: max(bs, key=lambda blob: blob.area)  # noqa: E731
        relation_ok = bool(a and b and _relation_holds(biggest(a), biggest(b), spec.relation))
    checks = [colour_ok, count_ok, shape_ok] + ([relation_ok] if relation_ok is not None else [])
    return AlignmentResult(colour_ok, count_ok, shape_ok, relation_ok, sum(checks) / len(checks))


def geneval_score(images, specs) -> float:
    """Mean overall score of uint8 (N, H, W, 3) images (or a list of (H, W, 3)) against specs."""
    images = list(images)
    if len(images) != len(specs) or not images:
        raise SpecError(f"{len(images)} images for {len(specs)} specs: need equal, non-zero counts")
    return float(np.mean([alignment_score(im, s).score for im, s in zip(images, specs)]))
