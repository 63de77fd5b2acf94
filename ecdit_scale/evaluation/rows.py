"""One row of ``validate``: the planner's predictions for a run next to what it measured.

A row comes from a run directory (``ecdit-scale launch``) or from one config of a GPU result
file (``bench/gpu_measure.py``). Every number read from those files is checked as it is read:
a missing, corrupt or foreign file is one error naming the file and the field.

- parameters: ``params.count_params`` vs the run's own count (rank 0's ``numel``, experts
  times ep: every expert-parallel rank holds E/ep experts);
- FLOPs per step: ``planner.flops.training_flops_per_image`` x global batch vs the model's
  operators counted by ``measure.measured_training_flops``, scaled to the global batch;
- peak memory per rank: ``planner.memory.memory_breakdown`` vs the run's peak (CPU: live tensor
  bytes, see ``worker.PeakBytes``; GPU: ``torch.cuda.max_memory_allocated``). The planner's
  CUDA-context allowance is left out of the prediction: neither measurement sees it;
- step time: measured here; predicted from a device profile alone (``predict``, the headline:
  ``step_s_predicted``) and by a leave-one-out calibration on the other runs (``calibrate``:
  ``step_s_loo``).
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ModelConfig, Precision, Recompute
from ..errors import ConfigError
from ..params import count_params
from ..planner.buckets import recorded_bucket_bytes
from ..planner.flops import training_flops_per_image
from ..planner.memory import BF16_BYTES, FP32_BYTES, MemoryBreakdown
from ..train.launch import planned_memory
from ..train.records import RunDir, RunSettings, scan_metrics
from .measure import measured_training_flops
from .runs import (
    positive_number,
    read_model_config,
    read_object,
    read_settings,
    read_step_times,
    read_summary,
)
from .terms import TERMS, read_breakdown

CONTEXT_NOTE = ("predicted = planner total less its CUDA-context allowance, which neither the "
                "CPU tensor count nor torch.cuda.max_memory_allocated sees")
ALLOCATED_NOTE = ("predicted = the planner's peak for the run's layout without its allowance "
                  "(10% fragmentation + 1.5 GiB CUDA context), which neither the CPU tensor "
                  "count nor torch.cuda.max_memory_allocated sees")


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
    states_predicted: float | None = None  # planner: params, optimizer states, master weights
    # rank 0's persistent tensors after its first optimizer step (worker.model_state_bytes):
    # gradients the optimizer has already freed by then are not in it
    states_measured: float | None = None
    step_s_measured: float | None = None
    step_s_predicted: float | None = None
    achieved_flops_per_s: float | None = None  # per device
    peak_flops_per_s: float | None = None
    efficiency: float | None = None  # achieved / peak, this run
    calibrated_on: str | None = None  # LOO: the runs whose efficiency predicted this one
    hardware_flops: float = 0.0
    step_s_loo: float | None = None  # leave-one-out calibrated prediction (compute only)
    step_s_source: str = ""  # what the headline prediction came from (profile or datasheet)
    nodes: int = 1
    grad_accum: int = 1
    optimizer: str = "adamw"
    recompute: str = "none"  # the run's activation recompute policy
    ema: str = "none"  # the run's EMA of the weights (its update is part of the step)
    precision: str = "bf16"
    card: dict | None = None  # the model config, for the profile prediction
    # the step term by term (``terms``): a profiled step's breakdown, and the prediction's
    breakdown: dict | None = None
    breakdown_note: str = ""
    terms_measured: dict | None = None
    terms_predicted: dict | None = None

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

    @property
    def step_s_loo_error(self):
        return self._err(self.step_s_measured, self.step_s_loo)

    def term_error(self, term: str) -> float | None:
        if not self.terms_measured or not self.terms_predicted:
            return None
        return self._err(self.terms_measured.get(term), self.terms_predicted.get(term))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("card")
        out.pop("breakdown")
        for t in (*TERMS, "kernels"):
            unit = "" if t == "kernels" else "_s"
            out[f"{t}{unit}_predicted"] = (self.terms_predicted or {}).get(t)
            out[f"{t}{unit}_measured"] = (self.terms_measured or {}).get(t)
        out.update(params_error=self.params_error, flops_error=self.flops_error,
                   memory_error=self.memory_error, states_error=self.states_error,
                   step_s_error=self.step_s_error, step_s_loo_error=self.step_s_loo_error)
        return out


# ---------------------------------------------------------------------------------------------
# Predictions and FLOP counts shared by both sources
# ---------------------------------------------------------------------------------------------


def planner_flops(cfg: ModelConfig, global_batch: int) -> tuple[float, float]:
    """(model, hardware) FLOPs of one optimizer step of the whole world, no recomputation."""
    t = training_flops_per_image(cfg, Recompute.NONE)
    return t.model_flops * global_batch, t.hardware_flops * global_batch


_COUNTED: dict[str, float] = {}  # config -> counted FLOPs per image, for the process


def counted_step_flops(cfg: ModelConfig, global_batch: int) -> float:
    """The model's operators counted on two images, scaled to the global batch. A count
    depends on the config alone, so each config is counted once per process (several runs of
    one config, or several validate calls)."""
    key = repr(cfg.to_dict())
    if key not in _COUNTED:
        images = 2
        _COUNTED[key] = measured_training_flops(cfg, images=images) / images
    return _COUNTED[key] * global_batch


def _optional_positive(data: dict, key: str, where: str) -> float | None:
    """data[key] as a finite number > 0; None when absent, null or 0 (not measured)."""
    value = data.get(key)
    if value is None or (value == 0 and not isinstance(value, bool)):
        return None
    return positive_number(value, f"{where}: {key}")


def _optional_dict(data: dict, key: str, where: str) -> dict:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key} must be a JSON object, not {type(value).__name__}")
    return value


def _count(data: dict, key: str, where: str, *, least: int = 1, default: int | None = None):
    """An integer >= least (``default`` when absent; None as the default means required)."""
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{where}: {key} = {value!r}; must be an integer >= {least}")
    return value


# ---------------------------------------------------------------------------------------------
# Run directories
# ---------------------------------------------------------------------------------------------


def run_memory(rd: RunDir, cfg: ModelConfig, s: RunSettings) -> MemoryBreakdown:
    """The planner's memory for a run's layout, its ZeRO buckets as the run's ds_config.json
    configured them (``planner.buckets``; a run may predate the config the planner assumes)."""
    mem = planned_memory(cfg, s)
    if not rd.ds_config.is_file():
        return mem
    ds = read_object(rd.ds_config, "DeepSpeed config")
    buckets = recorded_bucket_bytes(_optional_dict(ds, "zero_optimization", str(rd.ds_config)),
                                    w=BF16_BYTES if s.precision is Precision.BF16 else FP32_BYTES)
    if buckets is None:
        return mem
    # reduce buckets (contiguous gradients) take the place of the one-rank flat copy
    mem = dataclasses.replace(mem, zero_buckets=buckets,
                              grad_buffers=0.0 if buckets else mem.grad_buffers)
    return dataclasses.replace(mem, overhead=mem.total - mem.allocated)


def row_from_run(run_dir: Path) -> Row:
    rd = RunDir(run_dir)
    if not rd.exists():
        raise ConfigError(f"{run_dir}: not a run directory (no run.json); give directories "
                          "made by `ecdit-scale launch` or bench/results/*.json files")
    s = read_settings(rd)
    cfg = read_model_config(rd)
    summary = read_summary(rd)
    steps = read_step_times(rd)
    if summary.get("status") != "completed" and not steps:
        raise ConfigError(f"{run_dir}: the run has no measurements yet (status "
                          f"{summary.get('status', 'unknown')})")
    preds = read_object(rd.predictions, "predictions file") if rd.predictions.is_file() else {}
    flops_pred, hw_pred = planner_flops(cfg, s.global_batch)
    flops_meas = counted_step_flops(cfg, s.global_batch)
    mem = _optional_dict(preds, "memory", str(rd.predictions))
    mem_pred = _optional_positive(mem, "total", f"{rd.predictions}: memory")
    note = mem.get("note", "")
    if mem_pred is not None:  # the planner as it is now, for the run's layout
        now = run_memory(rd, cfg, s)
        mem_pred, note = now.allocated, f"{ALLOCATED_NOTE} (peak at the {now.peak_phase})"
        # what rank 0 holds between steps, as worker.model_state_bytes counts it (no EMA, and
        # no gradients: the optimizer has freed them)
        mem = {**mem, "model_states": now.params + now.optimizer_states + now.master_weights}
    mem_meas = _optional_positive(summary, "peak_bytes", str(rd.summary))
    if mem_meas is None and summary.get("status") != "completed":
        mem_meas = metrics_peak(rd)  # a run stopped before its summary: the steps' own peaks
        if mem_meas is not None:
            note = (note + "; " if note else "") + "peak memory from metrics.jsonl (the run " \
                "stopped before writing its summary)"
    if mem_meas is None:
        note = (note + "; " if note else "") + "memory not measured (--no-track-memory)"
    params = _optional_dict(summary, "params", str(rd.summary))
    params_meas = _count(params, "model_params", f"{rd.summary}: params", default=0, least=0) \
        or None
    states = _optional_dict(summary, "model_state_bytes_rank0", str(rd.summary))
    for key, value in states.items():
        positive_number(value, f"{rd.summary}: model_state_bytes_rank0.{key}")
    flops_note = ""
    if s.tc_impl == "deepspeed":  # DeepSpeed's gate: capacity per micro-batch, min_capacity
        flops_meas = None
        flops_note = "FLOPs not measured: --tc-impl deepspeed routes differently from the model"
    step_s = _optional_positive(summary, "median_step_s", str(rd.summary))
    breakdown, breakdown_note = read_breakdown(rd.path)
    return Row(
        name=run_name(rd.path), source=str(rd.path), kind="run", device=_run_device(s, summary),
        model=cfg.name, world=s.world, ep=s.ep, zero=s.zero, micro_batch=s.micro_batch,
        global_batch=s.global_batch, params_predicted=count_params(cfg).model_params,
        params_measured=params_meas, flops_predicted=flops_pred, flops_measured=flops_meas,
        memory_predicted=mem_pred, memory_measured=mem_meas,
        memory_note=note, flops_note=flops_note,
        states_predicted=_optional_positive(mem, "model_states", f"{rd.predictions}: memory"),
        states_measured=float(sum(states.values())) if states else None,
        step_s_measured=step_s or (statistics.median(steps[2:]) if steps[2:] else None),
        hardware_flops=hw_pred, nodes=s.nodes, grad_accum=s.grad_accum, optimizer=s.optimizer,
        recompute=s.recompute.value, ema=s.ema.value,
        precision=s.precision, card=cfg.to_dict(), breakdown=breakdown,
        breakdown_note=breakdown_note)


def run_name(path: Path) -> str:
    """The run folder's name; a plan's ``run`` folder (``bash launch.sh``) is named with its
    plan's (``plan-xl8e/run``), so that several plans' runs stay apart in one table."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.name == "run" and path.parent.name \
        else path.name


def metrics_peak(rd: RunDir) -> float | None:
    """The largest ``peak_bytes`` the steps recorded (CUDA: every step, the allocator's peak;
    CPU: the tracked steps), or None."""
    peaks = [rec["peak_bytes"] for rec in scan_metrics(rd.metrics).records
             if isinstance(rec, dict) and isinstance(rec.get("peak_bytes"), (int, float))
             and not isinstance(rec.get("peak_bytes"), bool) and rec["peak_bytes"] > 0]
    return float(max(peaks)) if peaks else None


def _run_device(s: RunSettings, summary: dict) -> str:
    if s.device == "cpu":
        return f"cpu ({platform.processor() or platform.machine()})"
    name = summary.get("device_name")
    return name if isinstance(name, str) and name else s.device


# ---------------------------------------------------------------------------------------------
# GPU result files
# ---------------------------------------------------------------------------------------------


def rows_from_gpu_file(path: Path) -> list[Row]:
    """Rows of a ``bench/gpu_measure.py`` result file (one per measured config)."""
    data = read_object(path, "GPU result file")
    configs = data.get("configs")
    if not isinstance(configs, list):
        raise ConfigError(f"{path}: not a GPU measurement file (no 'configs' list); make one "
                          "with bench/gpu_measure.py")
    rows = []
    for i, c in enumerate(configs):
        where = f"{path}: configs[{i}]"
        if not isinstance(c, dict):
            raise ConfigError(f"{where} must be a JSON object, not {type(c).__name__}")
        if c.get("error"):
            continue
        rows.append(_gpu_row(path, data, c, where))
    return rows


def _gpu_row(path: Path, data: dict, c: dict, where: str) -> Row:
    if not isinstance(c.get("card"), dict):
        raise ConfigError(f"{where}: card must be a model config object")
    cfg = ModelConfig.from_dict(c["card"], source=f"{path}:{c.get('model')}")
    gb = _count(c, "global_batch", where)
    flops_pred, hw_pred = planner_flops(cfg, gb)
    pred = _optional_dict(c, "predicted", where)
    mode = c.get("mode", "gpu")
    memory_pred = pred.get("memory_allocator", pred.get("memory_total"))
    return Row(
        name=f"{cfg.name} [{mode}, {path.stem}]", source=str(path), kind="gpu-bench",
        device=str(data.get("device", "cuda")), model=cfg.name,
        world=_count(c, "world", where, default=1), ep=_count(c, "ep", where, default=1),
        zero=_count(c, "zero", where, default=0, least=0),
        micro_batch=_count(c, "micro_batch", where), global_batch=gb,
        params_predicted=count_params(cfg).model_params,
        params_measured=_count(c, "params_measured", where, default=0, least=0) or None,
        flops_predicted=flops_pred,
        flops_measured=counted_step_flops(cfg, gb),
        memory_predicted=None if memory_pred is None
        else positive_number(memory_pred, f"{where}: predicted memory"),
        memory_measured=_optional_positive(c, "peak_bytes", where),
        memory_note=f"{c.get('mode', '?')} mode; " + CONTEXT_NOTE,
        states_predicted=_optional_positive(pred, "memory_model_states", f"{where}: predicted"),
        step_s_measured=_optional_positive(c, "step_s", where), hardware_flops=hw_pred,
        grad_accum=_count(c, "grad_accum", where, default=1), card=cfg.to_dict(),
        optimizer=str(c.get("optimizer", "adamw")),
        precision="bf16" if str(c.get("precision", "bf16")).startswith("bf16") else "fp32")
