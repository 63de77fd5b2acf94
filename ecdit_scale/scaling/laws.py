"""Per-kind law fits: L(C) and L(N, D), and what follows from them (predictions, the held-out
check, compute-optimal allocation, compute multipliers).

Every constant is fitted in log space by the engine in `robust` (E = exp(e), A = exp(a),
B = exp(b)). Inputs are divided by their geometric mean for conditioning, and constants are
reported in the original units (FLOPs, parameters, tokens). Intervals are percentile
bootstrap intervals: runs resampled with replacement, each resample refitted.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .formulas import DEFAULT_LEVEL, ChinchillaLaw, Interval, PowerLaw, percentile_interval
from .results import (
    ChinchillaFit,
    ComputeOptimal,
    HeldOutResult,
    HeldOutRun,
    Multiplier,
    PowerLawFit,
    Prediction,
    PredictionBand,
)
from .robust import (
    FitError,
    bootstrap_indices,
    bootstrap_terms,
    fit_terms,
    positive_columns,
    resample_weights,
    single_threaded_blas,
)

# Shape suffixes: an array named x_RN has dims (R, N).
#   N rows of the run table   T terms of the law   B problems minimised in one batch

MIN_RUNS_POWER_LAW = 3
MIN_RUNS_CHINCHILLA = 5


def _boot_weights(n_rows: int, n_boot: int, seed, min_unique: int, given) -> np.ndarray:
    """Resamples as row weights: `given` (e.g. whole training runs, see `runlevel`), else
    rows drawn with replacement."""
    if given is not None:
        return np.asarray(given, dtype=float).reshape(-1, n_rows)
    return resample_weights(bootstrap_indices(n_rows, n_boot, seed, min_unique=min_unique), n_rows)


def _point_rows(n_rows: int, point_rows) -> np.ndarray:
    return np.arange(n_rows) if point_rows is None else np.flatnonzero(point_rows)


@single_threaded_blas
def fit_power_law(compute_flops, loss, *, n_boot: int = 0, seed=0,
                  level: float = DEFAULT_LEVEL, point_rows=None, boot_weights=None) -> PowerLawFit:
    """Fit L(C) = E + A·C^(-alpha); with n_boot > 0 add percentile bootstrap intervals.

    point_rows (a mask) limits the point fit to some rows (e.g. the compute frontier);
    boot_weights (resamples x rows) replaces the row bootstrap (e.g. by training run)."""
    C, L = positive_columns(compute_flops, loss, min_rows=MIN_RUNS_POWER_LAW,
                            what="power-law fit")
    rows = _point_rows(len(C), point_rows)
    log_ref = float(np.mean(np.log(C[rows])))  # geometric-mean normalisation
    logx_TN, log_loss_N = (np.log(C) - log_ref)[None], np.log(L)
    theta, objective = fit_terms(logx_TN[:, rows], log_loss_N[rows], what="power-law fit")
    w = _boot_weights(len(C), n_boot, seed, 3, boot_weights)
    laws = [_power_law_from_theta(t, log_ref)
            for t in bootstrap_terms(logx_TN, log_loss_N, w, theta)]
    return PowerLawFit(law=_power_law_from_theta(theta, log_ref), n_runs=len(rows),
                       huber_objective=objective, ci=law_intervals(laws, level),
                       bootstrap_laws=tuple(laws), level=level)


@single_threaded_blas
def fit_chinchilla(params, tokens, loss, *, n_boot: int = 0, seed=0,
                   level: float = DEFAULT_LEVEL, boot_weights=None) -> ChinchillaFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, eq. 2)."""
    N, D, L = positive_columns(params, tokens, loss, min_rows=MIN_RUNS_CHINCHILLA,
                               what="Chinchilla fit")
    if len(np.unique(N)) < 2 or len(np.unique(D)) < 2:
        raise FitError("Chinchilla fit: needs at least 2 distinct parameter counts and "
                       "2 distinct token counts")
    log_ref_T = np.array([np.mean(np.log(N)), np.mean(np.log(D))])
    logx_TN = np.vstack([np.log(N), np.log(D)]) - log_ref_T[:, None]
    log_loss_N = np.log(L)
    theta, objective = fit_terms(logx_TN, log_loss_N, what="Chinchilla fit")
    w = _boot_weights(len(L), n_boot, seed, 5, boot_weights)
    laws = [_chinchilla_from_theta(t, log_ref_T)
            for t in bootstrap_terms(logx_TN, log_loss_N, w, theta)]
    return ChinchillaFit(law=_chinchilla_from_theta(theta, log_ref_T), n_runs=len(L),
                         huber_objective=objective, ci=law_intervals(laws, level),
                         bootstrap_laws=tuple(laws), level=level)


def _power_law_from_theta(theta, log_ref: float) -> PowerLaw:
    # A·(C/C_ref)^-alpha = (A·C_ref^alpha)·C^-alpha
    e, a, alpha = theta
    return PowerLaw(E=math.exp(e), A=math.exp(a + alpha * log_ref), alpha=float(alpha))


def _chinchilla_from_theta(theta, log_ref_T) -> ChinchillaLaw:
    e, a, alpha, b, beta = theta
    return ChinchillaLaw(E=math.exp(e), A=math.exp(a + alpha * log_ref_T[0]),
                         B=math.exp(b + beta * log_ref_T[1]), alpha=float(alpha), beta=float(beta))


def law_intervals(laws, level) -> dict[str, Interval]:
    """Percentile interval of each constant over the bootstrap laws."""
    if not laws:
        return {}
    names = list(laws[0].to_dict())
    return {k: percentile_interval([getattr(b, k) for b in laws], level) for k in names}


# ---------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------


def predict(fit: PowerLawFit, compute_flops: float) -> Prediction:
    """Loss at one compute, with the interval of the bootstrap fits' predictions."""
    loss = float(fit.law.loss(compute_flops))
    samples = [float(b.loss(compute_flops)) for b in fit.bootstrap_laws]
    return Prediction(compute_flops=float(compute_flops), loss=loss,
                      interval=percentile_interval(samples, fit.level))


def predict_band(fit: PowerLawFit, compute_flops) -> PredictionBand:
    """Loss over a grid of compute, with the pointwise bootstrap interval (point when none)."""
    C = np.asarray(compute_flops, dtype=float).ravel()
    loss = fit.law.loss(C)
    lo, hi = loss, loss
    if fit.bootstrap_laws:
        samples_BN = np.array([b.loss(C) for b in fit.bootstrap_laws])
        q = 100 * (1 - fit.level) / 2
        lo, hi = np.percentile(samples_BN, [q, 100 - q], axis=0)
    return PredictionBand(compute_flops=tuple(map(float, C)), loss=tuple(map(float, loss)),
                          lo=tuple(map(float, lo)), hi=tuple(map(float, hi)), level=fit.level)


# ---------------------------------------------------------------------------------------
# Derived quantities: held-out check, compute-optimal allocation, compute multipliers
# ---------------------------------------------------------------------------------------


def held_out_check(compute_flops, loss, names, *, kind: str = "", holdout: int | float = 1,
                   n_boot: int = 0, seed=0, level: float = DEFAULT_LEVEL) -> HeldOutResult:
    """Fit L(C) without the largest-compute runs and predict them.

    holdout: an int is a number of runs (top k by compute); a float in (0, 1) a fraction.
    """
    C = np.asarray(compute_flops, float)
    L = np.asarray(loss, float)
    names = [str(n) for n in names]
    n_hold = n_held_out(len(C), holdout)
    if len(C) - n_hold < MIN_RUNS_POWER_LAW:
        raise FitError(f"held-out check{_for(kind)}: {len(C)} runs leave fewer than "
                       f"{MIN_RUNS_POWER_LAW} to fit after holding out {n_hold}")
    order = np.argsort(C, kind="stable")
    train, test = order[:-n_hold], order[-n_hold:]
    fit = fit_power_law(C[train], L[train], n_boot=n_boot, seed=seed, level=level)
    runs = []
    for i in test:
        p = predict(fit, C[i])
        runs.append(HeldOutRun(name=names[i], compute_flops=float(C[i]), actual_loss=float(L[i]),
                               predicted_loss=p.loss, relative_error=(p.loss - L[i]) / L[i],
                               interval=p.interval))
    return HeldOutResult(kind=kind, n_train=len(train),
                         train_max_compute_flops=float(C[train].max()), runs=tuple(runs))


def n_held_out(n_runs: int, holdout: int | float) -> int:
    """Runs held out: an int >= 1 is a count, a float in (0, 1) a fraction of n_runs."""
    if isinstance(holdout, float) and 0 < holdout < 1:
        return max(1, math.ceil(holdout * n_runs))
    if isinstance(holdout, (int, float)) and holdout >= 1 and int(holdout) == holdout:
        return int(holdout)
    raise ValueError(f"holdout {holdout!r}: a run count >= 1 or a fraction in (0, 1)")


def flops_per_param_token(df: pd.DataFrame) -> float:
    """k in C = k·N·D: median of compute_flops / (active_params · tokens_seen) over the rows."""
    return float(np.median(df["compute_flops"] / (df["active_params"] * df["tokens_seen"])))


def compute_optimal(fit: ChinchillaFit, flops_per_param_token: float, *,
                    kind: str = "") -> ComputeOptimal:
    """N_opt(C), D_opt(C) for C = k·N·D (Hoffmann et al. 2022, eq. 4 with 6 replaced by k)."""
    G, a, b = _allocation(fit.law)
    samples = [_allocation(law) for law in fit.bootstrap_laws]
    ci = {}
    if samples:
        ci = {"G": percentile_interval([s[0] for s in samples], fit.level),
              "params_exponent": percentile_interval([s[1] for s in samples], fit.level),
              "tokens_exponent": percentile_interval([s[2] for s in samples], fit.level)}
    return ComputeOptimal(kind=kind, flops_per_param_token=flops_per_param_token, G=G,
                          params_exponent=a, tokens_exponent=b, ci=ci)


def _allocation(law: ChinchillaLaw) -> tuple[float, float, float]:
    s = law.alpha + law.beta
    G = (law.alpha * law.A / (law.beta * law.B)) ** (1.0 / s)
    return G, law.beta / s, law.alpha / s


def compute_multiplier(fit: PowerLawFit, baseline: PowerLawFit, *, kind: str = "x",
                       baseline_kind: str = "y", loss: float | None = None,
                       reference_compute_flops: float | None = None) -> Multiplier:
    """C_baseline(L) / C_kind(L), inverting both power laws at the same loss L.

    L defaults to the baseline's predicted loss at `reference_compute_flops`. The interval
    pairs the i-th bootstrap fit of each kind; a bootstrap fit that never reaches L counts
    as needing infinite compute.
    """
    if loss is None:
        if reference_compute_flops is None:
            raise ValueError("compute_multiplier: give a loss or a reference_compute_flops")
        loss = float(baseline.law.loss(reference_compute_flops))
    ref = math.nan if reference_compute_flops is None else float(reference_compute_flops)
    value = _ratio(baseline.law, fit.law, loss)
    note = _undefined_note(fit.law, baseline.law, kind, baseline_kind, loss)
    ratios = [_ratio(y, x, loss)
              for x, y in zip(fit.bootstrap_laws, baseline.bootstrap_laws, strict=False)]
    ratios = [r for r in ratios if not math.isnan(r)]
    interval = percentile_interval(ratios, fit.level) if not note else None
    return Multiplier(kind=kind, baseline_kind=baseline_kind, loss=float(loss),
                      reference_compute_flops=ref, value=value if not note else math.nan,
                      interval=interval, n_boot_used=len(ratios), note=note)


def _ratio(baseline: PowerLaw, law: PowerLaw, loss: float) -> float:
    c_base, c_kind = baseline.compute_flops_for_loss(loss), law.compute_flops_for_loss(loss)
    if math.isinf(c_base) and math.isinf(c_kind):
        return math.nan
    return c_base / c_kind  # inf/finite = inf, finite/inf = 0


def _undefined_note(law, baseline, kind, baseline_kind, loss) -> str:
    for name, power_law in ((kind, law), (baseline_kind, baseline)):
        if loss <= power_law.E:
            return (f"undefined: loss {loss:.4g} is at or below {name}'s irreducible loss "
                    f"E={power_law.E:.4g}, so {name} never reaches it")
    return ""


def _for(kind: str) -> str:
    return f" for {kind}" if kind else ""
