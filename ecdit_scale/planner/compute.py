"""Compute seconds of one micro-batch on one device, operator class by operator class, priced
from a measured device profile (``device_profile.DeviceProfile``); no torch.

- GEMM: 2MNK / rate(M, N, K), the rate interpolated from the profile's measured GEMM grid;
  the backward prices dX (M, K, N) and dW (K, N, M) by their own shapes.
- attention: forward FLOPs / measured SDPA forward rate; backward 2 x forward FLOPs (dQ, dK, dV
  and the recomputed scores) at the measured SDPA backward rate. On a GPU the flash kernel
  computes the head dim rounded up to its compiled sizes (``flash_head_dim``): 72 runs as 96.
- memory-bound: bytes / the measured throughput of the op's kind (copy, elementwise,
  activation, norm; else the copy bandwidth); the backward moves
  ``operators.BACKWARD_BYTES_PER_FORWARD`` x each op's forward bytes.
- kernels: forward ops + ``BACKWARD_KERNELS_PER_FORWARD`` x as many in the backward.

Precision (issue 19): GEMM and SDPA rates measured in the profile's dtype are scaled by the
device's datasheet peak of the run's math over that dtype's (``Accelerator.precision_scale``:
A100 fp32 = 19.5 / 312 of bf16, TF32 = 156 / 312), but an fp32 GEMM on NVIDIA's CUDA cores
(``Accelerator.fp32_gemm`` = vector) runs at the fraction of the fp32 peak that cuBLAS SGEMM
reaches on an A100 at its size (``vector_gemm``, a public measurement), not at the tensor
cores' fraction; activations are 2 bytes in bf16/fp16, 4 in tf32/fp32. A catalog device never
measured carries a profile derived from the measured H200 one (``derived_profile.py``); the
setup the user states (``run_setup.py``: attention kernel, frozen VAE / text encoder in the
loop, compile) rides on ``acc.setup``.

Where the profile lacks a measurement the term falls back to the datasheet: GEMM and attention
at peak x ``acc.efficiency``, bandwidth from the catalog (``sources`` says which was used).

The inventory depends only on (micro-batch, tp, recompute, ep), so a search over thousands of
layouts prices the few unique tuples and broadcasts (``micro_batch_arrays``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..config import HALF_PRECISIONS, ModelConfig, Precision
from .derived_profile import derived_note, is_derived
from .device_profile import ENGINE_SETTINGS, MEMORY_KIND_TRAFFIC
from .memory import RECOMPUTE_ORDER
from .operators import (
    BACKWARD_BYTES_PER_FORWARD,
    BACKWARD_KERNELS_PER_FORWARD,
    OperatorInventory,
    operator_inventory,
)
from .run_setup import COMPILE_FUSION, apply_kernels, frozen_inventory
from .vector_gemm import SOURCE as VECTOR_SOURCE
from .vector_gemm import vector_fraction

ATTENTION_BACKWARD_FLOPS_PER_FORWARD = 2.0
# the head dims FlashAttention-2 compiles kernels for (``flash_head_dim``)
FLASH_HEAD_DIMS = (32, 64, 96, 128, 160, 192, 224, 256)


@dataclass(frozen=True)
class OperatorSeconds:
    """One pass (a forward, a backward or a recompute) of a micro-batch on one device, by
    operator class: seconds, and the kernels it launches. Numbers, or arrays over layouts."""

    gemm_s: Any
    attention_s: Any
    memory_s: Any  # the memory-bound ops
    kernels: Any

    @property
    def device_s(self) -> Any:
        """The device's busy time: every operator class, one after the other."""
        return self.gemm_s + self.attention_s + self.memory_s

    def __add__(self, other: OperatorSeconds) -> OperatorSeconds:
        return OperatorSeconds(*(getattr(self, f.name) + getattr(other, f.name)
                                 for f in fields(self)))


@dataclass(frozen=True)
class MicroBatchCost:
    """A micro-batch's three passes on one device."""

    forward: OperatorSeconds
    backward: OperatorSeconds
    recompute: OperatorSeconds  # the forward work the recompute policy repeats

    PHASES = ("forward", "backward", "recompute")

    def passes(self) -> tuple[OperatorSeconds, ...]:
        return (self.forward, self.backward, self.recompute)

    @property
    def total(self) -> OperatorSeconds:
        return self.forward + self.backward + self.recompute


def dtype_bytes(precision: Any) -> int:
    return 2 if Precision(precision) in HALF_PRECISIONS else 4


def _scale(acc: Any, precision: Any) -> float:
    """The run's math rate over the profile's measured dtype's, from the datasheet peaks."""
    prof = acc.profile
    if precision is None or not hasattr(acc, "precision_scale"):
        return 1.0
    return acc.precision_scale(Precision(precision).value, prof.dtype if prof else "bf16")


def _fallback_flops(acc: Any, precision: Any) -> float:
    if precision is None or not hasattr(acc, "peak_flops_for"):
        return acc.sustained_flops
    return acc.peak_flops_for(Precision(precision).value) * acc.efficiency


def _gemm_seconds(inv: OperatorInventory, acc: Any, *, backward: bool,
                  precision: Any = None) -> float:
    """Each GEMM's FLOPs / the profile's rate at its shape. A batched GEMM (``Gemm.batch`` > 1:
    the experts' bmm) runs at the measured bmm rate of one problem's shape where the profile
    has one; else it is priced as one GEMM of all its problems' rows (no bmm measured: the
    derived GPU profiles, profiles before 2026-12-06). No GEMM takes less than its operands'
    and result's bytes at the profile's copy bandwidth (a roofline floor): below a grid's
    smallest M the rate is clamped at that M's, and a GEMM of a few rows (the adaLN
    modulation at M = micro-batch, 6d x d weights per block) streams its weights whatever its
    FLOPs; the GPU grids measured so far start at M = 64. An fp32 run's GEMMs on a GPU's
    vector units are priced at the published SGEMM curve instead (``_gemm_rates``)."""
    if not inv.gemms:
        return 0.0
    m, n, k, c, dx, b = (np.array([getattr(g, f) for g in inv.gemms], dtype=float)
                         for f in ("m", "n", "k", "count", "input_grad", "batch"))
    prof = acc.profile
    if prof is None or not prof.has_gemm:
        flops = 2.0 * m * n * k * b * c * ((1.0 + dx) if backward else 1.0)
        return float(np.sum(flops)) / _fallback_flops(acc, precision)
    batched = np.flatnonzero((b > 1) & prof.has_bmm)
    whole = m * b  # one GEMM of all the problems' rows, but where bmm was measured
    rows = whole.copy()
    rows[batched] = m[batched]
    # a batched SGEMM on the vector units is read off the curve at all its problems' rows
    if backward:  # dX = dY W^T (M, K, N) where needed, dW = X^T dY (K, N, M)
        shapes = [(rows, k, n, c * dx), (k, n, rows, c)]
        curves = [(whole, k, n), (k, n, whole)]
    else:
        shapes = [(rows, n, k, c)]
        curves = [(whole, n, k)]
    # each problem's own (M, N, K), for the bytes: the experts' weights are b matrices
    problems = [(m, k, n), (k, n, m)] if backward else [(m, n, k)]
    elem = dtype_bytes(precision if precision is not None else prof.dtype)
    bw = bandwidth(acc)
    total = 0.0
    for (mm, nn, kk, cc), curve, (pm, pn, pk) in zip(shapes, curves, problems, strict=True):
        rate = _gemm_rates(acc, mm, nn, kk, precision, batched, curve)
        floor = b * (pm * pk + pk * pn + pm * pn) * elem / bw
        total += float(np.sum(cc * np.maximum(2.0 * m * n * k * b / rate, floor)))
    return total


def _gemm_rates(acc: Any, m: Any, n: Any, k: Any, precision: Any,
                batched: Any = None, curve: Any = None) -> Any:
    """FLOP/s of (M, N, K) GEMMs in ``precision``'s math (arrays; ``batched``: the indices
    timed as the profile's bmm): the profile's measured rate x the datasheet ratio of the
    maths, but an fp32 run on a GPU whose fp32 is vector math (``Accelerator.fp32_gemm``) and
    whose profile measured a tensor-core math, at the published SGEMM curve (``vector_gemm``)
    read at ``curve``'s shapes (a batched problem's all rows; default the GEMMs' own)."""
    prof = acc.profile
    rate = prof.gemm_rate_memo(m, n, k)
    if batched is not None and batched.size:
        rate[batched] = prof.gemm_rate_memo(m[batched], n[batched], k[batched], batched=True)
    if _vector_fp32(acc, precision):  # never faster than the same GEMM in bf16, batched where
        # bf16 would run batched: at a few hundred rows both are launch-bound, and the curve
        # was timed without the launch
        cm, cn, ck = curve if curve is not None else (m, n, k)
        return np.minimum(acc.peak_flops_for("fp32") * vector_fraction(cm, cn, ck),
                          rate * _scale(acc, Precision.BF16))
    return rate * _scale(acc, precision)


def _vector_fp32(acc: Any, precision: Any) -> bool:
    """Whether ``precision``'s GEMMs run on the fp32 vector units of a device whose profile
    timed a tensor-core math (so that nothing in it measured them)."""
    return (precision is not None and Precision(precision) is Precision.FP32
            and getattr(acc, "fp32_gemm", "matrix") == "vector"
            and acc.profile.dtype in ("bf16", "fp16"))


def gemm_flops_per_s(acc: Any, m: int, n: int, k: int, precision: Any) -> float:
    """The rate the plan prices one (M, N, K) GEMM at in ``precision``'s math on ``acc`` (no
    roofline floor): what ``bench/gemm_precisions.py`` sets its measurements beside."""
    prof = acc.profile
    if prof is None or not prof.has_gemm:
        return _fallback_flops(acc, precision)
    arr = [np.array([float(x)]) for x in (m, n, k)]
    return float(_gemm_rates(acc, *arr, precision)[0])


def flash_head_dim(head_dim: float) -> float:
    """The head dim FlashAttention-2's kernels compute for ``head_dim``: the next of their
    compiled sizes (Dao-AILab/flash-attention csrc/flash_attn/src/static_switch.h
    HEADDIM_SWITCH, vendored by torch's flash SDPA backend); beyond 256 flash does not run and
    nothing is padded. DiT-XL/2's 72 runs the 96 kernel: a third more work per FLOP counted."""
    for size in FLASH_HEAD_DIMS:
        if head_dim <= size:
            return float(size)
    return float(head_dim)


def _flash_padding(acc: Any, precision: Any, head_dim: float) -> float:
    """Work per counted attention FLOP over the profile's own (1 where nothing pads): on a GPU
    profile, where SDPA runs the flash kernel (flash attention stated, or none: torch's
    default for a half-precision run), both the run's and the measured head dims are priced
    at their padded sizes."""
    prof = acc.profile
    setup = getattr(acc, "setup", None)
    half = precision is None or Precision(precision) in HALF_PRECISIONS
    if (prof is None or not prof.pads_flash_head_dim or not half
            or (setup is not None and setup.attention.value != "flash")):
        return 1.0
    measured = prof.sdpa_head_dim or head_dim
    return (flash_head_dim(head_dim) / head_dim) / (flash_head_dim(measured) / measured)


def _attention_seconds(inv: OperatorInventory, acc: Any, *, backward: bool,
                       precision: Any = None) -> float:
    if not inv.attention:
        return 0.0
    prof = acc.profile
    mult = ATTENTION_BACKWARD_FLOPS_PER_FORWARD if backward else 1.0
    total = 0.0
    for a in inv.attention:
        work = a.flops * _flash_padding(acc, precision, a.head_dim)  # what the kernel computes
        if prof is not None and prof.has_sdpa:
            rate = float(prof.sdpa_rate(work / a.count, backward=backward)) * _scale(acc,
                                                                                   precision)
        else:
            rate = _fallback_flops(acc, precision)
        total += mult * work / rate
    return total


def _memory_seconds(inv: OperatorInventory, acc: Any, *, backward: bool = False) -> float:
    """Bytes of each memory-bound op (forward, or its backward's) / the measured throughput of
    its kind (the copy bandwidth, or the datasheet's, where the kind was not measured). An op
    that moves more bytes per kernel than its kind's timed call (``memory_ops_tensor_bytes``)
    streams from memory, as that call, timed in cache, did not: it runs at no more than the
    profile's large-copy bandwidth."""
    prof, bw = acc.profile, bandwidth(acc)
    kinds = prof.memory_kind_bw if prof is not None else {}
    timed = prof.memory_ops_tensor_bytes if prof is not None else None
    total = 0.0
    for op in inv.memory_ops:
        rate = kinds.get(op.kind, bw)
        if timed is not None and op.kernels > 0 and \
                op.bytes / op.kernels > timed * MEMORY_KIND_TRAFFIC.get(op.kind, 2.0):
            rate = min(rate, bw)
        total += op.bytes * (BACKWARD_BYTES_PER_FORWARD if backward else 1.0) / rate
    return total


def bandwidth(acc: Any) -> float:
    prof = acc.profile
    if prof is not None and prof.memory_bw_bytes_per_s is not None:
        return prof.memory_bw_bytes_per_s
    return acc.memory_bw_bytes_per_s


def price(inv: OperatorInventory, acc: Any, *, backward: bool,
          precision: Any = None) -> OperatorSeconds:
    """Seconds (and kernels) of ``inv``'s forward, or of its backward, in ``precision``'s math
    (None: the profile's own dtype)."""
    return OperatorSeconds(
        gemm_s=_gemm_seconds(inv, acc, backward=backward, precision=precision),
        attention_s=_attention_seconds(inv, acc, backward=backward, precision=precision),
        memory_s=_memory_seconds(inv, acc, backward=backward),
        kernels=inv.forward_kernels * (BACKWARD_KERNELS_PER_FORWARD if backward else 1.0))


def frozen_precision(precision: Any) -> Precision:
    """The math frozen encoders run in: the run's, except that fp32 runs convolve in TF32
    (``torch.backends.cudnn.allow_tf32`` is True by default; matmul's flag is not)."""
    p = Precision(precision)
    return Precision.TF32 if p is Precision.FP32 else p


@functools.lru_cache(maxsize=4096)
def micro_batch_terms(cfg: ModelConfig, acc: Any, *, images: int, tp: int, recompute: Any,
                      precision: Any, ep: int | None = None) -> MicroBatchCost:
    """The priced passes of one micro-batch on one device (cached: a plan's cluster table
    searches the same model on the same device many times). ``ep``: the trainer's
    expert-parallel layers (``operators.operator_inventory``)."""
    a = dtype_bytes(precision)
    setup = getattr(acc, "setup", None)
    inv = apply_kernels(operator_inventory(cfg, images=images, tp=tp, dtype_bytes=a, ep=ep),
                        setup, dtype_bytes=a)
    forward = price(inv, acc, backward=False, precision=precision)
    frozen = frozen_inventory(setup, images=images, resolution=cfg.image_size,
                              dtype_bytes=dtype_bytes(frozen_precision(precision)))
    if frozen is not None:  # forward only, no grad: added to the micro-batch's forward
        extra = price(frozen, acc, backward=False, precision=frozen_precision(precision))
        forward = forward + extra  # every rank encodes its images
    return MicroBatchCost(
        forward=forward, backward=price(inv, acc, backward=True, precision=precision),
        recompute=price(inv.recomputed(recompute), acc, backward=False, precision=precision))


def micro_batch_arrays(cfg: ModelConfig, acc: Any, *, micro_batch: Any, tp: Any,
                       recompute_code: Any, precision: Any, ep: Any = 1) -> MicroBatchCost:
    """The MicroBatchCost of every layout (arrays over layouts), pricing each unique
    (micro-batch, tp, recompute, ep) once: the trainer's operators (its expert-parallel MoE
    layers at the layout's ep)."""
    mb, tp, rc, ep = np.broadcast_arrays(np.asarray(micro_batch), np.asarray(tp),
                                         np.asarray(recompute_code), np.asarray(ep))
    keys = np.stack([mb.ravel(), tp.ravel(), rc.ravel(), ep.ravel()], axis=1).astype(np.int64)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    parts = [f.name for f in fields(OperatorSeconds)]
    # table[unique layout, pass, part]
    table = np.zeros((len(uniq), len(MicroBatchCost.PHASES), len(parts)))
    for i, (m, t, r, e) in enumerate(uniq):
        cost = micro_batch_terms(cfg, acc, images=int(m), tp=int(t),
                                 recompute=RECOMPUTE_ORDER[int(r)], precision=precision,
                                 ep=int(e))
        table[i] = [[getattr(one, part) for part in parts] for one in cost.passes()]

    def one_pass(j: int) -> OperatorSeconds:
        return OperatorSeconds(*(table[inverse, j, k].reshape(mb.shape)
                                 for k in range(len(parts))))

    return MicroBatchCost(*(one_pass(j) for j in range(len(MicroBatchCost.PHASES))))


def term_sources(acc: Any, precision: Any = None) -> dict[str, str]:
    """Where each compute term's rate comes from, for a plan's notes (``precision``: the
    run's, where its GEMMs are priced otherwise than the profile's)."""
    prof = acc.profile
    eff = f"peak x {acc.efficiency:.2f} ({'calibrated' if acc.calibrated_from else 'assumed'})"
    if prof is None:
        return {"compute": f"datasheet: hardware FLOPs at {eff}"}
    have = prof.measured()
    setup = getattr(acc, "setup", None)
    extra = {} if setup is None else {"setup": setup.describe() + (
        f" (compile: memory-bound bytes and launches x {COMPILE_FUSION}, an assumption)"
        if setup.compiled else "")}
    if _vector_fp32(acc, precision):
        extra["fp32_gemm"] = ("fp32 GEMMs on the CUDA cores at the fraction of the fp32 peak "
                              f"cuBLAS SGEMM reaches by size ({VECTOR_SOURCE}); not measured "
                              "on this device")
    if is_derived(prof):
        return {"compute": derived_note(prof),
                "precision": "GEMM/SDPA rates x datasheet peak of the run's math / bf16 peak",
                "peaks": ", ".join(f"{k} {v / 1e12:g} TFLOP/s"
                                   for k, v in getattr(acc, "peak_flops", ()))
                + (f" ({acc.citations})" if getattr(acc, "citations", "") else ""),
                **extra}
    return {
        **extra,
        "gemm": "measured GEMM grid" if have["gemm"] else f"datasheet fallback: {eff}",
        "batched_gemm": ("measured bmm grid, at each expert's rows" if have["batched_gemm"]
                         else "not measured: the experts' bmm as one GEMM of all their rows"),
        "attention": "measured SDPA" if have["attention"] else f"datasheet fallback: {eff}",
        "memory_bound": ("measured by kind" if have["memory_ops"] else
                         "measured copy bandwidth" if have["memory_bandwidth"]
                         else "datasheet bandwidth"),
        "launch": (f"measured {prof.launch_s * 1e6:.1f} us per kernel ({prof.launch_mode})"
                   if have["launch"] else "not measured: no launch floor"),
        "host": ("the model's own code timed per kernel, by FFN kind and recompute policy "
                 "(in place of launch's)" if have["host"]
                 else "not measured: launch's per-kernel cost for the model's code"),
        "optimizer": ("measured optimizer step" if have["optimizer"]
                      else "datasheet bandwidth"),
        "engine": ("measured per parameter tensor" if have["engine"]
                   else "not measured: no per-parameter overhead"),
        "deepspeed_engine": (
            "measured by ZeRO stage, " + (
                "in each setting a run gets (MoE model, data-parallel ranks)"
                if all(have[f"deepspeed_engine_{s}"] for s in ENGINE_SETTINGS)
                else "a dense model's on one rank for every run")
            if have["deepspeed_engine"] else "not measured: no engine term"),
    }
