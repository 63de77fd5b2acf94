"""A dataset as numpy arrays (images or latents, caption token embeddings, captions), without
torch: what ``batches.build_dataset`` wraps as tensors for a trainer, and what ``launch``
renders and encodes once before the ranks start (``train.launch.warm_data_cache``), so that the
launching process never has to load torch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import ModelConfig
from . import DataError
from .emoji import load_emoji
from .kinds import DATASET_INPUTS, DATASETS, check_dataset_fits
from .latents import LATENTS_DEFAULT_COUNT, make_latents
from .shapes import SceneSpec, make_shapes
from .text_encoder import MAX_TEXT_TOKENS, TEXT_DIM, TextEncoder, fit_text_dim

# Shape suffixes: a tensor named text_NTD has dims (N, T, D).
#   N items   T text tokens per caption   D embedding width

IMAGE_SIZE_RANGE = (16, 128)
LATENT_IMAGE_SIZE_RANGE = (64, 1024)  # pixels the latents stand for (8..128 latent pixels)
TEXT_DIM_RANGE = (1, 16384)
SHAPES_DEFAULT_COUNT = 8192  # the shapes set is unbounded; limit=None draws this many


@dataclass(frozen=True)
class DatasetArrays:
    """What a dataset holds, as arrays: pixels as uint8 (N, H, W, 3), latents as float32
    (N, 4, h, w); text (N, text_tokens, text_dim) float32 and its lengths (N,) int64."""

    pixels_NHW3: np.ndarray | None
    latents: np.ndarray | None
    text_NTD: np.ndarray
    lengths_N: np.ndarray
    captions: list[str]
    specs: tuple[SceneSpec, ...] | None


def _check_args(name: str, image_size: int, text_tokens: int, limit: int | None,
                text_dim: int | None) -> None:
    if name not in DATASETS:
        raise DataError(f"dataset {name!r} is not valid; choose one of {', '.join(DATASETS)}")
    lo, hi = LATENT_IMAGE_SIZE_RANGE if name == "latents" else IMAGE_SIZE_RANGE
    step = DATASET_INPUTS[name][1]
    if not isinstance(image_size, int) or not lo <= image_size <= hi or image_size % step:
        multiple = f" and a multiple of {step}" if step > 1 else ""
        raise DataError(f"image_size = {image_size!r}: must be an integer in {lo}..{hi}{multiple}"
                        f" for dataset {name!r}")
    if not isinstance(text_tokens, int) or not 1 <= text_tokens <= MAX_TEXT_TOKENS:
        raise DataError(
            f"text_tokens = {text_tokens!r}: must be an integer in 1..{MAX_TEXT_TOKENS}"
        )
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit = {limit!r}: must be None or an integer >= 1")
    lo, hi = TEXT_DIM_RANGE
    if text_dim is not None and (not isinstance(text_dim, int) or not lo <= text_dim <= hi):
        raise DataError(f"text_dim = {text_dim!r}: must be None or an integer in {lo}..{hi}")


def dataset_arrays(name: str, *, image_size: int, text_tokens: int, limit: int | None, seed: int,
                   cache_dir=None, text_dim: int | None = None) -> DatasetArrays:
    """The arrays of ``batches.build_dataset`` (same arguments, same checks)."""
    _check_args(name, image_size, text_tokens, limit, text_dim)
    specs, pixels, latents = None, None, None
    if name == "emoji":
        pixels, captions = load_emoji(image_size, limit=limit, cache_dir=cache_dir)
    elif name == "shapes":
        pixels, specs = make_shapes(limit or SHAPES_DEFAULT_COUNT, image_size, seed)
        captions = [s.caption for s in specs]
    else:
        latents, captions = make_latents(limit or LATENTS_DEFAULT_COUNT, image_size, seed)
    text_NTD, lengths_N = TextEncoder(cache_dir).encode(captions, text_tokens)
    return DatasetArrays(pixels_NHW3=pixels, latents=latents,
                         text_NTD=fit_text_dim(text_NTD, text_dim or TEXT_DIM),
                         lengths_N=lengths_N, captions=list(captions),
                         specs=tuple(specs) if specs is not None else None)


def dataset_arrays_for(name: str, cfg: ModelConfig, *, limit: int | None, seed: int,
                       cache_dir=None) -> DatasetArrays:
    """``dataset_arrays`` shaped for model ``cfg`` (its image size, text tokens and width)."""
    check_dataset_fits(name, cfg)
    return dataset_arrays(name, image_size=cfg.image_size, text_tokens=cfg.text_tokens,
                          limit=limit, seed=seed, cache_dir=cache_dir, text_dim=cfg.text_dim)
