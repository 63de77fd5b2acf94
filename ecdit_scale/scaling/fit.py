"""Scaling-law fits: loss against compute per FFN kind, and the Chinchilla L(N, D).

Method: Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models", Approach 3)
as re-done by Besiroglu et al. 2024 ("Chinchilla Scaling: A replication attempt"). Every
constant is fitted in log space (E = exp(e), A = exp(a), B = exp(b)); the model predicts

    log L = logsumexp(e, a - alpha·log C)                          (power law in compute)
    log L = logsumexp(e, a - alpha·log N, b - beta·log D)          (Chinchilla, eq. 2)

and L-BFGS-B minimises the Huber loss (delta = 1e-3) of the log residuals from a grid of
starts; the best optimum is kept. Inputs are divided by their geometric mean for
conditioning, and constants are reported in the original units (FLOPs, parameters, tokens).
Intervals are percentile bootstrap intervals: runs resampled with replacement, each
resample refitted.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import yaml
from scipy.optimize import minimize

from .table import FFN_KINDS, atomic_output, validate_run_table

try:  # L-BFGS-B on 3-5 parameters: BLAS threads only contend (10-40x slower on busy CPUs)
    from threadpoolctl import threadpool_limits as _threadpool_limits
except ImportError:  # pragma: no cover - optional dependency
    _threadpool_limits = None

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, Approach 3
DEFAULT_LEVEL = 0.95
MIN_RUNS_POWER_LAW = 3
MIN_RUNS_CHINCHILLA = 5
FIT_FORMAT = "ecdit-scale/scaling-fit/v1"

_ALPHA_BOUNDS = (1e-4, 5.0)
_E_FRACTIONS_OF_MIN_LOSS = (0.2, 0.5, 0.8, 0.95)
_ALPHA_STARTS = (0.1, 0.3, 0.6, 1.0)
_TERM_SHARES = {1: ((1.0,),), 2: ((0.25, 0.75), (0.5, 0.5), (0.75, 0.25))}
_BOOTSTRAP_GRID_STARTS = 4  # bootstrap refits start at the point fit plus this many grid starts
_MIN_RUNS_FOR_INTERVALS = 5  # below this a resample of distinct runs is nearly the data itself
_LBFGS_OPTIONS = {"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10}

T = TypeVar("T")


class FitError(ValueError):
    """The data cannot support the requested fit (too few runs, degenerate inputs)."""


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval at `level` (0.95 = 95%)."""

    lo: float
    hi: float
    level: float = DEFAULT_LEVEL

    def contains(self, value: float) -> bool:
        return self.lo <= value <= self.hi

    def to_dict(self) -> dict:
        return {"lo": float(self.lo), "hi": float(self.hi), "level": float(self.level)}

    @classmethod
    def from_dict(cls, d: dict) -> Interval:
        return cls(lo=float(d["lo"]), hi=float(d["hi"]), level=float(d["level"]))


@dataclass(frozen=True)
class PowerLaw:
    """L(C) = E + A·C^(-alpha), C in FLOPs (Hoffmann et al. 2022 form, one variable)."""

    E: float
    A: float
    alpha: float

    def loss(self, compute_flops):
        return self.E + self.A * np.power(compute_flops, -self.alpha)

    def compute_flops_for_loss(self, loss: float) -> float:
        """C(L) = ((L - E)/A)^(-1/alpha); inf when L <= E (the loss is never reached)."""
        if loss <= self.E:
            return math.inf
        return float(((loss - self.E) / self.A) ** (-1.0 / self.alpha))

    def to_dict(self) -> dict:
        return {"E": float(self.E), "A": float(self.A), "alpha": float(self.alpha)}

    @classmethod
    def from_dict(cls, d: dict) -> PowerLaw:
        return cls(E=float(d["E"]), A=float(d["A"]), alpha=float(d["alpha"]))


@dataclass(frozen=True)
class ChinchillaLaw:
    """L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, eq. 2); N params, D tokens."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, params, tokens):
        return (self.E + self.A * np.power(params, -self.alpha)
                + self.B * np.power(tokens, -self.beta))

    def to_dict(self) -> dict:
        return {k: float(getattr(self, k)) for k in ("E", "A", "B", "alpha", "beta")}

    @classmethod
    def from_dict(cls, d: dict) -> ChinchillaLaw:
        return cls(**{k: float(d[k]) for k in ("E", "A", "B", "alpha", "beta")})


@dataclass(frozen=True)
class PowerLawFit:
    """A fitted L(C) with bootstrap intervals (ci keys: E, A, alpha) and the bootstrap laws."""

    law: PowerLaw
    n_runs: int
    huber_objective: float
    ci: dict[str, Interval] = field(default_factory=dict)
    bootstrap_laws: tuple[PowerLaw, ...] = ()
    level: float = DEFAULT_LEVEL

    def to_dict(self) -> dict:
        return _fit_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PowerLawFit:
        return _fit_from_dict(cls, PowerLaw, d)


@dataclass(frozen=True)
class ChinchillaFit:
    """A fitted L(N, D) with bootstrap intervals (ci keys: E, A, B, alpha, beta)."""

    law: ChinchillaLaw
    n_runs: int
    huber_objective: float
    ci: dict[str, Interval] = field(default_factory=dict)
    bootstrap_laws: tuple[ChinchillaLaw, ...] = ()
    level: float = DEFAULT_LEVEL

    def to_dict(self) -> dict:
        return _fit_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ChinchillaFit:
        return _fit_from_dict(cls, ChinchillaLaw, d)


@dataclass(frozen=True)
class Prediction:
    """Predicted loss at one compute, with the bootstrap interval when there are samples."""

    compute_flops: float
    loss: float
    interval: Interval | None = None

    def to_dict(self) -> dict:
        return {"compute_flops": float(self.compute_flops), "loss": float(self.loss),
                "interval": _opt_to_dict(self.interval)}

    @classmethod
    def from_dict(cls, d: dict) -> Prediction:
        return cls(compute_flops=float(d["compute_flops"]), loss=float(d["loss"]),
                   interval=_opt_interval(d.get("interval")))


@dataclass(frozen=True)
class PredictionBand:
    """Predicted loss over a grid of compute, with lower/upper bootstrap curves (for plots)."""

    compute_flops: tuple[float, ...]
    loss: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    level: float = DEFAULT_LEVEL

    def to_dict(self) -> dict:
        return {"compute_flops": list(self.compute_flops), "loss": list(self.loss),
                "lo": list(self.lo), "hi": list(self.hi), "level": self.level}

    @classmethod
    def from_dict(cls, d: dict) -> PredictionBand:
        return cls(**{k: tuple(map(float, d[k])) for k in ("compute_flops", "loss", "lo", "hi")},
                   level=float(d["level"]))


@dataclass(frozen=True)
class HeldOutRun:
    """One held-out run: actual loss, loss predicted by a fit that never saw it."""

    name: str
    compute_flops: float
    actual_loss: float
    predicted_loss: float
    relative_error: float  # (predicted - actual) / actual
    interval: Interval | None = None

    def to_dict(self) -> dict:
        d = {k: float(getattr(self, k)) for k in
             ("compute_flops", "actual_loss", "predicted_loss", "relative_error")}
        return {"name": self.name, **d, "interval": _opt_to_dict(self.interval)}

    @classmethod
    def from_dict(cls, d: dict) -> HeldOutRun:
        return cls(name=str(d["name"]), compute_flops=float(d["compute_flops"]),
                   actual_loss=float(d["actual_loss"]), predicted_loss=float(d["predicted_loss"]),
                   relative_error=float(d["relative_error"]),
                   interval=_opt_interval(d.get("interval")))


@dataclass(frozen=True)
class HeldOutResult:
    """Extrapolation check: fit on the smaller-compute runs, predict the largest ones."""

    kind: str
    n_train: int
    train_max_compute_flops: float
    runs: tuple[HeldOutRun, ...]

    @property
    def max_abs_relative_error(self) -> float:
        return max(abs(r.relative_error) for r in self.runs)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "n_train": int(self.n_train),
                "train_max_compute_flops": float(self.train_max_compute_flops),
                "runs": [r.to_dict() for r in self.runs]}

    @classmethod
    def from_dict(cls, d: dict) -> HeldOutResult:
        return cls(kind=str(d["kind"]), n_train=int(d["n_train"]),
                   train_max_compute_flops=float(d["train_max_compute_flops"]),
                   runs=tuple(HeldOutRun.from_dict(r) for r in d["runs"]))


@dataclass(frozen=True)
class ComputeOptimal:
    """Compute-optimal N and D from a Chinchilla fit, with C = k·N·D (Hoffmann et al. 2022, eq. 4).

    N_opt(C) = G·(C/k)^a, D_opt(C) = (C/k)/N_opt(C),
    G = (alpha·A/(beta·B))^(1/(alpha+beta)), a = beta/(alpha+beta), b = alpha/(alpha+beta).
    """

    kind: str
    flops_per_param_token: float  # k
    G: float
    params_exponent: float  # a
    tokens_exponent: float  # b
    ci: dict[str, Interval] = field(default_factory=dict)  # G, params_exponent, tokens_exponent

    def params_opt(self, compute_flops):
        return self.G * np.power(np.asarray(compute_flops, float) / self.flops_per_param_token,
                                 self.params_exponent)

    def tokens_opt(self, compute_flops):
        params_tokens = np.asarray(compute_flops, float) / self.flops_per_param_token
        return params_tokens / self.params_opt(compute_flops)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "flops_per_param_token": float(self.flops_per_param_token),
                "G": float(self.G), "params_exponent": float(self.params_exponent),
                "tokens_exponent": float(self.tokens_exponent), "ci": _ci_to_dict(self.ci)}

    @classmethod
    def from_dict(cls, d: dict) -> ComputeOptimal:
        return cls(kind=str(d["kind"]), flops_per_param_token=float(d["flops_per_param_token"]),
                   G=float(d["G"]), params_exponent=float(d["params_exponent"]),
                   tokens_exponent=float(d["tokens_exponent"]), ci=_ci_from_dict(d["ci"]))


@dataclass(frozen=True)
class Multiplier:
    """Effective compute multiplier of `kind` over `baseline_kind` at equal loss:
    C_baseline(L) / C_kind(L); 2.0 means `kind` reaches L with half the compute."""

    kind: str
    baseline_kind: str
    loss: float
    reference_compute_flops: float  # where the baseline's fit predicts `loss` (nan if given)
    value: float  # nan when undefined (L at or below an irreducible loss E)
    interval: Interval | None
    n_boot_used: int
    note: str = ""

    @property
    def defined(self) -> bool:
        return math.isfinite(self.value)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "baseline_kind": self.baseline_kind, "loss": float(self.loss),
                "reference_compute_flops": float(self.reference_compute_flops),
                "value": float(self.value), "interval": _opt_to_dict(self.interval),
                "n_boot_used": int(self.n_boot_used), "note": self.note}

    @classmethod
    def from_dict(cls, d: dict) -> Multiplier:
        return cls(kind=str(d["kind"]), baseline_kind=str(d["baseline_kind"]),
                   loss=float(d["loss"]),
                   reference_compute_flops=float(d["reference_compute_flops"]),
                   value=float(d["value"]), interval=_opt_interval(d.get("interval")),
                   n_boot_used=int(d["n_boot_used"]), note=str(d.get("note", "")))


@dataclass(frozen=True)
class Extrapolation:
    """Predicted loss of one FFN kind at a compute beyond (or inside) the table."""

    kind: str
    prediction: Prediction

    def to_dict(self) -> dict:
        return {"kind": self.kind, "prediction": self.prediction.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> Extrapolation:
        return cls(kind=str(d["kind"]), prediction=Prediction.from_dict(d["prediction"]))


@dataclass(frozen=True)
class ScalingFit:
    """Everything `fit_run_table` learned from one run table, per FFN kind."""

    loss_column: str
    level: float
    n_boot: int
    seed: int
    kinds: tuple[str, ...]
    max_compute_flops: float
    power_laws: dict[str, PowerLawFit] = field(default_factory=dict)
    chinchilla: dict[str, ChinchillaFit] = field(default_factory=dict)
    compute_optimal: dict[str, ComputeOptimal] = field(default_factory=dict)
    held_out: dict[str, HeldOutResult] = field(default_factory=dict)
    multipliers: tuple[Multiplier, ...] = ()
    extrapolations: tuple[Extrapolation, ...] = ()
    notes: tuple[str, ...] = ()
    shared: Any = None  # scaling.shared.SharedFit: one E and alpha for every kind

    def multiplier(self, kind: str, baseline_kind: str) -> Multiplier | None:
        """The per-kind fits' multiplier (at the largest compute's loss)."""
        return next((m for m in self.multipliers
                     if m.kind == kind and m.baseline_kind == baseline_kind), None)

    def shared_multiplier(self, kind: str, baseline_kind: str) -> Multiplier | None:
        """The shared-exponent fit's multiplier (the same at every loss)."""
        if self.shared is None or kind not in self.shared.law.A or baseline_kind not in self.shared.law.A:
            return None
        return self.shared.multiplier(kind, baseline_kind)

    def to_dict(self) -> dict:
        return {
            "format": FIT_FORMAT,
            "loss_column": self.loss_column, "level": float(self.level),
            "n_boot": int(self.n_boot), "seed": int(self.seed), "kinds": list(self.kinds),
            "max_compute_flops": float(self.max_compute_flops),
            "power_laws": {k: v.to_dict() for k, v in self.power_laws.items()},
            "chinchilla": {k: v.to_dict() for k, v in self.chinchilla.items()},
            "compute_optimal": {k: v.to_dict() for k, v in self.compute_optimal.items()},
            "held_out": {k: v.to_dict() for k, v in self.held_out.items()},
            "multipliers": [m.to_dict() for m in self.multipliers],
            "extrapolations": [e.to_dict() for e in self.extrapolations],
            "notes": list(self.notes),
            "shared": self.shared.to_dict() if self.shared is not None else None,
            "shared_multipliers": [m.to_dict() for m in (
                self.shared_multiplier("expert-choice", b) for b in ("dense", "token-choice"))
                if m is not None],
        }

    @classmethod
    def from_dict(cls, d: dict) -> ScalingFit:
        if d.get("format") != FIT_FORMAT:
            raise ValueError(f"scaling fit: format {d.get('format')!r}, expected {FIT_FORMAT!r}")
        return cls(
            loss_column=str(d["loss_column"]), level=float(d["level"]), n_boot=int(d["n_boot"]),
            seed=int(d["seed"]), kinds=tuple(d["kinds"]),
            max_compute_flops=float(d["max_compute_flops"]),
            power_laws={k: PowerLawFit.from_dict(v) for k, v in d["power_laws"].items()},
            chinchilla={k: ChinchillaFit.from_dict(v) for k, v in d["chinchilla"].items()},
            compute_optimal={k: ComputeOptimal.from_dict(v)
                             for k, v in d["compute_optimal"].items()},
            held_out={k: HeldOutResult.from_dict(v) for k, v in d["held_out"].items()},
            multipliers=tuple(Multiplier.from_dict(m) for m in d["multipliers"]),
            extrapolations=tuple(Extrapolation.from_dict(e) for e in d["extrapolations"]),
            notes=tuple(d["notes"]),
            shared=_shared_from_dict(d.get("shared")),
        )


def _shared_from_dict(d: dict | None):
    from .shared import SharedFit

    return SharedFit.from_dict(d) if d else None


# ---------------------------------------------------------------------------------------
# Log-space Huber fit (Hoffmann et al. 2022 Approach 3; Besiroglu et al. 2024)
# ---------------------------------------------------------------------------------------


def _huber_objective(theta, logx_TN, log_loss_N, delta=HUBER_DELTA):
    """Mean Huber(logsumexp(e, a_t - alpha_t·x_t) - log L) / delta², and its gradient.

    theta = [e, a_1, alpha_1, a_2, alpha_2, ...]; x_t are log inputs (normalised).
    """
    e, a_T, alpha_T = theta[0], theta[1::2], theta[2::2]
    z_KN = np.vstack([np.full(logx_TN.shape[1], e), a_T[:, None] - alpha_T[:, None] * logx_TN])
    zmax_N = z_KN.max(axis=0)
    w_KN = np.exp(z_KN - zmax_N)
    sum_N = w_KN.sum(axis=0)
    w_KN /= sum_N  # softmax = d logsumexp / d z
    r_N = zmax_N + np.log(sum_N) - log_loss_N
    abs_r = np.abs(r_N)
    huber_N = np.where(abs_r <= delta, 0.5 * r_N**2, delta * (abs_r - 0.5 * delta))
    psi_N = np.clip(r_N, -delta, delta)  # d huber / d r
    scale = 1.0 / (len(r_N) * delta**2)
    grad = np.empty_like(theta)
    grad[0] = w_KN[0] @ psi_N
    grad[1::2] = w_KN[1:] @ psi_N
    grad[2::2] = -(w_KN[1:] * logx_TN) @ psi_N
    return huber_N.sum() * scale, grad * scale


def _grid_starts(logx_TN, log_loss_N) -> list[np.ndarray]:
    """Starts: E as a fraction of the smallest loss, exponents from a grid, each a_t set so
    the terms share the excess loss at the median input."""
    loss_N = np.exp(log_loss_N)
    n_terms = logx_TN.shape[0]
    median_T = np.median(logx_TN, axis=1)
    starts = []
    for e_frac in _E_FRACTIONS_OF_MIN_LOSS:
        E = e_frac * loss_N.min()
        excess = np.median(loss_N) - E
        for alphas in itertools.product(_ALPHA_STARTS, repeat=n_terms):
            for shares in _TERM_SHARES[n_terms]:
                theta = [math.log(E)]
                for t in range(n_terms):
                    theta += [math.log(shares[t] * excess) + alphas[t] * median_T[t], alphas[t]]
                starts.append(np.array(theta))
    return starts


def _single_threaded_blas(fn):
    """Run fn with BLAS limited to one thread (when threadpoolctl is installed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _threadpool_limits is None:
            return fn(*args, **kwargs)
        with _threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


def _minimise(starts, logx_TN, log_loss_N) -> tuple[np.ndarray, float]:
    """L-BFGS-B from every start; return the best (theta, objective)."""
    bounds = [(None, None)] + [(None, None), _ALPHA_BOUNDS] * logx_TN.shape[0]
    best_theta, best_obj = None, math.inf
    for theta0 in starts:
        res = minimize(_huber_objective, theta0, args=(logx_TN, log_loss_N), jac=True,
                       method="L-BFGS-B", bounds=bounds, options=_LBFGS_OPTIONS)
        if np.isfinite(res.fun) and res.fun < best_obj:
            best_theta, best_obj = res.x, float(res.fun)
    if best_theta is None:
        raise FitError("scaling fit: the optimiser found no finite optimum from any start")
    return best_theta, best_obj


def _fit_theta(logx_TN, log_loss_N, warm_start=None) -> tuple[np.ndarray, float]:
    """Full grid for a point fit; the warm start plus a thinned grid for bootstrap refits."""
    starts = _grid_starts(logx_TN, log_loss_N)
    if warm_start is not None:
        step = max(1, len(starts) // _BOOTSTRAP_GRID_STARTS)
        starts = [warm_start, *starts[step // 2::step]]
    return _minimise(starts, logx_TN, log_loss_N)


def _positive_columns(*columns, min_rows: int, what: str) -> list[np.ndarray]:
    arrays = [np.asarray(c, dtype=float).ravel() for c in columns]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise FitError(f"{what}: inputs have different lengths {[len(a) for a in arrays]}")
    if n < min_rows:
        raise FitError(f"{what}: needs at least {min_rows} runs, got {n}")
    if not all(np.all(np.isfinite(a) & (a > 0)) for a in arrays):
        raise FitError(f"{what}: every input must be finite and > 0 (fitted in log space)")
    return arrays


# ---------------------------------------------------------------------------------------
# Fits
# ---------------------------------------------------------------------------------------


@_single_threaded_blas
def fit_power_law(compute_flops, loss, *, n_boot: int = 0, seed=0, level: float = DEFAULT_LEVEL,
                  progress: bool = False) -> PowerLawFit:
    """Fit L(C) = E + A·C^(-alpha); with n_boot > 0 add percentile bootstrap intervals."""
    C, L = _positive_columns(compute_flops, loss, min_rows=MIN_RUNS_POWER_LAW, what="power-law fit")
    log_ref = float(np.mean(np.log(C)))  # geometric-mean normalisation

    def solve(C_b, L_b, warm=None):
        return _fit_theta((np.log(C_b) - log_ref)[None], np.log(L_b), warm)

    theta, objective = solve(C, L)

    def refit(C_b, L_b):
        return _power_law_from_theta(solve(C_b, L_b, theta)[0], log_ref)

    laws = bootstrap(refit, [C, L], n_boot=n_boot, seed=seed, min_unique=3, progress=progress,
                     description="bootstrap L(C)")
    return PowerLawFit(law=_power_law_from_theta(theta, log_ref), n_runs=len(C),
                       huber_objective=objective, ci=_law_intervals(laws, level),
                       bootstrap_laws=tuple(laws), level=level)


@_single_threaded_blas
def fit_chinchilla(params, tokens, loss, *, n_boot: int = 0, seed=0,
                   level: float = DEFAULT_LEVEL, progress: bool = False) -> ChinchillaFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, eq. 2)."""
    N, D, L = _positive_columns(params, tokens, loss, min_rows=MIN_RUNS_CHINCHILLA,
                                what="Chinchilla fit")
    if len(np.unique(N)) < 2 or len(np.unique(D)) < 2:
        raise FitError("Chinchilla fit: needs at least 2 distinct parameter counts and "
                       "2 distinct token counts")
    log_ref_T = np.array([np.mean(np.log(N)), np.mean(np.log(D))])

    def solve(N_b, D_b, L_b, warm=None):
        logx_TN = np.vstack([np.log(N_b), np.log(D_b)]) - log_ref_T[:, None]
        return _fit_theta(logx_TN, np.log(L_b), warm)

    theta, objective = solve(N, D, L)

    def refit(N_b, D_b, L_b):
        return _chinchilla_from_theta(solve(N_b, D_b, L_b, theta)[0], log_ref_T)

    laws = bootstrap(refit, [N, D, L], n_boot=n_boot, seed=seed, min_unique=5, progress=progress,
                     description="bootstrap L(N, D)")
    return ChinchillaFit(law=_chinchilla_from_theta(theta, log_ref_T), n_runs=len(L),
                         huber_objective=objective, ci=_law_intervals(laws, level),
                         bootstrap_laws=tuple(laws), level=level)


def _power_law_from_theta(theta, log_ref: float) -> PowerLaw:
    # A·(C/C_ref)^-alpha = (A·C_ref^alpha)·C^-alpha
    e, a, alpha = theta
    return PowerLaw(E=math.exp(e), A=math.exp(a + alpha * log_ref), alpha=float(alpha))


def _chinchilla_from_theta(theta, log_ref_T) -> ChinchillaLaw:
    e, a, alpha, b, beta = theta
    return ChinchillaLaw(E=math.exp(e), A=math.exp(a + alpha * log_ref_T[0]),
                         B=math.exp(b + beta * log_ref_T[1]), alpha=float(alpha), beta=float(beta))


# ---------------------------------------------------------------------------------------
# Bootstrap and predictions
# ---------------------------------------------------------------------------------------


def bootstrap(fit_fn: Callable[..., T], columns: Sequence[np.ndarray], *, n_boot: int = 200,
              seed=0, min_unique: int = 1, progress: bool = False,
              description: str = "bootstrap") -> list[T]:
    """Resample rows with replacement n_boot times and refit: fit_fn(*resampled_columns).

    Resamples with fewer than `min_unique` distinct rows (cannot identify the constants)
    and refits that raise FitError are skipped, so fewer than n_boot results may return.
    """
    rng = np.random.default_rng(seed)
    n_rows = len(columns[0])
    results = []
    with _progress_bar(n_boot, description, progress) as advance:
        for _ in range(n_boot):
            idx = rng.integers(0, n_rows, size=n_rows)
            advance()
            if len(np.unique(idx)) < min_unique:
                continue
            try:
                results.append(fit_fn(*(np.asarray(c)[idx] for c in columns)))
            except FitError:
                continue
    return results


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


def percentile_interval(samples, level: float = DEFAULT_LEVEL) -> Interval | None:
    """Percentile interval of the non-NaN samples (inf allowed); None when there are none.

    Uses the order statistics just outside the nominal quantiles ('lower'/'higher'), which
    keeps infinite samples (a loss never reached) meaningful."""
    x = np.asarray(samples, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return None
    q = 100 * (1 - level) / 2
    lo = np.percentile(x, q, method="lower")
    hi = np.percentile(x, 100 - q, method="higher")
    return Interval(lo=float(lo), hi=float(hi), level=level)


def _law_intervals(laws, level) -> dict[str, Interval]:
    if not laws:
        return {}
    names = list(laws[0].to_dict())
    return {k: percentile_interval([getattr(b, k) for b in laws], level) for k in names}


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
    n_hold = _n_held_out(len(C), holdout)
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


def _n_held_out(n_runs: int, holdout: int | float) -> int:
    if isinstance(holdout, float) and 0 < holdout < 1:
        return max(1, math.ceil(holdout * n_runs))
    if int(holdout) >= 1 and int(holdout) == holdout:
        return int(holdout)
    raise ValueError(f"holdout must be a run count >= 1 or a fraction in (0, 1), got {holdout}")


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
    ratios = [_ratio(y, x, loss) for x, y in zip(fit.bootstrap_laws, baseline.bootstrap_laws)]
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
    for name, l in ((kind, law), (baseline_kind, baseline)):
        if loss <= l.E:
            return (f"undefined: loss {loss:.4g} is at or below {name}'s irreducible loss "
                    f"E={l.E:.4g}, so {name} never reaches it")
    return ""


# ---------------------------------------------------------------------------------------
# Whole run table
# ---------------------------------------------------------------------------------------


def fit_run_table(df: pd.DataFrame, *, n_boot: int = 200, seed: int = 0,
                  extrapolate_to_flops: float | None = None, loss_column: str = "smoothed_loss",
                  holdout: int | float = 1, level: float = DEFAULT_LEVEL,
                  progress: bool = False) -> ScalingFit:
    """Per FFN kind: L(C) power law, held-out check, Chinchilla L(N, D) and compute-optimal
    allocation; multipliers of expert-choice over dense and token-choice; extrapolations."""
    if loss_column not in ("smoothed_loss", "final_loss"):
        raise ValueError(f"loss_column must be smoothed_loss or final_loss, got {loss_column!r}")
    df = validate_run_table(df)
    kinds = tuple(k for k in FFN_KINDS if (df["ffn_kind"] == k).any())
    notes: list[str] = []
    power_laws, chinchilla, optimal, held_out = {}, {}, {}, {}
    for i, kind in enumerate(kinds):
        runs = df[df["ffn_kind"] == kind]
        frontier = compute_frontier(runs, loss_column)
        if len(frontier) < len(runs):
            notes.append(f"L(C) for {kind}: fitted to the {len(frontier)} runs on the compute "
                         f"frontier, of {len(runs)} in all")
        C, L = frontier["compute_flops"], frontier[loss_column]
        seeds = np.random.SeedSequence([seed, i]).spawn(3)
        opts = {"n_boot": n_boot, "level": level}
        _store(power_laws, kind, _attempt(
            notes, f"power law L(C) for {kind}", fit_power_law, C, L, seed=seeds[0],
            progress=progress, **opts))
        _store(held_out, kind, _attempt(
            notes, f"held-out check for {kind}", held_out_check, C, L, frontier["name"], kind=kind,
            holdout=holdout, seed=seeds[1], **opts))
        _store(chinchilla, kind, _attempt(
            notes, f"Chinchilla L(N, D) for {kind}", fit_chinchilla, runs["active_params"],
            runs["tokens_seen"], runs[loss_column], seed=seeds[2],
            progress=progress, **opts))
        if kind in power_laws and len(C) < _MIN_RUNS_FOR_INTERVALS:
            notes.append(f"L(C) for {kind}: only {len(C)} runs for 3 constants; its bootstrap "
                         "intervals understate the uncertainty")
        if kind in chinchilla:
            k = flops_per_param_token(runs)
            optimal[kind] = compute_optimal(chinchilla[kind], k, kind=kind)
            notes += _collinearity_note(runs, kind)
    max_compute_flops = float(df["compute_flops"].max())
    shared = _shared_fit(df, kinds, loss_column, n_boot=n_boot, seed=seed, level=level,
                         notes=notes)
    return ScalingFit(
        loss_column=loss_column, level=level, n_boot=n_boot, seed=seed, kinds=kinds,
        max_compute_flops=max_compute_flops, power_laws=power_laws, chinchilla=chinchilla,
        compute_optimal=optimal, held_out=held_out,
        multipliers=_expert_choice_multipliers(power_laws, max_compute_flops, notes),
        extrapolations=_extrapolations(power_laws, extrapolate_to_flops),
        notes=tuple(notes), shared=shared,
    )


def _shared_fit(df, kinds, loss_column, *, n_boot, seed, level, notes):
    """L_k(C) = E + A_k C^-alpha over the frontier runs of every kind (scaling.shared)."""
    from .shared import fit_shared_power_law

    frontier = pd.concat([compute_frontier(df[df["ffn_kind"] == k], loss_column) for k in kinds])
    return _attempt(notes, "shared-exponent fit", fit_shared_power_law,
                    frontier["compute_flops"], frontier[loss_column], frontier["ffn_kind"],
                    n_boot=n_boot, seed=np.random.SeedSequence([seed, 99]), level=level)


def compute_frontier(runs: pd.DataFrame, loss_column: str = "smoothed_loss") -> pd.DataFrame:
    """The runs on the compute-efficient frontier.

    With a ``budget`` column (several model sizes per compute budget, Hoffmann et al. 2022
    Approach 1): the lowest-loss run of each budget. Without one (points read off runs of
    several sizes, Kaplan et al. 2020 Fig. 2): the lower envelope, i.e. every run that no run
    with at most its compute beats. Runs of one size alone are all on it."""
    if "budget" in runs.columns and not runs["budget"].isna().any():
        best = runs.groupby("budget", sort=False)[loss_column].idxmin()
        return runs.loc[sorted(best)]
    ordered = runs.sort_values(["compute_flops", loss_column])
    best_so_far = ordered[loss_column].cummin()
    on_frontier = ordered[loss_column] <= best_so_far
    return ordered[on_frontier.to_numpy()].sort_index()


def _attempt(notes: list[str], what: str, fit_fn: Callable[..., T], *args, **kwargs) -> T | None:
    """Run one fit; when the data cannot support it, record why in notes and return None."""
    try:
        return fit_fn(*args, **kwargs)
    except FitError as err:
        notes.append(f"skipped {what}: {err}")
        return None


def _store(results: dict, kind: str, fit) -> None:
    if fit is not None:
        results[kind] = fit


def _collinearity_note(runs: pd.DataFrame, kind: str) -> list[str]:
    r = np.corrcoef(np.log(runs["active_params"]), np.log(runs["tokens_seen"]))[0, 1]
    if abs(r) > 0.99:
        return [f"Chinchilla L(N, D) for {kind}: log N and log D are nearly collinear "
                f"(r = {r:.3f}); alpha and beta are poorly identified"]
    return []


def _expert_choice_multipliers(power_laws, max_compute_flops, notes) -> tuple[Multiplier, ...]:
    out = []
    for baseline in ("dense", "token-choice"):
        if "expert-choice" in power_laws and baseline in power_laws:
            m = compute_multiplier(power_laws["expert-choice"], power_laws[baseline],
                                   kind="expert-choice", baseline_kind=baseline,
                                   reference_compute_flops=max_compute_flops)
            out.append(m)
            if m.note:
                notes.append(f"multiplier expert-choice over {baseline}: {m.note}")
    return tuple(out)


def _extrapolations(power_laws, compute_flops) -> tuple[Extrapolation, ...]:
    if compute_flops is None:
        return ()
    return tuple(Extrapolation(kind=k, prediction=predict(f, compute_flops))
                 for k, f in power_laws.items())


def _for(kind: str) -> str:
    return f" for {kind}" if kind else ""


# ---------------------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------------------


def save_fit(fit: ScalingFit, path) -> Path:
    """Write the fit as YAML, atomically (temp file + os.replace)."""
    path = Path(path)
    text = yaml.safe_dump(fit.to_dict(), sort_keys=False, default_flow_style=None, width=100)
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return path


def load_fit(path) -> ScalingFit:
    """Read a fit written by save_fit."""
    # the C loader when PyYAML has it: a fit with 200 bootstrap laws per kind is ~150 KB, and
    # `plan` reads the reference fit on every call
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return ScalingFit.from_dict(yaml.load(Path(path).read_text(), Loader=loader))


def _fit_to_dict(fit) -> dict:
    names = list(fit.law.to_dict())
    return {
        "law": fit.law.to_dict(), "n_runs": int(fit.n_runs),
        "huber_objective": float(fit.huber_objective), "level": float(fit.level),
        "ci": _ci_to_dict(fit.ci),
        "bootstrap_laws": {k: [float(getattr(b, k)) for b in fit.bootstrap_laws] for k in names},
    }


def _fit_from_dict(cls, law_cls, d: dict):
    columns = d.get("bootstrap_laws") or {}
    n_boot = len(next(iter(columns.values()), []))
    laws = tuple(law_cls.from_dict({k: v[i] for k, v in columns.items()}) for i in range(n_boot))
    return cls(law=law_cls.from_dict(d["law"]), n_runs=int(d["n_runs"]),
               huber_objective=float(d["huber_objective"]), ci=_ci_from_dict(d["ci"]),
               bootstrap_laws=laws, level=float(d["level"]))


def _ci_to_dict(ci: dict[str, Interval | None]) -> dict:
    return {k: _opt_to_dict(v) for k, v in ci.items()}


def _ci_from_dict(d: dict) -> dict[str, Interval]:
    return {k: _opt_interval(v) for k, v in (d or {}).items()}


def _opt_to_dict(interval: Interval | None) -> dict | None:
    return None if interval is None else interval.to_dict()


def _opt_interval(d: dict | None) -> Interval | None:
    return None if d is None else Interval.from_dict(d)


@contextlib.contextmanager
def _progress_bar(total: int, description: str, enabled: bool) -> Iterator[Callable[[], None]]:
    """A rich progress bar when enabled, else a no-op advance()."""
    if not enabled or total == 0:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
