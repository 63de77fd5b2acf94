"""Train an IsoFLOP design (`train.isoflop`): the learning-rate search first (per size and
variant, at the middle level, >= 2 seeds), then every run of the design at its size's best
rate, through the same launcher, resume and records as `sweep` (`train.sweep`). One launch at
a time; finished runs are skipped and interrupted ones resumed. The run table gets the level
(`flops_level`), the rate each run used and whether the search chose it; `lr-search.csv`
keeps every search run.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..config import save_model_config
from .. import sizes
from .isoflop import Design, DesignedRun
from .records import RunDir
from .sweep import SweepResult, SweepRun, SweepSpec, _train, table_rows

MIN_STEPS = 10  # a sweep run needs at least this many steps (SweepSpec)


def _card(out: Path, r: DesignedRun) -> str:
    """A registry name, or for a synthesised size its YAML card under out/cards/."""
    if not r.synthesised:
        return r.card
    path = out / "cards" / f"{r.card}.yaml"
    if not path.is_file():
        kind, _, rest = r.card.removeprefix("synth-").partition("-")
        cfg = sizes.resolve(r.target_params, active=True,
                            kind={"dense": "dense", "token": "token-choice",
                                  "expert": "expert-choice"}[kind]).config
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model_config(cfg, path)
    return str(path)


def _name(r: DesignedRun) -> str:
    tail = f"-x{r.lr_multiplier:g}" if r.purpose == "lr-search" else ""
    return f"{r.card}-L{r.level_flops:.3g}-s{r.seed}{tail}"


def run_isoflop(design: Design, *, lr: float, nproc: int, micro_batch: int, dataset: str,
                holdout: int, device: str, out: Path, parallel: int = 1) -> SweepResult:
    from ..scaling.table import save_run_table
    import pandas as pd

    out = Path(out)
    base = SweepSpec(steps=MIN_STEPS, budgets=(1.0,), seeds=(0,), schedule="wsd",
                     nproc=nproc, micro_batch=micro_batch, dataset=dataset, holdout=holdout,
                     lr=lr, device=device, out=str(out))
    result = SweepResult(table_path=out / "runs.csv")
    result.notes += list(design.notes)
    if parallel > 1:
        result.notes.append(f"--parallel {parallel}: an IsoFLOP sweep launches one run at a time")
    runs = [r for r in design.runs if r.steps >= MIN_STEPS]
    result.notes += [f"{_name(r)}: {r.steps} steps, under {MIN_STEPS}: not trained"
                     for r in design.runs if r.steps < MIN_STEPS]
    n = len(runs)

    def train(i: int, r: DesignedRun, rate: float, folder: str):
        spec = dataclasses.replace(base, steps=r.steps)
        run = SweepRun(card=_card(out, r), run_dir=out / folder / _name(r), steps=r.steps,
                       seed=r.seed, lr=rate, budgets=(1.0,), budget=1.0)
        return spec, run, _train(spec, run, result, None, i, n)

    search = [r for r in runs if r.purpose == "lr-search"]
    for i, r in enumerate(search):
        _, run, ok = train(i, r, lr * r.lr_multiplier, "lr-search")
        if ok:
            s = RunDir(run.run_dir).read_summary()
            result.lr_search.append({"card": r.card, "variant": r.variant, "seed": r.seed,
                                     "lr": run.lr, "steps": r.steps,
                                     "heldout_loss": s.get("heldout_loss")})
    if search:
        save_run_table(pd.DataFrame(result.lr_search), out / "lr-search.csv")
    lr_of, notes = best_rates(result.lr_search, lr, [r.lr_multiplier for r in search])
    result.notes += notes
    result.lr_of = {f"{c}/{v}": x for (c, v), x in lr_of.items()}
    for i, r in enumerate([r for r in runs if r.purpose == "sweep"], start=len(search)):
        rate, searched = rate_for(r, lr_of, runs, lr)
        spec, run, ok = train(i, r, rate, "runs")
        if not ok:
            continue
        for row in table_rows(spec, run):
            row.update(name=_name(r), card=r.card, run_group=_name(r), flops_level=r.level_flops,
                       lr_searched=searched, step_fraction=1.0)
            result.rows.append(row)
        save_run_table(pd.DataFrame(result.rows), result.table_path)
    return result


def best_rates(rows: list[dict[str, Any]], lr: float, multipliers
               ) -> tuple[dict[tuple[str, str], float], list[str]]:
    """Per (card, variant) the rate with the best mean held-out loss over its seeds, and a note
    for each best rate on an edge of the grid (the optimum may lie beyond it)."""
    by: dict[tuple[str, str], dict[float, list[float]]] = {}
    for r in rows:
        loss = r.get("heldout_loss")
        if loss is not None and math.isfinite(loss):
            by.setdefault((r["card"], r["variant"]), {}).setdefault(r["lr"], []).append(loss)
    best, notes = {}, []
    grid = sorted({lr * m for m in multipliers})
    for key, losses in by.items():
        rate = min(losses, key=lambda x: np.mean(losses[x]))
        best[key] = rate
        if len(grid) >= 2 and (math.isclose(rate, grid[0]) or math.isclose(rate, grid[-1])):
            notes.append(f"lr search for {key[0]} ({key[1]}): best at the "
                         f"{'bottom' if math.isclose(rate, grid[0]) else 'top'} of the grid "
                         f"({rate:.3g}); widen --lr-grid, the optimum may lie beyond it")
    return best, notes


def rate_for(r: DesignedRun, lr_of, runs, lr: float) -> tuple[float, bool]:
    """The searched rate of r's size and variant; a size not searched takes the rate of the
    searched size of its variant nearest in activated parameters (False: not its own)."""
    if (r.card, r.variant) in lr_of:
        return lr_of[(r.card, r.variant)], True
    params = {x.card: x.active_params for x in runs}
    same = [(c, v) for c, v in lr_of if v == r.variant]
    if not same:
        return lr, False
    near = min(same, key=lambda cv: abs(math.log(params[cv[0]] / r.active_params)))
    return lr_of[near], False
