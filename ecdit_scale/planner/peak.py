"""The peak of a training step from the memory's parts: which part is alive in which phase
(the forward, the backward's end, the optimizer step) and the stated allowance on top.

Measured phase by phase on CPU through DeepSpeed's own code paths (``bench/step_memory.py``,
``bench/results/step-memory-cpu/``) and, for the whole step, on an H200
(``bench/results/h200-2026-11-26``).
"""

from __future__ import annotations

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


def peak_arrays(parts: dict[str, Any], grad_accum: Any = 1) -> dict[str, Any]:
    """Peak bytes from the parts (numbers or arrays over layouts): ``forward_peak`` at the end
    of a micro-batch's forward, ``backward_peak`` at its end, ``step_peak`` at the optimizer
    step, ``subtotal`` the largest, ``overhead`` the stated allowance on it and ``total``.

    DeepSpeed 0.19.8 makes no gradient before the backward (bf16 gradients go into the buckets
    and are freed; the fp32 partition lives from the backward to the step). On an H200
    (bench/results/h200-2026-11-26) ecdit-xl at micro-batch 32 peaks at the forward's end
    (20.2 GiB; this reading 21.1), an 8-block ecdit-xl-32e at the step (29.4; 28.5). With
    accumulation the earlier micro-batches' gradients are held through the later forwards."""
    persistent = sum(parts[k] for k in PERSISTENT_PARTS)
    step = sum(parts[k] for k in STEP_PARTS)
    held = sum(parts[k] for k in ACCUMULATED_PARTS)
    forward = sum(parts[k] for k in FORWARD_PARTS) + np.where(np.asarray(grad_accum) > 1,
                                                               held, 0.0)
    backward = sum(parts[k] for k in BACKWARD_PARTS)
    out = {"forward_peak": persistent + forward, "backward_peak": persistent + backward,
           "step_peak": persistent + step}
    out["subtotal"] = np.maximum(np.maximum(out["forward_peak"], out["backward_peak"]),
                                 out["step_peak"])
    out["overhead"] = FRAGMENTATION * out["subtotal"] + CONTEXT_BYTES
    out["total"] = out["subtotal"] + out["overhead"]
    return out
