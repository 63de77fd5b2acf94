"""GenEval-style alignment check for the procedural shapes set (no torch).

An image is scored against the ``SceneSpec`` its caption promised (``datasets.shapes``) by
plain image analysis, as GenEval (Ghosh et al., 2023) scores generated images against a
prompt's objects, counts, colours and positions with a detector:

1. each pixel takes the nearest palette colour (white background and far-off pixels drop out);
2. per colour, connected components above a minimum area are the objects;
3. each object's shape is the best-IoU template (circle, square, triangle) drawn in its box;
4. centroids of the two objects decide left-of / right-of / above / below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..datasets.shapes import (
    BACKGROUND,
    PALETTE,
    SHAPES,
    Relation,
    SceneSpec,
    SpecError,
    draw_shape,
)

# Shape suffixes: a tensor named mask_HW has dims (H, W).
#   H, W pixel rows and columns   K reference colours   3 RGB


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
    return float(np.mean([alignment_score(im, s).score
                          for im, s in zip(images, specs, strict=True)]))
