"""The step time term by term: the step-time model's terms next to a profiled step's.

A run launched with ``$ECDIT_SCALE_PROFILE_STEP`` keeps ``profile_step<N>.json``, whose
``breakdown`` (``train.step_profile.breakdown``) splits the step by part and, in the model's
forward and backward, by operator class. ``validate`` sets these beside the profile
prediction's terms (``planner.step_time.StepTime``), so that a step-time error comes with the
term that makes it:

- gemm, attention, memory_bound: the model's forward and backward (recomputation included) by
  operator class, measured as the device time of their kernels (CUDA) or their host time (CPU,
  where the model's per-op launch cost is counted with the memory-bound ops: ``serial``);
- comm: the all-to-all the model itself issues inside its forward and backward (expert
  parallelism): measured as gloo's all-to-all time (CPU: the transfer and the wait for the
  other ranks) or its NCCL kernels (CUDA); predicted, the model's all-to-all and
  tensor-parallel terms as exposed in the step, with the ranks' meeting at each all-to-all
  (``StepTime.sync_a2a_s``). A profiled step from before this split has
  none (0: its memory-bound ops include it);
- optimizer: the optimizer step and the EMA update (the model prices both as bytes moved);
- rest: the measured step (median, unprofiled) less the four above: what the engine does
  around the backward and the step, launch gaps where the device waits for the host, exposed
  communication. The model's rest is its launch floor, engine and exposed-collective terms.
- kernels: the model's kernels per step (CPU: leaf compute ops), predicted by
  ``planner.operators`` and counted in the profiled step.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

TERMS = ("gemm", "attention", "memory_bound", "comm", "optimizer", "rest")
TERM_LABELS = {"gemm": "GEMM", "attention": "attention", "memory_bound": "memory-bound",
               "comm": "model's all-to-all", "optimizer": "optimizer + EMA",
               "rest": "rest (engine, launch gaps, grad comm)"}
PROFILE_FILE = re.compile(r"profile_step(\d+)\.json$")


def predicted_terms(st: Any, *, serial: bool = False) -> dict[str, float] | None:
    """The profile prediction's terms (seconds per step), or None for a datasheet prediction
    (compute not split by operator class). ``serial``: a host that runs its ops itself (a
    CPU) pays each op's launch cost inside the op, where the profiled step's host time sees
    it, so the launch term joins the memory-bound ops' (nearly all the ops)."""
    if not st.kernels:
        return None
    launch = float(st.launch_s) if serial else 0.0
    known = {"gemm": float(st.gemm_s), "attention": float(st.attention_s),
             "memory_bound": float(st.memory_bound_s) + launch,
             "comm": float(st.a2a_exposed_s) + float(st.tp_exposed_s) + float(st.sync_a2a_s),
             "optimizer": float(st.optimizer_s)}
    return {**known, "rest": float(st.total_s) - sum(known.values()),
            "kernels": float(st.kernels)}


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: {value!r} is not a non-negative number")
    return float(value)


def measured_terms(breakdown: dict[str, Any], step_s: float) -> dict[str, float]:
    """A profiled step's terms (seconds), its rest taken against the run's median ``step_s``."""
    model, parts = breakdown["model_ms"], breakdown["parts_ms"]
    out = {c: _number(model[c], f"model_ms.{c}") / 1e3
           for c in ("gemm", "attention", "memory_bound")}
    out["comm"] = _number(model.get("comm", 0.0), "model_ms.comm") / 1e3
    out["optimizer"] = (_number(parts["step/optimizer"], "parts_ms.step/optimizer")
                        + _number(parts.get("ema", 0.0), "parts_ms.ema")) / 1e3
    out["rest"] = step_s - sum(out.values())
    out["kernels"] = _number(breakdown["model_kernels"], "model_kernels")
    return out


def read_breakdown(run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """The newest profiled step's breakdown in ``run_dir`` and its basis, or (None, why not)
    where there is none (no profiled step, or one profiled before the breakdown existed). A
    damaged file is passed over with its reason: it is a diagnostic, not the run's record."""
    found = sorted((int(m.group(1)), p) for p in Path(run_dir).glob("profile_step*.json")
                   if (m := PROFILE_FILE.search(p.name)))
    if not found:
        return None, "no profiled step (ECDIT_SCALE_PROFILE_STEP)"
    step, path = found[-1]
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        b = data.get("breakdown")
        if b is None:
            return None, f"{path.name} has no breakdown (profiled before it existed)"
        if not isinstance(b, dict):
            raise ValueError("breakdown is not an object")
        measured_terms(b, 0.0)  # every field it needs is there and a number
        return b, str(b.get("basis", ""))
    except KeyError as exc:
        return None, f"{path.name} passed over: no {exc.args[0]}"
    except (OSError, ValueError, TypeError) as exc:
        return None, f"{path.name} passed over: {exc}"
