"""The gradient norm for clipping in a few multi-tensor kernels instead of two per tensor.

DeepSpeed 0.19.8's ZeRO-1/2 optimizer computes the global norm for ``gradient_clipping`` in
``DeepSpeedZeroOptimizer.get_grad_norm_direct`` (``deepspeed/runtime/zero/stage_1_and_2.py``):
for every gradient tensor ``torch.linalg.vector_norm(g.to(float64))``, i.e. an fp64 copy of
the gradient and a reduction, one pair of CUDA kernels per tensor (ecdit-xl: 631 tensors,
~1,260 launches and a 4x-sized copy of every bf16 gradient per step). No DeepSpeed setting
changes it, so ``use_foreach_grad_norm`` replaces that one method on the engine's optimizer
*instance* with the same computation through ``torch._foreach_norm(grads, dtype=float64)``
(fp64 accumulation without the copies; one kernel per chunk of tensors on CUDA). Everything
around the per-tensor norms is DeepSpeed's own code, kept as it is: which tensors count, the
sum of squares, the all-reduces over the data- and model-parallel groups, the square root
and the -1 sentinel for a non-finite norm. The clip itself (``unscale_and_clip_grads``) is
unchanged. Other DeepSpeed versions keep their own method (the pin is 0.19.8).
"""

from __future__ import annotations

import types
from typing import Any

import torch

PATCHED_VERSION = "0.19.8"


def foreach_grad_norm_direct(self, gradients, params, norm_type=2):
    """``DeepSpeedZeroOptimizer.get_grad_norm_direct`` (DeepSpeed 0.19.8) for the L2 norm,
    its per-tensor norms taken by one ``_foreach_norm``; other norms go to DeepSpeed's."""
    from deepspeed import comm as dist
    from deepspeed.runtime.constants import PIPE_REPLICATED
    from deepspeed.runtime.utils import (
        is_model_parallel_parameter,
        mask_nan_or_inf_with_val_inplace,
    )
    from deepspeed.runtime.zero.utils import get_norm_dtype

    if float(norm_type) != 2.0:
        return type(self).get_grad_norm_direct(self, gradients, params, norm_type)
    grads = []
    param_gradients = (g for g in gradients if not getattr(g, "_zero_padding", False))
    for g, p in zip(param_gradients, params, strict=False):
        if hasattr(p, PIPE_REPLICATED) and p.ds_pipe_replicated:
            continue
        if is_model_parallel_parameter(p) or self.model_parallel_rank == 0:
            grads.append(g.detach())
    if grads:
        norms = torch._foreach_norm(grads, 2.0, dtype=get_norm_dtype())
        total_norm = torch.stack(norms).pow(2.0).sum().float()
    else:
        total_norm = torch.tensor(0.0, dtype=torch.float32).to(self.device)
    dist.all_reduce(total_norm, op=dist.ReduceOp.SUM, group=self.dp_process_group)
    self._model_parallel_all_reduce(tensor=total_norm, op=dist.ReduceOp.SUM)
    total_norm = total_norm.pow(1.0 / 2.0)
    mask_nan_or_inf_with_val_inplace(total_norm, device=self.device)
    return total_norm


def use_foreach_grad_norm(optimizer: Any) -> bool:
    """Give a DeepSpeed 0.19.8 ZeRO-1/2 optimizer (not offloaded) the foreach norm; True if
    it took it. Anything else (ZeRO-0's wrappers, ZeRO-3, other versions) is left alone."""
    import deepspeed
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if (deepspeed.__version__ != PATCHED_VERSION
            or not isinstance(optimizer, DeepSpeedZeroOptimizer)
            or getattr(optimizer, "cpu_offload", False)):
        return False
    optimizer.get_grad_norm_direct = types.MethodType(foreach_grad_norm_direct, optimizer)
    return True
