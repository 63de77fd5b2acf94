"""Shared CLI plumbing: the typer app, one-line errors, JSON output, rich console."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import ConfigError
from ..files import json_default

app = typer.Typer(
    name="ecdit-scale",
    help="Scaling-law simulator and planner for EC-DiT (expert-choice MoE diffusion transformers).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Piped output (CI logs, `| tee`) gets 140 columns instead of rich's 80 so tables stay readable.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line to stderr and exit non-zero. Never a traceback."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=json_default) + "\n")


def main() -> None:
    """Console-script entry: user errors become one line on stderr and exit code 2.

    Set ECDIT_SCALE_DEBUG=1 to see the traceback instead.
    """
    try:
        app()
    except (ConfigError, ValueError, FileNotFoundError, OSError) as exc:
        if os.environ.get("ECDIT_SCALE_DEBUG"):
            raise
        text = str(exc).strip().splitlines()
        err_console.print(f"[bold red]error:[/] {escape(text[0]) if text else type(exc).__name__}",
                          highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        err_console.print("interrupted; rerun the same command to resume where it stopped")
        raise SystemExit(130) from None
