"""Real data for the small end, fully offline: OpenMoji emoji and procedural shapes.

- ``emoji``: OpenMoji's colour font rendered with Pillow, captioned from Unicode names;
- ``shapes``: GenEval-style scenes of coloured shapes with compositional captions (what a
  caption promises is a ``SceneSpec``, which ``evaluation.alignment`` scores images against);
- ``text_encoder``: the frozen all-MiniLM-L6-v2, per-token outputs (384-d);
- ``batches``: images in [-1, 1] with their text, the held-out split, and deterministic,
  resumable, rank-disjoint batches;
- ``cache``: rendered emoji and text embeddings are cached as .npz files under
  ``cache_root()`` (argument > $ECDIT_SCALE_CACHE > ~/.cache/ecdit-scale/data).

Images are small RGB arrays in pixel space (no VAE).
"""

from __future__ import annotations

from ..errors import ConfigError


class DataError(ConfigError):
    """A bad dataset argument; one line naming the value and the valid choices."""
