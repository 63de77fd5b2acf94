"""Data, fully offline: OpenMoji emoji and procedural shapes (real, small end), and synthetic
latents for the paper's latent-space cards.

- ``emoji``: OpenMoji's colour font rendered with Pillow, captioned from Unicode names;
- ``shapes``: GenEval-style scenes of coloured shapes with compositional captions (what a
  caption promises is a ``SceneSpec``, which ``evaluation.alignment`` scores images against);
- ``latents``: seeded synthetic SD-VAE-like latents (4 x H/8 x W/8, unit variance) with the
  shapes captions, for the paper's latent-space cards (throughput and memory, not quality);
- ``text_encoder``: the frozen all-MiniLM-L6-v2, per-token outputs (384-d), mapped by a fixed
  isometry to a card's wider text width where it has one;
- ``batches``: images in [-1, 1] with their text, the held-out split, and deterministic,
  resumable, rank-disjoint batches;
- ``cache``: rendered emoji and text embeddings are cached as .npz files under
  ``cache_root()`` (argument > $ECDIT_SCALE_CACHE > ~/.cache/ecdit-scale/data).

Emoji and shapes are small RGB arrays in pixel space (no VAE); latents stand in for SD-VAE's.
"""

from __future__ import annotations

from ..errors import ConfigError


class DataError(ConfigError):
    """A bad dataset argument; one line naming the value and the valid choices."""
