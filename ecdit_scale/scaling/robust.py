"""The robust-fit engine: Huber loss of log residuals, multi-start L-BFGS, bootstrap.

Method: Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models", Approach 3)
as re-done by Besiroglu et al. 2024 ("Chinchilla Scaling: A replication attempt"). A law is a
sum of exponentials in log space,

    log L = logsumexp(e, a_1 - alpha_1·x_1, a_2 - alpha_2·x_2, ...)   (x_t = log input, centred)

and the fit minimises the mean Huber loss (delta = 1e-3) of the log residuals. A point fit
runs L-BFGS from a grid of starts, all at once (`lbfgs.minimize_batch`), drops the starts that
end on the same optimum, and polishes the best distinct optima with scipy's L-BFGS-B.
Bootstrap refits start at the point fit and a few grid starts, every resample in one batch.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

from .lbfgs import BatchObjective, minimize_batch

# Shape suffixes: an array named x_RN has dims (R, N).
#   N rows of the run table   B problems minimised in one batch (starts, resamples)
#   T terms of a law   R bootstrap resamples   S starts per problem   P fitted parameters

try:  # L-BFGS on 3-7 parameters: BLAS threads only contend (10-40x slower on busy CPUs)
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - optional dependency
    threadpool_limits = None

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, Approach 3
ALPHA_BOUNDS = (1e-4, 5.0)
LBFGS_OPTIONS = {"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10}
BOOTSTRAP_GRID_STARTS = 4  # bootstrap refits start at the point fit plus this many grid starts
E_FRACTIONS_OF_MIN_LOSS = (0.2, 0.5, 0.8, 0.95)
ALPHA_STARTS = (0.1, 0.3, 0.6, 1.0)
TERM_SHARES = {1: ((1.0,),), 2: ((0.25, 0.75), (0.5, 0.5), (0.75, 0.25))}
# Two optima are one when their objectives agree this closely (relative); the optimiser's own
# tolerance (ftol = 1e-15) leaves them ~1e-13 apart, distinct local optima differ by > 1e-3.
SAME_OPTIMUM_RTOL = 1e-8
MAX_POLISHED = 3  # distinct optima polished with scipy after the batched multi-start

MIN_LOG_LOSS_SPREAD = 1e-6  # losses closer than this (relative) are one loss to a fit

# progress(what, done, total): called as work advances, for a caller that shows progress
Progress = Callable[[str, int, int], None]


class FitError(ValueError):
    """The data cannot support the requested fit (too few runs, degenerate inputs)."""


def single_threaded_blas(fn):
    """Run fn with BLAS limited to one thread (when threadpoolctl is installed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if threadpool_limits is None:
            return fn(*args, **kwargs)
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


def huber_terms_objective(theta_BP, logx_BTN, log_loss_BN, delta=HUBER_DELTA, w_BN=None):
    """Mean Huber(logsumexp(e, a_t - alpha_t·x_t) - log L) / delta² and its gradient, for a
    batch of problems. theta = [e, a_1, alpha_1, a_2, alpha_2, ...]; x_t are log inputs.
    w_BN: row weights (a resample's row counts; 0 leaves a row out), mean weighted by them."""
    e_B1 = theta_BP[:, :1]
    z_BTN = theta_BP[:, 1::2, None] - theta_BP[:, 2::2, None] * logx_BTN
    zmax_BN = np.maximum(e_B1, z_BTN.max(axis=1))
    w0_BN = np.exp(e_B1 - zmax_BN)
    w_BTN = np.exp(z_BTN - zmax_BN[:, None])
    sum_BN = w0_BN + w_BTN.sum(axis=1)
    r_BN = zmax_BN + np.log(sum_BN) - log_loss_BN
    psi_BN, huber_B, scale = weighted_huber(r_BN, delta, w_BN)
    psi_BN = psi_BN / sum_BN  # softmax weights = d logsumexp / d z, folded into psi
    wpsi_BTN = w_BTN * psi_BN[:, None]
    grad = np.empty_like(theta_BP)
    grad[:, 0] = (w0_BN * psi_BN).sum(axis=1)
    grad[:, 1::2] = wpsi_BTN.sum(axis=2)
    grad[:, 2::2] = -(wpsi_BTN * logx_BTN).sum(axis=2)
    return huber_B * scale, grad * np.reshape(scale, (-1, 1))


def weighted_huber(r_BN, delta, w_BN):
    """(psi, sum of huber, scale): psi and the sum weighted by w_BN (None: all 1), and the
    scale 1/(sum of weights · delta²) that turns the sum into a mean."""
    psi_BN, huber_B = huber(r_BN, delta)
    if w_BN is None:
        return psi_BN, huber_B, 1.0 / (r_BN.shape[-1] * delta**2)
    w_BN = np.broadcast_to(w_BN, r_BN.shape)
    _, huber_B = huber(r_BN, delta, w_BN)
    scale = 1.0 / (w_BN.sum(axis=-1) * delta**2)
    return psi_BN * w_BN, huber_B, scale


def huber(r, delta=HUBER_DELTA, w=None):
    """Huber loss of residuals r: (d huber / d r, the sum of huber over the last axis)."""
    abs_r = np.abs(r)
    huber = np.where(abs_r <= delta, 0.5 * r**2, delta * (abs_r - 0.5 * delta))
    if w is not None:
        huber = huber * w
    return np.clip(r, -delta, delta), huber.sum(axis=-1)


def grid_starts(logx_TN, log_loss_N) -> list[np.ndarray]:
    """Starts: E as a fraction of the smallest loss, exponents from a grid, each a_t set so
    the terms share the excess loss at the median input."""
    loss_N = np.exp(log_loss_N)
    n_terms = logx_TN.shape[0]
    median_T = np.median(logx_TN, axis=1)
    starts = []
    for e_frac in E_FRACTIONS_OF_MIN_LOSS:
        E = e_frac * loss_N.min()
        excess = np.median(loss_N) - E
        for alphas in itertools.product(ALPHA_STARTS, repeat=n_terms):
            for shares in TERM_SHARES[n_terms]:
                theta = [math.log(E)]
                for t in range(n_terms):
                    theta += [math.log(shares[t] * excess) + alphas[t] * median_T[t], alphas[t]]
                starts.append(np.array(theta))
    return starts


def thinned(starts: list[np.ndarray], n: int = BOOTSTRAP_GRID_STARTS) -> list[np.ndarray]:
    """n starts spread evenly over a grid."""
    step = max(1, len(starts) // n)
    return starts[step // 2::step]


def terms_bounds(n_terms: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of [e, a_1, alpha_1, ...]: only the exponents are bounded."""
    lower = [-np.inf] + [-np.inf, ALPHA_BOUNDS[0]] * n_terms
    upper = [np.inf] + [np.inf, ALPHA_BOUNDS[1]] * n_terms
    return np.array(lower), np.array(upper)


def multistart(fun: BatchObjective, starts: Sequence[np.ndarray], lower, upper, *,
               what: str) -> tuple[np.ndarray, float]:
    """The best optimum from every start: batched L-BFGS from all starts; starts that agree on
    an optimum are merged, and the best distinct optima are polished by scipy's L-BFGS-B."""
    starts_SP = np.array(starts, dtype=float)
    theta_SP, f_S, _ = minimize_batch(fun, starts_SP, lower, upper,
                                      group_B=np.zeros(len(starts_SP), dtype=int),
                                      **_batch_options())
    order = np.argsort(f_S, kind="stable")
    candidates: list[int] = []
    for i in order:
        if not np.isfinite(f_S[i]) or len(candidates) == MAX_POLISHED:
            break
        if all(not _same(f_S[i], f_S[j]) for j in candidates):
            candidates.append(int(i))
    if not candidates:
        raise FitError(f"{what}: the optimiser found no finite optimum from any start")
    best_theta, best_f = None, math.inf
    for i in candidates:
        theta, f = polish(fun, theta_SP[i], float(f_S[i]), lower, upper, row=i)
        if np.isfinite(f) and f < best_f:
            best_theta, best_f = theta, f
    return best_theta, best_f


def polish(fun: BatchObjective, theta: np.ndarray, f: float, lower, upper, *, row: int = 0
           ) -> tuple[np.ndarray, float]:
    """Finish problem `row` of a batch with scipy's L-BFGS-B from theta (objective f); the
    better of the two points."""
    bounds = [(None if np.isinf(lo) else lo, None if np.isinf(hi) else hi)
              for lo, hi in zip(lower, upper, strict=True)]
    rows = np.array([row])

    def one(t):
        value, grad = fun(t[None], rows)
        return float(value[0]), grad[0]

    from scipy.optimize import minimize  # here: `plan` reads fits without fitting (startup)

    res = minimize(one, theta, jac=True, method="L-BFGS-B", bounds=bounds, options=LBFGS_OPTIONS)
    if np.isfinite(res.fun) and res.fun <= f:
        return res.x, float(res.fun)
    return theta, f


def _same(f1: float, f2: float) -> bool:
    return abs(f1 - f2) <= SAME_OPTIMUM_RTOL * max(1.0, abs(f1), abs(f2))


def _batch_options() -> dict:
    return {"max_iter": LBFGS_OPTIONS["maxiter"], "ftol": LBFGS_OPTIONS["ftol"],
            "gtol": LBFGS_OPTIONS["gtol"], "same_rtol": SAME_OPTIMUM_RTOL}


def best_of_starts(fun: BatchObjective, starts_RSP: np.ndarray, lower, upper
                   ) -> tuple[np.ndarray, np.ndarray]:
    """R problems with S starts each, all minimised in one batch; fun's rows index the R·S
    problems (problem // S is the resample). Returns each resample's best (theta_RP, f_R);
    f is inf where no start reached a finite optimum. Ties go to the earlier start."""
    n_r, n_s, n_p = starts_RSP.shape
    # a start still improving after maxiter iterations keeps its last point, as scipy's would
    theta, f, _ = minimize_batch(fun, starts_RSP.reshape(n_r * n_s, n_p), lower, upper,
                                 group_B=np.repeat(np.arange(n_r), n_s), **_batch_options())
    f_RS = f.reshape(n_r, n_s)
    best = np.argmin(np.where(np.isfinite(f_RS), f_RS, np.inf), axis=1)
    return theta.reshape(n_r, n_s, n_p)[np.arange(n_r), best], f_RS[np.arange(n_r), best]


def bootstrap_indices(n_rows: int, n_boot: int, seed, *, min_unique: int = 1) -> np.ndarray:
    """n_boot resamples of row indices, with replacement (shape (n_kept, n_rows)); resamples
    with fewer than `min_unique` distinct rows cannot identify the constants and are dropped."""
    rng = np.random.default_rng(seed)
    kept = []
    for _ in range(n_boot):
        idx = rng.integers(0, n_rows, size=n_rows)
        if len(np.unique(idx)) >= min_unique:
            kept.append(idx)
    return np.array(kept, dtype=int).reshape(len(kept), n_rows)


def fit_terms(logx_TN: np.ndarray, log_loss_N: np.ndarray, *, what: str
              ) -> tuple[np.ndarray, float]:
    """Point fit of log L = logsumexp(e, a_t - alpha_t·x_t) from the full grid of starts."""
    logx_BTN, log_loss_BN = logx_TN[None], log_loss_N[None]

    def fun(theta, rows):
        return huber_terms_objective(theta, np.broadcast_to(logx_BTN, (len(rows), *logx_TN.shape)),
                                     np.broadcast_to(log_loss_BN, (len(rows), len(log_loss_N))))

    lower, upper = terms_bounds(logx_TN.shape[0])
    return multistart(fun, grid_starts(logx_TN, log_loss_N), lower, upper, what=what)


def bootstrap_terms(logx_TN: np.ndarray, log_loss_N: np.ndarray, w_RN: np.ndarray,
                    warm: np.ndarray) -> np.ndarray:
    """Refit every resample from the point fit `warm` and a thinned grid of starts, all in one
    batch; a resample is a row of weights w_RN (how often each row is drawn; 0 leaves it out,
    `resample_weights` turns drawn indices into weights). Returns theta_RP of the resamples
    that reached an optimum."""
    if len(w_RN) == 0:
        return np.empty((0, len(warm)))
    w_RN = np.asarray(w_RN, dtype=float)
    starts = []
    for w_N in w_RN:
        drawn = np.repeat(np.arange(len(w_N)), np.rint(w_N).astype(int))
        starts.append(np.array([warm, *thinned(grid_starts(logx_TN[:, drawn],
                                                          log_loss_N[drawn]))]))
    starts_RSP = np.array(starts)
    n_s = starts_RSP.shape[1]
    logx_1TN, log_loss_1N = logx_TN[None], log_loss_N[None]

    def fun(theta, rows):
        r = rows // n_s
        return huber_terms_objective(theta, logx_1TN, log_loss_1N, w_BN=w_RN[r])

    lower, upper = terms_bounds(logx_TN.shape[0])
    theta_RP, f_R = best_of_starts(fun, starts_RSP, lower, upper)
    return theta_RP[np.isfinite(f_R)]


def resample_weights(idx_RN: np.ndarray, n_rows: int) -> np.ndarray:
    """Drawn row indices (one resample a row) as row weights: how often each row was drawn."""
    idx_RN = np.asarray(idx_RN, dtype=int)
    return np.array([np.bincount(i, minlength=n_rows) for i in idx_RN],
                    dtype=float).reshape(len(idx_RN), n_rows)


def positive_columns(*columns, min_rows: int, what: str) -> list[np.ndarray]:
    """The inputs as float arrays of equal length, each finite and > 0 (fitted in log space)."""
    arrays = [np.asarray(c, dtype=float).ravel() for c in columns]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise FitError(f"{what}: inputs have different lengths {[len(a) for a in arrays]}")
    if n < min_rows:
        raise FitError(f"{what}: needs at least {min_rows} runs, got {n}")
    if not all(np.all(np.isfinite(a) & (a > 0)) for a in arrays):
        raise FitError(f"{what}: every input must be finite and > 0 (fitted in log space)")
    check_loss_varies(arrays[-1], what=what)
    return arrays


def check_loss_varies(loss, *, what: str) -> None:
    """FitError when the losses (the last input of every fit) are all but equal: E, A and the
    exponents then trade off freely, and no optimiser can pick one set."""
    log_loss = np.log(np.asarray(loss, dtype=float))
    spread = float(log_loss.max() - log_loss.min())
    if spread < MIN_LOG_LOSS_SPREAD:
        raise FitError(f"{what}: the loss is {float(np.exp(log_loss[0])):.6g} in all "
                       f"{len(log_loss)} runs (spread {spread:.1g} in log); a law needs losses "
                       "that change with compute, so its constants cannot be identified")
