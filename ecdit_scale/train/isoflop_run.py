"""Train an IsoFLOP design (`train.isoflop`): the learning-rate search first (per size and
variant, at the middle level, >= 2 seeds), then every run of the design at its size's best
rate, through the same launcher, resume and records as `sweep` (`train.sweep`), ``parallel``
launches at once; finished runs are skipped and interrupted ones resumed. The run table gets
the level (`flops_level`, and as `budget`, so the L(C) check takes the best size of each
level), the rate each run used and whether the search chose it; `lr-search.csv` keeps every
search run."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from .. import sizes
from ..config import save_model_config
from .isoflop import Design, DesignedRun
from .records import RunDir
from .sweep import SweepResult, SweepRun, SweepSpec, _train_all, table_rows

MIN_STEPS = 10  # a sweep run needs at least this many steps (SweepSpec)
MAX_LR_EXTENSIONS = 2  # grid points added beyond an edge that won, per size and variant


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
                holdout: int, device: str, out: Path, parallel: int = 1,
                stop_at: float | None = None, on_event=None) -> SweepResult:
    """Train the design; ``parallel`` launches at once; past ``stop_at`` (a time.monotonic()
    deadline) no new launch starts. One warm-up for every run, as a sweep's: a quarter of
    the shortest run, at most 100 steps."""
    import pandas as pd

    from ..scaling.table import save_run_table

    out = Path(out)
    runs = [r for r in design.runs if r.steps >= MIN_STEPS]
    result = SweepResult(table_path=out / "runs.csv", stop_at=stop_at)
    result.notes += list(design.notes)
    result.notes += [f"{_name(r)}: {r.steps} steps, under {MIN_STEPS}: not trained"
                     for r in design.runs if r.steps < MIN_STEPS]
    if not runs:
        return result
    spec = SweepSpec(steps=min(r.steps for r in runs), budgets=(1.0,), seeds=(0,),
                     schedule="wsd", nproc=nproc, micro_batch=micro_batch, dataset=dataset,
                     holdout=holdout, lr=lr, device=device, out=str(out))
    n = len(runs)
    from .sweep_slots import sweep_slots

    slots = sweep_slots(parallel=parallel, nproc=nproc, device=device, hostfile=None, out=out)

    def sweep_run(r: DesignedRun, rate: float, folder: str, tail: str = "") -> SweepRun:
        return SweepRun(card=_card(out, r), run_dir=out / folder / (_name(r) + tail),
                        steps=r.steps, seed=r.seed, lr=rate, budgets=(1.0,), budget=1.0)

    search = [r for r in runs if r.purpose == "lr-search"]
    batch = list(search)
    for _ in range(1 + MAX_LR_EXTENSIONS):  # the grid, then steps beyond an edge that won
        found: dict[int, dict[str, Any]] = {}

        def searched(i: int, run: SweepRun, *, batch=batch, found=found) -> None:
            r = batch[i]
            s = RunDir(run.run_dir).read_summary()
            found[i] = {"card": r.card, "variant": r.variant, "seed": r.seed, "lr": run.lr,
                        "steps": r.steps, "heldout_loss": s.get("heldout_loss")}

        _train_all(spec, [sweep_run(r, lr * r.lr_multiplier, "lr-search") for r in batch],
                   result, on_event, 0, n, slots, searched)
        result.lr_search += [found[i] for i in sorted(found)]
        lr_of, _ = best_rates(result.lr_search)
        batch = extend_grid(search, lr_of, lr)
        if not batch:
            break
        search += batch
    if search:
        save_run_table(pd.DataFrame(result.lr_search), out / "lr-search.csv")
    lr_of, notes = best_rates(result.lr_search)
    result.notes += notes
    result.lr_of = {f"{c}/{v}": x for (c, v), x in lr_of.items()}
    main = [r for r in runs if r.purpose == "sweep"]
    rates = [rate_for(r, lr_of, runs, lr) for r in main]
    rows: dict[int, list[dict[str, Any]]] = {}

    def add_rows(i: int, run: SweepRun) -> None:
        r = main[i]
        rows[i] = table_rows(spec, run)
        for row in rows[i]:
            row.update(name=_name(r), card=r.card, run_group=_name(r),
                       flops_level=r.level_flops, budget=f"{r.level_flops:.3g}",
                       lr_searched=rates[i][1], step_fraction=1.0)
        result.rows = [x for k in sorted(rows) for x in rows[k]]
        save_run_table(pd.DataFrame(result.rows), result.table_path)

    def main_run(r: DesignedRun, rate: float) -> SweepRun:
        """A search run of the same size, level and seed at this rate is this run: reuse it."""
        twin = next((x for x in search if (x.card, x.level_flops, x.seed) ==
                     (r.card, r.level_flops, r.seed) and math.isclose(lr * x.lr_multiplier, rate)),
                    None)
        return sweep_run(twin, rate, "lr-search") if twin else sweep_run(r, rate, "runs")

    first = [main_run(r, rates[i][0]) for i, r in enumerate(main)]
    _train_all(spec, first, result, on_event, len(search), n, slots, add_rows)
    # a run that diverged at its size's searched rate (searched at the middle level: a longer
    # run may not take it) is trained again, once, at half that rate, in a folder of its own
    again = [i for i, run in enumerate(first) if _diverged(run)]
    for i in again:
        rates[i] = (rates[i][0] / 2, False)
        result.notes.append(f"{first[i].run_dir.name} diverged at lr {2 * rates[i][0]:.3g}: "
                            f"trained again at {rates[i][0]:.3g}")
        result.failed = [f for f in result.failed
                         if not f.startswith(f"{first[i].run_dir.name}:")]
    _train_all(spec, [sweep_run(main[i], rates[i][0], "runs", f"-lr{rates[i][0]:.3g}")
                      for i in again], result, on_event, len(search), n, slots,
               lambda j, run: add_rows(again[j], run))
    return result


def _diverged(run: SweepRun) -> bool:
    return RunDir(run.run_dir).read_summary().get("status") == "diverged"


def best_rates(rows: list[dict[str, Any]]) -> tuple[dict[tuple[str, str], float], list[str]]:
    """Per (card, variant) the rate with the best mean held-out loss over its seeds, and a note
    for each best rate on an edge of the rates it searched (the optimum may lie beyond)."""
    by: dict[tuple[str, str], dict[float, list[float]]] = {}
    for r in rows:  # a rate that diverged (no held-out loss) searched, and lost
        loss = r.get("heldout_loss")
        ok = loss is not None and math.isfinite(loss)
        by.setdefault((r["card"], r["variant"]), {}).setdefault(r["lr"], []).append(
            loss if ok else math.inf)
    best, notes = {}, []
    for key, losses in by.items():
        rate = min(losses, key=lambda x: np.mean(losses[x]))
        if not math.isfinite(np.mean(losses[rate])):
            continue  # every rate diverged: no best
        best[key] = rate
        grid = sorted(losses)
        if len(grid) >= 2 and rate in (grid[0], grid[-1]):
            notes.append(f"lr search for {key[0]} ({key[1]}): best at the "
                         f"{'bottom' if rate == grid[0] else 'top'} of the rates searched "
                         f"({grid[0]:.3g}-{grid[-1]:.3g}); the optimum may lie beyond them")
    return best, notes


def extend_grid(search: list[DesignedRun], lr_of, lr: float) -> list[DesignedRun]:
    """For each (size, variant) whose best rate is an edge of what it has searched, the search
    runs one grid step beyond that edge (the grid's ratio between neighbours), same seeds and
    level, so the best rate ends up bracketed."""
    out = []
    for (card, variant), best in lr_of.items():
        mine = [r for r in search if (r.card, r.variant) == (card, variant)]
        mults = sorted({r.lr_multiplier for r in mine})
        if len(mults) < 2:
            continue
        best_m = best / lr
        if math.isclose(best_m, mults[-1]):
            new = mults[-1] * mults[-1] / mults[-2]
        elif math.isclose(best_m, mults[0]):
            new = mults[0] * mults[0] / mults[1]
        else:
            continue
        seen = {(r.seed, r.level_flops) for r in mine}
        base = mine[0]
        out += [dataclasses.replace(base, seed=seed, level_flops=level, lr_multiplier=new)
                for seed, level in sorted(seen)]
    return out


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
