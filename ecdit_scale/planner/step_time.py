"""The step-time model: one optimizer step of one layout, term by term (``StepTime``).

The same function prices one plan and the vectorised search (every input may be a numpy array
with one entry per layout): compute (``_datasheet_compute`` or, with a measured device profile,
``_profiled_compute``), the collectives of ``comm.py`` split into exposed and hidden parts, and
the optimizer step with the EMA update. Derivations: ``DERIVATIONS.md``, sections "Overlap",
"Compute" and "Optimizer and EMA".
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..config import HALF_PRECISIONS, Optimizer, Precision
from ..zero import ZERO_PARTITIONS_GRADIENTS, ZERO_PARTITIONS_OPTIMIZER, ZERO_PARTITIONS_PARAMETERS
from .comm import forward_passes
from .compute import bandwidth, dtype_bytes, micro_batch_arrays
from .derivations import assumptions
from .device_profile import engine_setting
from .dtypes import FP32_BYTES
from .memory import OPTIMIZER_STATE_BYTES, MemoryArrays
from .operators import trainer_param_tensors
from .rank_sync import sync_seconds

OPTIMIZER_FLAT_GROUPS = 2  # DeepSpeed ZeRO: one flat partition per param group (shared, experts)

OVERLAP_RULES = assumptions("Overlap")
COMPUTE_ASSUMPTIONS = assumptions("Compute") + assumptions("Optimizer and EMA")



@dataclass(frozen=True)
class ProfiledCompute:
    """A step's compute by operator class, from a measured or derived profile (arrays over
    layouts): the classes of forward + backward + recompute, and the overheads added to them."""

    gemm_s: Any
    attention_s: Any
    memory_bound_s: Any
    launch_s: Any  # kernel launches the device time does not hide
    engine_s: Any  # autograd and DeepSpeed's engine, per tensor and per local parameter
    kernels: Any  # kernel launches per step

    @property
    def overheads_s(self) -> Any:
        return self.launch_s + self.engine_s


PROFILED_FIELDS = tuple(f.name for f in fields(ProfiledCompute))

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
    # ranks meeting at collectives after compute (a profile's ``sync``, measured on a CPU's
    # ranks; 0 without one): waiting for the last rank, and the all-to-alls' own wake-up
    sync_s: float = 0.0
    sync_a2a_s: float = 0.0  # the part of sync_s at the model's all-to-alls

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
        if self.sync_s:
            rows.append(("sync", self.sync_s, self.sync_s))
        return rows

    def at(self, i: int, shape: tuple[int, ...]) -> StepTime:
        """Layout ``i`` of a StepTime over layouts."""
        return StepTime(**{f.name: float(np.broadcast_to(getattr(self, f.name), shape)[i])
                           for f in fields(self)})

    def to_dict(self) -> dict[str, float]:
        out = {f.name: float(getattr(self, f.name)) for f in fields(self)}
        if not self.kernels:  # datasheet path: compute not split into operator classes
            for name in PROFILED_FIELDS:
                del out[name]
        if not self.sync_s:  # a profile without ``sync`` (every GPU's): nothing to say
            del out["sync_s"], out["sync_a2a_s"]
        out.update(compute_s=self.compute_s, exposed_comm_s=self.exposed_comm_s,
                   hidden_comm_s=self.hidden_comm_s, grad_sync_s=self.grad_sync_s,
                   grad_hidden_fraction=self.grad_hidden_fraction)
        return out


def pipeline_exposed(comm_s: Any, window_s: Any, buckets: Any) -> Any:
    """Exposed seconds of ``buckets`` equal collectives of ``comm_s`` in all, launched as a
    window of ``window_s`` compute produces them (``DERIVATIONS.md``, "Overlap")."""
    comm_s, window_s = np.asarray(comm_s, dtype=float), np.asarray(window_s, dtype=float)
    stages = np.maximum(np.asarray(buckets, dtype=float), 1.0)
    last_bucket_s = comm_s / stages
    past_window_s = comm_s - window_s * (stages - 1) / stages
    return np.clip(np.maximum(last_bucket_s, past_window_s), 0.0, comm_s)


@dataclass(frozen=True, kw_only=True)
class _Compute:
    """Compute seconds per step and per micro-batch (the windows communication hides behind)."""

    forward_s: Any
    backward_s: Any
    recompute_s: Any
    micro_forward_s: Any  # one micro-batch's forward
    micro_backward_s: Any  # one micro-batch's backward (with its recompute)
    profiled: ProfiledCompute | None  # None on the datasheet path


def _datasheet_compute(*, forward_flops: float, backward_flops: float, recompute_flops: Any,
                       acc: Any, world: int, global_batch: int, tp: Any, micro_batch: Any,
                       zeros: Any, precision: Precision) -> _Compute:
    """Hardware FLOPs at the device's peak for ``precision`` times its efficiency."""
    flops_per_s = acc.peak_flops_for(Precision(precision).value) * acc.efficiency
    images_per_device = global_batch / world  # each device: 1/tp of its tp group's images
    micro_images = np.asarray(micro_batch) / np.asarray(tp)
    recompute_flops = np.asarray(recompute_flops)
    return _Compute(
        forward_s=forward_flops * images_per_device / flops_per_s + zeros,
        backward_s=backward_flops * images_per_device / flops_per_s + zeros,
        recompute_s=recompute_flops * images_per_device / flops_per_s + zeros,
        micro_forward_s=forward_flops * micro_images / flops_per_s,
        micro_backward_s=(backward_flops + recompute_flops) * micro_images / flops_per_s,
        profiled=None)


def _profiled_compute(*, cfg: Any, acc: Any, mem: MemoryArrays, world: int, tp: Any, ep: Any,
                      zero: Any, micro_batch: Any, grad_accum: Any, recompute_code: Any,
                      precision: Precision, zeros: Any) -> _Compute:
    """Operator classes from the measured profile (``compute.py``), plus launch and engine."""
    prof = acc.profile
    cost = micro_batch_arrays(cfg, acc, micro_batch=micro_batch, tp=tp,
                              recompute_code=recompute_code, precision=precision, ep=ep)
    micro_forward_s = cost.forward.device_s
    micro_backward_s = cost.backward.device_s + cost.recompute.device_s
    kernels = cost.total.kernels
    # the host's cost per kernel: the model's own code at the layout's recompute policy where
    # the profile timed it, plus what the trainer's own steps took over the profile's price at
    # the layout's rank count (``evaluation.trainer_probe``; 0 where it did not launch them)
    launch_s = kernels * (prof.kernel_host_s(cfg.ffn.kind.value, recompute_code)
                          + prof.trainer_host_s(world))
    if prof.launch_mode != "serial":  # asynchronous: only what the device time cannot hide
        launch_s = np.maximum(0.0, launch_s - (micro_forward_s + micro_backward_s))
    tensors = trainer_param_tensors(cfg, ep)  # the trainer's: E/ep x 4 per MoE layer
    autograd_s = (prof.engine_s_per_param_tensor or 0.0) * tensors
    # DeepSpeed's engine per step at the layout's stage: per tensor and per local parameter
    local_params = mem.params / dtype_bytes(precision)
    # and per further micro-step of an accumulating step (ZeRO-2's hooks run in every backward)
    ga = np.asarray(grad_accum)
    # in the ZeRO settings the layout's run gets: an MoE model's and a data-parallel run's
    # differ from a dense one-rank run's (contiguous gradients, overlap_comm)
    data_parallel = np.asarray(world) // np.asarray(tp) > 1
    deepspeed_s = zeros + 0.0 * np.asarray(zero)
    for dp_flag in (False, True):
        costs = prof.engine_costs(engine_setting(cfg.ffn.is_moe, dp_flag))
        per_tensor, per_param = costs["deepspeed_engine_s"], costs["deepspeed_engine_s_per_param"]
        micro, micro_param = costs["deepspeed_micro_s"], costs["deepspeed_micro_s_per_param"]
        for stage in set(per_tensor) | set(per_param) | set(micro) | set(micro_param):
            stage_s = (per_tensor.get(stage, 0.0) * tensors
                       + per_param.get(stage, 0.0) * local_params
                       + (ga - 1) * (micro.get(stage, 0.0) * tensors
                                     + micro_param.get(stage, 0.0) * local_params))
            deepspeed_s = deepspeed_s + np.where((np.asarray(zero) == stage)
                                                 & (data_parallel == dp_flag), stage_s, 0.0)
    step = cost.total
    profiled = ProfiledCompute(gemm_s=ga * step.gemm_s, attention_s=ga * step.attention_s,
                               memory_bound_s=ga * step.memory_s, launch_s=ga * launch_s,
                               engine_s=ga * autograd_s + deepspeed_s, kernels=ga * kernels)
    return _Compute(forward_s=ga * cost.forward.device_s + zeros,
                    backward_s=ga * cost.backward.device_s + zeros,
                    recompute_s=ga * cost.recompute.device_s + zeros,
                    micro_forward_s=micro_forward_s, micro_backward_s=micro_backward_s,
                    profiled=profiled)


def fp32_optimizer_bytes_per_param(optimizer: Any) -> float:
    """``optimizer_bytes`` per parameter of an fp32 run with no EMA: read + write the states
    and the weights (``profile`` converts a timed optimizer step to seconds per byte with it)."""
    return 2.0 * OPTIMIZER_STATE_BYTES[Optimizer(optimizer)] + 2.0 * FP32_BYTES


def optimizer_bytes(mem: MemoryArrays, precision: Precision) -> Any:
    """Bytes the optimizer step and the EMA update move per device (``DERIVATIONS.md``,
    "Optimizer and EMA"): read + write the states (and bf16's fp32 master weights), read the
    fp32 gradients, write the bf16 weights of the partition it updates (DeepSpeed copies the
    fp32 partition into them; the rest arrive by the all-gather); fp32: read and write the
    weights (DeepSpeed's fp32 partition is priced through the params). The EMA update reads
    and writes the fp32 EMA and reads the weights it averages, at their own width."""
    bf16 = Precision(precision) in HALF_PRECISIONS  # fp16 (AMP) keeps fp32 masters too
    states_bytes = 2 * (mem.optimizer_states + (mem.master_weights if bf16 else 0.0))
    grads_bytes = mem.fp32_grads if bf16 else 0.0
    weights_bytes = mem.master_weights / 2 if bf16 else 2 * mem.params
    ema_bytes = (2 + (0.5 if bf16 else 1.0)) * mem.ema
    return states_bytes + grads_bytes + weights_bytes + ema_bytes


def step_time_arrays(*, forward_flops: float, backward_flops: float, recompute_flops: Any,
                     model_flops: float, com: Any, mem: MemoryArrays, acc: Any,
                     depth: int, world: int, global_batch: int, tp: Any, zero: Any,
                     micro_batch: Any, grad_accum: Any, recompute_code: Any,
                     precision: Precision, cfg: Any = None, ep: Any = 1,
                     optimizer: Any = Optimizer.ADAMW) -> StepTime:
    """The StepTime of every layout (fields are arrays over layouts). ``com`` is
    ``comm.comm_arrays``' CommBreakdown, ``mem`` ``memory.memory_arrays``'; FLOPs are per
    image. With ``cfg`` and a profiled ``acc``, compute is priced by operator class."""
    zero, ga = np.asarray(zero), np.asarray(grad_accum)
    zeros = 0.0 * np.asarray(micro_batch) * zero  # broadcasts scalars to the layouts' shape
    prof = getattr(acc, "profile", None)
    if prof is not None and cfg is not None:
        compute = _profiled_compute(cfg=cfg, acc=acc, mem=mem, world=world, tp=tp, ep=ep,
                                    zero=zero, micro_batch=micro_batch, grad_accum=ga,
                                    recompute_code=recompute_code, precision=precision,
                                    zeros=zeros)
    else:
        compute = _datasheet_compute(forward_flops=forward_flops, backward_flops=backward_flops,
                                     recompute_flops=recompute_flops, acc=acc, world=world,
                                     global_batch=global_batch, tp=tp, micro_batch=micro_batch,
                                     zeros=zeros, precision=precision)

    zero0 = zero < ZERO_PARTITIONS_OPTIMIZER
    zero2 = zero >= ZERO_PARTITIONS_GRADIENTS
    zero3 = zero >= ZERO_PARTITIONS_PARAMETERS
    # the backward's pipeline: gradient buckets, and with ZeRO-3 the backward's re-gathers
    # (one per block and forward pass: the recomputed forward gathers again)
    reduce_per_micro_s = com.grad_reduce_per_micro_s
    gather_per_pass_s = com.zero3_gather_per_pass_s
    backward_gather_s = np.where(zero3, gather_per_pass_s * forward_passes(recompute_code), 0.0)
    backward_comm_s = reduce_per_micro_s + backward_gather_s
    backward_stages = com.grad_buckets + np.where(zero3, depth * forward_passes(recompute_code), 0)
    backward_exposed_s = pipeline_exposed(backward_comm_s, compute.micro_backward_s,
                                          backward_stages)
    reduce_share = np.where(backward_comm_s > 0,
                            reduce_per_micro_s
                            / np.where(backward_comm_s > 0, backward_comm_s, 1.0),
                            0.0)
    reductions = np.where(zero2, ga, 1)  # ZeRO-2/3 reduce in every backward, ZeRO-1 in the last
    grad_exposed_s = np.where(zero0, com.grad_reduce_s,
                              reductions * backward_exposed_s * reduce_share)
    forward_gather_exposed_s = pipeline_exposed(gather_per_pass_s, compute.micro_forward_s, depth)
    zero3_exposed_s = np.where(zero3, ga * (forward_gather_exposed_s
                                            + backward_exposed_s * (1.0 - reduce_share)), 0.0)

    moved_bytes = optimizer_bytes(mem, precision)
    if prof is not None and cfg is not None and prof.optimizer_rate(optimizer) is not None:
        # ZeRO-0 steps every parameter tensor; ZeRO-1/2/3 a flat partition per param group.
        # The rate per byte is the one at the elements of a param group: the trainer's
        # multi-tensor (foreach / fused) kernels run each update op over all of a group's
        # tensors before the next op, so that is the working set a step streams through
        stepped_tensors = np.where(zero0, trainer_param_tensors(cfg, ep),
                                   OPTIMIZER_FLAT_GROUPS)
        elements = mem.optimizer_states / OPTIMIZER_STATE_BYTES[Optimizer(optimizer)]
        groups = OPTIMIZER_FLAT_GROUPS if cfg.ffn.is_moe else 1  # shared (+ expert) params
        rate = prof.optimizer_rate(optimizer, elements / groups)
        optimizer_s = (moved_bytes * rate
                       + stepped_tensors * (prof.optimizer_s_per_tensor or 0.0))
    else:
        optimizer_s = moved_bytes / bandwidth(acc)

    exposed_comm_s = (com.a2a_s + com.tp_s + grad_exposed_s + com.param_allgather_s
                      + zero3_exposed_s)
    profiled = compute.profiled
    overheads_s = profiled.overheads_s if profiled is not None else 0.0
    compute_s = compute.forward_s + compute.backward_s + compute.recompute_s
    sync_s, sync_a2a_s = sync_seconds(prof, compute_s, np.where(np.asarray(ep) > 1,
                                                                com.a2a_calls, 0.0), world)
    total_s = compute_s + exposed_comm_s + optimizer_s + overheads_s + sync_s
    mfu = model_flops * global_batch / (world * acc.peak_bf16_flops * total_s)
    return StepTime(
        forward_s=compute.forward_s, backward_s=compute.backward_s,
        recompute_s=compute.recompute_s,
        a2a_s=com.a2a_s, a2a_exposed_s=com.a2a_s, tp_s=com.tp_s, tp_exposed_s=com.tp_s,
        grad_reduce_s=com.grad_reduce_s, grad_reduce_exposed_s=grad_exposed_s + zeros,
        param_allgather_s=com.param_allgather_s,
        param_allgather_exposed_s=com.param_allgather_s,
        zero3_gather_s=com.zero3_gather_s, zero3_gather_exposed_s=zero3_exposed_s + zeros,
        optimizer_s=optimizer_s + zeros, total_s=total_s + zeros, mfu=mfu + zeros,
        sync_s=sync_s + zeros, sync_a2a_s=sync_a2a_s + zeros,
        images_per_s=global_batch / total_s + zeros,
        **({f: getattr(profiled, f) for f in PROFILED_FIELDS} if profiled is not None else {}))
