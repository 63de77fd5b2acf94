"""The headline estimator: one shared-exponent L(N, D) for every variant, with a scale on N and
on D per variant,

    L_k(N, D) = E + A/(s_N,k·N)^alpha + B/(s_D,k·D)^beta          (s = 1 for the baseline)

N activated parameters, D tokens. A variant with scales (s_N, s_D) reaches at (N, D) the loss
the baseline reaches at (s_N·N, s_D·D); since C = k·N·D, that maps each compute level onto one
s_N·s_D times larger, so the compute multiplier at equal loss is s_N·s_D at every loss
(compute-optimal or not). Every row of the table enters the fit (not only a frontier): the
sizes and token counts together pin down the exponents.

Constancy is tested, not assumed: a second fit lets log s_N,k change with log N (a
size-dependent term, as the interaction terms of Clark et al. 2022, "Unified scaling laws for
routed language models", eq. 8), log s_N,k(N) = u_k + gamma_k·log(N/N_ref); the bootstrap
interval of gamma_k says whether the data see a trend.

Intervals: a bootstrap that resamples seeds within each (variant, size) cell, so no resample
loses a size. Fitted with the Huber loss of log residuals and batched multi-start L-BFGS
(`robust`, `lbfgs`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from .formulas import DEFAULT_LEVEL, Interval, finite, percentile_interval
from .robust import (
    ALPHA_BOUNDS,
    HUBER_DELTA,
    FitError,
    best_of_starts,
    multistart,
    single_threaded_blas,
    weighted_huber,
)

# Shape suffixes: an array named x_RN has dims (R, N).
#   N rows of the run table   K variants   R bootstrap resamples   S starts per
#   resample   B problems minimised in one batch   P fitted parameters (s_N and s_D
#   are the scales on N and on D, not shapes)

MAX_LOG_SCALE = math.log(1e3)  # a variant's scale on N or D stays within 1/1000..1000
E_FRACTIONS = (0.3, 0.8)
EXPONENT_STARTS = (0.25, 0.6)
MAX_LOG_CORRELATION = 0.95  # |corr(log N, log D)| above this: N and D cannot be told apart
BOOT_STARTS = 1  # bootstrap refits: the point fit plus this many grid starts


@dataclass(frozen=True)
class HeadlineLaw:
    """L_k(N, D) = E + A/(s_N,k(N)·N)^alpha + B/(s_D,k·D)^beta, with
    log s_N,k(N) = log s_N,k + gamma_k·log(N/n_ref) (gamma empty: constant scales)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    s_N: dict[str, float]
    s_D: dict[str, float]
    gamma: dict[str, float] = field(default_factory=dict)
    n_ref: float = 1.0

    def scale_N(self, variant: str, params):
        g = self.gamma.get(variant, 0.0)
        return self.s_N[variant] * np.power(np.asarray(params, float) / self.n_ref, g)

    def loss(self, variant: str, params, tokens):
        N = np.asarray(params, float) * self.scale_N(variant, params)
        D = np.asarray(tokens, float) * self.s_D[variant]
        return self.E + self.A * np.power(N, -self.alpha) + self.B * np.power(D, -self.beta)

    def multiplier(self, variant: str, baseline: str, params=None) -> float:
        """Compute multiplier of variant over baseline at equal loss: s_N·s_D ratios (at
        `params` activated parameters when the scales depend on size)."""
        n = self.n_ref if params is None else params
        return float(self.scale_N(variant, n) * self.s_D[variant]
                     / (self.scale_N(baseline, n) * self.s_D[baseline]))

    def to_dict(self) -> dict:
        return {"E": float(self.E), "A": float(self.A), "B": float(self.B),
                "alpha": float(self.alpha), "beta": float(self.beta),
                "s_N": {k: float(v) for k, v in self.s_N.items()},
                "s_D": {k: float(v) for k, v in self.s_D.items()},
                "gamma": {k: float(v) for k, v in self.gamma.items()},
                "n_ref": float(self.n_ref)}

    @classmethod
    def from_dict(cls, d: dict) -> HeadlineLaw:
        return cls(**{k: finite(d, k) for k in ("E", "A", "B", "alpha", "beta")},
                   s_N={k: finite(d["s_N"], k) for k in d["s_N"]},
                   s_D={k: finite(d["s_D"], k) for k in d["s_D"]},
                   gamma={k: finite(d.get("gamma") or {}, k) for k in d.get("gamma") or {}},
                   n_ref=float(d.get("n_ref", 1.0)))


@dataclass(frozen=True)
class HeadlineData:
    """A run table reduced to what the headline fit sees: per row the variant, activated
    params, tokens, log loss; the bootstrap unit (a seed of a size of a variant) and its
    stratum (the size of a variant)."""

    variants: tuple[str, ...]  # baseline first
    variant_N: np.ndarray
    params_N: np.ndarray
    tokens_N: np.ndarray
    loss_N: np.ndarray
    unit_N: np.ndarray
    stratum_N: np.ndarray

    def __post_init__(self):
        n = len(self.loss_N)
        if any(len(a) != n for a in (self.variant_N, self.params_N, self.tokens_N,
                                      self.unit_N, self.stratum_N)):
            raise FitError("headline fit: columns of different lengths")

    @property
    def onehot_NK(self) -> np.ndarray:
        """Rows of each non-baseline variant (columns: variants[1:])."""
        return (self.variant_N[:, None] == np.array(self.variants[1:])[None, :]).astype(float)


class _Problem:
    """Centred log inputs and the batched objective of one data set."""

    def __init__(self, data: HeadlineData, size_dependent: bool):
        self.data, self.size_dependent = data, size_dependent
        self.k = len(data.variants) - 1
        self.ref = (float(np.mean(np.log(data.params_N))), float(np.mean(np.log(data.tokens_N))))
        self.x_N = np.log(data.params_N) - self.ref[0]
        self.y_N = np.log(data.tokens_N) - self.ref[1]
        self.log_loss_N = np.log(data.loss_N)
        self.onehot_NK = data.onehot_NK
        self.n_par = 5 + (3 if size_dependent else 2) * self.k

    def split(self, theta_BP):
        k = self.k
        u, v = theta_BP[:, 5:5 + k], theta_BP[:, 5 + k:5 + 2 * k]
        g = theta_BP[:, 5 + 2 * k:] if self.size_dependent else np.zeros_like(u)
        return u, v, g

    def lse_parts(self, theta_BP):
        """(residual inputs) z0, z1, z2 and the shifted log inputs X, Y per problem and row."""
        u, v, g = self.split(theta_BP)
        X = self.x_N + u @ self.onehot_NK.T + (g @ self.onehot_NK.T) * self.x_N
        Y = self.y_N + v @ self.onehot_NK.T
        z1 = theta_BP[:, 1:2] - theta_BP[:, 2:3] * X
        z2 = theta_BP[:, 3:4] - theta_BP[:, 4:5] * Y
        return theta_BP[:, :1], z1, z2, X, Y

    def jacobian(self, theta_BP):
        """(log-loss prediction, d prediction / d theta) per problem: (B, N), (B, N, P)."""
        z0, z1, z2, X, Y = self.lse_parts(theta_BP)
        zmax = np.maximum(np.maximum(z0, z1), z2)
        w0, w1, w2 = np.exp(z0 - zmax), np.exp(z1 - zmax), np.exp(z2 - zmax)
        total = w0 + w1 + w2
        pred = zmax + np.log(total)
        w0, w1, w2 = w0 / total, w1 / total, w2 / total
        J = np.empty((*pred.shape, self.n_par))
        J[..., 0] = np.broadcast_to(w0, pred.shape)
        J[..., 1], J[..., 2] = w1, -w1 * X
        J[..., 3], J[..., 4] = w2, -w2 * Y
        k = self.k
        alpha, beta = theta_BP[:, 2:3, None], theta_BP[:, 4:5, None]
        J[..., 5:5 + k] = -alpha * w1[..., None] * self.onehot_NK
        J[..., 5 + k:5 + 2 * k] = -beta * w2[..., None] * self.onehot_NK
        if self.size_dependent:
            J[..., 5 + 2 * k:] = -alpha * (w1 * self.x_N)[..., None] * self.onehot_NK
        return pred, J

    def objective(self, theta_BP, w_BN):
        pred, J = self.jacobian(theta_BP)
        r = pred - self.log_loss_N
        psi, huber_B, scale = weighted_huber(r, HUBER_DELTA, w_BN)
        grad = np.einsum("bn,bnp->bp", psi, J)
        return huber_B * np.reshape(scale, -1), grad * np.reshape(scale, (-1, 1))

    def bounds(self):
        k = self.k
        lower = [-np.inf, -np.inf, ALPHA_BOUNDS[0], -np.inf, ALPHA_BOUNDS[0]]
        upper = [np.inf, np.inf, ALPHA_BOUNDS[1], np.inf, ALPHA_BOUNDS[1]]
        n_scales = 3 * k if self.size_dependent else 2 * k
        lower += [-MAX_LOG_SCALE] * n_scales
        upper += [MAX_LOG_SCALE] * n_scales
        return np.array(lower), np.array(upper)

    def starts(self, rows=None, warm=None) -> list[np.ndarray]:
        """E as a fraction of the smallest loss, exponents from a grid, A and B sharing the
        excess loss at the median input; scales start at 1 (or at `warm`'s)."""
        rows = np.arange(len(self.x_N)) if rows is None else rows
        loss = np.exp(self.log_loss_N[rows])
        starts = []
        scales = [0.0] * (self.n_par - 5)
        for e_frac, alpha, beta in itertools.product(E_FRACTIONS, EXPONENT_STARTS,
                                                     EXPONENT_STARTS):
            E = e_frac * loss.min()
            half = max(np.median(loss) - E, 1e-12) / 2
            starts.append(np.array([math.log(E), math.log(half) + alpha * np.median(self.x_N[rows]),
                                    alpha, math.log(half) + beta * np.median(self.y_N[rows]),
                                    beta, *scales]))
        if warm is not None:
            for s in starts:
                s[5:] = warm[5:]
        return starts

    def law(self, theta) -> HeadlineLaw:
        base = self.data.variants[0]
        u, v, g = (a[0] for a in self.split(theta[None]))
        names = self.data.variants[1:]
        alpha, beta = float(theta[2]), float(theta[4])
        return HeadlineLaw(
            E=math.exp(theta[0]), A=math.exp(theta[1] + alpha * self.ref[0]),
            B=math.exp(theta[3] + beta * self.ref[1]), alpha=alpha, beta=beta,
            s_N={base: 1.0, **{n: math.exp(x) for n, x in zip(names, u, strict=True)}},
            s_D={base: 1.0, **{n: math.exp(x) for n, x in zip(names, v, strict=True)}},
            gamma=({n: float(x) for n, x in zip(names, g, strict=True)}
                   if self.size_dependent else {}),
            n_ref=math.exp(self.ref[0]))


def seed_resamples(data: HeadlineData, n_boot: int, seed) -> np.ndarray:
    """Row weights (n_boot, rows): within each stratum (a size of a variant) n-1 of its n units
    (seeds) drawn with replacement and weighted n/(n-1), so every size of every variant is in
    every resample and the resampled mean has the unbiased variance s^2/n (McCarthy and Snowden
    1985, the with-replacement bootstrap of size n-1 for stratified samples; drawing n of n
    understates it by (n-1)/n, a factor 2 with 2 seeds). A stratum with one unit does not vary."""
    rng = np.random.default_rng(seed)
    units_of = {s: np.unique(data.unit_N[data.stratum_N == s]) for s in np.unique(data.stratum_N)}
    unit_index = {u: i for i, u in enumerate(np.unique(data.unit_N))}
    row_unit = np.array([unit_index[u] for u in data.unit_N])
    out = np.zeros((n_boot, len(data.loss_N)))
    for r in range(n_boot):
        counts = np.zeros(len(unit_index))
        for units in units_of.values():
            n = len(units)
            if n == 1:
                counts[unit_index[units[0]]] += 1
                continue
            for u in rng.choice(units, size=n - 1):
                counts[unit_index[u]] += n / (n - 1)
        out[r] = counts[row_unit]
    return out


@dataclass(frozen=True)
class HeadlineResult:
    """The point fit, its bootstrap laws and the interval of each variant's multiplier."""

    law: HeadlineLaw
    baseline: str
    bootstrap_laws: tuple[HeadlineLaw, ...]
    level: float
    huber_objective: float
    theta: tuple[float, ...] = ()

    def multiplier_interval(self, variant: str, baseline: str | None = None,
                            params=None) -> Interval | None:
        b = baseline or self.baseline
        return percentile_interval([law.multiplier(variant, b, params)
                                    for law in self.bootstrap_laws], self.level)


@single_threaded_blas
def fit_headline_law(data: HeadlineData, *, n_boot: int = 200, seed=0,
                     level: float = DEFAULT_LEVEL, size_dependent: bool = False,
                     boot_weights=None) -> HeadlineResult:
    """Fit the shared-exponent L(N, D) with per-variant scales; bootstrap seeds within sizes."""
    _check(data)
    prob = _Problem(data, size_dependent)
    lower, upper = prob.bounds()
    ones = np.ones((1, len(data.loss_N)))

    def point_fun(theta, rows):
        return prob.objective(theta, ones)

    starts = prob.starts()
    if size_dependent:  # begin at the constant-scale optimum, and a few grid starts
        base = fit_headline_law(data, n_boot=0, level=level)
        warm = np.concatenate([np.array(base.theta), np.zeros(prob.k)])
        starts = [warm, *starts[::2]]
    theta, objective = multistart(point_fun, starts, lower, upper, what="headline L(N, D) fit")
    w_RN = (seed_resamples(data, n_boot, seed) if boot_weights is None
            else np.asarray(boot_weights, float).reshape(-1, len(data.loss_N)))
    laws: list[HeadlineLaw] = []
    if len(w_RN):
        grid = prob.starts(warm=theta)
        pick = grid[len(grid) // (2 * BOOT_STARTS)::max(1, len(grid) // BOOT_STARTS)][:BOOT_STARTS]
        starts_RSP = np.array([[theta, *pick] for _ in w_RN])
        n_s = starts_RSP.shape[1]

        def boot(theta_b, rows):
            return prob.objective(theta_b, w_RN[rows // n_s])

        theta_RP, f_R = best_of_starts(boot, starts_RSP, lower, upper)
        laws = [prob.law(t) for t in theta_RP[np.isfinite(f_R)]]
    return HeadlineResult(law=prob.law(theta), baseline=data.variants[0],
                          bootstrap_laws=tuple(laws), level=level,
                          huber_objective=float(objective), theta=tuple(map(float, theta)))


def _check(data: HeadlineData) -> None:
    if len(data.variants) < 1:
        raise FitError("headline fit: no variants")
    if not (np.all(np.isfinite(data.params_N) & (data.params_N > 0))
            and np.all(np.isfinite(data.tokens_N) & (data.tokens_N > 0))
            and np.all(np.isfinite(data.loss_N) & (data.loss_N > 0))):
        raise FitError("headline fit: params, tokens and loss must be finite and > 0")
    for v in data.variants:
        sel = data.variant_N == v
        if len(np.unique(data.params_N[sel])) < 2 or len(np.unique(data.tokens_N[sel])) < 2:
            raise FitError(f"headline fit: {v} needs at least 2 sizes and 2 token counts "
                           "to separate a scale on N from one on D")
    corr = float(np.corrcoef(np.log(data.params_N), np.log(data.tokens_N))[0, 1])
    if not abs(corr) <= MAX_LOG_CORRELATION:
        raise FitError(f"headline fit: log params and log tokens move together (correlation "
                       f"{corr:.3f}); it needs several sizes at each token count, e.g. an "
                       "IsoFLOP design")
    if len(data.loss_N) < 5 + 2 * (len(data.variants) - 1) + 2:
        raise FitError(f"headline fit: {len(data.loss_N)} rows are too few for "
                       f"{5 + 2 * (len(data.variants) - 1)} constants")
