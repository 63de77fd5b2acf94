"""``shapes-stream``: GenEval-style shape scenes drawn fresh for every training position, so a
run never sees an image twice (scaling runs must not be able to win by memorising a small set).

Position p of a run (global batch ``step`` holds positions step x B .. step x B + B - 1; rank r
takes its contiguous share, as ``batches.batch_indices`` does) is a pure function of
(seed, p): its scene spec is draw p mod BLOCK of a generator seeded by (seed, p // BLOCK), and
its layout comes from a generator seeded by (seed, p). A resumed run therefore reads exactly
the batches an uninterrupted one would.

The held-out set is the first ``n`` positions of a separate stream with a fixed seed, the same
for every run and seed, so held-out losses of different runs score the same images. No
training image equals a held-out one: a training layout that renders a held-out image
exactly (possible at 32 x 32 pixels) is drawn again.

Text: captions come from a finite space (``shapes.all_scene_specs``, 2,772 captions). A run
long enough to meet most of them encodes the whole table once (cached); a short one encodes
only the captions it and the held-out set use.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np

from ..config import ModelConfig
from .shapes import SceneSpec, all_scene_specs, render_scene, sample_scene
from .text_encoder import TEXT_DIM, TextEncoder, fit_text_dim

# Shape suffixes: a tensor named text_CTD has dims (C, T, D).
#   C distinct captions   T text tokens per caption   D embedding width

BLOCK = 1024  # positions whose specs come from one generator
STREAM_TAG = 0x5EED  # keeps the stream's generators apart from the finite shapes set's
EVAL_STREAM_SEED = 977_351  # the held-out stream: one for every run
FULL_TABLE_AT = 4096  # from this many positions on, encode every caption (once, cached)
MAX_REDRAWS = 16  # layout redraws of a training image that renders a held-out image


@functools.lru_cache(maxsize=4)
def _block_specs(seed: int, block: int) -> tuple[SceneSpec, ...]:
    rng = np.random.default_rng([seed, STREAM_TAG, block])
    return tuple(sample_scene(rng) for _ in range(BLOCK))


def spec_at(seed: int, position: int) -> SceneSpec:
    return _block_specs(seed, position // BLOCK)[position % BLOCK]


def render_at(seed: int, position: int, image_size: int, attempt: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, STREAM_TAG, position, attempt])
    return render_scene(spec_at(seed, position), image_size, rng)


def image_key(pixels: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=16).digest()


@functools.lru_cache(maxsize=1)
def _all_captions() -> tuple[str, ...]:
    return tuple(sorted({s.caption for s in all_scene_specs()}))


def all_captions() -> list[str]:
    """Every caption of the stream, sorted (the full table's rows)."""
    return list(_all_captions())


def full_table_cached(text_tokens: int, cache_dir=None) -> bool:
    """Whether the whole caption table is encoded already (e.g. prepared for a machine that
    cannot run the text encoder, ``bench/gpu_sweep.py --prepare-data``)."""
    return TextEncoder(cache_dir).cache_path(all_captions(), text_tokens).is_file()


def stream_captions(seed: int, positions: int, holdout: int, *, text_tokens: int | None = None,
                    cache_dir=None) -> list[str]:
    """The captions a run of ``positions`` training positions and its held-out set need: all
    of them when the run is long, or when the whole table is cached for ``text_tokens`` (one
    table for every such run), else those drawn."""
    if positions >= FULL_TABLE_AT or (text_tokens is not None
                                      and full_table_cached(text_tokens, cache_dir)):
        return all_captions()
    used = {spec_at(seed, p).caption for p in range(positions)}
    used |= {spec_at(EVAL_STREAM_SEED, p).caption for p in range(holdout)}
    return sorted(used)


@dataclass(frozen=True)
class CaptionTable:
    """Caption -> row of (C, text_tokens, text_dim) float32 embeddings."""

    index: dict[str, int]
    text_CTD: np.ndarray
    lengths_C: np.ndarray  # real tokens per caption

    @classmethod
    def build(cls, captions: list[str], *, text_tokens: int, text_dim: int | None,
              cache_dir=None) -> CaptionTable:
        text, lengths = TextEncoder(cache_dir).encode(captions, text_tokens)
        return cls(index={c: i for i, c in enumerate(captions)},
                   text_CTD=fit_text_dim(text, text_dim or TEXT_DIM), lengths_C=lengths)

    def rows(self, captions) -> np.ndarray:
        return self.text_CTD[[self.index[c] for c in captions]]

    def lengths(self, captions) -> np.ndarray:
        return self.lengths_C[[self.index[c] for c in captions]]


class ShapesStream:
    """A run's training stream and held-out set (torch tensors; see the module docstring)."""

    def __init__(self, cfg: ModelConfig, *, seed: int, positions: int, holdout: int,
                 cache_dir=None):
        self.image_size, self.seed, self.positions = cfg.image_size, seed, positions
        self.holdout = holdout
        self.table = CaptionTable.build(stream_captions(seed, positions, holdout,
                                                        text_tokens=cfg.text_tokens,
                                                        cache_dir=cache_dir),
                                        text_tokens=cfg.text_tokens, text_dim=cfg.text_dim,
                                        cache_dir=cache_dir)
        held = [render_at(EVAL_STREAM_SEED, p, self.image_size) for p in range(holdout)]
        self._held_pixels = (np.stack(held) if held else
                             np.zeros((0, self.image_size, self.image_size, 3), np.uint8))
        self._held_keys = {image_key(x) for x in held}
        self.redraws = 0  # training layouts drawn again (they rendered a held-out image)

    def __len__(self) -> int:
        return self.positions

    def train_image(self, position: int) -> np.ndarray:
        for attempt in range(MAX_REDRAWS):
            pixels = render_at(self.seed, position, self.image_size, attempt)
            if image_key(pixels) not in self._held_keys:
                return pixels
            self.redraws += 1
        raise RuntimeError(f"position {position}: {MAX_REDRAWS} layouts all render held-out "
                           "images; the image size is too small for a held-out set this large")

    def batch(self, step: int, batch_size: int, *, rank: int = 0, world: int = 1):
        """(images (b, 3, S, S) in [-1, 1], text (b, T, D)): rank's share of global batch
        ``step`` (b = batch_size / world, contiguous positions)."""
        import torch

        from .captioned import to_unit_range

        per_rank = batch_size // world
        first = step * batch_size + rank * per_rank
        positions = range(first, first + per_rank)
        pixels = np.stack([self.train_image(p) for p in positions])
        text = self.table.rows([spec_at(self.seed, p).caption for p in positions])
        return to_unit_range(pixels), torch.from_numpy(text)

    def batches(self, batch_size: int, *, rank: int = 0, world: int = 1, start_step: int = 0):
        step = start_step
        while True:
            yield self.batch(step, batch_size, rank=rank, world=world)
            step += 1

    def held_out(self):
        """The fixed held-out set as a ``captioned.CaptionedImages``."""
        import torch

        from .captioned import CaptionedImages, to_unit_range

        specs = tuple(spec_at(EVAL_STREAM_SEED, p) for p in range(self.holdout))
        captions = [s.caption for s in specs]
        text = self.table.rows(captions)
        return CaptionedImages(images=to_unit_range(self._held_pixels),
                               text=torch.from_numpy(text),
                               text_len=torch.from_numpy(self.table.lengths(captions)),
                               captions=captions, specs=specs)
