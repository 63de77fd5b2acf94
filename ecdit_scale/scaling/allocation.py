"""Spend a compute budget by a fitted law: the activated parameters N and tokens D with
C = k·N·D that minimise the headline law's L_k(N, D) for one variant, with bootstrap intervals.

With constant scales the variant's optimum is the baseline's at s_N·s_D·C, mapped back
(N = N_b/s_N, D = D_b/s_D); the baseline's optimum is Hoffmann et al. 2022 eq. 4:

    N_opt(C) = G·(C/k)^(beta/(alpha+beta)),  G = (alpha·A/(beta·B))^(1/(alpha+beta))

With a size-dependent scale there is no closed form, so every allocation is found by a
golden-section search on log N along C = k·N·D (the same search serves both cases, and the
test compares it with eq. 4).

Whether a loss may be quoted depends on how far C lies beyond the measured compute:
within EXTRAPOLATION_FACTOR of it the fitted loss and its interval are printed; beyond it
only the allocation, with a plain extrapolation warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .formulas import DEFAULT_LEVEL, Interval, percentile_interval
from .headline import HeadlineLaw

EXTRAPOLATION_FACTOR = 10.0  # a loss is quoted within this factor of the measured compute
SEARCH_DECADES = 8.0  # the search spans N_guess·10^±8
GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True)
class Allocation:
    variant: str
    compute_flops: float
    flops_per_param_token: float
    active_params: float
    tokens: float
    loss: float
    params_interval: Interval | None = None
    tokens_interval: Interval | None = None
    loss_interval: Interval | None = None
    beyond_measured: float = 1.0  # C / largest measured compute (1 when within the range)

    @property
    def extrapolated(self) -> bool:
        return self.beyond_measured > EXTRAPOLATION_FACTOR

    def to_dict(self) -> dict:
        def iv(i):
            return i.to_dict() if i else None
        return {"variant": self.variant, "compute_flops": self.compute_flops,
                "flops_per_param_token": self.flops_per_param_token,
                "active_params": self.active_params, "tokens": self.tokens, "loss": self.loss,
                "params_interval": iv(self.params_interval),
                "tokens_interval": iv(self.tokens_interval),
                "loss_interval": iv(self.loss_interval),
                "beyond_measured": self.beyond_measured, "extrapolated": self.extrapolated}


def optimal_params(law: HeadlineLaw, variant: str, compute_flops: float, k: float) -> float:
    """The N minimising L_variant(N, C/(k·N)): golden-section search on log N."""
    guess = math.sqrt(compute_flops / k)

    def f(x):
        n = math.exp(x)
        return float(law.loss(variant, n, compute_flops / (k * n)))

    half = SEARCH_DECADES * math.log(10)
    lo, hi = math.log(guess) - half, math.log(guess) + half
    a, b = hi - GOLDEN * (hi - lo), lo + GOLDEN * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(200):
        if hi - lo < 1e-9:
            break
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - GOLDEN * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + GOLDEN * (hi - lo)
            fb = f(b)
    return math.exp((lo + hi) / 2)


def allocate(law: HeadlineLaw, variant: str, compute_flops: float, k: float, *,
             bootstrap_laws=(), level: float = DEFAULT_LEVEL,
             max_measured_flops: float = math.inf) -> Allocation:
    """The compute-optimal (N, D) and loss at C for `variant`, intervals from the bootstrap
    laws (each law's own optimum)."""
    n = optimal_params(law, variant, compute_flops, k)
    d = compute_flops / (k * n)
    samples = []
    for b in bootstrap_laws:
        nb = optimal_params(b, variant, compute_flops, k)
        db = compute_flops / (k * nb)
        samples.append((nb, db, float(b.loss(variant, nb, db))))
    s = np.array(samples).reshape(-1, 3)
    beyond = compute_flops / max_measured_flops if math.isfinite(max_measured_flops) else 1.0
    return Allocation(
        variant=variant, compute_flops=float(compute_flops), flops_per_param_token=float(k),
        active_params=n, tokens=d, loss=float(law.loss(variant, n, d)),
        params_interval=percentile_interval(s[:, 0], level) if len(s) else None,
        tokens_interval=percentile_interval(s[:, 1], level) if len(s) else None,
        loss_interval=percentile_interval(s[:, 2], level) if len(s) else None,
        beyond_measured=max(1.0, beyond))
