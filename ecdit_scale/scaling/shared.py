"""A joint fit of every FFN kind with one irreducible loss and one exponent:

    L_k(C) = E + A_k · C^(-alpha)

E is a property of the data (the loss no model removes) and, over a narrow compute range, one
exponent is all a small sweep can resolve; what differs between routing kinds is the offset
A_k. Routed-MoE scaling studies compare kinds this way (Clark et al. 2022, "Unified scaling
laws for routed language models", compare at shared exponents). The effective compute
multiplier of kind k over a baseline b at equal loss then does not depend on the loss:

    C_b(L) / C_k(L) = (A_b / A_k)^(1/alpha)

which a sweep of a few sizes can pin down far better than the ratio of two separately fitted
three-constant laws (whose E trades off against alpha). Fitted in log space with a Huber loss
and multi-start L-BFGS-B, as fit.py; bootstrap resamples runs within each kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from .fit import (_ALPHA_BOUNDS, _LBFGS_OPTIONS, HUBER_DELTA, FitError, Interval, Multiplier,
                  _single_threaded_blas, percentile_interval)

MIN_RUNS_PER_KIND = 2
_E_FRACTIONS = (0.05, 0.3, 0.6, 0.85, 0.97)
_ALPHAS = (0.05, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class SharedPowerLaw:
    E: float
    alpha: float
    A: dict[str, float]

    def loss(self, kind: str, compute_flops):
        return self.E + self.A[kind] * np.power(compute_flops, -self.alpha)

    def multiplier(self, kind: str, baseline: str) -> float:
        return (self.A[baseline] / self.A[kind]) ** (1.0 / self.alpha)

    def to_dict(self) -> dict:
        return {"E": float(self.E), "alpha": float(self.alpha),
                "A": {k: float(v) for k, v in self.A.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "SharedPowerLaw":
        return cls(E=float(d["E"]), alpha=float(d["alpha"]),
                   A={k: float(v) for k, v in d["A"].items()})


@dataclass(frozen=True)
class SharedFit:
    law: SharedPowerLaw
    n_runs: dict[str, int]
    huber_objective: float
    ci: dict[str, Interval]  # E, alpha, A[kind] as "A:kind"
    bootstrap_laws: tuple[SharedPowerLaw, ...]
    level: float

    def multiplier(self, kind: str, baseline: str) -> Multiplier:
        samples = [b.multiplier(kind, baseline) for b in self.bootstrap_laws]
        return Multiplier(
            kind=kind, baseline_kind=baseline, loss=math.nan, reference_compute_flops=math.nan,
            value=self.law.multiplier(kind, baseline),
            interval=percentile_interval(samples, self.level), n_boot_used=len(samples),
            note="shared E and alpha: the same at every loss")

    def to_dict(self) -> dict:
        return {"law": self.law.to_dict(), "n_runs": dict(self.n_runs),
                "huber_objective": float(self.huber_objective),
                "ci": {k: v.to_dict() for k, v in self.ci.items()},
                "bootstrap_laws": [b.to_dict() for b in self.bootstrap_laws],
                "level": float(self.level)}

    @classmethod
    def from_dict(cls, d: dict) -> "SharedFit":
        return cls(law=SharedPowerLaw.from_dict(d["law"]), n_runs=dict(d["n_runs"]),
                   huber_objective=float(d["huber_objective"]),
                   ci={k: Interval.from_dict(v) for k, v in d["ci"].items()},
                   bootstrap_laws=tuple(SharedPowerLaw.from_dict(b) for b in d["bootstrap_laws"]),
                   level=float(d["level"]))


def _objective(theta, x_N, kind_N, log_loss_N, n_kinds, delta=HUBER_DELTA):
    """Mean Huber(logsumexp(e, a_k - alpha·x) - log L)/delta² and its gradient.
    theta = [e, alpha, a_0, ..., a_{K-1}]; x is log C, normalised."""
    e, alpha, a_K = theta[0], theta[1], theta[2:]
    z1 = a_K[kind_N] - alpha * x_N
    zmax = np.maximum(e, z1)
    w0, w1 = np.exp(e - zmax), np.exp(z1 - zmax)
    s = w0 + w1
    r = zmax + np.log(s) - log_loss_N
    w0, w1 = w0 / s, w1 / s
    abs_r = np.abs(r)
    huber = np.where(abs_r <= delta, 0.5 * r**2, delta * (abs_r - 0.5 * delta))
    psi = np.clip(r, -delta, delta)
    scale = 1.0 / (len(r) * delta**2)
    grad = np.empty_like(theta)
    grad[0] = w0 @ psi
    grad[1] = -(w1 * x_N) @ psi
    grad[2:] = np.bincount(kind_N, weights=w1 * psi, minlength=n_kinds)
    return huber.sum() * scale, grad * scale


def _starts(x_N, kind_N, loss_N, n_kinds):
    for e_frac in _E_FRACTIONS:
        E = e_frac * loss_N.min()
        for alpha in _ALPHAS:
            a = [np.log(np.median(loss_N[kind_N == k] - E)) + alpha * np.median(x_N[kind_N == k])
                 for k in range(n_kinds)]
            yield np.array([math.log(E), alpha, *a])


def _solve(x_N, kind_N, loss_N, n_kinds, warm=None):
    starts = list(_starts(x_N, kind_N, loss_N, n_kinds))
    if warm is not None:
        starts = [warm, *starts[::4]]
    bounds = [(None, None), _ALPHA_BOUNDS] + [(None, None)] * n_kinds
    best = None
    for theta0 in starts:
        res = minimize(_objective, theta0, args=(x_N, kind_N, np.log(loss_N), n_kinds),
                       jac=True, method="L-BFGS-B", bounds=bounds, options=_LBFGS_OPTIONS)
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise FitError("shared power-law fit: no finite optimum from any start")
    return best.x, float(best.fun)


def _law(theta, kinds, x_ref) -> SharedPowerLaw:
    e, alpha = theta[0], theta[1]
    return SharedPowerLaw(E=math.exp(e), alpha=float(alpha),
                          A={k: math.exp(theta[2 + i] + alpha * x_ref) for i, k in enumerate(kinds)})


@_single_threaded_blas
def fit_shared_power_law(compute_flops, loss, kinds, *, n_boot: int = 200, seed=0,
                         level: float = 0.95) -> SharedFit:
    C = np.asarray(compute_flops, dtype=float)
    L = np.asarray(loss, dtype=float)
    labels = np.asarray(kinds)
    names = tuple(dict.fromkeys(labels.tolist()))
    if len(names) < 2:
        raise FitError("shared power-law fit: needs at least two FFN kinds")
    counts = {k: int((labels == k).sum()) for k in names}
    if min(counts.values()) < MIN_RUNS_PER_KIND or len(C) < len(names) + 3:
        raise FitError(f"shared power-law fit: too few runs per kind ({counts})")
    if not (np.all(C > 0) and np.all(L > 0)):
        raise FitError("shared power-law fit: compute and loss must be > 0")
    kind_N = np.array([names.index(k) for k in labels])
    x_ref = float(np.mean(np.log(C)))
    x_N = np.log(C) - x_ref
    theta, objective = _solve(x_N, kind_N, L, len(names))
    rng = np.random.default_rng(seed)
    laws = []
    groups = [np.flatnonzero(kind_N == i) for i in range(len(names))]
    for _ in range(n_boot):  # resample runs within each kind, so every kind stays present
        idx = np.concatenate([rng.choice(g, size=len(g)) for g in groups])
        try:
            t_b, _ = _solve(x_N[idx], kind_N[idx], L[idx], len(names), warm=theta)
        except FitError:
            continue
        laws.append(_law(t_b, names, x_ref))
    ci = {"E": percentile_interval([b.E for b in laws], level),
          "alpha": percentile_interval([b.alpha for b in laws], level)}
    ci.update({f"A:{k}": percentile_interval([b.A[k] for b in laws], level) for k in names})
    return SharedFit(law=_law(theta, names, x_ref), n_runs=counts, huber_objective=objective,
                     ci={k: v for k, v in ci.items() if v is not None},
                     bootstrap_laws=tuple(laws), level=level)
