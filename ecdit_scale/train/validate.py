"""``ecdit-scale validate``: the planner's predictions next to what a real run measured.

For each run directory (or GPU measurement file from ``bench/gpu_measure.py``):

- parameters: ``params.count_params`` vs the run's own count (rank 0's ``numel``, experts
  times ep: every expert-parallel rank holds E/ep experts);
- FLOPs per step: ``planner.flops.training_flops_per_image`` x global batch vs
  ``torch.utils.flop_counter.FlopCounterMode`` on one forward + backward of the model (math
  SDPA backend, so attention runs as countable matmuls), scaled to the global batch;
- peak memory per rank: ``planner.memory.memory_breakdown`` vs the run's peak (CPU: live tensor
  bytes, see ``worker.PeakBytes``; GPU: ``torch.cuda.max_memory_allocated``). The planner's
  CUDA-context allowance is left out of the prediction: neither measurement sees it;
- step time: achieved FLOP/s per device = model FLOPs per step / world / median step time;
  efficiency = achieved / peak of the device, calibrated on one run (the first, or
  ``--calibrate-on``) per device kind; predicted step time of every run = hardware FLOPs per
  step / world / (peak x efficiency): compute only, no communication term. The peak of a CPU
  is *measured*: a single-thread fp32 ``torch.mm`` benchmark (each rank runs one thread);
  a GPU's is the catalog's dense bf16 peak.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..errors import ConfigError
from .records import RunDir, RunSettings, read_json

CPU_MATMUL_N = 512
CONTEXT_NOTE = ("predicted = planner total less its CUDA-context allowance, which neither the "
                "CPU tensor count nor torch.cuda.max_memory_allocated sees")


@dataclass(kw_only=True)
class Row:
    """One run: predictions, measurements, relative errors (measured / predicted - 1)."""

    name: str
    source: str  # run directory or GPU result file
    kind: str  # "run" | "gpu-bench"
    device: str
    model: str
    world: int
    ep: int
    zero: int
    micro_batch: int
    global_batch: int
    params_predicted: int
    params_measured: int | None
    flops_predicted: float  # model FLOPs per step (fwd + bwd), whole world
    flops_measured: float | None
    memory_predicted: float | None  # bytes per rank
    memory_measured: float | None
    memory_note: str = ""
    flops_note: str = ""
    states_predicted: float | None = None  # planner model states (params, grads, optimizer)
    # rank 0's persistent tensors after its first optimizer step (worker.model_state_bytes):
    # gradients the optimizer has already freed by then are not in it
    states_measured: float | None = None
    step_s_measured: float | None = None
    step_s_predicted: float | None = None
    achieved_flops_per_s: float | None = None  # per device
    peak_flops_per_s: float | None = None
    efficiency: float | None = None  # achieved / peak, this run
    calibrated_on: str | None = None
    hardware_flops: float = 0.0

    @staticmethod
    def _err(measured, predicted) -> float | None:
        if measured is None or predicted in (None, 0):
            return None
        return measured / predicted - 1.0

    @property
    def params_error(self):
        return self._err(self.params_measured, self.params_predicted)

    @property
    def flops_error(self):
        return self._err(self.flops_measured, self.flops_predicted)

    @property
    def memory_error(self):
        return self._err(self.memory_measured, self.memory_predicted)

    @property
    def states_error(self):
        return self._err(self.states_measured, self.states_predicted)

    @property
    def step_s_error(self):
        return self._err(self.step_s_measured, self.step_s_predicted)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(params_error=self.params_error, flops_error=self.flops_error,
                   memory_error=self.memory_error, states_error=self.states_error,
                   step_s_error=self.step_s_error)
        return out


@dataclass(kw_only=True)
class Calibration:
    device: str
    run: str
    peak_flops_per_s: float
    peak_source: str
    efficiency: float


@dataclass(kw_only=True)
class Report:
    rows: list[Row]
    calibrations: list[Calibration]
    csv_path: str | None = None
    profile_path: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [r.to_dict() for r in self.rows],
                "calibrations": [dataclasses.asdict(c) for c in self.calibrations],
                "csv": self.csv_path, "profile": self.profile_path, "notes": self.notes}


# ---------------------------------------------------------------------------------------------
# Measurements that validate makes itself
# ---------------------------------------------------------------------------------------------


def measured_training_flops(cfg: ModelConfig, *, images: int = 2, seed: int = 0) -> float:
    """FLOPs of one forward + backward of ``images`` images through the single-device model,
    counted by ``FlopCounterMode`` with the math SDPA backend. Divide by ``images`` for one."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ..model import build_model, rectified_flow_loss

    torch.manual_seed(seed)
    model = build_model(cfg)
    model.train()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(images, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    if cfg.conditioning.value == "text":
        cond = torch.randn(images, cfg.text_tokens, cfg.text_dim, generator=g)
    else:
        cond = torch.randint(0, cfg.num_classes, (images,), generator=g)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        rectified_flow_loss(model, x, cond, generator=g).loss.backward()
    return float(counter.get_total_flops())


def cpu_matmul_flops_per_s(n: int = CPU_MATMUL_N, seconds: float = 0.5, threads: int = 1) -> float:
    """Peak-like fp32 FLOP/s of this CPU: best of repeated n x n ``torch.mm`` on ``threads``
    threads (the ranks of a CPU run use one thread each)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        best = 0.0
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            for _ in range(4):
                torch.mm(a, b)
            best = max(best, 4 * 2.0 * n**3 / (time.perf_counter() - t0))
        return best
    finally:
        torch.set_num_threads(old)


def cpu_copy_bytes_per_s(mb: int = 64) -> float:
    """Memory bandwidth estimate: read + write of a large tensor copy."""
    import torch

    a = torch.empty(mb * 2**20 // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    t0 = time.perf_counter()
    for _ in range(5):
        b.copy_(a)
    return 5 * 2 * a.numel() * 4 / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------


def _planner_flops(cfg: ModelConfig, global_batch: int) -> tuple[float, float]:
    from ..config import Recompute
    from ..planner.flops import training_flops_per_image

    t = training_flops_per_image(cfg, Recompute.NONE)
    return t.model_flops * global_batch, t.hardware_flops * global_batch


def row_from_run(run_dir: Path, flops_cache: dict) -> Row:
    rd = RunDir(run_dir)
    if not rd.exists():
        raise ConfigError(f"{run_dir}: not a run directory (no run.json); give directories "
                          "made by `ecdit-scale launch` or bench/results/*.json files")
    s = rd.settings()
    cfg = rd.model_config()
    summary = rd.read_summary()
    if summary.get("status") != "completed" and not rd.read_metrics():
        raise ConfigError(f"{run_dir}: the run has no measurements yet (status "
                          f"{summary.get('status', 'unknown')})")
    preds = read_json(rd.predictions) if rd.predictions.is_file() else {}
    from ..params import count_params

    flops_pred, hw_pred = _planner_flops(cfg, s.global_batch)
    flops_meas = _measured_step_flops(cfg, s.global_batch, flops_cache)
    mem = preds.get("memory", {})
    mem_pred = mem.get("total")
    note = mem.get("note", "")
    if mem_pred is not None:
        from ..planner.memory import CONTEXT_BYTES

        mem_pred = mem_pred - CONTEXT_BYTES
        note = CONTEXT_NOTE
    mem_meas = summary.get("peak_bytes") or None
    if mem_meas is None:
        note = (note + "; " if note else "") + "memory not measured (--no-track-memory)"
    params_meas = (summary.get("params") or {}).get("model_params")
    states = summary.get("model_state_bytes_rank0") or {}
    flops_note = ""
    if s.tc_impl == "deepspeed":  # DeepSpeed's gate: capacity per micro-batch, min_capacity
        flops_meas = None
        flops_note = "FLOPs not measured: --tc-impl deepspeed routes differently from the model"
    return Row(
        name=rd.path.name, source=str(rd.path), kind="run", device=_run_device(s, summary),
        model=cfg.name, world=s.world, ep=s.ep, zero=s.zero, micro_batch=s.micro_batch,
        global_batch=s.global_batch, params_predicted=count_params(cfg).model_params,
        params_measured=params_meas, flops_predicted=flops_pred, flops_measured=flops_meas,
        memory_predicted=mem_pred, memory_measured=mem_meas,
        memory_note=note, flops_note=flops_note,
        states_predicted=mem.get("model_states"),
        states_measured=float(sum(states.values())) if states else None,
        step_s_measured=summary.get("median_step_s") or _median_step(rd),
        hardware_flops=hw_pred)


def _run_device(s: RunSettings, summary: dict) -> str:
    if s.device == "cpu":
        return f"cpu ({platform.processor() or platform.machine()})"
    return summary.get("device_name") or s.device


def _median_step(rd: RunDir) -> float | None:
    import statistics

    steps = [r["step_s"] for r in rd.read_metrics()[2:]]
    return statistics.median(steps) if steps else None


def _measured_step_flops(cfg: ModelConfig, global_batch: int, cache: dict) -> float:
    key = cfg.to_dict().__repr__()
    if key not in cache:
        images = 2
        cache[key] = measured_training_flops(cfg, images=images) / images
    return cache[key] * global_batch


def rows_from_gpu_file(path: Path, flops_cache: dict) -> list[Row]:
    """Rows of a ``bench/gpu_measure.py`` result file (one per measured config)."""
    from ..config import ModelConfig as MC
    from ..params import count_params

    data = read_json(path)
    if not isinstance(data, dict) or "configs" not in data:
        raise ConfigError(f"{path}: not a GPU measurement file (no 'configs'); make one with "
                          "bench/gpu_measure.py")
    rows = []
    for c in data["configs"]:
        if c.get("error"):
            continue
        cfg = MC.from_dict(c["card"], source=f"{path}:{c.get('model')}")
        gb = int(c["global_batch"])
        flops_pred, hw_pred = _planner_flops(cfg, gb)
        pred = c.get("predicted", {})
        rows.append(Row(
            name=f"{cfg.name} [{c.get('mode', 'gpu')}, {path.stem}]", source=str(path),
            kind="gpu-bench",
            device=str(data.get("device", "cuda")), model=cfg.name, world=int(c.get("world", 1)),
            ep=int(c.get("ep", 1)), zero=int(c.get("zero", 0)),
            micro_batch=int(c["micro_batch"]), global_batch=gb,
            params_predicted=count_params(cfg).model_params,
            params_measured=c.get("params_measured"), flops_predicted=flops_pred,
            flops_measured=_measured_step_flops(cfg, gb, flops_cache),
            memory_predicted=pred.get("memory_allocator", pred.get("memory_total")),
            memory_measured=c.get("peak_bytes"),
            memory_note=f"{c.get('mode', '?')} mode; " + CONTEXT_NOTE,
            states_predicted=pred.get("memory_model_states"),
            step_s_measured=c.get("step_s"), hardware_flops=hw_pred))
    return rows


# ---------------------------------------------------------------------------------------------
# Calibration and the report
# ---------------------------------------------------------------------------------------------


def gpu_accelerator(device_name: str):
    """The catalog entry of a CUDA device name ("NVIDIA H100 80GB HBM3" -> h100-sxm)."""
    from ..planner.hardware import get_accelerator

    name = device_name.upper()
    for key, acc in (("H200", "h200"), ("H100 PCIE", "h100-pcie"), ("H100", "h100-sxm"),
                     ("A100", "a100-80gb"), ("B200", "b200"), ("MI300", "mi300x")):
        if key in name:
            try:
                return get_accelerator(acc)
            except ConfigError:
                continue
    return get_accelerator(device_name)


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


def validate(inputs: list[Path], *, calibrate_on: str | None = None,
             csv_path: str | None = None, save_profile: str | None = None) -> Report:
    if not inputs:
        raise ConfigError("give at least one run directory or GPU result file")
    flops_cache: dict = {}
    rows: list[Row] = []
    for p in inputs:
        if p.is_dir():
            rows.append(row_from_run(p, flops_cache))
        elif p.is_file() and p.suffix == ".json":
            rows.extend(rows_from_gpu_file(p, flops_cache))
        else:
            raise ConfigError(f"{p}: not a run directory or a .json GPU result file")
    if not rows:
        raise ConfigError("no measurements in the given inputs")

    cpu_peak: dict = {}
    for r in rows:
        if r.step_s_measured and r.flops_measured:
            r.achieved_flops_per_s = r.flops_measured / r.world / r.step_s_measured
            r.peak_flops_per_s, _ = peak_of(r, cpu_peak)
            if r.peak_flops_per_s:
                r.efficiency = r.achieved_flops_per_s / r.peak_flops_per_s

    calib_row = None
    if calibrate_on is not None:
        matches = [r for r in rows if calibrate_on in (r.source, r.name)
                   or Path(calibrate_on).resolve() == Path(r.source).resolve()]
        if not matches:
            raise ConfigError(f"--calibrate-on {calibrate_on}: not among the given runs")
        calib_row = matches[0]
    calibrations: list[Calibration] = []
    for dev in dict.fromkeys(r.device for r in rows):
        same = [r for r in rows if r.device == dev and r.efficiency]
        if not same:
            continue
        ref = calib_row if calib_row is not None and calib_row.device == dev else same[0]
        if not ref.efficiency:
            continue
        _, src = peak_of(ref, cpu_peak)
        calibrations.append(Calibration(device=dev, run=ref.source, peak_flops_per_s=ref.peak_flops_per_s,
                                        peak_source=src, efficiency=ref.efficiency))
        for r in same:
            r.calibrated_on = ref.name
            r.step_s_predicted = r.hardware_flops / r.world / (r.peak_flops_per_s * ref.efficiency)

    report = Report(rows=rows, calibrations=calibrations, notes=[
        "errors are measured / predicted - 1",
        "step time: compute only (hardware FLOPs / world / calibrated FLOP/s), no "
        "communication term; the calibration run predicts itself exactly",
    ])
    first = inputs[0]
    out_csv = Path(csv_path) if csv_path else (first if first.is_dir() else first.parent) / "validation.csv"
    write_csv(report, out_csv)
    report.csv_path = str(out_csv)
    if save_profile:
        report.profile_path = str(save_profile_yaml(report, Path(save_profile)))
    return report


CSV_FIELDS = ("name", "kind", "device", "model", "world", "ep", "zero", "micro_batch",
              "global_batch", "params_predicted", "params_measured", "params_error",
              "flops_predicted", "flops_measured", "flops_error", "flops_note", "memory_predicted",
              "memory_measured", "memory_error", "memory_note", "states_predicted",
              "states_measured", "states_error", "step_s_predicted",
              "step_s_measured", "step_s_error", "achieved_flops_per_s", "peak_flops_per_s",
              "efficiency", "calibrated_on", "source")


def write_csv(report: Report, path: Path) -> Path:
    from ..files import atomic_write_text
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in report.rows:
        w.writerow(r.to_dict())
    return atomic_write_text(path, buf.getvalue())


def save_profile_yaml(report: Report, path: Path) -> Path:
    """The calibrated accelerator (first calibration) as a profile ``plan --gpu`` reads."""
    from ..planner.hardware import Accelerator, save_accelerator

    if not report.calibrations:
        raise ConfigError("--save-profile: no run had a step time to calibrate on")
    cal = report.calibrations[0]
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


# ---------------------------------------------------------------------------------------------
# Display
# ---------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2%}"


def render(report: Report, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ..units import format_count
    from ..units import format_bytes

    def pair(pred, meas, err, fmt) -> str:
        p = "n/a" if pred is None else fmt(pred)
        m = "n/a" if meas is None else fmt(meas)
        return f"{p} -> {m} ({_pct(err)})"

    t = Table(title="Predicted -> measured (error = measured / predicted - 1)")
    t.add_column("run", overflow="fold", min_width=10)
    for col in ("params", "FLOPs / step", "peak memory / rank", "model states / rank",
                "step time"):
        t.add_column(col, justify="right")
    for r in report.rows:
        t.add_row(
            escape(r.name), pair(r.params_predicted, r.params_measured, r.params_error, format_count),
            pair(r.flops_predicted, r.flops_measured, r.flops_error, lambda x: f"{x:.4g}"),
            pair(r.memory_predicted, r.memory_measured, r.memory_error, format_bytes),
            pair(r.states_predicted, r.states_measured, r.states_error, format_bytes),
            pair(r.step_s_predicted, r.step_s_measured, r.step_s_error, lambda x: f"{x:.4g} s"))
    console.print(t)
    for c in report.calibrations:
        console.print(f"calibration ({c.device}): efficiency {100 * c.efficiency:.3g}% of "
                      f"{c.peak_flops_per_s / 1e9:.4g} GFLOP/s ({c.peak_source}); from {c.run}",
                      highlight=False, markup=False)
    notes: dict[str, list[str]] = {}
    for r in report.rows:
        for note in filter(None, r.memory_note.split("; ")):
            notes.setdefault(note, []).append(r.name)
    for note, names in notes.items():
        who = "all runs" if len(names) == len(report.rows) else ", ".join(names)
        console.print(f"memory ({who}): {note}", style="dim", highlight=False, markup=False)
    for r in report.rows:
        if r.flops_note:
            console.print(f"FLOPs ({r.name}): {r.flops_note}", style="dim", highlight=False,
                          markup=False)
    for n in report.notes:
        console.print(n, style="dim", highlight=False, markup=False)
    console.print(f"CSV: {report.csv_path}" + (f"; profile: {report.profile_path}"
                                                if report.profile_path else ""), highlight=False)
