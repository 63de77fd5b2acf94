"""Compute seconds of one micro-batch on one device, operator class by operator class, priced
from a measured device profile (``device_profile.DeviceProfile``); no torch.

- GEMM: 2MNK / rate(M, N, K), the rate interpolated from the profile's measured GEMM grid;
  the backward prices dX (M, K, N) and dW (K, N, M) by their own shapes.
- attention: forward FLOPs / measured SDPA forward rate; backward 2 x forward FLOPs (dQ, dK, dV
  and the recomputed scores) at the measured SDPA backward rate.
- memory-bound: bytes / the measured throughput of the op's kind (copy, elementwise,
  activation, norm; else the copy bandwidth); the backward moves each op's
  ``backward_factor`` (``operators.BACKWARD_BYTES_PER_FORWARD`` unless the op says otherwise)
  x its forward's bytes.
- kernels: forward ops + ``BACKWARD_KERNELS_PER_FORWARD`` x as many in the backward.

Where the profile lacks a measurement the term falls back to the datasheet: GEMM and attention
at peak x ``acc.efficiency``, bandwidth from the catalog (``sources`` says which was used).

The inventory depends only on (micro-batch, tp, recompute, ep), so a search over thousands of
layouts prices the few unique tuples and broadcasts (``micro_batch_arrays``).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..config import ModelConfig, Precision
from .memory import RECOMPUTE_ORDER
from .operators import BACKWARD_KERNELS_PER_FORWARD, OperatorInventory, operator_inventory

ATTENTION_BACKWARD_FLOPS_PER_FORWARD = 2.0
PARTS = ("gemm_s", "attention_s", "memory_s", "kernels")


def dtype_bytes(precision: Any) -> int:
    return 2 if Precision(precision) is Precision.BF16 else 4


def _gemm_seconds(inv: OperatorInventory, acc: Any, *, backward: bool) -> float:
    if not inv.gemms:
        return 0.0
    m, n, k, c, dx = (np.array([getattr(g, f) for g in inv.gemms], dtype=float)
                      for f in ("m", "n", "k", "count", "input_grad"))
    prof = acc.profile
    if backward:  # dX = dY W^T (M, K, N) where needed, dW = X^T dY (K, N, M)
        shapes = [(m, k, n, c * dx), (k, n, m, c)]
    else:
        shapes = [(m, n, k, c)]
    total = 0.0
    for mm, nn, kk, cc in shapes:
        flops = 2.0 * mm * nn * kk * cc
        if prof is not None and prof.has_gemm:
            total += float(np.sum(flops / prof.gemm_rate(mm, nn, kk)))
        else:
            total += float(np.sum(flops)) / acc.sustained_flops
    return total


def _attention_seconds(inv: OperatorInventory, acc: Any, *, backward: bool) -> float:
    if not inv.attention:
        return 0.0
    prof = acc.profile
    mult = ATTENTION_BACKWARD_FLOPS_PER_FORWARD if backward else 1.0
    total = 0.0
    for a in inv.attention:
        per_call = a.flops / a.count
        if prof is not None and prof.has_sdpa:
            rate = float(prof.sdpa_rate(per_call, backward=backward))
        else:
            rate = acc.sustained_flops
        total += mult * a.flops / rate
    return total


def _memory_seconds(inv: OperatorInventory, acc: Any, *, backward: bool = False) -> float:
    """Bytes of each memory-bound op (forward, or its backward's) / the measured throughput of
    its kind (the copy bandwidth, or the datasheet's, where the kind was not measured)."""
    prof, bw = acc.profile, bandwidth(acc)
    kinds = prof.memory_kind_bw if prof is not None else {}
    return sum(op.bytes * (op.backward_factor if backward else 1.0) / kinds.get(op.kind, bw)
               for op in inv.memory_ops)


def bandwidth(acc: Any) -> float:
    prof = acc.profile
    if prof is not None and prof.memory_bw_bytes_per_s is not None:
        return prof.memory_bw_bytes_per_s
    return acc.memory_bw_bytes_per_s


def price(inv: OperatorInventory, acc: Any, *, backward: bool) -> dict[str, float]:
    """Seconds (and kernels) of ``inv``'s forward, or of its backward."""
    mem_s = _memory_seconds(inv, acc, backward=backward)
    kernels = inv.forward_kernels * (BACKWARD_KERNELS_PER_FORWARD if backward else 1.0)
    return {"gemm_s": _gemm_seconds(inv, acc, backward=backward),
            "attention_s": _attention_seconds(inv, acc, backward=backward),
            "memory_s": mem_s, "kernels": kernels}


@functools.lru_cache(maxsize=4096)
def micro_batch_terms(cfg: ModelConfig, acc: Any, *, images: int, tp: int, recompute: Any,
                      precision: Any, ep: int | None = None) -> dict[str, dict[str, float]]:
    """{"forward", "backward", "recompute"} -> priced parts of one micro-batch on one device
    (cached: a plan's cluster table searches the same model on the same device many times;
    callers must not modify the result). ``ep``: the trainer's expert-parallel layers
    (``operators.operator_inventory``)."""
    inv = operator_inventory(cfg, images=images, tp=tp, dtype_bytes=dtype_bytes(precision),
                             ep=ep)
    return {"forward": price(inv, acc, backward=False),
            "backward": price(inv, acc, backward=True),
            "recompute": price(inv.recomputed(recompute), acc, backward=False)}


def micro_batch_arrays(cfg: ModelConfig, acc: Any, *, micro_batch: Any, tp: Any,
                       recompute_code: Any, precision: Any, ep: Any = 1) -> dict[str, np.ndarray]:
    """``{phase}_{part}`` arrays over layouts (phase: forward/backward/recompute, part:
    ``PARTS``), pricing each unique (micro-batch, tp, recompute, ep) once: the trainer's
    operators (its expert-parallel MoE layers at the layout's ep)."""
    mb, tp, rc, ep = np.broadcast_arrays(np.asarray(micro_batch), np.asarray(tp),
                                         np.asarray(recompute_code), np.asarray(ep))
    keys = np.stack([mb.ravel(), tp.ravel(), rc.ravel(), ep.ravel()], axis=1).astype(np.int64)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    names = [f"{ph}_{part}" for ph in ("forward", "backward", "recompute") for part in PARTS]
    table = np.zeros((len(uniq), len(names)))
    for i, (m, t, r, e) in enumerate(uniq):
        terms = micro_batch_terms(cfg, acc, images=int(m), tp=int(t),
                                  recompute=RECOMPUTE_ORDER[int(r)], precision=precision,
                                  ep=int(e))
        table[i] = [terms[ph][part] for ph in ("forward", "backward", "recompute")
                    for part in PARTS]
    return {name: table[inverse, j].reshape(mb.shape) for j, name in enumerate(names)}


def term_sources(acc: Any) -> dict[str, str]:
    """Where each compute term's rate comes from, for a plan's notes."""
    prof = acc.profile
    eff = f"peak x {acc.efficiency:.2f} ({'calibrated' if acc.calibrated_from else 'assumed'})"
    if prof is None:
        return {"compute": f"datasheet: hardware FLOPs at {eff}"}
    have = prof.measured()
    return {
        "gemm": "measured GEMM grid" if have["gemm"] else f"datasheet fallback: {eff}",
        "attention": "measured SDPA" if have["attention"] else f"datasheet fallback: {eff}",
        "memory_bound": ("measured by kind" if have["memory_ops"] else
                         "measured copy bandwidth" if have["memory_bandwidth"]
                         else "datasheet bandwidth"),
        "launch": (f"measured {prof.launch_s * 1e6:.1f} us per kernel ({prof.launch_mode})"
                   if have["launch"] else "not measured: no launch floor"),
        "optimizer": ("measured optimizer step" if have["optimizer"]
                      else "datasheet bandwidth"),
        "engine": ("measured per parameter tensor" if have["engine"]
                   else "not measured: no per-parameter overhead"),
    }
