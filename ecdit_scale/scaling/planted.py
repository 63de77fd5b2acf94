"""Run tables with a planted truth, laid out like the project's sweeps: every estimator is run
on these before it is believed (DESIGN.md, "How scaling evidence is gathered and read").

A grid is a list of (activated params, tokens) points per variant; `planted_table` puts a
Chinchilla-form law per variant on it (the baseline's L(N, D) with N and D scaled so the
variant has a chosen compute multiplier) and multiplies each run's loss by exp(noise).

Grids:
- `isoflop_grid`: per compute level, sizes spread by a factor around the compute-optimal size
  of the planted law, each trained on the tokens that spend the level (C = k·N·D).
- `table_grid`: the (size, tokens, seed) points of an existing run table, e.g. the reference
  sweep (`bench/results/reference-sweep/runs.csv`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .formulas import ChinchillaLaw

# Hoffmann et al. 2022 (Approach 3 fit, eq. 10): a Chinchilla-form law with realistic shape
CHINCHILLA_LAW = ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
FLOPS_PER_PARAM_TOKEN = 6.0  # C = 6·N·D (Kaplan et al. 2020)
PLANTED_MULTIPLIERS = {"dense": 1.0, "token-choice": 1.25, "expert-choice": 1.5}


@dataclass(frozen=True)
class GridPoint:
    size: str  # the size's name (the bootstrap's stratum together with the variant)
    active_params: float
    tokens: float
    seed: int
    level: float = math.nan  # the compute level of an IsoFLOP design (FLOPs), else NaN


def optimal_params(law: ChinchillaLaw, compute_flops: float,
                   k: float = FLOPS_PER_PARAM_TOKEN) -> float:
    """N_opt(C) for C = k·N·D (Hoffmann et al. 2022, eq. 4 with 6 replaced by k)."""
    s = law.alpha + law.beta
    G = (law.alpha * law.A / (law.beta * law.B)) ** (1.0 / s)
    return G * (compute_flops / k) ** (law.beta / s)


def isoflop_grid(levels, *, law: ChinchillaLaw = CHINCHILLA_LAW, sizes_per_level: int = 5,
                 spread: float = 4.0, seeds=(0, 1), k: float = FLOPS_PER_PARAM_TOKEN
                 ) -> list[GridPoint]:
    """Per level C: `sizes_per_level` sizes log-spaced over N_opt/spread..N_opt·spread, each
    trained on D = C/(k·N) tokens, every seed."""
    points = []
    for C in levels:
        n_opt = optimal_params(law, C, k)
        for f in np.geomspace(1 / spread, spread, sizes_per_level):
            N = n_opt * f
            for s in seeds:
                points.append(GridPoint(size=f"n{N:.3g}", active_params=N, tokens=C / (k * N),
                                        seed=int(s), level=float(C)))
    return points


def table_grid(df: pd.DataFrame, variant: str = "dense") -> list[GridPoint]:
    """The (size, activated params, tokens, seed) of one variant's rows of a run table."""
    rows = df[df["ffn_kind"] == variant]
    return [GridPoint(size=str(r["card"]).split("-")[0], active_params=float(r["active_params"]),
                      tokens=float(r["tokens_seen"]), seed=int(r["seed"]))
            for _, r in rows.iterrows()]


def planted_table(grid: list[GridPoint], *, law: ChinchillaLaw = CHINCHILLA_LAW,
                  multipliers: dict[str, float] | None = None, noise: float = 0.01,
                  seed=0, k: float = FLOPS_PER_PARAM_TOKEN, split: float = 0.5,
                  size_trend: dict[str, float] | None = None, n_ref: float = 1e6
                  ) -> pd.DataFrame:
    """A run table: every grid point for every variant, loss = the variant's law x
    exp(N(0, noise)) per run. A variant with multiplier m has s_N = m^split, s_D = m^(1-split)
    (so s_N·s_D = m); size_trend[variant] = g makes its s_N grow as (N/n_ref)^g (a multiplier
    that changes with size, for the constancy test)."""
    multipliers = dict(PLANTED_MULTIPLIERS if multipliers is None else multipliers)
    rng = np.random.default_rng(seed)
    rows = []
    for variant, m in multipliers.items():
        s_n, s_d = m ** split, m ** (1 - split)
        g = (size_trend or {}).get(variant, 0.0)
        for p in grid:
            trend = (p.active_params / n_ref) ** g
            true = float(law.loss(s_n * trend * p.active_params, s_d * p.tokens))
            loss = true * math.exp(rng.normal(0.0, noise))
            budget = f"{p.level:.3g}" if math.isfinite(p.level) else f"{p.tokens:.3g}"
            rows.append({
                "name": f"{p.size}-{variant}-D{p.tokens:.4g}-s{p.seed}",
                "card": f"{p.size}-{variant}",
                "ffn_kind": variant, "experts": 1 if variant == "dense" else 8,
                "params": p.active_params, "active_params": p.active_params,
                "images_seen": p.tokens / 64, "tokens_seen": p.tokens,
                "compute_flops": k * p.active_params * p.tokens, "seed": p.seed,
                "final_loss": loss, "smoothed_loss": loss, "heldout_loss": loss,
                "true_loss": true, "run_group": f"{p.size}-{variant}-s{p.seed}-{budget}",
                **({"flops_level": p.level, "budget": budget} if math.isfinite(p.level)
                   else {}),
            })
    return pd.DataFrame(rows)
