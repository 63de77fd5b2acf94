"""Achieved model FLOP/s of a training step, and how much of the device's peak that is.

Model FLOPs per image are the planner's (``planner.flops.training_flops_per_image(cfg,
recompute).model_flops``: forward + backward, 2 per multiply-accumulate, no recomputation),
which equal the FLOPs ``validate`` counts on the model's own operators
(``evaluation.rows.counted_step_flops``) and take a fraction of a millisecond: counted once per
run, no model is built. Per device (rank): model FLOPs of the global batch / world / step time.

The peak is the catalog's dense bf16 peak of the CUDA device (``planner.hardware``, looked up by
the name torch reports). A CPU has no datasheet peak: its runs record FLOP/s and say that the
share of peak is n/a (``validate`` measures a CPU's matmul rate when it needs one).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..config import ModelConfig
from ..errors import ConfigError
from .records import RunSettings

CPU_PEAK_NOTE = "n/a on CPU: no datasheet peak (ecdit-scale validate measures a CPU's matmul rate)"


@dataclass(frozen=True)
class ThroughputMeter:
    """What turns one step time into achieved FLOP/s; made once per run."""

    model_flops_per_image: float
    global_batch: int
    world: int
    peak_flops_per_s: float | None  # per device, dense bf16; None where there is none
    peak_source: str  # where the peak comes from, or why there is none

    @property
    def model_flops_per_step(self) -> float:
        return self.model_flops_per_image * self.global_batch

    def record(self, step_s: float) -> dict[str, float | None]:
        """The fields of one metrics.jsonl record."""
        per_device = self.model_flops_per_step / self.world / step_s
        pct = None if self.peak_flops_per_s is None else 100.0 * per_device / self.peak_flops_per_s
        return {"model_flops_per_s_per_device": per_device, "pct_of_peak": pct}

    def summary(self, records: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """summary.json's fields over ``records`` (the steady steps the mean step time uses)."""
        rates = [r["model_flops_per_s_per_device"] for r in records
                 if isinstance(r.get("model_flops_per_s_per_device"), (int, float))]
        mean = sum(rates) / len(rates) if rates else None
        pct = (None if mean is None or self.peak_flops_per_s is None
               else 100.0 * mean / self.peak_flops_per_s)
        return {"model_flops_per_image": self.model_flops_per_image,
                "model_flops_per_step": self.model_flops_per_step,
                "mean_model_flops_per_s_per_device": mean, "mean_pct_of_peak": pct,
                "peak_flops_per_s": self.peak_flops_per_s, "peak_source": self.peak_source,
                "flops_source": "planner.flops.training_flops_per_image(...).model_flops "
                                "x global batch / world / step_s"}


def model_flops_per_image(cfg: ModelConfig, s: RunSettings) -> float:
    from ..planner.flops import training_flops_per_image

    return float(training_flops_per_image(cfg, s.recompute).model_flops)


def device_peak(device_name: str | None) -> tuple[float | None, str]:
    """(dense bf16 peak FLOP/s, its source) of a CUDA device name; (None, why) for a CPU (None)
    or a device the catalog lacks."""
    if device_name is None:
        return None, CPU_PEAK_NOTE
    from ..planner.hardware import accelerator_for_device_name

    try:
        acc = accelerator_for_device_name(device_name)
    except ConfigError:
        return None, f"n/a: {device_name} is not in the accelerator catalog"
    return acc.peak_bf16_flops, f"catalog {acc.name}: dense bf16 peak ({acc.source})"


def make_meter(cfg: ModelConfig, s: RunSettings, device_name: str | None) -> ThroughputMeter:
    """``device_name``: what torch calls the CUDA device, None on CPU."""
    peak, source = device_peak(device_name)
    return ThroughputMeter(model_flops_per_image=model_flops_per_image(cfg, s),
                           global_batch=s.global_batch, world=s.world, peak_flops_per_s=peak,
                           peak_source=source)


def meter_for(r) -> ThroughputMeter:
    """The meter of a rank's run (``engine.Rank``)."""
    import torch

    name = torch.cuda.get_device_name(r.device) if r.on_gpu else None
    return make_meter(r.cfg, r.s, name)


def format_flops_per_s(value: float) -> str:
    """1.23 TFLOP/s, 456 GFLOP/s, ...: three significant digits."""
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}FLOP/s"
    return f"{value:.3g} FLOP/s"
