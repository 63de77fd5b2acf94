"""The step-time model: one optimizer step of one layout, term by term (``StepTime``).

The same function prices one plan and the vectorised search (every input may be a numpy array
with one entry per layout). Seconds per optimizer step, per device:

Compute (hardware FLOPs at ``acc.sustained_flops`` = peak x efficiency; each device does 1/tp
of its tp group's images, tp groups split the batch):
    forward_s, backward_s, recompute_s (the forward rerun by activation recomputation).

Communication (link seconds from ``comm.py``), each split into exposed and hidden the way
DeepSpeed 0.19.8 / Megatron schedule it:
- expert all-to-all: on the critical path (the expert GEMMs wait for the dispatch, the next
  block for the combine): all exposed;
- tensor-parallel all-reduces: on the critical path (Megatron: the next op reads the sum);
- gradient reduction (``OVERLAP_RULES``):
  ZeRO-0: all-reduced by the engine after the backward (``_backward_epilogue ->
  allreduce_gradients``): exposed;
  ZeRO-1/2 with ``overlap_comm``: a bucket is launched on the reduction stream as soon as the
  backward has filled it, so the buckets pipeline behind the backward (ZeRO-1 only in the last
  micro-batch's, ZeRO-2 in every micro-batch's); the epilogue waits for the last one;
  ZeRO-3: the reduce-scatters and the backward's parameter re-gathers share that pipeline;
- ZeRO-1/2 parameter all-gather after ``optimizer.step`` (``all_gather_dp_groups``): exposed;
- ZeRO-3 forward gathers: prefetched one block ahead behind the forward;
- optimizer step: memory-bound, exposed (bytes of master weights, states, fp32 gradients and
  parameters it reads and writes / HBM bandwidth).

A pipeline of k equal buckets of total C behind a window W (gradients appear at a uniform rate:
bucket i is ready at i W / k and the buckets run one after another) ends at
max(W + C/k, W/k + C); what sticks out past the window is
    exposed = max(C / k, C - W (k - 1) / k)      (the last bucket is always exposed).
MFU = model FLOPs per image x global batch / (world x peak x total_s).

With a measured device profile (``acc.profile``, ``ecdit-scale profile``) compute is priced by
operator class instead (``compute.py``: GEMMs by shape, SDPA, memory-bound bytes), plus
- launch_s: kernels x the measured per-kernel launch cost; a host that runs the kernels itself
  (CPU, ``serial``) pays all of it, an asynchronous device only what the kernels' own time
  cannot hide (``max(0, kernels x launch - device time)`` per micro-batch);
- engine_s: the measured per-parameter-tensor work of autograd, once per micro-batch's
  backward, plus what DeepSpeed's engine adds per step at the layout's ZeRO stage where the
  profile measured it (``evaluation.engine_probe``): per parameter tensor
  (``deepspeed_engine``) and per parameter the device holds (``deepspeed_engine_per_param``:
  its passes over gradients and weights);
- the optimizer at the measured seconds per byte, plus seconds per tensor it steps over.
Without a profile (the catalog's datasheet entries) compute is today's one constant: hardware
FLOPs / (peak x efficiency); gemm_s / attention_s / memory_bound_s / launch_s / engine_s /
kernels are then 0 (not priced separately).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..config import (HALF_PRECISIONS, ZERO_PARTITIONS_GRADIENTS, ZERO_PARTITIONS_OPTIMIZER,
                      ZERO_PARTITIONS_PARAMETERS, Precision)
from .comm import forward_passes
from .compute import bandwidth, dtype_bytes, micro_batch_arrays
from .operators import param_tensor_count

OPTIMIZER_FLAT_GROUPS = 2  # DeepSpeed ZeRO: one flat partition per param group (shared, experts)

OVERLAP_RULES = {
    "a2a": "expert all-to-all: on the critical path, exposed",
    "tp": "tensor-parallel all-reduces: on the critical path, exposed",
    "grad_reduce": ("gradients: ZeRO-0 all-reduce after the backward, exposed; ZeRO-1/2 "
                    "(overlap_comm) buckets pipelined behind the backward (ZeRO-1: last "
                    "micro-batch, ZeRO-2: every one), last bucket exposed; ZeRO-3 "
                    "reduce-scatter in the same pipeline as the backward's re-gathers"),
    "param_allgather": "ZeRO-1/2 all-gather of updated parameters after optimizer.step: exposed",
    "zero3_gather": "ZeRO-3 parameter gathers: prefetched one block ahead behind compute",
    "optimizer": "optimizer step: memory-bound, exposed",
}

PROFILED_FIELDS = ("gemm_s", "attention_s", "memory_bound_s", "launch_s", "engine_s", "kernels")

# terms with exposed and hidden parts (name -> StepTime field of the raw seconds)
COMM_TERMS = ("a2a", "tp", "grad_reduce", "param_allgather", "zero3_gather")


@dataclass(frozen=True, kw_only=True)
class StepTime:
    """Seconds per optimizer step; every ``X_s`` communication term has its ``X_exposed_s``
    (on the step's critical path) and ``X_hidden_s`` (= X_s - X_exposed_s, behind compute)."""

    forward_s: float
    backward_s: float
    recompute_s: float
    a2a_s: float
    a2a_exposed_s: float
    tp_s: float
    tp_exposed_s: float
    grad_reduce_s: float
    grad_reduce_exposed_s: float
    param_allgather_s: float
    param_allgather_exposed_s: float
    zero3_gather_s: float
    zero3_gather_exposed_s: float
    optimizer_s: float
    total_s: float
    mfu: float
    images_per_s: float
    # profiled compute only (0 on the datasheet path): the parts of forward + backward +
    # recompute, and the overheads added to them
    gemm_s: float = 0.0
    attention_s: float = 0.0
    memory_bound_s: float = 0.0
    launch_s: float = 0.0
    engine_s: float = 0.0
    kernels: float = 0.0  # kernel launches per step (forward, backward, recompute)

    @property
    def compute_s(self) -> float:
        return self.forward_s + self.backward_s + self.recompute_s

    @property
    def exposed_comm_s(self) -> float:
        return sum(getattr(self, f"{t}_exposed_s") for t in COMM_TERMS)

    @property
    def hidden_comm_s(self) -> float:
        return sum(self.hidden(t) for t in COMM_TERMS)

    @property
    def grad_sync_s(self) -> float:
        """Exposed gradient reduction + post-step parameter all-gather."""
        return self.grad_reduce_exposed_s + self.param_allgather_exposed_s

    @property
    def grad_hidden_fraction(self) -> float:
        """Fraction of the gradient traffic (reduction + post-step all-gather) hidden."""
        total = self.grad_reduce_s + self.param_allgather_s
        return (total - self.grad_sync_s) / total if total > 0 else 0.0

    def hidden(self, term: str) -> float:
        return getattr(self, f"{term}_s") - getattr(self, f"{term}_exposed_s")

    def terms(self) -> list[tuple[str, float, float]]:
        """(term, seconds, exposed seconds) in the order the step runs them."""
        rows = [("forward", self.forward_s, self.forward_s),
                ("backward", self.backward_s, self.backward_s),
                ("recompute", self.recompute_s, self.recompute_s),
                ("launch", self.launch_s, self.launch_s), ("engine", self.engine_s, self.engine_s)]
        rows += [(t, getattr(self, f"{t}_s"), getattr(self, f"{t}_exposed_s"))
                 for t in COMM_TERMS]
        rows.append(("optimizer", self.optimizer_s, self.optimizer_s))
        return rows

    def to_dict(self) -> dict[str, float]:
        out = {f.name: float(getattr(self, f.name)) for f in fields(self)}
        if not self.kernels:  # datasheet path: compute not split into operator classes
            for name in PROFILED_FIELDS:
                del out[name]
        out.update(compute_s=self.compute_s, exposed_comm_s=self.exposed_comm_s,
                   hidden_comm_s=self.hidden_comm_s, grad_sync_s=self.grad_sync_s,
                   grad_hidden_fraction=self.grad_hidden_fraction)
        return out


def pipeline_exposed(comm_s: Any, window_s: Any, buckets: Any) -> Any:
    """Exposed seconds of ``buckets`` equal collectives of ``comm_s`` in all, launched as a
    window of ``window_s`` compute produces them (see the module docstring)."""
    c, w = np.asarray(comm_s, dtype=float), np.asarray(window_s, dtype=float)
    k = np.maximum(np.asarray(buckets, dtype=float), 1.0)
    return np.clip(np.maximum(c / k, c - w * (k - 1) / k), 0.0, c)


def step_time_arrays(*, forward_flops: float, backward_flops: float, recompute_flops: Any,
                     model_flops: float, com: dict[str, Any], mem: dict[str, Any], acc: Any,
                     depth: int, world: int, global_batch: int, tp: Any, zero: Any,
                     micro_batch: Any, grad_accum: Any, recompute_code: Any,
                     precision: Precision, cfg: Any = None, ep: Any = 1) -> dict[str, Any]:
    """Every StepTime field as arrays over layouts. ``com`` holds ``comm.comm_arrays``'
    fields, ``mem`` ``memory.memory_arrays``'; FLOPs are per image. With ``cfg`` and a
    profiled ``acc``, compute is priced by operator class (module docstring)."""
    tp, zero = np.asarray(tp), np.asarray(zero)
    mb, ga = np.asarray(micro_batch), np.asarray(grad_accum)
    prof = getattr(acc, "profile", None)
    extra: dict[str, Any] = {}
    if prof is not None and cfg is not None:
        c = micro_batch_arrays(cfg, acc, micro_batch=mb, tp=tp, recompute_code=recompute_code,
                               precision=precision, ep=ep)
        dev = {ph: c[f"{ph}_gemm_s"] + c[f"{ph}_attention_s"] + c[f"{ph}_memory_s"]
               for ph in ("forward", "backward", "recompute")}
        t_fwd, t_bwd = dev["forward"], dev["backward"] + dev["recompute"]
        kernels = c["forward_kernels"] + c["backward_kernels"] + c["recompute_kernels"]
        launch = kernels * (prof.launch_s or 0.0)
        if prof.launch_mode != "serial":  # asynchronous: only what the device time cannot hide
            launch = np.maximum(0.0, launch - (t_fwd + t_bwd))
        tensors = param_tensor_count(cfg)
        engine = (prof.engine_s_per_param_tensor or 0.0) * tensors
        # what DeepSpeed's engine adds per step at the layout's stage: per parameter tensor,
        # and per parameter the device holds (its passes over gradients and weights)
        local_params = mem["params"] / dtype_bytes(precision)
        ds_engine = np.zeros_like(np.asarray(zero, dtype=float))
        for stage in set(prof.deepspeed_engine_s) | set(prof.deepspeed_engine_s_per_param):
            sec = (prof.deepspeed_engine_s.get(stage, 0.0) * tensors
                   + prof.deepspeed_engine_s_per_param.get(stage, 0.0) * local_params)
            ds_engine = ds_engine + np.where(zero == stage, sec, 0.0)
        forward_s, backward_s, recompute_s = (ga * dev[ph] for ph in
                                              ("forward", "backward", "recompute"))
        extra = dict(
            gemm_s=ga * sum(c[f"{ph}_gemm_s"] for ph in ("forward", "backward", "recompute")),
            attention_s=ga * sum(c[f"{ph}_attention_s"]
                                 for ph in ("forward", "backward", "recompute")),
            memory_bound_s=ga * sum(c[f"{ph}_memory_s"]
                                    for ph in ("forward", "backward", "recompute")),
            launch_s=ga * launch, engine_s=ga * engine + ds_engine + 0.0 * mb,
            kernels=ga * kernels)
    else:
        flops_s = acc.peak_flops_for(Precision(precision).value) * acc.efficiency
        per_step = global_batch / (world * flops_s)  # seconds per FLOP-per-image of the step
        per_micro = mb / tp / flops_s
        rec = np.asarray(recompute_flops)
        t_fwd, t_bwd = forward_flops * per_micro, (backward_flops + rec) * per_micro
        forward_s = forward_flops * per_step + 0.0 * mb
        backward_s = backward_flops * per_step + 0.0 * mb
        recompute_s = rec * per_step + 0.0 * mb

    is0 = zero < ZERO_PARTITIONS_OPTIMIZER
    is2, is3 = zero >= ZERO_PARTITIONS_GRADIENTS, zero >= ZERO_PARTITIONS_PARAMETERS
    red, k = com["grad_reduce_per_micro_s"], com["grad_buckets"]
    gat = com["zero3_gather_per_pass_s"]
    fwd_passes = forward_passes(recompute_code)
    # backward pipeline: the gradient buckets (and, with ZeRO-3, the backward's gathers,
    # one per block and pass: the recomputed forward re-gathers too)
    bwd_gat = np.where(is3, gat * fwd_passes, 0.0)
    bwd_comm = red + bwd_gat
    bwd_exposed = pipeline_exposed(bwd_comm, t_bwd, k + np.where(is3, depth * fwd_passes, 0))
    red_share = np.where(bwd_comm > 0, red / np.where(bwd_comm > 0, bwd_comm, 1.0), 0.0)
    times = np.where(is2, ga, 1)
    grad_exposed = np.where(is0, com["grad_reduce_s"], times * bwd_exposed * red_share)
    z3_exposed = np.where(is3, ga * (pipeline_exposed(gat, t_fwd, depth)
                                     + bwd_exposed * (1.0 - red_share)), 0.0)

    bf16 = Precision(precision) in HALF_PRECISIONS
    # fp32: the update's traffic is priced as the weights' own (DeepSpeed's fp32 partition at
    # ZeRO-1/2, which the memory counts as master weights, is priced through the params)
    opt_bytes = (2 * (mem["optimizer_states"] + (mem["master_weights"] if bf16 else 0.0))
                 + (mem["fp32_grads"] if bf16 else 0.0) + (1 if bf16 else 2) * mem["params"])
    opt_bytes = opt_bytes + 3 * mem["ema"]  # EMA update: read + write it, read the weights
    if prof is not None and cfg is not None and prof.optimizer_s_per_byte is not None:
        # ZeRO-0 steps every parameter tensor; ZeRO-1/2/3 a flat partition per param group
        tensors = np.where(is0, param_tensor_count(cfg), OPTIMIZER_FLAT_GROUPS)
        optimizer_s = (opt_bytes * prof.optimizer_s_per_byte
                       + tensors * (prof.optimizer_s_per_tensor or 0.0))
    else:
        optimizer_s = opt_bytes / bandwidth(acc)
    exposed = com["a2a_s"] + com["tp_s"] + grad_exposed + com["param_allgather_s"] + z3_exposed
    total = (forward_s + backward_s + recompute_s + exposed + optimizer_s
             + extra.get("launch_s", 0.0) + extra.get("engine_s", 0.0))
    return dict(
        forward_s=forward_s, backward_s=backward_s, recompute_s=recompute_s,
        a2a_s=com["a2a_s"], a2a_exposed_s=com["a2a_s"], tp_s=com["tp_s"],
        tp_exposed_s=com["tp_s"], grad_reduce_s=com["grad_reduce_s"],
        grad_reduce_exposed_s=grad_exposed, param_allgather_s=com["param_allgather_s"],
        param_allgather_exposed_s=com["param_allgather_s"],
        zero3_gather_s=com["zero3_gather_s"], zero3_gather_exposed_s=z3_exposed,
        optimizer_s=optimizer_s, total_s=total,
        mfu=model_flops * global_batch / (world * acc.peak_bf16_flops * total),
        images_per_s=global_batch / total, **extra)
