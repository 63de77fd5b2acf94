"""What a saved scaling fit supports saying about a planned run (no torch): the compute
multipliers of its FFN kind over the baselines, with their run-level intervals, the compute
range they were measured on and how far the plan lies beyond it.

No absolute loss: the default fit is the reference sweep's (tiny CPU models, 32x32 images),
and a loss read off it at a planned run's compute would be extrapolated many orders of
magnitude (`fit.MAX_EXTRAPOLATION` bounds where the project predicts an absolute loss).
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .fit_file import load_fit
from .formulas import identification, unidentified
from .results import ScalingFit
from .runlevel import kind_of

REFERENCE_FIT = "reference_fit.json"


def reference_fit_path() -> Path | None:
    path = Path(str(resources.files("ecdit_scale") / "data" / REFERENCE_FIT))
    return path if path.is_file() else None


def scaling_estimate(fit_path: str | Path | None, kind: str, experts: int,
                     compute_flops: float) -> dict[str, Any] | None:
    """The multipliers of FFN ``kind`` (the variant with ``experts`` experts when the fit has
    it, else every variant of the kind) over the baselines; None when no fit is available or
    it compares nothing of this kind."""
    explicit = fit_path is not None
    path = Path(fit_path) if explicit else reference_fit_path()
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError(f"--fit {path}: no such file; write one with "
                          "`ecdit-scale fit TABLE --out FILE`")
    fit = load_fit(path)  # ConfigError naming the file and field when it is not a fit
    pairs = [(k, b) for k, b in fit.pairs() if kind_of(k) == kind]
    same_experts = [(k, b) for k, b in pairs if k == kind or k.endswith(f"-{experts}e")]
    pairs = same_experts or pairs
    multipliers = [m for m in (_multiplier(fit, k, b) for k, b in pairs) if m is not None]
    if not multipliers:
        return None
    lo = fit.min_compute_flops if math.isfinite(fit.min_compute_flops) else fit.max_compute_flops
    return {
        "kind": kind,
        "source": str(path) if explicit else f"the reference sweep's fit ({REFERENCE_FIT})",
        "loss": fit.loss_label or fit.loss_column,
        "measured_compute_flops": [lo, fit.max_compute_flops],
        "beyond_factor": compute_flops / fit.max_compute_flops,
        "statistics": _statistics(fit),
        "multipliers": multipliers,
    }


def _multiplier(fit: ScalingFit, kind: str, baseline: str) -> dict[str, Any] | None:
    c = fit.headline.comparison(kind, baseline) if fit.headline is not None else None
    if c is not None:  # the headline L(N, D): with what the design can detect
        iv = c.interval
        return {"variant": kind, "baseline": baseline,
                "value": c.value if c.identified else None,
                "interval": [iv.lo, iv.hi] if iv is not None and c.identified else None,
                "note": f"headline L(N, D): {c.verdict()}; {c.constancy()}"}
    m = fit.shared_multiplier(kind, baseline)
    if m is None:
        return None
    iv = m.interval
    why = unidentified(m.value, iv) if iv is not None else ""
    if why or not m.defined:
        return {"variant": kind, "baseline": baseline, "value": None, "interval": None,
                "note": identification(m.value, iv) if why else m.note}
    return {"variant": kind, "baseline": baseline, "value": m.value,
            "interval": [iv.lo, iv.hi] if iv is not None else None,
            "note": ("shared-exponent fit: the same at every loss"
                     + _sensitivity(fit, kind, baseline))}


def _sensitivity(fit: ScalingFit, kind: str, baseline: str) -> str:
    """How the multiplier moves across the fit's sensitivity table, as a clause."""
    ms = [m for row in fit.sensitivity for m in row.multipliers
          if (m.kind, m.baseline_kind) == (kind, baseline) and m.defined]
    if not ms:
        return ""
    values = [m.value for m in ms]
    with_one = sum(m.interval is None or m.interval.contains(1.0) for m in ms)
    return (f"; across {len(fit.sensitivity)} variations of the data (loss column, budgets) it "
            f"ranges {min(values):.2f}-{max(values):.2f}x and its interval includes 1 in "
            f"{with_one}")


def _statistics(fit: ScalingFit) -> str:
    level = f"{fit.level:.0%} intervals"
    if fit.bootstrap_unit in ("training run", "run group") and fit.n_training_runs:
        n = "/".join(str(v) for v in sorted(set(fit.n_training_runs.values())))
        return (f"{level}, bootstrap of {n} {fit.bootstrap_unit}s per variant "
                f"({fit.n_boot} resamples)")
    return f"{level}, bootstrap of rows ({fit.n_boot} resamples)"
