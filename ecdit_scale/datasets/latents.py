"""Latents for the paper's latent-space cards (32x32x4 for 256 px): seeded synthetic stand-ins
for SD-VAE latents, with real captions through the same text path as the pixel datasets.

What is generated, and why: the paper trains on SD-VAE latents (f = 8, 4 channels) scaled by
0.18215, the factor Rombach et al. (2022, Sec. 4.3.2 / the LDM configs) chose to give the
latents about unit variance. No VAE or image corpus is at hand offline, and throughput and
memory depend only on shapes and dtypes, so each latent here is Gaussian white noise smoothed
by a separable Gaussian kernel (sigma = 1 latent pixel, like the spatial correlation of VAE
latents over neighbouring 8 px patches) and divided by the filtered noise's exact standard
deviation: zero mean and unit variance per channel in expectation, spatially correlated, a
pure function of (seed, index). They are not images: a loss on them measures nothing about
image quality. The captions are the shapes dataset's (``shapes.sample_scene`` on the same
(seed, index) streams, so ``latents`` and ``shapes`` with one seed share their captions),
encoded by ``text_encoder.TextEncoder`` and cached as the other datasets' are.
"""

from __future__ import annotations

import numpy as np

from .kinds import LATENT_CHANNELS, VAE_DOWNSAMPLE
from .shapes import sample_scene

# Shape suffixes: a tensor named x_CHW has dims (C, H, W).
#   C latent channels   H, W height and width

SD_VAE_SCALE = 0.18215  # what the paper's latents are multiplied by (unit variance)
SMOOTHING_SIGMA = 1.0  # latent pixels
LATENTS_DEFAULT_COUNT = 256  # limit=None: enough for throughput and memory runs
LATENT_SEED_OFFSET = 104729  # the latents' noise stream, apart from the captions'


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = int(np.ceil(3 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _smooth(x_CHW: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable circular convolution over the last two axes."""
    r = len(kernel) // 2
    out = x_CHW
    for axis in (-2, -1):
        out = sum(w * np.roll(out, shift, axis=axis)
                  for shift, w in zip(range(-r, r + 1), kernel, strict=True))
    return out


def synthetic_latent(seed: int, index: int, latent_size: int) -> np.ndarray:
    """One (4, latent_size, latent_size) float32 latent: smoothed white noise, unit variance."""
    rng = np.random.default_rng([seed, LATENT_SEED_OFFSET, index])
    kernel = _gaussian_kernel(SMOOTHING_SIGMA)
    noise = rng.standard_normal((LATENT_CHANNELS, latent_size, latent_size))
    # variance of circularly filtered unit white noise: (sum of squared 1-D weights)^2 in 2-D
    std = float(np.sum(kernel**2))
    return (_smooth(noise, kernel) / std).astype(np.float32)


def make_latents(n: int, image_size: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """(n, 4, image_size/8, image_size/8) float32 latents and n captions; sample i depends
    only on (seed, i), so a larger n extends a smaller one."""
    latent_size = image_size // VAE_DOWNSAMPLE
    latents = np.stack([synthetic_latent(seed, i, latent_size) for i in range(n)])
    captions = [sample_scene(np.random.default_rng([seed, i])).caption for i in range(n)]
    return latents, captions
