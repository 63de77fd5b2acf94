"""The laws as formulas, and the interval type every fit reports (no fitting here).

    L(C)    = E + A·C^(-alpha)                      PowerLaw (C in FLOPs)
    L(N, D) = E + A/N^alpha + B/D^beta              ChinchillaLaw (Hoffmann et al. 2022, eq. 2)
    L_k(C)  = E + A_k·C^(-alpha)                    SharedPowerLaw (one E and alpha per table)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..units import format_number

DEFAULT_LEVEL = 0.95
# An interval of a positive constant that spans more than this factor (or reaches 0 or
# infinity) does not pin the constant down: the data cannot identify it.
IDENTIFIED_SPAN = 1e4


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


def finite(d: dict, key: str) -> float:
    """d[key] as a finite float: a saved law with NaN or infinity is not a law (ValueError)."""
    value = float(d[key])
    if not math.isfinite(value):
        raise ValueError(f"{key} = {value}: a fitted constant must be a finite number")
    return value


@dataclass(frozen=True)
class PowerLaw:
    """L(C) = E + A·C^(-alpha), C in FLOPs (Hoffmann et al. 2022 form, one variable)."""

    E: float
    A: float
    alpha: float

    def loss(self, compute_flops):
        return self.E + self.A * np.power(compute_flops, -self.alpha)

    def compute_flops_for_loss(self, loss: float) -> float:
        """C(L) = ((L - E)/A)^(-1/alpha); inf when L <= E (the loss is never reached) or when
        C exceeds a float (a bootstrap law with a tiny alpha), computed in log space."""
        if loss <= self.E:
            return math.inf
        log_c = -math.log((loss - self.E) / self.A) / self.alpha
        return math.exp(log_c) if log_c < 709.0 else math.inf

    def to_dict(self) -> dict:
        return {"E": float(self.E), "A": float(self.A), "alpha": float(self.alpha)}

    @classmethod
    def from_dict(cls, d: dict) -> PowerLaw:
        return cls(E=finite(d, "E"), A=finite(d, "A"), alpha=finite(d, "alpha"))


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
        return cls(**{k: finite(d, k) for k in ("E", "A", "B", "alpha", "beta")})




@dataclass(frozen=True)
class SharedPowerLaw:
    E: float
    alpha: float
    A: dict[str, float]

    def loss(self, kind: str, compute_flops):
        return self.E + self.A[kind] * np.power(compute_flops, -self.alpha)

    def multiplier(self, kind: str, baseline: str) -> float:
        """(A_baseline / A_kind)^(1/alpha), in log space: a tiny alpha gives inf or 0, not an
        OverflowError."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return float(np.exp((np.log(self.A[baseline]) - np.log(self.A[kind])) / self.alpha))

    def to_dict(self) -> dict:
        return {"E": float(self.E), "alpha": float(self.alpha),
                "A": {k: float(v) for k, v in self.A.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> SharedPowerLaw:
        return cls(E=finite(d, "E"), alpha=finite(d, "alpha"),
                   A={k: finite(d["A"], k) for k in d["A"]})




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


NO_SPREAD = ("no interval: every resample gave the same value (too few training runs per "
             "variant for the bootstrap to vary)")


def identification(value: float, interval: Interval | None) -> str:
    """'' when the bootstrap interval of a positive constant pins it down; otherwise why not,
    e.g. 'not identified: the data are consistent with 0–0.214'."""
    what = unidentified(value, interval)
    if not what:
        return ""
    if what == NO_SPREAD:
        return f"not identified: {what}"
    if what.startswith("0 in every"):
        return (f"not identified: the fit puts it at its bound 0 ({format_number(value, 3)}) "
                f"{what[2:]}")
    return f"not identified: the data are consistent with {what}"


def unidentified(value: float, interval: Interval | None) -> str:
    """'' when the interval pins a positive constant down; otherwise the short reason for a
    table cell: the range the data are consistent with ('0–0.214', '65–∞'), or '0 in every
    resample' when the fit drove the constant to its bound 0 each time and no resample could
    move it (a zero-width interval at next to nothing).

    Not pinned down: the interval reaches infinity or spans more than IDENTIFIED_SPAN."""
    if interval is None:
        return ""
    lo, hi = interval.lo, interval.hi
    if math.isnan(lo) or math.isnan(hi):
        return "no resample gave a value"
    if math.isinf(hi) or math.isinf(lo) or (hi > 0 and lo < hi / IDENTIFIED_SPAN):
        # the fit puts a constant it cannot resolve at ~1e-15: that is 0
        low = "0" if lo < 1e-9 else format_number(lo, 3)
        return f"{low}–{format_number(hi, 3)}"
    if hi - lo <= 1e-9 * max(abs(value), abs(hi), 1e-300) and abs(value) < 1e-9:
        return "0 in every resample"
    if hi - lo <= 1e-9 * max(abs(value), abs(hi), 1e-300):
        return NO_SPREAD
    return ""
