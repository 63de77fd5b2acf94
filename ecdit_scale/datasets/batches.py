"""A dataset as the trainer sees it: images in [-1, 1] (or latents) with their captions' token
embeddings, a fixed held-out split, and batches that are a pure function of (seed, step, rank), so
that a resumed run reads exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch

from ..config import ModelConfig
from . import DataError
from .arrays import dataset_arrays
from .captioned import CaptionedImages, to_unit_range
from .kinds import STREAMS, check_dataset_fits

# Shape suffixes: a tensor named text_NTD has dims (N, T, D).
#   N items   T text tokens per caption   D embedding width

HOLDOUT_SEED_OFFSET = 7919  # the held-out split uses its own stream, not the batch order's


def build_dataset(
    name: str, *, image_size: int, text_tokens: int, limit: int | None, seed: int, cache_dir=None,
    text_dim: int | None = None,
) -> CaptionedImages:
    """'emoji' (all named OpenMoji emoji, or the first `limit`), 'shapes' (`limit` scenes) or
    'latents' (`limit` synthetic SD-VAE latents for `image_size` px images, see ``latents``).

    Text: MiniLM token embeddings (384-d); ``text_dim`` other than 384 maps them to that width
    with a fixed isometry (``text_encoder.fit_text_dim``), for cards with a wider text encoder.
    """
    a = dataset_arrays(name, image_size=image_size, text_tokens=text_tokens, limit=limit,
                       seed=seed, cache_dir=cache_dir, text_dim=text_dim)
    images = (torch.from_numpy(a.latents) if a.latents is not None
              else to_unit_range(a.pixels_NHW3))
    return CaptionedImages(images=images, text=torch.from_numpy(a.text_NTD),
                           text_len=torch.from_numpy(a.lengths_N), captions=a.captions,
                           specs=a.specs)


def build_dataset_for(name: str, cfg: ModelConfig, *, limit: int | None, seed: int,
                      cache_dir=None) -> CaptionedImages:
    """The dataset ``name`` shaped for model ``cfg``: its image size (latents: image_size / 8
    per side, 4 channels), text tokens and text width. The call a trainer makes."""
    check_dataset_fits(name, cfg)
    return build_dataset(name, image_size=cfg.image_size, text_tokens=cfg.text_tokens,
                         limit=limit, seed=seed, cache_dir=cache_dir, text_dim=cfg.text_dim)


# ---------------------------------------------------------------------------------------------
# Held-out split
# ---------------------------------------------------------------------------------------------


def subset(dataset: CaptionedImages, rows) -> CaptionedImages:
    """The rows of a CaptionedImages (a frozen dataclass) as a new CaptionedImages."""
    rows_t = torch.as_tensor(rows, dtype=torch.long)
    return dataclasses.replace(
        dataset, images=dataset.images[rows_t], text=dataset.text[rows_t],
        text_len=dataset.text_len[rows_t], captions=[dataset.captions[i] for i in rows],
        specs=None if dataset.specs is None else tuple(dataset.specs[i] for i in rows))


def holdout_rows(n: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): a fixed random ``holdout`` samples are never trained on."""
    perm = np.random.default_rng([seed, HOLDOUT_SEED_OFFSET]).permutation(n)
    holdout = min(holdout, n // 2)
    return np.sort(perm[holdout:]), np.sort(perm[:holdout])


def run_splits(name: str, cfg: ModelConfig, *, limit: int | None, seed: int, holdout: int
               ) -> tuple[CaptionedImages, CaptionedImages]:
    """A run's data, built once: dataset ``name`` shaped for ``cfg``, as (the samples it trains
    on, its ``holdout`` held-out samples). Finite datasets only (not a stream)."""
    ds = build_dataset_for(name, cfg, limit=limit, seed=seed)
    train, held = holdout_rows(len(ds), holdout, seed)
    return subset(ds, train), subset(ds, held)


def run_split(name: str, cfg: ModelConfig, *, limit: int | None, seed: int, holdout: int,
              split: str = "train") -> CaptionedImages:
    """One of ``run_splits``: without (``split="train"``) or only (``"held"``) the run's
    ``holdout`` held-out samples. A stream (``shapes-stream``) has only a held-out set here;
    its training batches come from ``stream.ShapesStream.batches``."""
    if name in STREAMS:
        if split != "held":
            raise DataError(f"dataset {name!r} is a stream: train from ShapesStream.batches")
        from .stream import ShapesStream

        return ShapesStream(cfg, seed=seed, positions=0, holdout=holdout).held_out()
    train, held = run_splits(name, cfg, limit=limit, seed=seed, holdout=holdout)
    return train if split == "train" else held


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


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
