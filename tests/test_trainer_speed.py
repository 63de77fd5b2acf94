"""What keeps the trainer's device busy: optimizer kernels, regional compile, the achieved
FLOP/s a run records. The launched runs these tests read are the session runs of conftest.py."""

from __future__ import annotations

import pytest
import torch

from ecdit_scale.config import Optimizer
from ecdit_scale.train.records import Device


@pytest.mark.parametrize("optimizer", list(Optimizer))
def test_optimizers_use_multi_tensor_kernels_without_a_jit_build(optimizer):
    """CPU: foreach for every optimizer; CUDA: fused where torch has it (AdamW, SGD), foreach
    for RMSprop; never the one-tensor-at-a-time loop."""
    from ecdit_scale.train.engine import OPTIMIZER_CLASSES, optimizer_impl, optimizer_kernels

    cls = OPTIMIZER_CLASSES[optimizer]
    assert optimizer_kernels(cls, Device.CPU) == {"foreach": True}
    on_cuda = optimizer_kernels(cls, Device.CUDA)
    assert on_cuda == ({"foreach": True} if optimizer is Optimizer.RMSPROP else {"fused": True})
    opt = cls([torch.nn.Parameter(torch.zeros(3))], lr=0.1, **optimizer_kernels(cls, Device.CPU))
    assert optimizer_impl(opt) == "foreach"
    assert optimizer_impl(cls([torch.nn.Parameter(torch.zeros(3))], lr=0.1,
                              foreach=False)) == "for-loop"
