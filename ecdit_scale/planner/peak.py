"""The peak of a training step from the memory's parts: which part is alive in which phase
(the forward, the backward's end, the optimizer step) and the stated allowance on top.

Measured phase by phase on CPU through DeepSpeed's own code paths (``bench/step_memory.py``,
``bench/results/step-memory-cpu/``) and, for the whole step, on an H200
(``bench/results/h200-2026-11-26``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

GiB = 1024**3

# Stated allowances (see MemoryBreakdown.assumptions)
FRAGMENTATION = 0.10  # of everything else: allocator fragmentation and temporaries
CONTEXT_BYTES = 1.5 * GiB  # CUDA context, cuBLAS/NCCL workspaces, framework

# Which parts are alive when (see peak_arrays): all step; from the forward until the backward has
# used them; at the backward's end; from the backward to the step. DeepSpeed 0.19.8 allocates
# its ZeRO-1/2 reduce buckets at the backward's first gradient (``setup_buckets``), while the
# activations still live, and frees them before the step: they count in the first two
PERSISTENT_PARTS = ("params", "optimizer_states", "master_weights", "ema")
FORWARD_PARTS = ("activations", "moe_buffers", "zero3_gather_buffer", "zero_buckets")
BACKWARD_PARTS = ("grads", "grad_buffers", "zero_buckets")
STEP_PARTS = ("grads", "fp32_grads", "optimizer_temps")
ACCUMULATED_PARTS = ("grads", "fp32_grads")  # held between micro-batches with accumulation


@dataclass(frozen=True)
class Peak:
    """Bytes per device at each point of a step where memory peaks (numbers, or arrays over
    layouts), the largest, the stated allowance on it and the total."""

    forward_peak: Any  # the end of a micro-batch's forward
    backward_peak: Any  # the end of its backward
    step_peak: Any  # the optimizer step
    subtotal: Any  # the largest of the three
    overhead: Any  # the allowance: fragmentation and the CUDA context
    total: Any


def peak_arrays(parts: Any, grad_accum: Any = 1) -> Peak:
    """The Peak of ``parts`` (an object with the parts as attributes, numbers or arrays over
    layouts: a MemoryBreakdown or a MemoryArrays).

    DeepSpeed 0.19.8 makes no gradient before the backward (bf16 gradients go into the buckets
    and are freed; the fp32 partition lives from the backward to the step). On an H200
    (bench/results/h200-2026-11-26) ecdit-xl at micro-batch 32 peaks at the forward's end
    (20.2 GiB; this reading 21.1), an 8-block ecdit-xl-32e at the step (29.4; 28.5). With
    accumulation the earlier micro-batches' gradients are held through the later forwards."""

    def alive(names: tuple[str, ...]) -> Any:
        return sum(getattr(parts, name) for name in names)

    persistent = alive(PERSISTENT_PARTS)
    held = np.where(np.asarray(grad_accum) > 1, alive(ACCUMULATED_PARTS), 0.0)
    forward_peak = persistent + alive(FORWARD_PARTS) + held
    backward_peak = persistent + alive(BACKWARD_PARTS)
    step_peak = persistent + alive(STEP_PARTS)
    subtotal = np.maximum(np.maximum(forward_peak, backward_peak), step_peak)
    overhead = FRAGMENTATION * subtotal + CONTEXT_BYTES
    return Peak(forward_peak=forward_peak, backward_peak=backward_peak, step_peak=step_peak,
                subtotal=subtotal, overhead=overhead, total=subtotal + overhead)
