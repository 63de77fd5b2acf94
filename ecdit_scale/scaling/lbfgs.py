"""Many small bound-constrained minimisations at once: a batched L-BFGS.

A bootstrap refits the same 3-7 parameter law to hundreds of resamples. One scipy call per
resample spends nearly all its time in Python overhead around an objective that costs a few
microseconds; here every problem keeps its own L-BFGS memory and line search, but the
objective is evaluated for all unfinished problems in one numpy call.

Per problem this is the textbook method (Nocedal & Wright, "Numerical Optimization", 2nd ed.,
algorithm 7.4, two-loop recursion, with the initial scaling of eq. 7.20), with simple bounds
handled by projection: a direction component that would leave the box at an active bound is
dropped, trial points are clipped into the box, and an Armijo backtracking line search accepts
the step. A problem stops on the same tests as scipy's L-BFGS-B: projected gradient below
`gtol`, or a relative decrease of the objective below `ftol`, or when no step decreases it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Shape suffixes: an array named theta_BP has dims (B, P).
#   B problems minimised together   P parameters of each

# fun(theta_BP, rows_B) -> (objective_B, gradient_BP) for the problems `rows` of the batch
BatchObjective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

_ARMIJO = 1e-4
_MAX_BACKTRACKS = 20  # as scipy's L-BFGS-B line search


def minimize_batch(fun: BatchObjective, theta0_BP: np.ndarray, lower_P: np.ndarray,
                   upper_P: np.ndarray, *, max_iter: int = 2000, ftol: float = 1e-15,
                   gtol: float = 1e-10, memory: int = 10, group_B: np.ndarray | None = None,
                   same_rtol: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise B independent problems; return (theta_BP, objective_B, finished_B).

    finished is False for the problems still improving after max_iter iterations. A problem
    whose objective is not finite at its start returns its start and objective inf.

    Multi-starts: problems with the same `group_B` label are starts of one problem. A start
    whose objective comes within `same_rtol` (relative) of an optimum another start of its
    group has already reached is stopped there: the two agree, and only the best counts."""
    lower_P = np.asarray(lower_P, float)
    upper_P = np.asarray(upper_P, float)
    x = np.clip(np.array(theta0_BP, dtype=float), lower_P, upper_P)
    n, p = x.shape
    f, g = fun(x, np.arange(n))
    f = np.where(np.isfinite(f) & np.isfinite(g).all(axis=1), f, np.inf)
    s_hist = np.zeros((n, memory, p))
    y_hist = np.zeros((n, memory, p))
    rho = np.zeros((n, memory))  # 0 marks an empty slot; the newest pair is at index -1
    active = np.isfinite(f)
    group = (np.zeros(n, dtype=int) if group_B is None
             else np.unique(group_B, return_inverse=True)[1])
    found = np.full(group.max() + 1 if n else 0, np.inf)  # best finished optimum per group
    for _ in range(max_iter):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        xr, gr = x[rows], g[rows]
        pg = np.clip(xr - gr, lower_P, upper_P) - xr
        converged = np.abs(pg).max(axis=1) <= gtol
        if group_B is not None:
            np.minimum.at(found, group[~active], f[~active])
            best = found[group[rows]]
            agree = np.abs(f[rows] - best) <= same_rtol * np.maximum(np.abs(best), 1.0)
            converged |= agree & np.isfinite(best)
        active[rows[converged]] = False
        rows, xr, gr = rows[~converged], xr[~converged], gr[~converged]
        if rows.size == 0:
            break
        d = _direction(gr, s_hist[rows], y_hist[rows], rho[rows])
        d = _keep_in_box(d, xr, lower_P, upper_P)
        uphill = (d * gr).sum(axis=1) >= 0
        if uphill.any():  # the memory misleads: forget it, go down the gradient
            lost = rows[uphill]
            s_hist[lost], y_hist[lost], rho[lost] = 0.0, 0.0, 0.0
            d[uphill] = _keep_in_box(-gr[uphill], xr[uphill], lower_P, upper_P)
        fresh = rho[rows, -1] == 0  # no curvature pair yet: a short first step
        t = np.where(fresh, np.minimum(1.0, 1.0 / np.maximum(np.linalg.norm(d, axis=1), 1e-300)),
                     1.0)
        x_new, f_new, g_new, moved = _line_search(fun, rows, xr, f[rows], gr, d, t,
                                                   lower_P, upper_P)
        active[rows[~moved]] = False  # no decrease along the direction: a stationary point
        rows, xr, gr = rows[moved], xr[moved], gr[moved]
        x_new, f_new, g_new = x_new[moved], f_new[moved], g_new[moved]
        f_old = f[rows]
        x[rows], f[rows], g[rows] = x_new, f_new, g_new
        s, y = x_new - xr, g_new - gr
        sy = (s * y).sum(axis=1)
        keep = sy > 1e-10 * (y * y).sum(axis=1)
        upd = rows[keep]
        s_hist[upd] = np.roll(s_hist[upd], -1, axis=1)
        y_hist[upd] = np.roll(y_hist[upd], -1, axis=1)
        rho[upd] = np.roll(rho[upd], -1, axis=1)
        s_hist[upd, -1], y_hist[upd, -1], rho[upd, -1] = s[keep], y[keep], 1.0 / sy[keep]
        scale = np.maximum(np.maximum(np.abs(f_old), np.abs(f_new)), 1.0)
        active[rows[(f_old - f_new) <= ftol * scale]] = False
    return x, f, ~active


def _direction(g, s_hist, y_hist, rho):
    """-H·g by the two-loop recursion over each problem's own memory (empty slots: rho = 0)."""
    q = g.copy()
    m = s_hist.shape[1]
    a = np.zeros((len(g), m))
    for i in range(m - 1, -1, -1):
        a[:, i] = rho[:, i] * (s_hist[:, i] * q).sum(axis=1)
        q -= a[:, i, None] * y_hist[:, i]
    sy_last = np.where(rho[:, -1] > 0, 1.0 / np.where(rho[:, -1] > 0, rho[:, -1], 1.0), 0.0)
    yy_last = (y_hist[:, -1] ** 2).sum(axis=1)
    gamma = np.where(rho[:, -1] > 0, sy_last / np.where(yy_last > 0, yy_last, 1.0), 1.0)
    r = gamma[:, None] * q
    for i in range(m):
        b = rho[:, i] * (y_hist[:, i] * r).sum(axis=1)
        r += s_hist[:, i] * (a[:, i] - b)[:, None]
    return -r


def _keep_in_box(d, x, lower, upper):
    """Drop direction components that push through a bound the point already sits on."""
    blocked = ((x <= lower) & (d < 0)) | ((x >= upper) & (d > 0))
    return np.where(blocked, 0.0, d)


def _line_search(fun, rows, x, f, g, d, t, lower, upper):
    """Armijo backtracking along the projected path, all problems at once."""
    x_new, f_new, g_new = x.copy(), f.copy(), g.copy()
    moved = np.zeros(len(rows), dtype=bool)
    pending = np.arange(len(rows))
    t = t.copy()
    for _ in range(_MAX_BACKTRACKS):
        trial = np.clip(x[pending] + t[pending, None] * d[pending], lower, upper)
        ft, gt = fun(trial, rows[pending])
        step = trial - x[pending]
        decrease = (g[pending] * step).sum(axis=1)
        ok = (np.isfinite(ft) & np.isfinite(gt).all(axis=1) & (decrease < 0)
              & (ft <= f[pending] + _ARMIJO * decrease))
        done = pending[ok]
        x_new[done], f_new[done], g_new[done], moved[done] = trial[ok], ft[ok], gt[ok], True
        pending = pending[~ok]
        if pending.size == 0:
            break
        t[pending] *= 0.5
    return x_new, f_new, g_new, moved
