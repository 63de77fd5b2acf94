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
and multi-start L-BFGS by the engine in `robust`; the bootstrap resamples runs within each
kind, all resamples refitted in one batch.
"""

from __future__ import annotations

import math

import numpy as np

from .formulas import DEFAULT_LEVEL, SharedPowerLaw, percentile_interval
from .results import SharedFit
from .robust import (
    ALPHA_BOUNDS,
    HUBER_DELTA,
    FitError,
    best_of_starts,
    check_loss_varies,
    multistart,
    resample_weights,
    single_threaded_blas,
    weighted_huber,
)

# Shape suffixes: an array named x_RN has dims (R, N).
#   N rows of the run table   K FFN kinds   R bootstrap resamples   S starts per
#   resample   B problems minimised in one batch   P fitted parameters

MIN_RUNS_PER_KIND = 2
E_FRACTIONS = (0.05, 0.3, 0.6, 0.85, 0.97)
ALPHAS = (0.05, 0.2, 0.5, 1.0)
BOOTSTRAP_START_STEP = 4  # bootstrap refits: the point fit plus every 4th grid start


def shared_objective(theta_BP, x_BN, onehot_NK, log_loss_BN, w_BN=None):
    """Mean Huber(logsumexp(e, a_k - alpha·x) - log L)/delta² and its gradient, per problem.
    theta = [e, alpha, a_0, ..., a_{K-1}]; x is log C, normalised; onehot marks each run's kind;
    w_BN weights the rows of each problem (a resample; None: all 1)."""
    e_B1, alpha_B1 = theta_BP[:, :1], theta_BP[:, 1:2]
    z1 = theta_BP[:, 2:] @ onehot_NK.T - alpha_B1 * x_BN
    zmax = np.maximum(e_B1, z1)
    w0, w1 = np.exp(e_B1 - zmax), np.exp(z1 - zmax)
    total = w0 + w1
    r = zmax + np.log(total) - log_loss_BN
    psi, huber_B, scale = weighted_huber(r, HUBER_DELTA, w_BN)
    scale = np.reshape(scale, (-1, 1))
    w0, w1 = w0 / total, w1 / total
    grad = np.empty_like(theta_BP)
    grad[:, 0] = (w0 * psi).sum(axis=1)
    grad[:, 1] = -(w1 * x_BN * psi).sum(axis=1)
    grad[:, 2:] = (w1 * psi) @ onehot_NK
    return huber_B * scale[:, 0], grad * scale


def _starts(x_N, kind_N, loss_N, n_kinds) -> list[np.ndarray]:
    starts = []
    for e_frac in E_FRACTIONS:
        E = e_frac * loss_N.min()
        for alpha in ALPHAS:
            a = [np.log(np.median(loss_N[kind_N == k] - E)) + alpha * np.median(x_N[kind_N == k])
                 for k in range(n_kinds)]
            starts.append(np.array([math.log(E), alpha, *a]))
    return starts


def _bounds(n_kinds: int) -> tuple[np.ndarray, np.ndarray]:
    lower = np.array([-np.inf, ALPHA_BOUNDS[0]] + [-np.inf] * n_kinds)
    upper = np.array([np.inf, ALPHA_BOUNDS[1]] + [np.inf] * n_kinds)
    return lower, upper


def _law(theta, kinds, x_ref) -> SharedPowerLaw:
    e, alpha = theta[0], theta[1]
    return SharedPowerLaw(E=math.exp(e), alpha=float(alpha),
                          A={k: math.exp(theta[2 + i] + alpha * x_ref)
                             for i, k in enumerate(kinds)})


def _resamples(groups: list[np.ndarray], n_boot: int, seed) -> np.ndarray:
    """Runs resampled within each kind, so every kind stays present: (n_boot, n_runs)."""
    rng = np.random.default_rng(seed)
    n = sum(len(g) for g in groups)
    return np.array([np.concatenate([rng.choice(g, size=len(g)) for g in groups])
                     for _ in range(n_boot)], dtype=int).reshape(n_boot, n)


@single_threaded_blas
def fit_shared_power_law(compute_flops, loss, kinds, *, n_boot: int = 200, seed=0,
                         level: float = DEFAULT_LEVEL, point_rows=None,
                         boot_weights=None) -> SharedFit:
    """point_rows (a mask) limits the point fit to some rows (the frontier of each kind);
    boot_weights (resamples x rows) replaces the bootstrap of rows within each kind (e.g. by
    training run, with the frontier chosen inside each resample: `runlevel`)."""
    C = np.asarray(compute_flops, dtype=float)
    L = np.asarray(loss, dtype=float)
    labels = np.asarray(kinds)
    names = tuple(dict.fromkeys(labels.tolist()))
    if len(names) < 2:
        raise FitError("shared power-law fit: needs at least two FFN kinds")
    point = np.ones(len(C), bool) if point_rows is None else np.asarray(point_rows, bool)
    counts = {k: int((labels[point] == k).sum()) for k in names}
    if min(counts.values()) < MIN_RUNS_PER_KIND or point.sum() < len(names) + 3:
        raise FitError(f"shared power-law fit: too few runs per kind ({counts})")
    if not (np.all(np.isfinite(C) & (C > 0)) and np.all(np.isfinite(L) & (L > 0))):
        raise FitError("shared power-law fit: compute and loss must be finite and > 0")
    for k in names:
        check_loss_varies(L[point & (labels == k)], what=f"shared power-law fit ({k})")
    n_kinds = len(names)
    kind_N = np.array([names.index(k) for k in labels])
    x_ref = float(np.mean(np.log(C[point])))
    x_N = np.log(C) - x_ref
    onehot_NK = (kind_N[:, None] == np.arange(n_kinds)).astype(float)
    log_loss_N = np.log(L)
    lower, upper = _bounds(n_kinds)

    def point_fun(theta, rows):
        return shared_objective(theta, x_N[None], onehot_NK, log_loss_N[None],
                                w_BN=point.astype(float)[None])

    theta, objective = multistart(point_fun, _starts(x_N[point], kind_N[point], L[point], n_kinds),
                                  lower, upper, what="shared power-law fit")
    if boot_weights is None:
        groups = [np.flatnonzero(kind_N == i) for i in range(n_kinds)]
        w_RN = resample_weights(_resamples(groups, n_boot, seed), len(C))
    else:
        w_RN = np.asarray(boot_weights, dtype=float).reshape(-1, len(C))
    laws = []
    if len(w_RN):
        starts = []
        for w_N in w_RN:
            drawn = np.repeat(np.arange(len(C)), np.rint(w_N).astype(int))
            starts.append([theta, *_starts(x_N[drawn], kind_N[drawn], L[drawn],
                                           n_kinds)[::BOOTSTRAP_START_STEP]])
        starts_RSP = np.array(starts)
        n_s = starts_RSP.shape[1]

        def boot(theta_b, rows):
            return shared_objective(theta_b, x_N[None], onehot_NK, log_loss_N[None],
                                    w_BN=w_RN[rows // n_s])

        theta_RP, f_R = best_of_starts(boot, starts_RSP, lower, upper)
        laws = [_law(t, names, x_ref) for t in theta_RP[np.isfinite(f_R)]]
    ci = {"E": percentile_interval([b.E for b in laws], level),
          "alpha": percentile_interval([b.alpha for b in laws], level)}
    ci.update({f"A:{k}": percentile_interval([b.A[k] for b in laws], level) for k in names})
    return SharedFit(law=_law(theta, names, x_ref), n_runs=counts, huber_objective=objective,
                     ci={k: v for k, v in ci.items() if v is not None},
                     bootstrap_laws=tuple(laws), level=level)
