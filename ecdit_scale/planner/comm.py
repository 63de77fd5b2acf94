"""Communication per training step: which collectives run, how many bytes, how many seconds.

Every formula works on numbers and on numpy arrays (one entry per layout); how much of each
collective hides behind compute is decided in ``step_time.py``. The derivations (placement,
ring and all-to-all bandwidth, NCCL latency, message size, the collectives DeepSpeed 0.19.8
issues per step) are in ``DERIVATIONS.md``, sections "Placement" to "Collectives per step".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..config import ModelConfig, Precision, Recompute
from ..zero import ZERO_PARTITIONS_GRADIENTS, ZERO_PARTITIONS_OPTIMIZER, ZERO_PARTITIONS_PARAMETERS
from .derivations import assumptions
from .flops import expert_slots_per_image
from .memory import BF16_BYTES, FP32_BYTES, RECOMPUTE_ORDER, ZERO_BUCKET_ELEMENTS, ParamSplit
from .placement import Placement, group_shapes, placement_code

# NCCL's cost model, ring algorithm / Simple protocol (NVIDIA/nccl src/graph/tuning.cc: baseLat
# and hwLat[NVLINK|NET] for Ring/Simple; the numbers of the 2.1x releases, others list up to
# 14 us per network hop). The tree all-reduce is priced with the same per-hop numbers (a
# simplification: NCCL keeps a separate tree table). Seconds; to be replaced by a profile.
NCCL_BASE_LATENCY_S = 8.4e-6
NVLINK_HOP_LATENCY_S = 3.4e-6
NET_HOP_LATENCY_S = 9.6e-6
# ASSUMPTIONS until profiled: the message size that runs at half a link's bandwidth
# (nccl-tests curves on NVLink 4 / NDR InfiniBand reach half of peak bus bandwidth for
# messages of a few hundred KiB per peer).
NVLINK_HALF_BW_BYTES = 128 * 1024
NET_HALF_BW_BYTES = 256 * 1024
# DeepSpeed 0.19.8 buckets: engine.py MEMORY_OPT_ALLREDUCE_SIZE (ZeRO-0's all-reduce);
# ZeRO-1/2/3 use the reduce/all-gather bucket sizes written into ds_config.json.
ZERO0_ALLREDUCE_BUCKET_ELEMENTS = 500_000_000

COMM_ASSUMPTIONS = (
    *assumptions("Placement"), *assumptions("Bandwidth"),
    *assumptions("Latency and message size", base_us=NCCL_BASE_LATENCY_S * 1e6,
                 nvlink_us=NVLINK_HOP_LATENCY_S * 1e6, net_us=NET_HOP_LATENCY_S * 1e6,
                 nvlink_half_kib=NVLINK_HALF_BW_BYTES // 1024,
                 net_half_kib=NET_HALF_BW_BYTES // 1024),
    *assumptions("Collectives per step"),
)

@dataclass(frozen=True, kw_only=True)
class Links:
    """The interconnect as the planner sees it: bandwidths in bytes/s per device and direction
    (``nic_bw`` is one device's NIC; a node has one per device), latencies in seconds."""

    intra_node_bw: float
    nic_bw: float
    devices_per_node: int
    base_latency_s: float = NCCL_BASE_LATENCY_S
    nvlink_hop_s: float = NVLINK_HOP_LATENCY_S
    net_hop_s: float = NET_HOP_LATENCY_S
    nvlink_half_bytes: float = NVLINK_HALF_BW_BYTES
    net_half_bytes: float = NET_HALF_BW_BYTES

    # the all-gathers' and the all-to-alls' own links where the profile measured them
    # (``gathering``, ``exchanging``); None: the same links as the all-reduces
    gather: Links | None = None
    exchange: Links | None = None
    # the calls a profile timed on these links (``LinkFit.timed``: link volume per call and
    # seconds, ascending): a call within one node is priced at them (``timed_call_s``)
    timed: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @classmethod
    def of(cls, acc: Any, devices_per_node: int | None = None) -> Links:
        """The catalog's links; a profile's measured all-reduce (``ecdit-scale profile
        --nproc N``) replaces the intra-node bandwidth, latency (all of it in the base term,
        measured at N ranks) and half-bandwidth size, and its measured all-gather and
        all-to-all do the same for the all-gathers (gloo's run at about half the all-reduce's
        bus bandwidth) and the all-to-alls (gloo's latency on 2 CPU ranks: 0.1-0.4 ms against
        the all-reduce's 0.4-1.3 ms)."""
        links = cls(intra_node_bw=acc.intra_node_bw_bytes_per_s,
                    nic_bw=acc.inter_node_bw_bytes_per_s,
                    devices_per_node=devices_per_node or acc.devices_per_node)
        fits = getattr(getattr(acc, "profile", None), "links", {})
        measured = (links if fits.get("all_reduce") is None
                    else links._measured(fits["all_reduce"]))
        gather, exchange = fits.get("all_gather"), fits.get("all_to_all")
        return dataclasses.replace(
            measured, gather=None if gather is None else links._measured(gather),
            exchange=None if exchange is None else links._measured(exchange))

    def _measured(self, fit: Any) -> Links:
        return dataclasses.replace(self, intra_node_bw=fit.bw_bytes_per_s,
                                   base_latency_s=fit.latency_s, nvlink_hop_s=0.0,
                                   nvlink_half_bytes=fit.half_bytes,
                                   timed=fit.timed)

    def timed_call_s(self, volume: Any) -> Any:
        """Seconds of one call that puts ``volume`` bytes on each rank's link, read off the
        calls the profile timed: linear between them, the smallest call's time below them
        (latency), the last two's slope beyond them (bandwidth)."""
        v, t = (np.asarray(a, dtype=float) for a in self.timed)
        x = np.asarray(volume, dtype=float)
        slope = max((t[-1] - t[-2]) / (v[-1] - v[-2]), 0.0)
        return np.where(x > v[-1], t[-1] + (x - v[-1]) * slope, np.interp(x, v, t))

    def timed_where(self, fitted: Any, volume: Any, size: Any, stride: Any,
                    calls: Any) -> Any:
        """``fitted`` seconds of ``calls`` calls, or, where the group is on one node (the NIC
        was not timed), the timed calls' seconds at each call's ``volume`` bytes per rank's
        link. Only for links that hold timed calls (the callers check, sparing the search's
        catalog pricing the volume)."""
        n = np.asarray(size, dtype=float)
        calls = np.asarray(calls, dtype=float)
        timed = calls * self.timed_call_s(np.asarray(volume, dtype=float)
                                          / np.maximum(calls, 1.0))
        one_node = nodes_spanned(size, stride, self.devices_per_node) <= 1
        return np.where((n > 1) & one_node, timed, fitted)

    def gathering(self) -> Links:
        """The links an all-gather runs over."""
        return self.gather or self

    def exchanging(self) -> Links:
        """The links an all-to-all runs over."""
        return self.exchange or self


# ---------------------------------------------------------------------------------------------
# Topology
# ---------------------------------------------------------------------------------------------


def fits_in_node(size: Any, stride: Any, devices_per_node: int) -> Any:
    """True where a group of ``size`` ranks at ``stride`` lies inside one node."""
    span = np.asarray(size) * np.asarray(stride)
    return (span <= devices_per_node) & (devices_per_node % span == 0)


def ranks_per_node(size: Any, stride: Any, devices_per_node: int) -> Any:
    """m: the group's ranks on each node it touches (a stride that does not divide the node
    is rounded down: an approximation for odd node sizes)."""
    size, stride = np.asarray(size), np.asarray(stride)
    spread = np.clip(devices_per_node // stride, 1, None)
    return np.where(fits_in_node(size, stride, devices_per_node), size,
                    np.minimum(size, spread))


def nodes_spanned(size: Any, stride: Any, devices_per_node: int) -> Any:
    m = ranks_per_node(size, stride, devices_per_node)
    return np.maximum(1, np.asarray(size) // m)


def link_efficiency(message_bytes: Any, half_bytes: float) -> Any:
    """Fraction of a link's bandwidth a message of this size gets: b / (b + half)."""
    b = np.asarray(message_bytes, dtype=float)
    return np.where(b > 0, b / np.maximum(b + half_bytes, 1e-300), 1.0)


# ---------------------------------------------------------------------------------------------
# Collectives
# ---------------------------------------------------------------------------------------------


def ring_latency_s(size: Any, stride: Any, links: Links, *, factor: float) -> Any:
    """One ring collective's latency (NCCL tuning model); for an all-reduce (factor 2) the
    tree's when that is lower."""
    n = np.asarray(size, dtype=float)
    m = ranks_per_node(size, stride, links.devices_per_node)
    nodes = nodes_spanned(size, stride, links.devices_per_node)
    steps, inter = factor * (n - 1), factor * (nodes - 1)
    ring = links.base_latency_s + (steps - inter) * links.nvlink_hop_s + inter * links.net_hop_s
    if factor == 2.0:
        tree = links.base_latency_s + 2 * ((m - 1) * links.nvlink_hop_s
                                           + np.log2(nodes) * links.net_hop_s)
        ring = np.minimum(ring, tree)
    return np.where(n > 1, ring, 0.0)


def ring_bandwidth_s(bytes_: Any, size: Any, stride: Any, links: Links, *, factor: float,
                     calls: Any = 1) -> Any:
    """Bandwidth term of ``calls`` ring collectives that together carry ``bytes_`` per device:
    factor (n-1)/n x bytes at min(NVLink, m x NIC), each link derated for the per-step
    message (one call's bytes / n)."""
    n = np.asarray(size, dtype=float)
    m = ranks_per_node(size, stride, links.devices_per_node)
    nodes = nodes_spanned(size, stride, links.devices_per_node)
    b = np.asarray(bytes_, dtype=float)
    volume = factor * (n - 1) / n * b
    step_bytes = b / np.maximum(np.asarray(calls, dtype=float), 1.0) / n
    nvlink = volume / (links.intra_node_bw * link_efficiency(step_bytes, links.nvlink_half_bytes))
    net = volume / (m * links.nic_bw * link_efficiency(step_bytes, links.net_half_bytes))
    return np.maximum(np.where(m > 1, nvlink, 0.0), np.where(nodes > 1, net, 0.0))


def ring_seconds(bytes_: Any, size: Any, stride: Any, links: Links, *, factor: float,
                 calls: Any = 1) -> Any:
    """``calls`` ring collectives carrying ``bytes_`` per device in all: bandwidth + latency.
    factor 2 for all-reduce, 1 for reduce-scatter / all-gather. On links a profile timed, a
    call within one node costs what the timed calls cost at its link volume
    (``Links.timed_where``)."""
    calls = np.asarray(calls, dtype=float)
    fitted = (ring_bandwidth_s(bytes_, size, stride, links, factor=factor, calls=calls)
              + calls * ring_latency_s(size, stride, links, factor=factor))
    if links.timed is None:
        return fitted
    n = np.asarray(size, dtype=float)
    volume = factor * (n - 1) / np.maximum(n, 1.0) * np.asarray(bytes_, dtype=float)
    return links.timed_where(fitted, volume, size, stride, calls)


def all_to_all_seconds(bytes_: Any, size: Any, stride: Any, links: Links, *,
                       calls: Any = 1) -> Any:
    """``calls`` all-to-alls, each device holding ``bytes_ / calls`` per call: each of the n-1
    peers gets 1/n of it; the off-node peers' share leaves over the device's own NIC while
    the on-node peers' share goes over NVLink (concurrently; the slower sets the time), both
    derated for the per-peer message; one hop of latency per call. Over the all-to-all's own
    measured links where a profile timed it (``Links.exchanging``), a call within one node at
    what the timed all-to-alls cost at its link volume (``Links.timed_where``)."""
    links = links.exchanging()
    n = np.asarray(size, dtype=float)
    m = ranks_per_node(size, stride, links.devices_per_node)
    b = np.asarray(bytes_, dtype=float)
    calls = np.asarray(calls, dtype=float)
    peer = b / np.maximum(calls, 1.0) / n
    intra = b * (m - 1) / n / (links.intra_node_bw
                               * link_efficiency(peer, links.nvlink_half_bytes))
    inter = b * (n - m) / n / (links.nic_bw * link_efficiency(peer, links.net_half_bytes))
    hop = np.where(m < n, links.net_hop_s, links.nvlink_hop_s)
    latency = np.where(n > 1, calls * (links.base_latency_s + hop), 0.0)
    fitted = np.maximum(intra, inter) + latency
    if links.timed is None:
        return fitted
    return links.timed_where(fitted, b * (n - 1) / n, size, stride, calls)


# ---------------------------------------------------------------------------------------------
# One training step
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CommBreakdown:
    """Per device, per optimizer step (all micro-batches). Seconds are link time (bandwidth +
    latency); how much of it hides behind compute is decided in ``step_time``. Each field is a
    number, or an array with one entry per layout (``comm_arrays``; ``at`` picks one)."""

    a2a_bytes: Any  # expert dispatch + combine, forward, backward (and recompute)
    a2a_s: Any
    a2a_calls: Any
    tp_bytes: Any  # Megatron all-reduces of block outputs
    tp_s: Any
    grad_reduce_bytes: Any  # all-reduce (ZeRO-0/1/2) / reduce-scatter (ZeRO-3) of gradients
    grad_reduce_s: Any
    grad_reduce_per_micro_s: Any  # one occurrence (ZeRO-2/3 reduce every micro-batch)
    grad_buckets: Any  # buckets per occurrence (the backward's pipeline stages)
    grad_reduce_calls: Any  # collective calls per occurrence (a bucket: one per group in it)
    grad_ranks_per_node: Any  # m of the non-expert data-parallel ring
    expert_grad_ranks_per_node: Any  # m of the expert-data-parallel ring
    a2a_ranks_per_node: Any  # m of the expert-parallel group
    param_allgather_bytes: Any  # ZeRO-1/2: updated bf16 params after the optimizer step
    param_allgather_s: Any
    param_allgather_calls: Any  # one all_gather_into_tensor per param group
    zero3_gather_bytes: Any  # ZeRO-3: parameter all-gathers in forward and backward
    zero3_gather_s: Any
    zero3_gather_per_pass_s: Any  # one pass (forward or backward) of one micro-batch

    @property
    def total_bytes(self) -> Any:
        return (self.a2a_bytes + self.tp_bytes + self.grad_reduce_bytes
                + self.param_allgather_bytes + self.zero3_gather_bytes)

    def at(self, i: int, shape: tuple[int, ...]) -> CommBreakdown:
        """Layout ``i`` of a breakdown over layouts."""
        return CommBreakdown(**{f.name: float(np.broadcast_to(getattr(self, f.name), shape)[i])
                                for f in fields(self)})

    def to_dict(self) -> dict[str, float]:
        out = {f.name: float(getattr(self, f.name)) for f in fields(self)}
        out.update(total_bytes=float(self.total_bytes))
        return out


RECOMPUTE_FULL_CODE = RECOMPUTE_ORDER.index(Recompute.FULL)


def forward_passes(recompute_code: Any) -> Any:
    """Forward passes per micro-batch: 2 with full recompute (the backward reruns it)."""
    return np.where(np.asarray(recompute_code) == RECOMPUTE_FULL_CODE, 2, 1)


def buckets(elements: Any, bucket_elements: Any) -> Any:
    """Calls that carry ``elements`` in buckets of ``bucket_elements``."""
    elements = np.asarray(elements, dtype=float)
    return np.where(elements > 0, np.ceil(elements / bucket_elements), 0)


def comm_arrays(cfg: ModelConfig, split: ParamSplit, links: Links, *, dp: Any, ep: Any, tp: Any,
                zero: Any, micro_batch: Any, grad_accum: Any, recompute_code: Any,
                precision: Precision, placement_code: Any = 0,
                bucket_elements: int = ZERO_BUCKET_ELEMENTS) -> CommBreakdown:
    """The collectives of one step as DeepSpeed 0.19.8 issues them, over layouts
    (``DERIVATIONS.md`` section "Collectives per step"; recompute_code indexes
    ``memory.RECOMPUTE_ORDER``, placement_code ``placement.PLACEMENT_ORDER``)."""
    zero, mb, ga = np.asarray(zero), np.asarray(micro_batch), np.asarray(grad_accum)
    g = group_shapes(dp=dp, ep=ep, tp=tp, placement_code=placement_code)
    node = links.devices_per_node
    bytes_per_element = BF16_BYTES if Precision(precision) is Precision.BF16 else FP32_BYTES
    forwards = forward_passes(recompute_code)
    tokens, hidden = cfg.tokens_per_image, cfg.hidden_size
    zeros = 0.0 * g.dp * mb  # broadcasts a scalar term to the layouts' shape

    # expert all-to-all: dispatch + combine per MoE layer and forward, both again in backward
    slots_per_image = expert_slots_per_image(cfg) if cfg.ffn.is_moe else 0.0
    a2a_one_bytes = bytes_per_element * slots_per_image * hidden * mb
    a2a_calls = cfg.num_moe_layers * (2 * forwards + 2) * ga
    a2a_s = all_to_all_seconds(a2a_calls * a2a_one_bytes, g.ep, g.ep_stride, links,
                               calls=a2a_calls)
    a2a_bytes = a2a_calls * a2a_one_bytes * (g.ep - 1) / g.ep

    # tensor parallel: all-reduce of S x d after attention, cross-attention, FFN (fwd + bwd)
    tp = np.asarray(tp)
    tp_calls = cfg.depth * (2 + int(cfg.has_cross_attention)) * (forwards + 1) * ga
    tp_one_bytes = bytes_per_element * tokens * hidden * mb
    tp_s = ring_seconds(tp_calls * tp_one_bytes, tp, 1, links, factor=2.0, calls=tp_calls)
    tp_bytes = tp_calls * 2 * (tp - 1) / tp * tp_one_bytes

    # gradients: non-expert over dp, expert over the expert-data-parallel group
    non_expert, expert = split.non_expert_per_device(tp), split.expert_per_device(g.ep, tp)
    non_expert_bytes, expert_bytes = bytes_per_element * non_expert, bytes_per_element * expert
    zero0 = zero < ZERO_PARTITIONS_OPTIMIZER
    zero3 = zero >= ZERO_PARTITIONS_PARAMETERS
    # ZeRO-0: buffered_allreduce_fallback, each group in its own 5e8-element buckets;
    # ZeRO-1/2: one reduce bucket of both kinds, all-reduced once per process group in it;
    # ZeRO-3: reduce-scatter buckets per group
    ne_calls_0, ex_calls_0 = (buckets(non_expert, ZERO0_ALLREDUCE_BUCKET_ELEMENTS),
                              buckets(expert, ZERO0_ALLREDUCE_BUCKET_ELEMENTS))
    ipg_buckets = buckets(non_expert + expert, bucket_elements)
    ne_calls_3, ex_calls_3 = buckets(non_expert, bucket_elements), buckets(expert, bucket_elements)
    zero12 = ~zero0 & ~zero3
    ne_calls = np.where(zero0, ne_calls_0, np.where(zero3, ne_calls_3, ipg_buckets))
    ex_calls = np.where(zero0, ex_calls_0, np.where(zero3, ex_calls_3,
                                                     np.where(expert > 0, ipg_buckets, 0)))
    factor = np.where(zero3, 1.0, 2.0)  # reduce-scatter : all-reduce
    reduce_once_s = (ring_seconds(non_expert_bytes, g.dp, g.dp_stride, links, factor=2.0,
                                  calls=ne_calls)
                     + ring_seconds(expert_bytes, g.edp, g.edp_stride, links, factor=2.0,
                                    calls=ex_calls))
    scatter_once_s = (ring_seconds(non_expert_bytes, g.dp, g.dp_stride, links, factor=1.0,
                                   calls=ne_calls)
                      + ring_seconds(expert_bytes, g.edp, g.edp_stride, links, factor=1.0,
                                     calls=ex_calls))
    once_s = np.where(zero3, scatter_once_s, reduce_once_s)
    ring_bytes = (non_expert_bytes * (g.dp - 1) / g.dp + expert_bytes * (g.edp - 1) / g.edp)
    occurrences = np.where(zero >= ZERO_PARTITIONS_GRADIENTS, ga, 1)  # ZeRO-2/3: every backward
    pipeline_stages = np.where(zero12, ipg_buckets, ne_calls + ex_calls)

    # ZeRO-1/2 after the step: one all_gather_into_tensor per param group (all_gather_dp_groups
    # ignores allgather_bucket_size); ZeRO-3: one per block and pass
    gather_ne_calls = np.where(zero3, cfg.depth, 1) * (non_expert > 0)
    gather_ex_calls = np.where(zero3, cfg.num_moe_layers, 1) * (expert > 0)
    gathers = links.gathering()
    gather_once_s = (ring_seconds(non_expert_bytes, g.dp, g.dp_stride, gathers, factor=1.0,
                                  calls=gather_ne_calls)
                     + ring_seconds(expert_bytes, g.edp, g.edp_stride, gathers, factor=1.0,
                                    calls=gather_ex_calls))
    zero3_gathers = np.where(zero3, (forwards + 1) * ga, 0)  # every forward and the backward
    post_step = np.where(zero12, 1.0, 0.0)
    allgather_calls = (np.where(g.dp > 1, 1, 0) + np.where((expert > 0) & (g.edp > 1), 1, 0))
    return CommBreakdown(
        a2a_bytes=a2a_bytes + zeros, a2a_s=a2a_s + zeros, a2a_calls=a2a_calls + zeros,
        tp_bytes=tp_bytes + zeros, tp_s=tp_s + zeros,
        grad_reduce_bytes=occurrences * factor * ring_bytes + zeros,
        grad_reduce_s=occurrences * once_s + zeros,
        grad_reduce_per_micro_s=once_s + zeros, grad_buckets=pipeline_stages + zeros,
        grad_reduce_calls=(np.where(g.dp > 1, ne_calls, 0)
                           + np.where(g.edp > 1, ex_calls, 0)) + zeros,
        grad_ranks_per_node=ranks_per_node(g.dp, g.dp_stride, node) + zeros,
        expert_grad_ranks_per_node=ranks_per_node(g.edp, g.edp_stride, node) + zeros,
        a2a_ranks_per_node=ranks_per_node(g.ep, g.ep_stride, node) + zeros,
        param_allgather_bytes=post_step * ring_bytes + zeros,
        param_allgather_s=post_step * gather_once_s + zeros,
        param_allgather_calls=post_step * allgather_calls + zeros,
        zero3_gather_bytes=zero3_gathers * ring_bytes + zeros,
        zero3_gather_s=zero3_gathers * gather_once_s + zeros,
        zero3_gather_per_pass_s=np.where(zero3, gather_once_s, 0.0) + zeros,
    )


def comm_breakdown(cfg: ModelConfig, layout: Any, acc: Any, *, grad_accum: int,
                   precision: Precision = Precision.BF16, devices_per_node: int | None = None,
                   placement: Placement | str = Placement.EXPERT_BEFORE_DATA) -> CommBreakdown:
    """The communication of one ``ParallelLayout`` (same formulas as the vectorised search)."""
    out = comm_arrays(cfg, ParamSplit.of(cfg), Links.of(acc, devices_per_node),
                      dp=layout.dp, ep=layout.ep, tp=layout.tp, zero=layout.zero,
                      micro_batch=layout.micro_batch, grad_accum=grad_accum,
                      recompute_code=RECOMPUTE_ORDER.index(Recompute(layout.recompute)),
                      precision=precision, placement_code=placement_code(placement))
    return out.at(0, (1,))
