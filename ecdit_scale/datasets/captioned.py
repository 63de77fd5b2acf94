"""Images (or latents) in [-1, 1] with their captions' token embeddings: what every dataset
gives the trainer (``batches``, ``stream``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .shapes import SceneSpec


@dataclass(frozen=True)
class CaptionedImages:
    """Images in [-1, 1] with their captions' token embeddings (padding rows are zero)."""

    images: torch.Tensor  # (N, 3, H, W) float32 in [-1, 1]; latents: (N, 4, H/8, W/8) float32
    text: torch.Tensor  # (N, text_tokens, text_dim) float32 (384: the encoder's own width)
    text_len: torch.Tensor  # (N,) int64, real tokens per caption (incl. [CLS] and [SEP])
    captions: list[str]
    specs: tuple[SceneSpec, ...] | None = None  # shapes only

    def __len__(self) -> int:
        return self.images.shape[0]


def to_unit_range(images_NHW3: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]."""
    x_NHW3 = torch.from_numpy(np.ascontiguousarray(images_NHW3))
    return x_NHW3.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(images_N3HW: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3), e.g. samples for `geneval_score`."""
    x = ((images_N3HW.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()
