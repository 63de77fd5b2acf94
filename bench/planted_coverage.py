"""Coverage of the headline estimator on planted truth (issue 20), laid out like the project's
sweeps: an IsoFLOP grid (3 levels x 5 sizes x 2 seeds) and the reference sweep's grid
(bench/results/reference-sweep/runs.csv: 3 sizes x 3 budgets x 3 seeds). Per data set a
Chinchilla-form law per variant (token choice 1.25x, expert choice 1.5x dense), 1% noise per
run; it prints, per grid and variant, how often the 95% interval covers the truth, how often
the output says the design cannot identify the multiplier, and the median estimate and
minimum detectable multiplier. About 2 minutes on one core at the defaults.

    python bench/planted_coverage.py [--sets 20] [--n-boot 100]
    python bench/planted_coverage.py --table bench/results/isoflop-cpu/runs.csv --noise 0.083

``--table``: only that run table's own layout (its dense rows' sizes, tokens and seeds, a size
per card and level), at ``--noise`` (e.g. the seed noise its fit measured).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ecdit_scale.scaling.evidence import fit_headline, headline_data
from ecdit_scale.scaling.planted import (
    PLANTED_MULTIPLIERS,
    GridPoint,
    isoflop_grid,
    planted_table,
    table_grid,
)

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=int, default=20)
    ap.add_argument("--n-boot", type=int, default=100)
    ap.add_argument("--table", type=Path, default=None, help="a run table whose layout to plant")
    ap.add_argument("--noise", type=float, default=0.01, help="per-run noise (SD of log loss)")
    args = ap.parse_args()
    if args.table is not None:
        dense = pd.read_csv(args.table).query("ffn_kind == 'dense'")
        level = dense["flops_level"] if "flops_level" in dense else pd.Series("", dense.index)
        grids = {f"{args.table}": [  # a size per card and (IsoFLOP) level
            GridPoint(size=f"{r.card}@{lv}", active_params=float(r.active_params),
                      tokens=float(r.tokens_seen), seed=int(r.seed))
            for r, lv in zip(dense.itertuples(), level, strict=True)]}
    else:
        ref = pd.read_csv(ROOT / "bench" / "results" / "reference-sweep" / "runs.csv")
        grids = {"isoflop (1e11-1e13, 5 sizes, 2 seeds)": isoflop_grid((1e11, 1e12, 1e13)),
                 "reference sweep grid": table_grid(ref)}
    print(f"{'grid':40} {'variant':14} {'truth':>5} {'covered':>8} {'cannot id':>9} "
          f"{'median':>7} {'median MDM':>10}")
    for name, grid in grids.items():
        out: dict[str, list] = {v: [] for v in PLANTED_MULTIPLIERS if v != "dense"}
        for k in range(args.sets):
            fit = fit_headline(headline_data(planted_table(grid, seed=1000 + k,
                                                               noise=args.noise), "heldout_loss"),
                               n_boot=args.n_boot, seed=k, constancy=False)
            for c in fit.comparisons:
                out[c.variant].append(c)
        for variant, comps in out.items():
            truth = PLANTED_MULTIPLIERS[variant]
            covered = sum(c.interval is not None and c.interval.contains(truth) for c in comps)
            unidentified = sum(not c.identified for c in comps)
            print(f"{name:40} {variant:14} {truth:5.2f} {covered:>4}/{len(comps):<3} "
                  f"{unidentified:>5}/{len(comps):<3} {np.median([c.value for c in comps]):7.3f} "
                  f"{np.median([c.minimum_detectable for c in comps]):10.3f}")


if __name__ == "__main__":
    main()
