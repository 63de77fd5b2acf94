"""Shared CLI plumbing: the typer app, one-line errors, JSON output, rich console."""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import click
import typer
import yaml
from rich.console import Console
from rich.markup import escape

from ..errors import ConfigError
from ..files import strict_json

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
    _error(message)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    """Strict JSON on stdout: NaN and infinities become null (``files.strict_json``)."""
    sys.stdout.write(strict_json(data) + "\n")


def _one_line(message: str, fallback: str) -> str:
    lines = str(message).strip().splitlines()
    text = lines[0] if lines else fallback
    return text if len(text) <= 500 else text[:497] + "..."


def _error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _click_modules() -> list[Any]:
    """click's exceptions module, and typer's vendored copy (typer >= 0.20 ships its own)."""
    mods = [click.exceptions]
    try:
        from typer._click import exceptions as vendored  # type: ignore[import-not-found]
        mods.append(vendored)
    except ImportError:
        pass
    return mods


def _classes(name: str) -> tuple[type[BaseException], ...]:
    return tuple(getattr(m, name) for m in _click_modules() if hasattr(m, name))


NO_ARGS_IS_HELP, CLICK_ERROR, USAGE_ERROR, ABORT = (
    _classes("NoArgsIsHelpError"), _classes("ClickException"), _classes("UsageError"),
    _classes("Abort"))

# What user input can raise past the boundary checks: each is shown as one line, exit 2.
USER_ERRORS = (ConfigError, ValueError, OSError, OverflowError, KeyError, RecursionError,
               yaml.YAMLError)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: user errors, typer's usage errors included, become one line on
    stderr and exit code 2 (``--help`` still exits 0).

    Set ECDIT_SCALE_DEBUG=1 to see the traceback instead.
    """
    try:
        code = app(args=argv, standalone_mode=False)
    except NO_ARGS_IS_HELP as exc:
        exc.show()  # the command's help, as before
        raise SystemExit(exc.exit_code) from None
    except CLICK_ERROR as exc:  # usage: bad option, value, argument
        where = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) else ""
        _error(_one_line(exc.format_message(), type(exc).__name__) + where)
        raise SystemExit(2 if isinstance(exc, USAGE_ERROR) else exc.exit_code) from None
    except (*ABORT, KeyboardInterrupt):  # a command that stops itself says how to go on
        err_console.print("interrupted; rerun the same command to resume where it stopped")
        raise SystemExit(130) from None
    except USER_ERRORS as exc:
        if os.environ.get("ECDIT_SCALE_DEBUG"):
            raise
        prefix = "" if isinstance(exc, (ConfigError, OSError)) else f"{type(exc).__name__}: "
        _error(prefix + _one_line(str(exc), type(exc).__name__))
        raise SystemExit(2) from None
    if isinstance(code, int) and code:
        raise SystemExit(code)
