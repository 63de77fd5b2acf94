"""Where the datasets keep what is slow to make (rendered emoji, text embeddings), and how
those .npz files are written so that a reader sees no file or the whole file, and made once
when several processes ask for one at the same time (the ranks of a run, parallel launches)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive lock on ``lock_path`` across processes (POSIX flock; elsewhere none, and a
    racing process at worst makes the same file twice)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def load_or_make(path: Path, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays of the .npz at ``path``, made by ``make()`` and saved if it is not there.
    Processes asking at the same time wait for the first one (a lock file beside it) and then
    read its file, instead of each making it again."""
    if path.exists():
        return _read(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path.with_name(path.name + ".lock")):
        if path.exists():  # made while this process waited
            return _read(path)
        arrays = make()
        save_npz_atomic(path, **arrays)
        return arrays
