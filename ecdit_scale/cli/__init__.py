"""The `ecdit-scale` command: typer sub-commands that call the library and print with rich.

Nothing imports this package. Command modules import heavy layers (torch, deepspeed) inside
the command functions, so `ecdit-scale plan` never loads torch.
"""

from __future__ import annotations

from . import data, evaluate, models, plan, profile, scaling, train  # noqa: F401  (each registers its commands, in help order)
from .common import app, main

__all__ = ["app", "main"]
