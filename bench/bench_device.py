"""The device a GPU-or-CPU benchmark runs on (``--device``), shared by the bench scripts."""

from __future__ import annotations

import sys


def pick_device(torch, asked: str | None) -> str:
    """``asked`` (cuda or cpu), or cuda where torch sees one; exits with one line otherwise."""
    device = asked or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cuda", "cpu"):
        sys.exit(f"error: --device {device!r}: choose cuda or cpu")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: no CUDA device here; use --device cpu")
    return device
