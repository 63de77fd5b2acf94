"""The laws as formulas, and the interval type every fit reports (no fitting here).

    L(C)    = E + A·C^(-alpha)                      PowerLaw (C in FLOPs)
    L(N, D) = E + A/N^alpha + B/D^beta              ChinchillaLaw (Hoffmann et al. 2022, eq. 2)
    L_k(C)  = E + A_k·C^(-alpha)                    SharedPowerLaw (one E and alpha per table)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_LEVEL = 0.95


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
