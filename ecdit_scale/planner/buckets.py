"""ZeRO gradient buckets and the step's other transient copies: their size in ds_config.json
and the bytes they hold per device, and in which phase of the step.

ZeRO-1/2 with ``contiguous_gradients``: DeepSpeed 0.19.8 allocates a reduce bucket of
``reduce_bucket_size`` elements at the backward's first gradient (``setup_buckets``), a second
with ``overlap_comm`` (dp > 1), and frees them before the step (``_release_ipg_buffers``). On one
data-parallel rank (``deepspeed_config.zero_section``) an MoE model keeps contiguous gradients
(DeepSpeed requires them at ZeRO-2): one bucket; a dense model has none and instead flattens
its gradients a bucket at a time for the (trivial) all-reduce at the backward's end
(``allreduce_and_copy``), as ZeRO-0 does for its all-reduce (``engine.py``:
``buffered_allreduce_fallback``, up to 5e8 elements at a time, also at one rank):
``grad_buffer_bytes``.

The optimizer step's temporaries (``optimizer_temp_bytes``): torch's foreach AdamW and RMSprop
make one fp32 tensor per state element (``_foreach_sqrt``) of the param group being stepped;
the fused kernels and SGD with momentum make none. Measured phase by phase on CPU through
DeepSpeed's bf16 and fp32 paths: ``bench/step_memory.py``, ``bench/results/step-memory-cpu/``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import Optimizer
from ..zero import ZERO_PARTITIONS_OPTIMIZER

ZERO_BUCKET_ELEMENTS = 200_000_000  # reduce/all-gather bucket size written into ds_config.json
ZERO_BUCKETS = 2  # double-buffered with overlap_comm (dp > 1)
# DeepSpeed's ZeRO-0 all-reduce bucket (MEMORY_OPT_ALLREDUCE_SIZE)
ALLREDUCE_BUCKET_ELEMENTS = 500_000_000
FOREACH_TEMP_STATES = {Optimizer.ADAMW: 1, Optimizer.RMSPROP: 1, Optimizer.SGD: 0}
FUSED_KERNELS = (Optimizer.ADAMW, Optimizer.SGD)  # torch has no fused RMSprop


def zero_bucket_bytes(*, dp: Any, zero: Any, w: int, moe: bool = False) -> Any:
    """Reduce bucket bytes per device (numbers or arrays over layouts), alive from the
    backward's first gradient to its end; ``w`` bytes per element."""
    dp, zero = np.asarray(dp), np.asarray(zero)
    alone = ZERO_BUCKET_ELEMENTS * w if moe else 0.0  # dense: grad_buffer_bytes
    return np.where(zero >= ZERO_PARTITIONS_OPTIMIZER,
                    np.where(dp == 1, alone, ZERO_BUCKETS * ZERO_BUCKET_ELEMENTS * w), 0.0)


def grad_buffer_bytes(non_expert: Any, expert: Any, *, dp: Any, zero: Any, w: int,
                      moe: bool = False) -> Any:
    """The flat gradient copy made at the end of the backward, per device: ZeRO-0's all-reduce
    bucket (non-expert and expert gradients go in separate buckets, the larger counts) and,
    at ZeRO-1/2 on one data-parallel rank, a dense model's transient bucket; 0 otherwise."""
    dp, zero = np.asarray(dp), np.asarray(zero)
    largest = np.maximum(np.asarray(non_expert), np.asarray(expert))
    alone = 0.0 * largest if moe else np.minimum(ZERO_BUCKET_ELEMENTS, np.asarray(non_expert)
                                                 + np.asarray(expert)) * w
    return np.where(zero == 0, np.minimum(ALLREDUCE_BUCKET_ELEMENTS, largest) * w,
                    np.where((zero < 3) & (dp == 1), alone, 0.0))


def optimizer_temp_bytes(opt_elems: Any, grads: Any, *, zero: Any, optimizer: Optimizer,
                         fused: bool, flat_copy: Any) -> Any:
    """Bytes the optimizer step adds beyond the gradients, per device. ZeRO-0: the torch
    optimizer steps while every gradient lives, so its foreach temporaries (fp32, one per
    state element) add up. ZeRO-1/2/3: DeepSpeed flattens the averaged gradients into its fp32
    partition (in bf16 through a flat bf16 copy, ``flat_copy``) and frees them before the
    step, whose temporaries then take their place: the larger of the two counts."""
    zero = np.asarray(zero)
    k = (0 if fused and Optimizer(optimizer) in FUSED_KERNELS
         else FOREACH_TEMP_STATES[Optimizer(optimizer)])
    temp = 4.0 * k * np.asarray(opt_elems)
    return np.where(zero == 0, temp, np.maximum(np.asarray(flat_copy),
                                                temp - np.asarray(grads)))


def recorded_bucket_bytes(zero_section: dict[str, Any], *, w: int) -> float | None:
    """The reduce buckets a run's recorded ``zero_optimization`` section implies (a run
    launched before one-rank runs dropped contiguous gradients kept two); None outside
    ZeRO-1/2. DeepSpeed's defaults: contiguous gradients on, overlap off."""
    if zero_section.get("stage", 0) not in (1, 2):
        return None
    elements = zero_section.get("reduce_bucket_size", ZERO_BUCKET_ELEMENTS)
    if zero_section.get("contiguous_gradients", True):
        return float((1 + bool(zero_section.get("overlap_comm", False))) * elements * w)
    return 0.0  # no reduce bucket: a transient flat copy at the backward's end (grad_buffers)
