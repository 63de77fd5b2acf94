"""The headline comparison of a run table: the shared-exponent L(N, D) with a scale per variant
(`headline`), its seed bootstrap, the constancy test (a size-dependent scale) and the power of
the design (`power`), as one result that `fit`, `report` and `plan` print.

Wording follows what the data can say: a multiplier whose interval excludes 1 is "detected";
otherwise "not detectable below X", X the design's minimum detectable multiplier; and a design
whose minimum detectable multiplier exceeds IDENTIFIABLE_LIMIT, or whose interval is not an
interval (see `formulas.identification`), "cannot identify" the multiplier at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .formulas import DEFAULT_LEVEL, Interval, identification
from .headline import MAX_LOG_SCALE, HeadlineData, HeadlineLaw, fit_headline_law
from .power import (
    ALPHA_TEST,
    POWER,
    gamma_se,
    log_multiplier_se,
    minimum_detectable,
    seed_noise,
    z_detect,
)
from .robust import FitError

if TYPE_CHECKING:
    import pandas as pd

IDENTIFIABLE_LIMIT = 3.0  # a design that cannot detect less than 3x cannot rank the variants


@dataclass(frozen=True)
class HeadlineComparison:
    variant: str
    baseline: str
    value: float  # compute multiplier s_N·s_D at equal loss
    interval: Interval | None
    minimum_detectable: float  # smallest multiplier this design detects (power, level below)
    se_log: float  # standard error of log multiplier (linearised, measured seed noise)
    gamma: float = math.nan  # size trend of log s_N per unit log N (the constancy test)
    gamma_se: float = math.nan
    at_smallest: float = math.nan  # the size-dependent fit's multiplier at the smallest size
    at_largest: float = math.nan  # ... and at the largest

    @property
    def identified(self) -> bool:
        return (self.interval is not None and not identification(self.value, self.interval)
                and self.minimum_detectable <= IDENTIFIABLE_LIMIT)

    @property
    def detected(self) -> bool:
        return self.identified and not self.interval.contains(1.0)

    @property
    def constant(self) -> bool | None:
        """None when untested; else whether |gamma| < z_(1-a/2)·SE (no trend in size seen)."""
        if not (math.isfinite(self.gamma) and math.isfinite(self.gamma_se)):
            return None
        return abs(self.gamma) < z_detect(ALPHA_TEST, 0.5) * self.gamma_se

    def verdict(self) -> str:
        head = f"{self.variant} over {self.baseline}: "
        ci = (f" ({self.interval.level:.0%} CI {self.interval.lo:.3g}-{self.interval.hi:.3g})"
              if self.interval else "")
        mdm = f"{self.minimum_detectable:.3g}x"
        if not self.identified:
            why = identification(self.value, self.interval) or (
                f"it detects only multipliers above {mdm}")
            return (f"{head}the design cannot identify the multiplier ({why}); point fit "
                    f"{self.value:.3g}x{ci}")
        if self.detected:
            return f"{head}{self.value:.3g}x{ci}; the design detects multipliers from {mdm}"
        return (f"{head}no difference detected: {self.value:.3g}x{ci}; not detectable below "
                f"{mdm}")

    def constancy(self) -> str:
        c, who = self.constant, f"{self.variant} over {self.baseline}"
        if c is None:
            return f"{who}: constancy in size not tested"
        trend = (f"size trend {self.gamma:+.3f} ± {self.gamma_se:.3f} (log multiplier per "
                 f"log activated parameter; multiplier {self.at_smallest:.3g}x at the smallest "
                 f"size, {self.at_largest:.3g}x at the largest)")
        if c:
            return (f"{who}: no trend in size detected, {trend}: these sizes cannot reject "
                    "a constant multiplier")
        return (f"{who}: the multiplier changes with size, {trend}: do not carry one "
                "number beyond these sizes")

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("variant", "baseline")}
        d.update({k: float(getattr(self, k)) for k in (
            "value", "minimum_detectable", "se_log", "gamma", "gamma_se", "at_smallest",
            "at_largest")})
        d["interval"] = self.interval.to_dict() if self.interval else None
        d["verdict"], d["constancy"] = self.verdict(), self.constancy()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> HeadlineComparison:
        return cls(variant=str(d["variant"]), baseline=str(d["baseline"]),
                   value=float(d["value"]),
                   interval=Interval.from_dict(d["interval"]) if d.get("interval") else None,
                   **{k: float(d[k]) for k in ("minimum_detectable", "se_log", "gamma",
                                               "gamma_se", "at_smallest", "at_largest")})


@dataclass(frozen=True)
class HeadlineFit:
    law: HeadlineLaw
    comparisons: tuple[HeadlineComparison, ...]
    noise_sigma: float
    noise_source: str
    level: float
    n_boot: int
    power: float = POWER
    alpha_test: float = ALPHA_TEST
    bootstrap_laws: tuple[HeadlineLaw, ...] = ()
    params_range: tuple[float, float] = (math.nan, math.nan)
    notes: tuple[str, ...] = field(default_factory=tuple)
    flops_per_param_token: float = math.nan  # k in C = k·N·D, measured on the table
    compute_range: tuple[float, float] = (math.nan, math.nan)  # FLOPs of the table's runs

    def comparison(self, variant: str, baseline: str | None = None
                   ) -> HeadlineComparison | None:
        return next((c for c in self.comparisons if c.variant == variant
                     and (baseline is None or c.baseline == baseline)), None)

    def power_line(self) -> str:
        src = {"seeds": "seed noise measured across repeated seeds",
               "residuals": "no repeated seed: noise taken from the fit's residuals"}.get(
            self.noise_source, self.noise_source)
        return (f"power: {self.power:.0%} to detect at {self.alpha_test:.0%} (two-sided), "
                f"noise {self.noise_sigma:.2%} per run ({src}); estimate from the linearised fit")

    def to_dict(self) -> dict:
        return {"law": self.law.to_dict(), "comparisons": [c.to_dict() for c in self.comparisons],
                "noise_sigma": float(self.noise_sigma), "noise_source": self.noise_source,
                "level": float(self.level), "n_boot": int(self.n_boot),
                "power": float(self.power), "alpha_test": float(self.alpha_test),
                "bootstrap_laws": [b.to_dict() for b in self.bootstrap_laws],
                "params_range": [float(x) for x in self.params_range],
                "notes": list(self.notes), "power_line": self.power_line(),
                "flops_per_param_token": float(self.flops_per_param_token),
                "compute_range": [float(x) for x in self.compute_range]}

    @classmethod
    def from_dict(cls, d: dict) -> HeadlineFit:
        return cls(law=HeadlineLaw.from_dict(d["law"]),
                   comparisons=tuple(HeadlineComparison.from_dict(c) for c in d["comparisons"]),
                   noise_sigma=float(d["noise_sigma"]), noise_source=str(d["noise_source"]),
                   level=float(d["level"]), n_boot=int(d["n_boot"]),
                   power=float(d.get("power", POWER)),
                   alpha_test=float(d.get("alpha_test", ALPHA_TEST)),
                   bootstrap_laws=tuple(HeadlineLaw.from_dict(b)
                                        for b in d.get("bootstrap_laws") or []),
                   params_range=tuple(float(x) for x in d.get("params_range") or
                                      (math.nan, math.nan)),
                   notes=tuple(str(n) for n in d.get("notes") or []),
                   flops_per_param_token=float(d.get("flops_per_param_token", math.nan)),
                   compute_range=tuple(float(x) for x in d.get("compute_range") or
                                       (math.nan, math.nan)))


def headline_data(df: pd.DataFrame, loss_column: str, groups=None,
                  baseline: str = "dense") -> HeadlineData:
    """The run table as the headline fit sees it. groups: each row's variant (default
    ffn_kind); the baseline comes first when present. The stratum is a variant's size (card,
    else its activated params); the unit a seed of it (seed column, else the row's run)."""
    import pandas as pd  # here: `plan` reads fits without building tables (startup)

    group = (df["ffn_kind"] if groups is None else pd.Series(groups, index=df.index)).astype(str)
    names = list(dict.fromkeys(group.tolist()))
    if baseline in names:
        names.remove(baseline)
        names.insert(0, baseline)
    size = (df["card"].astype(str) if "card" in df.columns
            else df["active_params"].map("{:.6g}".format))
    stratum = group + "|" + size
    if "seed" in df.columns and df["seed"].notna().all():
        unit = stratum + "|s" + df["seed"].astype(str)
    else:
        unit = stratum + "|" + df["name"].astype(str)
    if "flops_level" in df.columns:  # an IsoFLOP design: each (size, level) is its own run
        unit = unit + "|" + df["flops_level"].astype(str)
    return HeadlineData(variants=tuple(names), variant_N=group.to_numpy(),
                        params_N=df["active_params"].to_numpy(float),
                        tokens_N=df["tokens_seen"].to_numpy(float),
                        loss_N=df[loss_column].to_numpy(float), unit_N=unit.to_numpy(),
                        stratum_N=stratum.to_numpy())


def fit_headline(data: HeadlineData, *, n_boot: int = 200, seed=0,
                 level: float = DEFAULT_LEVEL, constancy: bool = True,
                 pairs=None, compute_flops=None) -> HeadlineFit:
    """The headline fit with its intervals, the power of the design and the constancy test."""
    res = fit_headline_law(data, n_boot=n_boot, seed=seed, level=level)
    resid = np.log(data.loss_N) - np.log([res.law.loss(v, n, t) for v, n, t in zip(
        data.variant_N, data.params_N, data.tokens_N, strict=True)])
    noise = seed_noise(data, resid)
    notes = _bound_notes(res.law)
    if noise.source != "seeds":
        notes.append("no configuration has two seeds: the noise behind the power estimate is "
                     "the fit's residual scatter, and the bootstrap cannot vary")
    base = data.variants[0]
    pairs = list(pairs) if pairs is not None else [(v, base) for v in data.variants[1:]]
    pairs = [(v, b) for v, b in pairs if v in data.variants and b in data.variants]
    se = log_multiplier_se(data, res.theta, noise.sigma, pairs)
    trend: dict = {}
    n_lo, n_hi = float(data.params_N.min()), float(data.params_N.max())
    if constancy and len(data.variants) > 1:
        try:
            dep = fit_headline_law(data, n_boot=0, level=level, size_dependent=True)
            gse = gamma_se(data, dep.theta, noise.sigma, pairs)
            for v, b in pairs:
                g = dep.law.gamma.get(v, 0.0) - dep.law.gamma.get(b, 0.0)
                trend[(v, b)] = (g, gse[(v, b)], dep.law.multiplier(v, b, n_lo),
                                 dep.law.multiplier(v, b, n_hi))
        except FitError as exc:
            notes.append(f"constancy test not run: {exc}")
    comps = []
    for v, b in pairs:
        g = trend.get((v, b), (math.nan,) * 4)
        comps.append(HeadlineComparison(
            variant=v, baseline=b, value=res.law.multiplier(v, b),
            interval=res.multiplier_interval(v, b),
            minimum_detectable=minimum_detectable(se[(v, b)]), se_log=se[(v, b)], gamma=g[0],
            gamma_se=g[1], at_smallest=g[2], at_largest=g[3]))
    return HeadlineFit(law=res.law, comparisons=tuple(comps), noise_sigma=noise.sigma,
                       noise_source=noise.source, level=level, n_boot=n_boot,
                       bootstrap_laws=res.bootstrap_laws, params_range=(n_lo, n_hi),
                       notes=tuple(notes), **_compute_fields(data, compute_flops))


def _bound_notes(law) -> list[str]:
    """A variant scale at its bound (1/1000 or 1000) is the optimiser's limit, not a measurement:
    the data do not pin that variant's law, so its multiplier and interval mean nothing."""
    out = []
    for axis, scales in (("N", law.s_N), ("D", law.s_D)):
        for v, s in scales.items():
            if abs(math.log(s)) >= MAX_LOG_SCALE - 1e-3:
                out.append(f"headline: the scale on {axis} of {v} is at its bound ({s:.3g}): "
                           f"the data do not pin {v}'s law, and a multiplier built on it is the "
                           "bound's")
    return out


def _compute_fields(data: HeadlineData, compute_flops) -> dict:
    """k = median C/(N·D) and the compute range, when the table's compute is given."""
    if compute_flops is None:
        return {}
    C = np.asarray(compute_flops, float)
    return {"flops_per_param_token": float(np.median(C / (data.params_N * data.tokens_N))),
            "compute_range": (float(C.min()), float(C.max()))}
