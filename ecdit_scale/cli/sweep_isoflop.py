"""`ecdit-scale sweep --design isoflop`: design the runs (train.isoflop), list them
(--dry-run) or train them (train.isoflop_run)."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from ..errors import ConfigError
from .common import console, err_console, print_json


def _optimum_from_fit(path: Path):
    """optimum(variant, C, k): the compute-optimal activated params of a fit's headline law."""
    from ..scaling.allocation import optimal_params
    from ..scaling.fit_file import load_fit
    from ..scaling.runlevel import kind_of

    fit = load_fit(path)
    if fit.headline is None:
        raise ConfigError(f"--prior-fit {path}: has no headline L(N, D) fit; refit the table "
                          "with this version")
    law = fit.headline.law
    kinds = {"dense": "dense", "tc": "token-choice", "ec": "expert-choice"}

    def optimum(variant: str, C: float, k: float) -> float:
        kind = kinds[variant[:2]] if variant != "dense" else "dense"
        names = [v for v in law.s_N if kind_of(v) == kind] or [next(iter(law.s_N))]
        return optimal_params(law, names[0], C, k)

    return optimum


def isoflop_sweep(*, flops: str, variants, seeds, tokens_per_param: float, prior_fit,
                  sizes_per_level: int, spread: float, lr_grid, dry_run: bool, json_out: bool,
                  micro_batch: int, nproc: int, lr: float, dataset: str, holdout: int,
                  device: str, out: Path, parallel: int) -> None:
    from ..train.isoflop import design_isoflop
    from ..train.sweep import VARIANTS

    if not flops.strip():
        raise ConfigError("--design isoflop: give --flops, compute levels such as 1e13,3e13,1e14")
    try:
        levels = [float(x) for x in flops.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--flops {flops!r}: FLOPs like 1e13,3e13,1e14") from None
    for v in variants:
        if v not in VARIANTS:
            raise ConfigError(f"--variants {v!r}: valid variants are {', '.join(VARIANTS)}")
    if not (math.isfinite(spread) and spread > 1):
        raise ConfigError(f"--spread {spread}: a factor > 1, e.g. 4")
    optimum = _optimum_from_fit(prior_fit) if prior_fit is not None else None
    design = design_isoflop(levels, variants=variants, seeds=seeds,
                            global_batch=micro_batch * nproc, sizes_per_level=sizes_per_level,
                            spread=spread, tokens_per_param=tokens_per_param, optimum=optimum,
                            lr_grid=lr_grid)
    if dry_run:
        if json_out:
            print_json({**design.to_dict(), "base_lr": lr})
            return
        _print_design(design, lr)
        return
    from ..train.isoflop_run import run_isoflop

    result = run_isoflop(design, lr=lr, nproc=nproc, micro_batch=micro_batch, dataset=dataset,
                         holdout=holdout, device=device, out=out, parallel=parallel)
    summary = {"table": str(result.table_path), "rows": len(result.rows), "lr": result.lr_of,
               "notes": result.notes, "failed": result.failed}
    if json_out:
        print_json(summary)
    else:
        console.print(f"{len(result.rows)} rows in {result.table_path}; failed "
                      f"{len(result.failed)}")
        for note in result.notes:
            err_console.print(f"note: {note}", highlight=False, soft_wrap=True, markup=False)
        console.print(f"next: ecdit-scale fit {result.table_path}")


def _print_design(design, lr: float) -> None:
    t = Table(title=f"IsoFLOP design ({design.prior}; {len(design.runs)} runs)")
    for col in ("purpose", "level FLOPs", "size", "variant", "activated", "steps", "FLOPs",
                "seed", "lr"):
        t.add_column(col)
    for r in design.runs:
        t.add_row(r.purpose, f"{r.level_flops:.3g}", r.card + (" (synth)" if r.synthesised else ""),
                  r.variant, f"{r.active_params:,}", f"{r.steps:,}", f"{r.flops:.3g}",
                  str(r.seed), f"{lr * r.lr_multiplier:.3g}" if r.purpose == "lr-search"
                  else "from search")
    console.print(t)
    for n in design.notes:
        err_console.print(f"note: {n}", highlight=False, soft_wrap=True, markup=False)
