"""One training step under ``torch.profiler``, summarised: what a step launches and waits for.

    ECDIT_SCALE_PROFILE_STEP=16 ecdit-scale launch ...   # rank 0 profiles step 16

Rank 0 writes ``profile_step<N>.json`` into the run directory: device kernels (CUDA: kernels,
memcpys and memsets the device ran, and the kernel launches the host made; CPU: aten ops that
compute, i.e. leaf ops other than views and metadata, the nearest thing a CPU step has to
kernels), host syncs (CUDA stream/device/event synchronisations; scalar reads), ``copy_`` and
dtype conversions, AccumulateGrad (DeepSpeed's per-parameter gradient hooks run inside it)
with its host time, and the most frequent ops. The step's metrics record says
``"profiled": true``: profiling slows it, and the summary's step time leaves it out.

An environment variable, not a run setting: profiling changes nothing the run computes, and
``bench/train_throughput.py`` sets it for the step it measures.

``breakdown`` splits the step into the parts the step-time model prices
(``planner/step_time.py``), from the worker's phase marks (``phase``: forward, backward, step,
EMA) and the profiler's op tree: the model's GEMMs, attention and the rest (memory-bound:
norms, modulation, activations, routing, casts), autograd's gradient accumulation with the
engine's hooks, the engine's own work around the backward and the step, the optimizer and the
EMA. On CUDA each part is the device time of the kernels its ops launched; on a CPU, which runs
its ops itself, the host time of those ops.
"""

from __future__ import annotations

import collections
import os
from typing import Any

from .records import RunDir, write_json

PROFILE_ENV = "ECDIT_SCALE_PROFILE_STEP"
# leaf aten ops that only make views or read metadata: no kernel on any device
METADATA_OPS = frozenset({
    "view", "as_strided", "detach", "t", "transpose", "reshape", "expand", "unsqueeze",
    "squeeze", "_has_compatible_shallow_copy_type", "resolve_conj", "resolve_neg", "empty",
    "empty_strided", "alias", "permute", "select", "slice", "split", "chunk", "unbind",
    "narrow", "set_", "_reshape_alias", "lift_fresh", "_unsafe_view", "view_as", "contiguous",
    "is_nonzero", "empty_like", "result_type", "to", "_to_copy", "record_stream", "flatten",
    "unflatten", "split_with_sizes", "is_same_size", "expand_as", "numpy_T", "size", "stride"})
LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
                "cudaLaunchCooperativeKernel", "cudaGraphLaunch")
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
              "cuStreamSynchronize", "cuCtxSynchronize")


PHASE_MARK = "ecdit::"  # the worker's phase names, as record_function labels
GEMM_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "addbmm", "_scaled_mm", "matmul",
                      "linear", "_grouped_mm", "addmv", "mv"})
ATTENTION_WORDS = ("scaled_dot_product", "flash_attention", "efficient_attention",
                   "cudnn_attention")
# parts of a step, in the order it runs them; "model/<class>" below splits the model's parts
PARTS = ("forward/model", "backward/model", "backward/hooks", "backward/engine",
         "step/optimizer", "step/engine", "ema", "outside")
MODEL_PARTS = ("forward/model", "backward/model")
ENGINE_PARTS = ("backward/hooks", "backward/engine", "step/engine")
CLASSES = ("gemm", "attention", "memory_bound", "comm")
# the collective the model itself issues: expert parallelism's all-to-all (gloo records its
# work as a "gloo:all_to_all" event on its own thread; on CUDA it is a c10d op whose NCCL
# kernels the op launched). Its time (the transfer and any wait for the other ranks) is the
# model's communication, not its memory-bound ops. DeepSpeed's gradient reductions run from
# the backward's hooks, concurrently on gloo's threads: not the model's, and not counted here.
COMM_WORDS = ("alltoall", "all_to_all")


def phase(name: str):
    """A labelled range (``torch.profiler.record_function``) around one phase of a step: costs
    a few microseconds when no profiler listens."""
    from torch.profiler import record_function

    return record_function(PHASE_MARK + name)


def _aten(name: str) -> str | None:
    return name.split("::", 1)[1] if name.startswith("aten::") else None


def op_class(names: list[str]) -> str:
    """gemm / attention / comm / memory_bound for an op and its ancestors' names (attention
    wins: its inner matmuls are attention's; a collective's copies are the collective's)."""
    if any(w in n for n in names for w in COMM_WORDS):
        return "comm"
    if any(w in n for n in names for w in ATTENTION_WORDS):
        return "attention"
    if any(_aten(n) in GEMM_OPS for n in names):
        return "gemm"
    return "memory_bound"


def part_of(names: list[str], phase_name: str | None) -> str:
    """Which part of the step an op belongs to, from the phase its start falls in and the names
    of the op and its ancestors on its own thread (the backward runs on autograd's threads)."""
    if phase_name == "forward":
        return "forward/model"
    if phase_name == "backward":
        if any("AccumulateGrad" in n for n in names):  # the engine's gradient hooks run here
            return "backward/hooks"
        if any(n.startswith("autograd::engine::evaluate_function") for n in names):
            return "backward/model"
        return "backward/engine"  # e.g. the engine's reduction after autograd
    if phase_name == "step":
        return ("step/optimizer" if any(n.startswith("Optimizer.step#") for n in names)
                else "step/engine")
    return "ema" if phase_name == "ema" else "outside"


EVALUATE = "autograd::engine::evaluate_function"


def annotation_names(events) -> set[str]:
    """Names of the labelled ranges (``record_function``: the phase marks, the optimizer's
    ``Optimizer.step#...``): on CUDA each also shows up as a device event spanning its range,
    which is no kernel."""
    return {e.name for e in events if getattr(e, "is_user_annotation", False)
            or e.name.startswith((PHASE_MARK, "Optimizer.step#"))}


def _names_up(e) -> list[str]:
    out = []
    while e is not None:
        out.append(e.name)
        e = e.cpu_parent
    return out


def breakdown(events, *, on_gpu: bool) -> dict[str, Any] | None:
    """The step by part and, for the model's parts, by operator class (module docstring).
    Milliseconds; None without the worker's phase marks (a step not run by the worker)."""
    import bisect

    from torch.autograd import DeviceType

    cpu = [e for e in events if e.device_type == DeviceType.CPU]
    marks = sorted((e.time_range.start, e.time_range.end, e.name[len(PHASE_MARK):])
                   for e in cpu if e.name.startswith(PHASE_MARK))
    if not marks:
        return None
    starts = [m[0] for m in marks]

    def phase_at(t: float) -> str | None:
        i = bisect.bisect_right(starts, t) - 1
        return marks[i][2] if i >= 0 and t <= marks[i][1] else None

    wall: dict[str, float] = {}
    for a, b, name in marks:
        wall[name] = wall.get(name, 0.0) + (b - a) / 1e3
    parts = dict.fromkeys(PARTS, 0.0)
    model = dict.fromkeys(CLASSES, 0.0)
    counts = dict.fromkeys(PARTS, 0)
    heavy: collections.Counter = collections.Counter()  # the model's memory-bound work, by name
    engine: collections.Counter = collections.Counter()  # the engine's parts, by outermost op
    if on_gpu:  # each kernel is attached to the innermost op or range that launched it
        basis = "device time of the kernels each part's ops launched"
        for e in cpu:
            kernels = [k for k in e.kernels if k.name != e.name]  # not a range's own mirror
            if not kernels:
                continue
            names = _names_up(e)
            part = part_of(names, phase_at(e.time_range.start))
            ms = sum(k.duration for k in kernels) / 1e3
            parts[part] += ms
            counts[part] += len(kernels)
            if part in MODEL_PARTS:
                cls = op_class(names)
                model[cls] += ms
                if cls == "memory_bound":
                    for k in kernels:
                        heavy[k.name[:80]] += k.duration / 1e3
    else:  # the CPU runs its ops itself: host time
        basis = "host time (the CPU runs its ops itself; the profiler's own cost included)"
        for e in cpu:
            names = _names_up(e)
            ph = phase_at(e.time_range.start)
            ms = e.time_range.elapsed_us() / 1e3
            if e.name.startswith(EVALUATE) and not any(n.startswith(EVALUATE)
                                                       for n in names[1:]):
                parts[part_of(names, ph)] += ms  # backward/model or backward/hooks
            aten = _aten(e.name)
            if aten is None:
                continue
            part = part_of(names, ph)
            outermost = not any(_aten(n) for n in names[1:])
            if part in ENGINE_PARTS and outermost:
                engine[f"{part} {e.name}"] += ms
            if part in MODEL_PARTS and outermost:
                cls = op_class(names)
                if cls != "memory_bound":
                    model[cls] += ms
                else:
                    heavy[e.name] += ms
            if aten not in METADATA_OPS and not any(c.name.startswith("aten::")
                                                    for c in e.cpu_children):
                counts[part] += 1  # leaf compute ops stand for kernels (``summarize``)
        # gloo runs each collective on its own thread ("gloo:<name>", no parent) while the
        # calling thread waits: the model's all-to-alls are those that start in its forward
        # or backward
        model["comm"] = sum(e.time_range.elapsed_us() / 1e3 for e in cpu
                            if e.name.startswith("gloo:all_to_all") and e.cpu_parent is None
                            and phase_at(e.time_range.start) in ("forward", "backward"))
        opt = sum(e.time_range.elapsed_us() / 1e3 for e in cpu
                  if e.name.startswith("Optimizer.step#")
                  and phase_at(e.time_range.start) == "step")
        parts["forward/model"] = wall.get("forward", 0.0)
        parts["backward/engine"] = max(0.0, wall.get("backward", 0.0) - parts["backward/model"]
                                       - parts["backward/hooks"])
        parts["step/optimizer"] = opt
        parts["step/engine"] = max(0.0, wall.get("step", 0.0) - opt)
        parts["ema"] = wall.get("ema", 0.0)
        parts["outside"] = 0.0  # (the host's time outside the phases is the step's rest)
        model["memory_bound"] = max(0.0, parts["forward/model"] + parts["backward/model"]
                                    - model["gemm"] - model["attention"] - model["comm"])
    return {"basis": basis, "phase_wall_ms": wall, "parts_ms": parts, "model_ms": model,
            "kernels": counts, "model_kernels": sum(counts[p] for p in MODEL_PARTS),
            # CUDA: kernels by name; CPU: outermost ops (the rest of the class is host time
            # between ops)
            "memory_bound_top_ms": [(k, round(v, 4)) for k, v in heavy.most_common(10)],
            # CPU: the engine's outermost aten ops by part (gloo's collectives run on threads
            # of their own: ``comm_ms``)
            "engine_top_ms": [(k, round(v, 4)) for k, v in engine.most_common(12)],
            "comm_ms": _gloo_ms(cpu, phase_at) if not on_gpu else {}}


def _gloo_ms(cpu, phase_at) -> dict[str, float]:
    """gloo's collectives (each on a thread of its own, no parent) by phase and name, ms: the
    transfer and the wait for the other ranks."""
    out: collections.Counter = collections.Counter()
    for e in cpu:
        if e.name.startswith("gloo:") and e.cpu_parent is None:
            out[f"{phase_at(e.time_range.start)} {e.name.split('(')[0]}"] += \
                e.time_range.elapsed_us() / 1e3
    return {k: round(v, 3) for k, v in out.most_common()}


def profile_step_from_env() -> int | None:
    """The step ``$ECDIT_SCALE_PROFILE_STEP`` names, or None (unset, empty or not a number)."""
    value = os.environ.get(PROFILE_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def summarize(events, *, on_gpu: bool) -> dict[str, Any]:
    """The counts of one profiled step from ``prof.events()``."""
    names = collections.Counter(e.name for e in events)
    leaf = [e for e in events if e.name.startswith("aten::")
            and not any(c.name.startswith("aten::") for c in e.cpu_children)]
    compute = [e for e in leaf if e.name.split("::", 1)[1] not in METADATA_OPS]
    accumulate = [e for e in events if e.name == "torch::autograd::AccumulateGrad"]
    out: dict[str, Any] = {
        "aten_ops": sum(v for k, v in names.items() if k.startswith("aten::")),
        "aten_compute_ops": len(compute),
        "copy_": names["aten::copy_"],
        "to_copy": names["aten::_to_copy"],
        "scalar_reads": names["aten::_local_scalar_dense"],
        "nonzero": names["aten::nonzero"],
        "accumulate_grad": len(accumulate),
        "accumulate_grad_host_ms": sum(e.cpu_time_total for e in accumulate) / 1e3,
        "top_compute_ops": collections.Counter(e.name for e in compute).most_common(12),
    }
    if on_gpu:
        from torch.autograd import DeviceType

        ranges = annotation_names(events)
        device = [e for e in events if e.device_type == DeviceType.CUDA
                  and e.name not in ranges]  # a labelled range's mirror is no kernel
        kinds = collections.Counter("memcpy" if "memcpy" in e.name.lower() else
                                    "memset" if "memset" in e.name.lower() else "kernel"
                                    for e in device)
        by_time: collections.Counter = collections.Counter()
        for e in device:  # device events: their own interval is the time on the device
            by_time[e.name[:80]] += e.time_range.elapsed_us()
        out.update(
            kernels=kinds["kernel"], memcpys=kinds["memcpy"], memsets=kinds["memset"],
            device_ops=len(device),
            kernel_launches=sum(names[c] for c in LAUNCH_CALLS),
            host_syncs=sum(names[c] for c in SYNC_CALLS),
            device_busy_ms=sum(by_time.values()) / 1e3,
            top_kernels_ms=[(k, v / 1e3) for k, v in by_time.most_common(12)])
    else:
        out.update(kernels=len(compute), kernels_note="CPU: aten compute ops (leaf ops other "
                   "than views and metadata) stand for kernels", host_syncs=None)
    parts = breakdown(events, on_gpu=on_gpu)
    if parts is not None:
        out["breakdown"] = parts
    return out


def _source_of(frame) -> str:
    """The innermost DeepSpeed / torch.optim frame at or above ``frame``, else 'model' (the
    engine's forward and backward calling the model count as the model)."""
    while frame is not None:
        path, func = frame.f_code.co_filename, frame.f_code.co_name
        if path.endswith("/deepspeed/runtime/engine.py") and func in ("forward", "backward"):
            break
        if "/deepspeed/" in path:
            return f"deepspeed/{path.split('/deepspeed/', 1)[1]}:{func}"
        if "/torch/optim/" in path:
            return f"torch.optim:{func}"
        frame = frame.f_back
    return "model"


def ops_by_source(fn) -> collections.Counter:
    """(source, aten op) -> how many times ``fn()`` dispatched it, views and metadata left
    out. Each op is attributed to the innermost DeepSpeed (``deepspeed/<file>:<function>``)
    or torch.optim frame that called it, else to ``model``. A dispatch mode, not the profiler:
    ops that autograd and DeepSpeed's gradient hooks run carry no Python stack there. A
    foreach op counts once (on CUDA it is one kernel per chunk of tensors)."""
    import sys

    from torch.utils._python_dispatch import TorchDispatchMode

    counts: collections.Counter = collections.Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name not in METADATA_OPS:
                counts[(_source_of(sys._getframe(1)), "aten::" + name)] += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return counts


class StepProfiler:
    """Profiles the step ``$ECDIT_SCALE_PROFILE_STEP`` names on rank 0; a no-op otherwise."""

    def __init__(self, rd: RunDir, *, rank: int, on_gpu: bool):
        self.rd, self.on_gpu = rd, on_gpu
        self.step = profile_step_from_env() if rank == 0 else None
        self._prof = None

    def start(self, step: int) -> None:
        if step != self.step:
            return
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.on_gpu else [])
        self._prof = profile(activities=acts)
        self._prof.__enter__()

    def stop(self, step: int, step_s: float) -> dict[str, Any]:
        """Fields for the step's metrics record ({} unless this step was profiled)."""
        if self._prof is None or step != self.step:
            return {}
        self._prof.__exit__(None, None, None)
        data = {"step": step, "step_s_profiled": step_s, "device": "cuda" if self.on_gpu else "cpu",
                **summarize(self._prof.events(), on_gpu=self.on_gpu)}
        self._prof = None
        write_json(self.rd.path / f"profile_step{step}.json", data)
        return {"profiled": True}
