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

        device = [e for e in events if e.device_type == DeviceType.CUDA]
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
