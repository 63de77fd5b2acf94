"""What ``validate`` measures itself: the FLOPs the model's operators perform, and this CPU's
matmul rate and copy bandwidth.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward
of the single-device model, with the math SDPA backend so that attention runs as countable
matmuls. The model is built and run on fake tensors (``FakeTensorMode``): every operator sees
the real shapes and no parameter or activation is allocated, so a 30B-parameter config is
counted in seconds and a few hundred MB. A count needs shapes only: a scalar read of data
(token choice's dropped-assignment statistic) reads 0 there, and no matmul depends on it,
because dispatch pads every expert to its fixed capacity.

A deep model is counted at two shallow depths and the count carried to its own: blocks repeat
with the MoE period (``moe_every``) from ``moe_offset`` on, so the FLOPs are affine in the depth
on each residue class of that period, exactly (integers). ``ecdit-xl-32e``'s 28 blocks cost two
counts of 4 and 6 blocks; ``tests/test_validate.py`` checks the carried count against a whole one.
"""

from __future__ import annotations

import functools
import time

from ..config import ModelConfig

CPU_MATMUL_N = 512


def measured_training_flops(cfg: ModelConfig, *, images: int = 2, whole: bool = False) -> float:
    """FLOPs of one forward + backward of ``images`` images through the single-device model.
    Divide by ``images`` for one. ``whole``: count every block instead of carrying the count
    of two shallow depths to the model's (the module docstring says why that is exact)."""
    lo, hi = _counted_depths(cfg)
    if whole or cfg.depth <= hi:
        return _count(cfg, images)
    f_lo, f_hi = _count(cfg.replace(depth=lo), images), _count(cfg.replace(depth=hi), images)
    return f_lo + (cfg.depth - lo) // (hi - lo) * (f_hi - f_lo)


def _counted_depths(cfg: ModelConfig) -> tuple[int, int]:
    """Two depths one MoE period apart, past the blocks before ``moe_offset``, in the residue
    class of ``cfg.depth``."""
    period = cfg.ffn.moe_every if cfg.ffn.is_moe else 1
    start = max(2, (cfg.ffn.moe_offset if cfg.ffn.is_moe else 0) + period)
    lo = start + (cfg.depth - start) % period
    return lo, lo + period


def _count(cfg: ModelConfig, images: int) -> float:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from ..model import build_model, rectified_flow_loss

    class ScalarReadsAsZero(TorchDispatchMode):
        """``int(tensor)`` of a fake tensor has no value to give: give 0."""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                return 0
            return func(*args, **(kwargs or {}))

    # the shape environment lets data-dependent shapes (token choice's kept assignments) stay
    # symbolic instead of failing
    with FakeTensorMode(shape_env=ShapeEnv()), ScalarReadsAsZero():
        model = build_model(cfg)
        model.train()
        x = torch.randn(images, cfg.in_channels, cfg.input_size, cfg.input_size)
        if cfg.conditioning.value == "text":
            cond = torch.randn(images, cfg.text_tokens, cfg.text_dim)
        else:
            cond = torch.randint(0, cfg.num_classes, (images,))
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            rectified_flow_loss(model, x, cond).loss.backward()
    return float(counter.get_total_flops())


@functools.lru_cache(maxsize=8)
def cpu_matmul_flops_per_s(n: int = CPU_MATMUL_N, seconds: float = 0.5, threads: int = 1) -> float:
    """Peak-like fp32 FLOP/s of this CPU: best of repeated n x n ``torch.mm`` on ``threads``
    threads (the ranks of a CPU run use one thread each). Measured once per process: each
    ``validate`` of a CPU run calibrates against it, and the machine does not change."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        best = 0.0
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            for _ in range(4):
                torch.mm(a, b)
            best = max(best, 4 * 2.0 * n**3 / (time.perf_counter() - t0))
        return best
    finally:
        torch.set_num_threads(old)


def cpu_copy_bytes_per_s(mb: int = 64) -> float:
    """Memory bandwidth estimate: read + write of a large tensor copy."""
    import torch

    a = torch.empty(mb * 2**20 // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    t0 = time.perf_counter()
    for _ in range(5):
        b.copy_(a)
    return 5 * 2 * a.numel() * 4 / (time.perf_counter() - t0)
