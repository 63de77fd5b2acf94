"""The learning-rate search of a sweep, read back: one row per search run, each size's best
learning rate, and a note where the best lies at an end of the grid (``sweep.run_sweep``)."""

from __future__ import annotations

import math
from typing import Any

from .records import RunDir

# ``run``: a ``sweep.SweepRun``; ``spec``: a ``sweep.SweepSpec`` (not imported: sweep imports this)


def lr_search_row(run) -> dict[str, Any]:
    summary = RunDir(run.run_dir).read_summary()
    return {"size": run.size, "card": run.card, "lr": run.lr, "steps": run.steps,
            "seed": run.seed, "heldout_loss": summary.get("heldout_loss"),
            "final_loss": summary.get("final_loss"), "run_dir": str(run.run_dir)}


def chosen_lrs(spec, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each size's learning rate: the search's best held-out loss (lr for sizes not searched
    or whose search runs all failed)."""
    best: dict[str, tuple[float, float]] = {}
    for r in rows:
        loss = r.get("heldout_loss")
        if loss is not None and math.isfinite(loss) and (r["size"] not in best
                                                         or loss < best[r["size"]][0]):
            best[r["size"]] = (loss, r["lr"])
    return {s.label: best[s.label][1] if s.label in best else spec.lr
            for s in spec.resolved_sizes}


def lr_search_notes(spec, lr_of: dict[str, float]) -> list[str]:
    """A note per size whose best learning rate is at an end of the searched grid: the
    optimum may lie beyond it."""
    if len(spec.lr_search) < 2:
        return []
    lo, hi = spec.lr * min(spec.lr_search), spec.lr * max(spec.lr_search)
    return [f"lr search for {size}: best at the {'top' if math.isclose(lr, hi) else 'bottom'} "
            f"of the grid ({lr:.3g}); the optimum may lie beyond it"
            for size, lr in lr_of.items() if math.isclose(lr, hi) or math.isclose(lr, lo)]
