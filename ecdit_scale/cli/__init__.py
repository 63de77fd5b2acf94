"""The `ecdit-scale` command: typer sub-commands that call the library and print with rich.

Nothing imports this package. Command modules import heavy layers (torch, deepspeed) inside
the command functions, so `ecdit-scale plan` never loads torch.
"""

from __future__ import annotations

from .common import app, main  # noqa: F401
from . import models  # noqa: F401,E402  (registers commands)

for _optional in ("plan", "train", "scaling"):
    try:
        __import__(f"{__name__}.{_optional}")
    except ModuleNotFoundError as exc:  # a command module not written yet must not break others
        if exc.name != f"{__name__}.{_optional}":
            raise
