"""Measured efficiencies, and the one-run calibration ``--save-profile`` writes.

Achieved FLOP/s per device = model FLOPs per step / world / median step time; efficiency =
achieved / peak of the device. The calibration of a device kind is one run's efficiency (the
first, or ``--calibrate-on``); ``validate`` tests it leave-one-out (``predict.leave_one_out``:
no run predicts itself). The peak of a CPU is *measured*: a
single-thread fp32 ``torch.mm`` benchmark (each rank runs one thread); a GPU's is the catalog's
dense bf16 peak. The calibrated efficiency can be saved as an accelerator profile for
``plan --gpu``.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..planner.hardware import Accelerator, accelerator_for_device_name, save_accelerator
from .measure import CPU_MATMUL_N, cpu_copy_bytes_per_s, cpu_matmul_flops_per_s
from .rows import Row


@dataclass(kw_only=True)
class Calibration:
    device: str
    run: str
    peak_flops_per_s: float
    peak_source: str
    efficiency: float


def gpu_accelerator(device_name: str) -> Accelerator:
    """The catalog entry of a CUDA device name ("NVIDIA H100 80GB HBM3" -> h100-sxm); the
    trainer looks its peak up the same way (``planner.hardware``)."""
    return accelerator_for_device_name(device_name)


def peak_of(row: Row, cpu_peak: dict) -> tuple[float | None, str]:
    """The device's peak FLOP/s and where it comes from; None for a GPU not in the catalog."""
    if row.device.startswith("cpu"):
        if "value" not in cpu_peak:
            cpu_peak["value"] = cpu_matmul_flops_per_s()
        return cpu_peak["value"], (f"measured: single-thread fp32 torch.mm {CPU_MATMUL_N}x"
                                   f"{CPU_MATMUL_N} on this machine")
    try:
        acc = gpu_accelerator(row.device)
    except ConfigError:
        return None, f"{row.device} is not in the accelerator catalog"
    return acc.peak_bf16_flops, f"catalog {acc.name}: dense bf16 peak ({acc.source})"


def calibrate(rows: list[Row], calibrate_on: str | None = None) -> list[Calibration]:
    """Fill in each row's achieved FLOP/s and efficiency; returns one Calibration per device
    kind (the ``--calibrate-on`` run, or the first)."""
    cpu_peak: dict = {}
    for r in rows:
        if r.step_s_measured and r.flops_measured:
            r.achieved_flops_per_s = r.flops_measured / r.world / r.step_s_measured
            r.peak_flops_per_s, _ = peak_of(r, cpu_peak)
            if r.peak_flops_per_s:
                r.efficiency = r.achieved_flops_per_s / r.peak_flops_per_s

    calib_row = find_run(rows, calibrate_on)
    calibrations: list[Calibration] = []
    for dev in dict.fromkeys(r.device for r in rows):
        same = [r for r in rows if r.device == dev and r.efficiency]
        if not same:
            continue
        ref = calib_row if calib_row is not None and calib_row.device == dev else same[0]
        if not ref.efficiency:
            continue
        _, src = peak_of(ref, cpu_peak)
        calibrations.append(Calibration(device=dev, run=ref.source,
                                        peak_flops_per_s=ref.peak_flops_per_s,
                                        peak_source=src, efficiency=ref.efficiency))
    return calibrations


def find_run(rows: list[Row], calibrate_on: str | None) -> Row | None:
    """The row ``--calibrate-on`` names (None when not given)."""
    if calibrate_on is None:
        return None
    for r in rows:
        if calibrate_on in (r.source, r.name) or \
                Path(calibrate_on).resolve() == Path(r.source).resolve():
            return r
    raise ConfigError(f"--calibrate-on {calibrate_on}: not among the given runs")


def save_profile_yaml(calibrations: list[Calibration], path: Path) -> Path:
    """The calibrated accelerator (first calibration) as a profile ``plan --gpu`` reads."""
    if not calibrations:
        raise ConfigError("--save-profile: no run had a step time to calibrate on")
    cal = calibrations[0]
    if cal.device.startswith("cpu"):
        cores = os.cpu_count() or 1
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        bw = cpu_copy_bytes_per_s()
        acc = Accelerator(
            name=f"cpu-{platform.node() or 'host'}", peak_bf16_flops=cal.peak_flops_per_s,
            memory_bytes=float(mem), memory_bw_bytes_per_s=bw, intra_node_bw_bytes_per_s=bw,
            inter_node_bw_bytes_per_s=1.25e9, devices_per_node=cores,
            source=f"measured by ecdit-scale validate on {platform.node()}: {cal.peak_source}; "
                   "memory bandwidth from a tensor copy",
            notes="One device = one CPU core running one rank. peak_bf16_flops holds the "
                  "measured fp32 single-thread matmul rate (CPUs train these runs in fp32). "
                  "intra-node bandwidth = the copy bandwidth (gloo over shared memory), "
                  "inter-node = 10 GbE: assumptions.",
            efficiency=min(1.0, cal.efficiency), calibrated_from=cal.run)
    else:
        base = gpu_accelerator(cal.device)
        acc = dataclasses.replace(base, efficiency=min(1.0, cal.efficiency),
                                  calibrated_from=cal.run,
                                  notes=f"{base.notes} Efficiency calibrated by ecdit-scale "
                                        f"validate on {cal.run}.".strip())
    return save_accelerator(acc, path)
