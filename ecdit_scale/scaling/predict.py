"""The predicted final loss of a planned run, from a saved scaling fit (no torch).

The default fit is the reference sweep's, checked in as package data. Its runs are tiny CPU
models on small images, so a prediction at a planned run's compute is an extrapolation over
many orders of magnitude: the output says how far, and the loss is in the units of that
sweep's objective (rectified-flow MSE on 32x32 pixels), not the paper's latents.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .laws import predict
from .results import load_fit

REFERENCE_FIT = "reference_fit.yaml"


def reference_fit_path() -> Path | None:
    path = Path(str(resources.files("ecdit_scale") / "data" / REFERENCE_FIT))
    return path if path.is_file() else None


def predicted_loss(fit_path: str | Path | None, kind: str, compute_flops: float) -> dict[str, Any] | None:
    """Loss at ``compute_flops`` for FFN ``kind`` with its bootstrap interval, or None when no
    fit is available (no --fit and no reference fit) or the fit has no law for the kind."""
    explicit = fit_path is not None
    path = Path(fit_path) if explicit else reference_fit_path()
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError(f"--fit {path}: no such file; write one with `ecdit-scale fit TABLE --out FILE`")
    fit = load_fit(path)  # ConfigError naming the file and field when it is not a fit
    law = fit.power_laws.get(kind)
    if law is None:
        if explicit:
            raise ConfigError(f"--fit {path}: no fit for {kind}; it has {', '.join(fit.power_laws) or 'none'}")
        return None
    p = predict(law, compute_flops)
    return {
        "loss": p.loss,
        "interval": [p.interval.lo, p.interval.hi] if p.interval else None,
        "kind": kind,
        "compute_flops": compute_flops,
        "source": str(path) if explicit else f"the reference sweep's fit ({REFERENCE_FIT})",
        "extrapolation_factor": compute_flops / fit.max_compute_flops,
        "law": {"E": law.law.E, "A": law.law.A, "alpha": law.law.alpha},
    }
