"""What a design can detect: the smallest compute multiplier the headline fit would tell from 1,
from the grid (which sizes and token counts, how many seeds) and the measured seed noise.

The estimate is the textbook power calculation on the linearised fit (Gauss-Newton): with J
the derivative of the predicted log loss by the fit's constants at the point fit, and Σ the
covariance of the rows' log losses,

    Cov(theta) = (JᵀJ)⁻¹ Jᵀ Σ J (JᵀJ)⁻¹    (the sandwich: rows of one run share noise)
    SE(log m)  = sqrt(cᵀ Cov c),  c picks log s_N + log s_D of the variant
    m_min      = exp((z_(1-a/2) + z_power) · SE)    (two-sided test at a, e.g. 5%, power 80%)

Σ = σ² on each row and σ² between the rows of one bootstrap unit (the budgets of one seed of a
size share its noise; conservative when they do not). σ is the pooled standard deviation of
log loss across seeds of the same configuration (variant, size, tokens): measured seed noise.
A table with no repeated seed falls back to the fit's residual scatter, and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .headline import HeadlineData, _Problem

POWER = 0.8  # detection probability the minimum detectable multiplier is quoted at
ALPHA_TEST = 0.05  # two-sided


@dataclass(frozen=True)
class SeedNoise:
    sigma: float  # standard deviation of log loss (≈ relative noise per run)
    dof: int  # degrees of freedom behind it
    source: str  # "seeds" (repeated seeds) or "residuals" (no repeated seed: fit scatter)


def seed_noise(data: HeadlineData, residual_N: np.ndarray | None = None) -> SeedNoise:
    """Pooled SD of log loss over seeds of each configuration (variant, size, tokens)."""
    keys = [f"{s}|{t:.6g}" for s, t in zip(data.stratum_N, data.tokens_N, strict=True)]
    log_loss = np.log(data.loss_N)
    ss, dof = 0.0, 0
    for key in dict.fromkeys(keys):
        sel = np.array([k == key for k in keys])
        if sel.sum() >= 2:
            x = log_loss[sel]
            ss += float(((x - x.mean()) ** 2).sum())
            dof += int(sel.sum()) - 1
    if dof > 0:
        return SeedNoise(sigma=math.sqrt(ss / dof), dof=dof, source="seeds")
    if residual_N is None:
        return SeedNoise(sigma=math.nan, dof=0, source="none")
    r = np.asarray(residual_N, float)
    return SeedNoise(sigma=float(np.sqrt(np.mean(r ** 2))), dof=len(r), source="residuals")


def theta_covariance(data: HeadlineData, theta, sigma: float, *,
                     size_dependent: bool = False) -> np.ndarray:
    """The sandwich covariance of the fitted constants (log space) for noise sigma."""
    prob = _Problem(data, size_dependent)
    _, J = prob.jacobian(np.asarray(theta, float)[None])
    J = J[0]
    same_unit = (data.unit_N[:, None] == data.unit_N[None, :]).astype(float)
    bread = np.linalg.pinv(J.T @ J, rcond=1e-12)
    return bread @ (J.T @ (sigma ** 2 * same_unit) @ J) @ bread


def z_detect(alpha_test: float = ALPHA_TEST, power: float = POWER) -> float:
    """z_(1-a/2) + z_power: how many standard errors an effect needs to be detected."""
    nd = NormalDist()
    return nd.inv_cdf(1 - alpha_test / 2) + nd.inv_cdf(power)


def _pick(variants, variant: str, baseline: str, offsets, n_par: int) -> np.ndarray:
    """c with +1 on variant's and -1 on baseline's constants in each block of per-variant
    constants (0: log s_N, 1: log s_D, 2: gamma); the baseline, variants[0], has none."""
    k = len(variants) - 1
    c = np.zeros(n_par)
    for name, sign in ((variant, 1.0), (baseline, -1.0)):
        i = variants.index(name) - 1
        if i >= 0:
            for off in offsets:
                c[5 + off * k + i] += sign
    return c


def log_multiplier_se(data: HeadlineData, theta, sigma: float, pairs) -> dict:
    """SE of log(s_N·s_D) of variant over baseline, per (variant, baseline) pair."""
    cov = theta_covariance(data, theta, sigma)
    out = {}
    for v, b in pairs:
        c = _pick(data.variants, v, b, (0, 1), cov.shape[0])
        out[(v, b)] = float(math.sqrt(max(c @ cov @ c, 0.0)))
    return out


def minimum_detectable(se_log: float, alpha_test: float = ALPHA_TEST,
                       power: float = POWER) -> float:
    """The smallest multiplier (> 1) detected with `power` at two-sided level alpha_test."""
    return math.exp(z_detect(alpha_test, power) * se_log) if math.isfinite(se_log) else math.inf


def gamma_se(data: HeadlineData, theta_size_dependent, sigma: float, pairs) -> dict:
    """SE of the size trend gamma of variant over baseline (the size-dependent model)."""
    cov = theta_covariance(data, theta_size_dependent, sigma, size_dependent=True)
    out = {}
    for v, b in pairs:
        c = _pick(data.variants, v, b, (2,), cov.shape[0])
        out[(v, b)] = float(math.sqrt(max(c @ cov @ c, 0.0)))
    return out
