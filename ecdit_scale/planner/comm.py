"""Communication per training step: bytes each device sends and the seconds it takes.

Like ``memory.py``, every formula works on numbers and on numpy arrays (one entry per layout).

Placement (DeepSpeed-MoE's default order): global rank = tp_rank + tp * (ep_rank + ep *
edp_rank): tensor parallel innermost, then expert parallel, then expert-data parallel. So
- the tp group is tp consecutive ranks (tp <= devices per node: always inside a node);
- the ep group is ep ranks at stride tp, spanning ep*tp consecutive ranks;
- the expert-data-parallel group is dp/ep ranks at stride ep*tp;
- the data-parallel group of non-expert parameters is dp ranks at stride tp (spans the world).
A group whose span fits in one node uses ``intra_node_bw``; otherwise a ring over nodes is
bottlenecked by ``inter_node_bw`` per device (one NIC per device; no hierarchical or
in-network reduction assumed). An all-to-all that spans nodes sends its off-node share over
the NIC and its on-node share over NVLink at the same time; the slower one sets the time.

Collectives (ring, bandwidth term only; latency ignored): all-reduce 2(n-1)/n x bytes,
reduce-scatter and all-gather (n-1)/n x bytes, all-to-all (n-1)/n x bytes leave each device.

Gradient synchronisation (DeepSpeed semantics), bf16 gradients, non-expert ones over dp and
expert ones over the expert-data-parallel group:
- ZeRO-0: one all-reduce per optimizer step (at the gradient-accumulation boundary);
- ZeRO-1: one reduce-scatter per step, then an all-gather of the updated bf16 parameters
  (together 2(n-1)/n, the all-reduce volume);
- ZeRO-2: a reduce-scatter in *every* micro-batch's backward (gradient hooks), then the
  all-gather after the step;
- ZeRO-3: a reduce-scatter per micro-batch, and parameter all-gathers in every forward (twice
  with full recompute) and backward; no all-gather after the step.
Expert all-to-all per MoE layer: dispatch + combine in the forward, twice more in the backward,
again with full recompute; each carries slots x d bf16 per device (slots = f_c x S per image
for expert choice), (ep-1)/ep of it leaves the device. With tp > 1 every tp rank exchanges its
full copy (experts are Megatron-sharded: expert inputs are replicated across the tp group).
Tensor parallel: an all-reduce of the micro-batch's S x d activations after self-attention,
cross-attention and FFN/MoE in the forward, and one each in the backward (Megatron).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..config import (ZERO_PARTITIONS_GRADIENTS, ZERO_PARTITIONS_OPTIMIZER,
                      ZERO_PARTITIONS_PARAMETERS, ModelConfig, Precision, Recompute)
from .flops import expert_slots_per_image
from .memory import BF16_BYTES, FP32_BYTES, RECOMPUTE_ORDER, ParamSplit


@dataclass(frozen=True, kw_only=True)
class Links:
    """The interconnect as the planner sees it (bytes/s per device, one direction)."""

    intra_node_bw: float
    inter_node_bw: float
    devices_per_node: int

    @classmethod
    def of(cls, acc: Any, devices_per_node: int | None = None) -> "Links":
        return cls(intra_node_bw=acc.intra_node_bw_bytes_per_s,
                   inter_node_bw=acc.inter_node_bw_bytes_per_s,
                   devices_per_node=devices_per_node or acc.devices_per_node)


def fits_in_node(size: Any, stride: Any, devices_per_node: int) -> Any:
    """True where a group of ``size`` ranks at ``stride`` lies inside one node."""
    span = np.asarray(size) * np.asarray(stride)
    return (span <= devices_per_node) & (devices_per_node % span == 0)


def group_bandwidth(size: Any, stride: Any, links: Links) -> Any:
    return np.where(fits_in_node(size, stride, links.devices_per_node),
                    links.intra_node_bw, links.inter_node_bw)


def ring_seconds(bytes_: Any, size: Any, stride: Any, links: Links, *, factor: float) -> Any:
    """factor 2 for all-reduce, 1 for reduce-scatter / all-gather: factor (n-1)/n bytes / bw."""
    n = np.asarray(size, dtype=float)
    return factor * (n - 1) / n * np.asarray(bytes_) / group_bandwidth(size, stride, links)


def all_to_all_seconds(bytes_: Any, size: Any, stride: Any, links: Links) -> Any:
    """Each device sends (n-1)/n of ``bytes_``; peers on its node get theirs over NVLink."""
    n = np.asarray(size, dtype=float)
    local = np.minimum(n, np.maximum(1.0, links.devices_per_node // np.asarray(stride)))
    local = np.where(fits_in_node(size, stride, links.devices_per_node), n, local)
    b = np.asarray(bytes_)
    intra = b * (local - 1) / n / links.intra_node_bw
    inter = b * (n - local) / n / links.inter_node_bw
    return np.maximum(intra, inter)


@dataclass(frozen=True, kw_only=True)
class CommBreakdown:
    """Per device, per optimizer step (all micro-batches). Seconds are raw link time; how much
    of it hides behind compute is decided in ``layouts.step_time``."""

    a2a_bytes: float  # expert dispatch + combine, forward, backward (and recompute)
    a2a_s: float
    tp_bytes: float  # Megatron all-reduces of block outputs
    tp_s: float
    grad_reduce_bytes: float  # all-reduce (ZeRO-0) / reduce-scatter (ZeRO-1/2/3) of gradients
    grad_reduce_s: float
    grad_reduce_per_micro_s: float  # one occurrence (ZeRO-2/3 reduce every micro-batch)
    param_allgather_bytes: float  # ZeRO-1/2: updated bf16 params after the optimizer step
    param_allgather_s: float
    zero3_gather_bytes: float  # ZeRO-3: parameter all-gathers in forward and backward
    zero3_gather_s: float
    zero3_gather_per_micro_s: float

    @property
    def grad_sync_s(self) -> float:
        return self.grad_reduce_s + self.param_allgather_s

    @property
    def total_bytes(self) -> float:
        return (self.a2a_bytes + self.tp_bytes + self.grad_reduce_bytes
                + self.param_allgather_bytes + self.zero3_gather_bytes)

    def to_dict(self) -> dict[str, float]:
        out = {f.name: float(getattr(self, f.name)) for f in fields(self)}
        out.update(grad_sync_s=float(self.grad_sync_s), total_bytes=float(self.total_bytes))
        return out


RECOMPUTE_FULL_CODE = RECOMPUTE_ORDER.index(Recompute.FULL)


def forward_passes(recompute_code: Any) -> Any:
    """Forward passes per micro-batch: 2 with full recompute (the backward reruns it)."""
    return np.where(np.asarray(recompute_code) == RECOMPUTE_FULL_CODE, 2, 1)


def comm_arrays(cfg: ModelConfig, split: ParamSplit, links: Links, *, dp: Any, ep: Any, tp: Any,
                zero: Any, micro_batch: Any, grad_accum: Any, recompute_code: Any,
                precision: Precision) -> dict[str, Any]:
    """Every CommBreakdown field as arrays over layouts (recompute_code indexes
    ``memory.RECOMPUTE_ORDER``)."""
    dp, ep, tp = np.asarray(dp), np.asarray(ep), np.asarray(tp)
    zero, mb, ga = np.asarray(zero), np.asarray(micro_batch), np.asarray(grad_accum)
    w = BF16_BYTES if Precision(precision) is Precision.BF16 else FP32_BYTES
    fwd = forward_passes(recompute_code)
    S, d = cfg.tokens_per_image, cfg.hidden_size

    # expert all-to-all: per MoE layer and forward, dispatch + combine of slots x d each;
    # the backward sends the gradients of both back (2 more). Inside the ep group only.
    slots = expert_slots_per_image(cfg) if cfg.ffn.is_moe else 0.0
    a2a_one = w * slots * d * mb  # one all-to-all, bytes per device (before the (n-1)/n)
    a2a_count = cfg.num_moe_layers * (2 * fwd + 2) * ga
    a2a_s = a2a_count * all_to_all_seconds(a2a_one, ep, tp, links)
    a2a_bytes = a2a_count * a2a_one * (ep - 1) / ep

    # tensor parallel: one all-reduce of S x d per attention, cross-attention and FFN/MoE
    # output in forward, one each for the input gradients in backward (Megatron, Sec. 3).
    per_block = 2 + (1 if cfg.has_cross_attention else 0)
    tp_count = cfg.depth * per_block * (fwd + 1) * ga
    tp_one = w * S * d * mb
    tp_s = tp_count * ring_seconds(tp_one, tp, 1, links, factor=2.0)
    tp_bytes = tp_count * 2 * (tp - 1) / tp * tp_one

    # gradients: non-expert over dp (stride tp), expert over dp/ep (stride ep*tp)
    g_ne = w * split.non_expert_per_device(tp)
    g_ex = w * split.expert_per_device(ep, tp)
    edp = dp // ep
    is0, is3 = zero < ZERO_PARTITIONS_OPTIMIZER, zero >= ZERO_PARTITIONS_PARAMETERS
    factor = np.where(is0, 2.0, 1.0)  # all-reduce vs reduce-scatter
    red_once = (ring_seconds(g_ne, dp, tp, links, factor=1.0)
                + ring_seconds(g_ex, edp, ep * tp, links, factor=1.0)) * factor
    red_bytes_once = (g_ne * (dp - 1) / dp + g_ex * (edp - 1) / edp) * factor
    red_times = np.where(zero >= ZERO_PARTITIONS_GRADIENTS, ga, 1)  # ZeRO-2/3 reduce in every backward (hooks)
    ag_once = (ring_seconds(g_ne, dp, tp, links, factor=1.0)
               + ring_seconds(g_ex, edp, ep * tp, links, factor=1.0))
    ag_bytes_once = g_ne * (dp - 1) / dp + g_ex * (edp - 1) / edp
    post_step = ~is0 & ~is3  # ZeRO-1/2 all-gather the updated parameter partitions
    gathers = np.where(is3, (fwd + 1) * ga, 0)  # ZeRO-3: every forward and the backward
    return dict(
        a2a_bytes=a2a_bytes, a2a_s=a2a_s, tp_bytes=tp_bytes, tp_s=tp_s,
        grad_reduce_bytes=red_times * red_bytes_once, grad_reduce_s=red_times * red_once,
        grad_reduce_per_micro_s=red_once,
        param_allgather_bytes=np.where(post_step, ag_bytes_once, 0.0),
        param_allgather_s=np.where(post_step, ag_once, 0.0),
        zero3_gather_bytes=gathers * ag_bytes_once, zero3_gather_s=gathers * ag_once,
        zero3_gather_per_micro_s=np.where(is3, ag_once, 0.0),
    )


def comm_breakdown(cfg: ModelConfig, layout: Any, acc: Any, *, grad_accum: int,
                   precision: Precision = Precision.BF16,
                   devices_per_node: int | None = None) -> CommBreakdown:
    """The communication of one ``ParallelLayout`` (same formulas as the vectorised search)."""
    arrays = comm_arrays(cfg, ParamSplit.of(cfg), Links.of(acc, devices_per_node),
                         dp=layout.dp, ep=layout.ep, tp=layout.tp, zero=layout.zero,
                         micro_batch=layout.micro_batch, grad_accum=grad_accum,
                         recompute_code=RECOMPUTE_ORDER.index(Recompute(layout.recompute)),
                         precision=precision)
    return CommBreakdown(**{k: float(v) for k, v in arrays.items()})
