"""The GEMM and batched-GEMM grids a device profile times (``profile.measure_profile``):
``torch.mm`` and ``torch.bmm`` over the settings' (M, N, K) grid, each call on operands
rotated past the last-level cache."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

# Settings and Timer are ``profile``'s (not imported: profile imports this module)
Settings = Timer = Any


def torch_dtype(torch, name: str):
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def gemm_working_set_bytes(device: str, quick: bool = False) -> int:
    """The bytes a GEMM's operands rotate through while timed: past the last-level cache (CPU:
    tens of MiB; an H100 / H200: 50 MiB of L2), as in a training step, where each layer's
    weights and activations come from memory, not from the previous call. ``quick``: a
    smaller set (the quick profile is a smoke measurement)."""
    if device == "cpu":
        return (48 if quick else 128) * 2**20
    return 256 * 2**20


# problems per torch.bmm call in the batched-GEMM grid: the local experts a MoE layer multiplies
# at once (E / ep: 16 / 2 = 8 on the ladder's 16-expert configs), fewer at the largest M so
# that a call's rows never pass the GEMM grid's largest M
BMM_BATCH = 8
# operand pairs a shape cycles through: more than the calls a Timer makes (at most 3 batches
# of 1,000 and two warm-ups), so that no call meets the operands of an earlier one; building
# a view per pair for every pair that fits the buffer cost ~1.5 s of a quick profile
MAX_PAIRS = 4096


def bmm_batch(m: int, ms: list[int]) -> int:
    return max(1, min(BMM_BATCH, max(ms) // m))


def _grid_rates(s: Settings, timer: Timer, batch_of: Callable[[int], int] | None,
                single: list[float] | None = None) -> list[float]:
    """FLOP/s at every (M, N, K) of the grid, m-major: ``torch.mm`` (``batch_of`` None), or
    ``torch.bmm`` of ``batch_of(M)`` problems of that shape, where an M of one problem takes
    ``single``'s rate (the ``torch.mm`` grid's: a bmm of one problem is that GEMM, and the
    largest M, the slowest to time, is the one). Each call runs on the next of a
    set of operands that together exceed the last-level cache (``gemm_working_set_bytes``): a
    step meets a GEMM's operands cold, and a repeated call on one pair keeps them in cache (on
    this 2-core CPU, 4-25% faster at the small shapes)."""
    torch = timer.torch
    dt = torch_dtype(torch, s.torch_dtype_name)
    ms, ns, ks = s.grid()
    size = torch.tensor([], dtype=dt).element_size()
    # one random buffer, sliced into each shape's operand pairs (views: nothing allocated per
    # shape); the largest shapes' two pairs may overrun it and get a buffer of their own
    pool = torch.randn(gemm_working_set_bytes(s.device, s.quick) // size, device=s.device,
                       dtype=dt)
    rates = []
    for i_m, m in enumerate(ms):
        b = 1 if batch_of is None else batch_of(m)
        lead = () if batch_of is None else (b,)
        if batch_of is not None and b == 1 and single is not None:
            rates += single[i_m * len(ns) * len(ks):(i_m + 1) * len(ns) * len(ks)]
            continue
        for n in ns:
            for k in ks:
                per_pair = b * (m * k + k * n)
                pairs = max(2, pool.numel() // per_pair)
                buf = pool if pairs * per_pair <= pool.numel() else torch.randn(
                    pairs * per_pair, device=s.device, dtype=dt)
                # no more pairs than the timer makes calls, spread over the whole buffer
                pairs = min(pairs, MAX_PAIRS)
                stride = buf.numel() // pairs
                split = b * m * k
                ops = itertools.cycle(
                    [(buf[i * stride:i * stride + split].view(*lead, m, k),
                      buf[i * stride + split:i * stride + per_pair].view(*lead, k, n))
                     for i in range(pairs)])
                fn = torch.mm if batch_of is None else torch.bmm

                def call(ops=ops, fn=fn):
                    fn(*next(ops))

                rates.append(2.0 * b * m * n * k / timer(call))
    return rates


def measure_gemm(s: Settings, timer: Timer) -> dict[str, list]:
    """``torch.mm`` over the grid (``_grid_rates``)."""
    ms, ns, ks = s.grid()
    return {"m": ms, "n": ns, "k": ks, "flops_per_s": _grid_rates(s, timer, None)}


def measure_bmm(s: Settings, timer: Timer, gemm: dict[str, list] | None = None
                ) -> dict[str, list]:
    """``torch.bmm`` over the same grid, (M, N, K) being each problem's shape, ``bmm_batch(M)``
    problems a call: the rate of the experts' batched matmuls, which a single GEMM of all
    their rows does not give (each expert's few rows at a small micro-batch). ``gemm``: this
    device's ``measure_gemm``, whose rates a one-problem M reuses."""
    ms, ns, ks = s.grid()
    single = gemm["flops_per_s"] if gemm is not None else None
    return {"m": ms, "n": ns, "k": ks, "batch": [bmm_batch(m, ms) for m in ms],
            "flops_per_s": _grid_rates(s, timer, lambda m: bmm_batch(m, ms), single)}
