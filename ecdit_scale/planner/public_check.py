"""How far the plan's clock has been from published training runs (``data/public_check.yaml``).

``bench/public_validate.py`` prices every scored row of ``bench/results/public-throughput/
rows.yaml`` (published DiT-class training throughputs, each with its source and setup) through
this planner, and ``--write`` records each row's predicted / published steps per second in the
package's ``data/public_check.yaml`` (a test checks the file against a fresh pricing, so it
cannot outlive a change to the model). ``plan`` prints the range next to its step time: the
evidence a user has for how optimistic or pessimistic the clock may be on that device.

A ratio above 1 is an optimistic prediction (faster than the run was measured).
"""

from __future__ import annotations

import functools
import importlib.resources
import statistics
from dataclasses import dataclass

from ..errors import ConfigError
from ..files import parse_yaml

CHECK_FILE = "data/public_check.yaml"
ROWS_DOC = "bench/results/public-throughput"


@dataclass(frozen=True)
class PublicRow:
    id: str
    gpu: str  # the catalog key the published hardware maps to
    split: str  # held_out | used
    ratio: float  # predicted / published steps per second


def parse_check(data: object, *, source: str) -> tuple[PublicRow, ...]:
    """The rows of a public-check file, or a one-line ConfigError naming what is wrong."""
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{source}: needs a non-empty 'rows' list")
    out = []
    for i, row in enumerate(rows):
        try:
            ratio = float(row["ratio"])
            if not ratio > 0 or ratio == float("inf"):
                raise ValueError
            out.append(PublicRow(id=str(row["id"]), gpu=str(row["gpu"]),
                                 split=str(row["split"]), ratio=ratio))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{source}: row {i} needs id, gpu, split and a positive ratio, "
                              f"got {row!r}") from None
    return tuple(out)


@functools.lru_cache(maxsize=1)
def public_rows() -> tuple[PublicRow, ...]:
    text = importlib.resources.files("ecdit_scale").joinpath(CHECK_FILE).read_text()
    return parse_check(parse_yaml(text, source=CHECK_FILE), source=CHECK_FILE)


def _span(rows: list[PublicRow]) -> str:
    lo, hi = min(r.ratio for r in rows), max(r.ratio for r in rows)
    return f"{lo:.2f}-{hi:.2f}x" if len(rows) > 1 else f"{lo:.2f}x"


def clock_note(gpu: str, rows: tuple[PublicRow, ...] | None = None,
               days: float | None = None) -> str:
    """One line for the plan's notes: predicted / published over every scored public run, and
    over those on ``gpu`` (or that none was published on it); with the plan's ``days``, the
    run's length at those runs' ratios (a ratio r means the run takes r x the plan's time)."""
    rows = public_rows() if rows is None else rows
    all_rows = list(rows)
    held = sum(r.split == "held_out" for r in all_rows)
    median = statistics.median(abs(r.ratio - 1.0) for r in all_rows)
    line = (f"step_s against published runs: this model prices {len(all_rows)} DiT-class "
            f"training runs ({held} held out) at {_span(all_rows)} their measured speed "
            f"(median |error| {median:.0%}; above 1x = optimistic)")
    mine = [r for r in all_rows if r.gpu == gpu]
    if not mine:
        return f"{line}; none was published on {gpu} ({ROWS_DOC})"
    lo, hi = min(r.ratio for r in mine), max(r.ratio for r in mine)
    sides = ([f"{hi:.2f}x optimistic"] if hi > 1 else []) + \
        ([f"{1 / lo:.2f}x pessimistic"] if lo < 1 else [])
    length = ""
    if days is not None:
        span = f"{days * lo:.1f}-{days * hi:.1f}" if len(mine) > 1 else f"{days * hi:.1f}"
        length = (f"; were it as far off as they were, the run would take {span} days, not "
                  f"{days:.1f} (GPU-hours and cost alike)")
    return (f"{line}; on {gpu}, {len(mine)} run{'s' if len(mine) > 1 else ''} at {_span(mine)}: "
            f"its step time may be up to {' or '.join(sides)}{length} ({ROWS_DOC})")
