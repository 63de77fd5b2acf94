"""Where the datasets keep what is slow to make (rendered emoji, text embeddings), and how
those .npz files are written so that a reader sees no file or the whole file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..files import atomic_output


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
