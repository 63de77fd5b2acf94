"""Which datasets there are and which cards each can feed, without loading any data (no torch,
no numpy): what a launch checks before anything starts, so that a bad --dataset is refused
in a fraction of a second."""

from __future__ import annotations

from ..config import ModelConfig
from . import DataError

DATASETS = ("emoji", "shapes", "shapes-stream", "latents")
STREAMS = ("shapes-stream",)  # drawn fresh for every position: no --limit, never repeats
LATENT_CHANNELS = 4  # SD-VAE
VAE_DOWNSAMPLE = 8  # image pixels per latent pixel
# what each dataset feeds the model: (channels, pixels per model input pixel)
DATASET_INPUTS = {"emoji": (3, 1), "shapes": (3, 1), "shapes-stream": (3, 1),
                  "latents": (LATENT_CHANNELS, VAE_DOWNSAMPLE)}


def check_dataset_fits(name: str, cfg: ModelConfig) -> None:
    """One line if dataset ``name`` cannot feed model ``cfg`` (pixels vs latents)."""
    if name not in DATASET_INPUTS:
        raise DataError(f"dataset {name!r} is not valid; choose one of {', '.join(DATASETS)}")
    channels, down = DATASET_INPUTS[name]
    if (channels, down) != (cfg.in_channels, cfg.vae_downsample):
        fits = [n for n, v in DATASET_INPUTS.items() if v == (cfg.in_channels, cfg.vae_downsample)]
        what = "latents" if down > 1 else "images"
        raise DataError(
            f"dataset {name!r} gives {channels}-channel {what}; {cfg.name} takes "
            f"{cfg.in_channels}-channel {cfg.input_size}x{cfg.input_size} inputs "
            f"(vae_downsample {cfg.vae_downsample}): use "
            + (" or ".join(repr(n) for n in fits) if fits else "a card with 3 or 4 channels"))


def default_dataset_for(cfg: ModelConfig) -> str:
    """The first dataset whose inputs fit ``cfg`` (emoji for pixel cards, latents for the
    paper's latent cards); DataError if none does."""
    for name, inputs in DATASET_INPUTS.items():
        if inputs == (cfg.in_channels, cfg.vae_downsample):
            return name
    check_dataset_fits(DATASETS[0], cfg)  # raises, naming what the card takes
    raise AssertionError("unreachable")
