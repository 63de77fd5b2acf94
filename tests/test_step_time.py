"""The step-time model: topology-aware collectives against hand-computed NCCL ring figures,
latency and message-size terms, all-to-all per-peer pricing, overlap per collective, and the
same numbers from the single-layout path and the vectorised search."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from ecdit_scale import sizes
from ecdit_scale.config import ClusterConfig, ParallelLayout, TrainingConfig
from ecdit_scale.planner.comm import (
    Links,
    all_to_all_seconds,
    ranks_per_node,
    ring_latency_s,
    ring_seconds,
)
from ecdit_scale.planner.hardware import get_accelerator
from ecdit_scale.planner.layouts import estimate_layout, search_layouts
from ecdit_scale.planner.memory import ParamSplit
from ecdit_scale.planner.placement import Placement, expert_group_ranks, group_shapes
from ecdit_scale.planner.step_time import pipeline_exposed

H100 = get_accelerator("h100-sxm")
M64 = sizes.resolve("97B").config
TRAIN = TrainingConfig()
NVLINK, NIC = 450e9, 50e9  # the h100-sxm catalog entry: per device, one direction
GB = 1e9
# the links with latency and message-size terms switched off: pure bandwidth
BW_ONLY = Links(intra_node_bw=NVLINK, nic_bw=NIC, devices_per_node=8, base_latency_s=0.0,
                nvlink_hop_s=0.0, net_hop_s=0.0, nvlink_half_bytes=0.0, net_half_bytes=0.0)


def s(x) -> float:
    return float(np.asarray(x))


# ---------------------------------------------------------------------------------------------
# Rail bandwidth
# ---------------------------------------------------------------------------------------------


def test_links_come_from_the_catalog():
    links = Links.of(H100)
    assert (links.intra_node_bw, links.nic_bw, links.devices_per_node) == (NVLINK, NIC, 8)


def test_ranks_per_node_follow_the_placement():
    assert s(ranks_per_node(512, 1, 8)) == 8  # dp over 64 full nodes
    assert s(ranks_per_node(8, 64, 8)) == 1  # expert-dp of ep=64: one rank per node
    assert s(ranks_per_node(4, 2, 8)) == 4  # inside a node
    assert s(ranks_per_node(16, 2, 8)) == 4  # 4 per node over 4 nodes


def test_512_rank_ring_over_64_nodes_uses_all_eight_nics():
    # NCCL ring all-reduce: each rank sends 2(n-1)/n x bytes; one hop per node crosses the
    # network, one ring per NIC, so the node's 8 NICs carry one rank's volume:
    # per device min(NVLink 450, 8 x 50 = 400) GB/s.
    expected = 2 * 511 / 512 * GB / 400e9
    assert s(ring_seconds(GB, 512, 1, BW_ONLY, factor=2.0)) == pytest.approx(expected, rel=1e-12)
    # all-gather / reduce-scatter: (n-1)/n
    assert s(ring_seconds(GB, 512, 1, BW_ONLY, factor=1.0)) == pytest.approx(expected / 2)


def test_one_rank_per_node_gets_one_nic_and_a_node_gets_nvlink():
    assert s(ring_seconds(GB, 8, 64, BW_ONLY, factor=2.0)) == pytest.approx(2 * 7 / 8 * GB / NIC)
    assert s(ring_seconds(GB, 8, 1, BW_ONLY, factor=2.0)) == pytest.approx(2 * 7 / 8 * GB / NVLINK)
    # 4 ranks per node: 4 NICs = 200 GB/s < NVLink
    assert s(ring_seconds(GB, 16, 2, BW_ONLY, factor=1.0)) == pytest.approx(15 / 16 * GB / 200e9)
    # a single rank moves nothing
    assert s(ring_seconds(GB, 1, 1, Links.of(H100), factor=2.0)) == 0


def test_512_rank_all_reduce_with_latency_and_message_size_by_hand():
    links = Links.of(H100)
    bucket = 400e6  # one DeepSpeed bucket of 2e8 bf16 elements
    step = bucket / 512  # what each ring step moves
    eff_nv, eff_net = step / (step + 128 * 1024), step / (step + 256 * 1024)
    vol = 2 * 511 / 512 * bucket
    bandwidth = max(vol / (NVLINK * eff_nv), vol / (8 * NIC * eff_net))
    ring = 8.4e-6 + (1022 - 126) * 3.4e-6 + 126 * 9.6e-6  # 2(n-1) steps, 2(nodes-1) on the net
    tree = 8.4e-6 + 2 * (7 * 3.4e-6 + math.log2(64) * 9.6e-6)
    assert s(ring_seconds(bucket, 512, 1, links, factor=2.0)) == pytest.approx(
        bandwidth + min(ring, tree), rel=1e-12)
    # ten buckets: ten latencies, the same bandwidth term
    assert s(ring_seconds(10 * bucket, 512, 1, links, factor=2.0, calls=10)) == pytest.approx(
        10 * (bandwidth + min(ring, tree)), rel=1e-12)


def test_ring_latency_counts_network_steps_separately():
    links = Links.of(H100)
    # all-gather over 512 ranks on 64 nodes: n-1 steps of which nodes-1 cross the network
    assert s(ring_latency_s(512, 1, links, factor=1.0)) == pytest.approx(
        8.4e-6 + 448 * 3.4e-6 + 63 * 9.6e-6)
    assert s(ring_latency_s(8, 1, links, factor=1.0)) == pytest.approx(8.4e-6 + 7 * 3.4e-6)
    assert s(ring_latency_s(1, 1, links, factor=2.0)) == 0


def test_small_messages_run_below_link_bandwidth():
    links = Links.of(H100)
    big = s(ring_seconds(GB, 8, 1, links, factor=2.0)) / GB
    small = s(ring_seconds(1e6, 8, 1, links, factor=2.0)) / 1e6
    assert small > 1.5 * big  # seconds per byte


# ---------------------------------------------------------------------------------------------
# All-to-all
# ---------------------------------------------------------------------------------------------


def test_all_to_all_splits_on_node_and_off_node_peers():
    # 16 ranks over 2 nodes: 7 peers on NVLink, 8 over the device's own NIC, concurrently
    t = s(all_to_all_seconds(GB, 16, 1, BW_ONLY))
    assert t == pytest.approx(max(GB * 7 / 16 / NVLINK, GB * 8 / 16 / NIC))
    assert s(all_to_all_seconds(GB, 4, 2, BW_ONLY)) == pytest.approx(GB * 3 / 4 / NVLINK)


def test_all_to_all_is_priced_by_per_peer_message():
    links = Links.of(H100)
    per_peer = GB / 64
    eff = per_peer / (per_peer + 256 * 1024)
    expected = GB * 56 / 64 / (NIC * eff) + 8.4e-6 + 9.6e-6
    assert s(all_to_all_seconds(GB, 64, 1, links)) == pytest.approx(expected, rel=1e-12)
    # the same bytes in 100 calls: smaller per-peer messages, slower per byte
    assert s(all_to_all_seconds(GB, 64, 1, links, calls=100)) > 1.5 * expected


# ---------------------------------------------------------------------------------------------
# Overlap
# ---------------------------------------------------------------------------------------------


def test_pipeline_exposes_the_last_bucket_or_what_exceeds_the_window():
    assert s(pipeline_exposed(1.0, 10.0, 1)) == 1.0  # one bucket: launched at the end
    assert s(pipeline_exposed(1.0, 10.0, 10)) == pytest.approx(0.1)  # the last bucket
    assert s(pipeline_exposed(10.0, 1.0, 10)) == pytest.approx(10 - 0.9)  # comm-bound
    assert s(pipeline_exposed(0.0, 1.0, 0)) == 0


@pytest.fixture(scope="module")
def best97():
    return search_layouts(M64, TRAIN, ClusterConfig(), H100, pin={"tp": 1}).best


def test_97b_step_terms_add_up(best97):
    st = best97.step
    assert best97.layout.zero in (1, 2)
    exposed = sum(x for _, _, x in st.terms())
    assert st.total_s == pytest.approx(exposed, rel=1e-12)
    assert st.total_s == pytest.approx(st.compute_s + st.exposed_comm_s + st.optimizer_s
                                       + st.launch_s + st.engine_s)
    # critical-path collectives and the post-step all-gather are exposed in full
    assert st.a2a_exposed_s == st.a2a_s > 0 and st.tp_exposed_s == st.tp_s
    assert st.param_allgather_exposed_s == st.param_allgather_s > 0
    # gradient buckets hide partly behind the backward; at least the last bucket shows
    assert 0 < st.grad_reduce_exposed_s < st.grad_reduce_s
    assert st.grad_reduce_exposed_s >= st.grad_reduce_s / best97.comm.grad_buckets - 1e-15
    assert 0 < st.grad_hidden_fraction < 1


def test_97b_gradient_rings_follow_the_nics(best97):
    # the search puts the expert-data-parallel group on NVLink (data-before-expert)
    assert best97.placement is Placement.DATA_BEFORE_EXPERT
    c = best97.comm
    assert c.grad_ranks_per_node == 8  # dp=512 at stride 1
    assert c.expert_grad_ranks_per_node == 8  # expert-dp: 8 consecutive ranks, one node
    assert c.a2a_ranks_per_node == 1  # ep=64 at stride 8: one rank on each of 64 nodes
    default = estimate_layout(M64, best97.layout, TRAIN, ClusterConfig(), H100,
                              placement=Placement.EXPERT_BEFORE_DATA).comm
    assert default.expert_grad_ranks_per_node == 1  # expert-dp at stride ep=64: one NIC
    assert default.a2a_ranks_per_node == 8  # ep=64 consecutive: 8 nodes of 8
    assert default.grad_reduce_s > 1.5 * c.grad_reduce_s and default.a2a_s < c.a2a_s


def test_zero0_reduces_after_the_backward():
    lay = ParallelLayout(dp=512, ep=64, tp=1, zero=0, micro_batch=8)
    st = estimate_layout(M64, lay, TRAIN, ClusterConfig(), H100).step
    assert st.grad_reduce_exposed_s == st.grad_reduce_s > 0 and st.param_allgather_s == 0


def test_zero2_reduces_every_micro_batch_and_hides_more_with_accumulation():
    small = ParallelLayout(dp=512, ep=64, tp=1, zero=2, micro_batch=2)
    e = estimate_layout(M64, small, TRAIN, ClusterConfig(), H100)
    assert e.grad_accum == 4
    assert e.step.grad_reduce_s == pytest.approx(4 * e.comm.grad_reduce_per_micro_s)
    z1 = estimate_layout(M64, ParallelLayout(dp=512, ep=64, tp=1, zero=1, micro_batch=2), TRAIN,
                         ClusterConfig(), H100)
    assert z1.step.grad_reduce_s == pytest.approx(e.comm.grad_reduce_per_micro_s)


# ---------------------------------------------------------------------------------------------
# One code path
# ---------------------------------------------------------------------------------------------


def test_single_layout_and_search_give_the_same_step():
    cluster = ClusterConfig(nodes=128)
    r = search_layouts(M64, TRAIN, cluster, H100, keep=10_000)
    for est in r.feasible[::41]:
        one = estimate_layout(M64, est.layout, TRAIN, cluster, H100, placement=est.placement,
                              ema=est.ema)
        assert one.step == est.step and one.comm == est.comm


def test_zero3_gathers_are_prefetched_behind_the_forward():
    lay = ParallelLayout(dp=512, ep=64, tp=1, zero=3, micro_batch=8)
    st = estimate_layout(M64, lay, TRAIN, ClusterConfig(), H100).step
    assert st.param_allgather_s == 0  # no post-step all-gather under ZeRO-3
    assert 0 < st.zero3_gather_exposed_s < st.zero3_gather_s
    assert 0 < st.grad_reduce_exposed_s <= st.grad_reduce_s


# ---------------------------------------------------------------------------------------------
# Calls as DeepSpeed 0.19.8 issues them
# ---------------------------------------------------------------------------------------------


def test_post_step_all_gather_is_one_call_per_param_group():
    # all_gather_dp_groups -> all_gather_into_tensor_dp_groups: one call per param group
    # (shared over dp, experts over expert-dp), whatever allgather_bucket_size says
    for zero in (1, 2):
        lay = ParallelLayout(dp=512, ep=64, tp=1, zero=zero, micro_batch=8)
        c = estimate_layout(M64, lay, TRAIN, ClusterConfig(), H100).comm
        assert c.param_allgather_calls == 2
    dense = ParallelLayout(dp=16, ep=1, tp=1, zero=1, micro_batch=8)
    c = estimate_layout(sizes.get("ecdit-xl"), dense, TRAIN, ClusterConfig(nodes=2), H100).comm
    assert c.param_allgather_calls == 1


def test_zero12_reduce_buckets_hold_both_kinds_and_reduce_once_per_group():
    lay = ParallelLayout(dp=512, ep=64, tp=1, zero=2, micro_batch=8)
    c = estimate_layout(M64, lay, TRAIN, ClusterConfig(), H100).comm
    split = ParamSplit.of(M64)
    ipg = math.ceil((split.non_expert_per_device(1) + split.expert_per_device(64, 1)) / 2e8)
    assert c.grad_buckets == ipg and c.grad_reduce_calls == 2 * ipg
    zero0 = estimate_layout(M64, ParallelLayout(dp=512, ep=64, tp=1, zero=0, micro_batch=8),
                            TRAIN, ClusterConfig(), H100).comm
    assert zero0.grad_reduce_calls == (math.ceil(split.non_expert_per_device(1) / 5e8)
                                       + math.ceil(split.expert_per_device(64, 1) / 5e8))


def test_placements_build_the_groups_they_price():
    for placement in Placement:
        ep_groups, edp_groups = expert_group_ranks(16, 4, placement)
        g = group_shapes(dp=16, ep=4, tp=1, placement_code=list(Placement).index(placement))
        for groups, size, stride in ((ep_groups, g.ep, g.ep_stride),
                                     (edp_groups, g.edp, g.edp_stride)):
            assert all(len(r) == size and np.all(np.diff(r) == stride) for r in groups)
            assert sorted(x for r in groups for x in r) == list(range(16))
    assert expert_group_ranks(16, 4, Placement.EXPERT_BEFORE_DATA)[0][0] == [0, 1, 2, 3]
    assert expert_group_ranks(16, 4, Placement.DATA_BEFORE_EXPERT)[0][0] == [0, 4, 8, 12]


@pytest.mark.parametrize("zero, ga", [(0, 1), (1, 2), (2, 2)])
def test_priced_calls_are_the_planned_list(zero, ga):
    from ecdit_scale.planner.collectives import planned_calls

    lay = ParallelLayout(dp=512, ep=64, tp=1, zero=zero, micro_batch=8 // ga)
    c = estimate_layout(M64, lay, TRAIN, ClusterConfig(), H100).comm
    calls = {}
    for p in planned_calls(M64, lay, grad_accum=ga):
        calls[p.op] = calls.get(p.op, 0) + p.calls
    assert c.a2a_calls == calls["all_to_all_single"]
    reductions = ga if zero == 2 else 1
    assert reductions * c.grad_reduce_calls == calls["all_reduce"]
    assert c.param_allgather_calls == calls.get("all_gather_into_tensor", 0)


def _profiled_links(**fits):
    import dataclasses

    from ecdit_scale.planner.device_profile import DeviceProfile
    from ecdit_scale.planner.link_fit import LinkFit

    prof = DeviceProfile(links={k: LinkFit(**v) for k, v in fits.items()})
    return dataclasses.replace(H100, profile=prof)


AR_FIT = dict(latency_s=1e-3, bw_bytes_per_s=2e9, half_bytes=0.0)


def _two_rank_comm(card: str, ep: int, **fits):
    """(before, after): the comm of a 2-rank ZeRO-1 fp32 step at micro-batch 4 priced with the
    all-reduce fit alone, and with ``fits`` measured beside it."""
    lay = ParallelLayout(dp=2, ep=ep, tp=1, zero=1, micro_batch=4)
    train = TrainingConfig(global_batch=8, precision="fp32")
    cluster = ClusterConfig(nodes=1, gpus_per_node=2)
    return tuple(estimate_layout(sizes.get(card), lay, train, cluster,
                                 _profiled_links(all_reduce=AR_FIT, **extra)).comm
                 for extra in ({}, fits))


def test_a_measured_all_gather_prices_the_post_step_gather_and_nothing_else():
    only_ar = _profiled_links(all_reduce=AR_FIT)
    links = Links.of(_profiled_links(all_reduce=AR_FIT, all_gather=dict(
        latency_s=3e-3, bw_bytes_per_s=1e9, half_bytes=0.0)))
    assert links.intra_node_bw == 2e9 and links.gathering().intra_node_bw == 1e9
    assert links.gathering().base_latency_s == 3e-3
    assert Links.of(only_ar).gathering() == Links.of(only_ar)  # older profiles: as before
    # 2 ranks, ZeRO-1 dense: one all-gather of the whole model (fp32: 4 bytes a parameter)
    old, new = _two_rank_comm("micro-dense", 1, all_gather=dict(
        latency_s=3e-3, bw_bytes_per_s=1e9, half_bytes=0.0))
    volume = 0.5 * 4 * ParamSplit.of(sizes.get("micro-dense")).non_expert_per_device(1)
    assert new.param_allgather_s == pytest.approx(3e-3 + volume / 1e9)  # (n-1)/n of the bytes
    assert old.param_allgather_s == pytest.approx(1e-3 + volume / 2e9)
    assert new.grad_reduce_s == old.grad_reduce_s  # the reduction keeps the all-reduce's link


def test_a_measured_all_to_all_prices_the_experts_exchange_and_nothing_else():
    """The profile's own all-to-all fit, not its all-reduce's (before 2026-12-07 the
    all-to-alls took the all-reduce's latency: 0.4-1.3 ms for gloo's 0.1-0.4 ms on 2 CPU ranks,
    while rank_sync already counted each all-to-all's wake-up beyond the all-to-all's own)."""
    a2a = dict(latency_s=2e-4, bw_bytes_per_s=1e9, half_bytes=0.0)
    only_ar = _profiled_links(all_reduce=AR_FIT)
    links = Links.of(_profiled_links(all_reduce=AR_FIT, all_to_all=a2a))
    assert links.exchanging().base_latency_s == 2e-4 and links.exchanging().intra_node_bw == 1e9
    assert links.exchanging().nvlink_hop_s == 0.0  # all of the measured latency in one term
    assert Links.of(only_ar).exchanging() == Links.of(only_ar)  # older profiles: as before
    # 2 ranks, ep 2: the experts' exchange takes the all-to-all's link; the reduction does not
    old, new = _two_rank_comm("micro-ec8", 2, all_to_all=a2a)
    calls, volume = new.a2a_calls, new.a2a_bytes  # what leaves a rank: (n-1)/n of its bytes
    assert calls > 0 and old.a2a_calls == calls
    assert new.a2a_s == pytest.approx(calls * 2e-4 + volume / 1e9)
    assert old.a2a_s == pytest.approx(calls * 1e-3 + volume / 2e9)
    assert new.grad_reduce_s == old.grad_reduce_s  # the reduction keeps the all-reduce's link


# an all-to-all timed on 2 ranks (made-up times shaped like gloo's on this VM: ~0.23 ms up to
# 16 KB, while the line through the two largest sizes meets the axis at ~1 ms, so that the
# two-point fit reads a half-bandwidth size of ~1.3 MB, as one of matrix 32's profiles did)
A2A_SIZES = (64.0, 1024.0, 16384.0, 262144.0, 4194304.0, 67108864.0)
A2A_TIMES = (2.36e-4, 2.3e-4, 2.5e-4, 4.1e-4, 3.6e-3, 4.2e-2)


def test_timed_calls_price_each_call_at_its_size_where_the_fit_cannot():
    """A call is priced at the calls the profile timed (linear between them, the smallest's
    time below them, the last two's slope beyond), so each timed call costs what it took; the
    two-point fit, whose half-bandwidth size reproduces the large messages' intercept, prices a
    small call at that intercept."""
    from ecdit_scale.evaluation.collectives import fit_link

    fit = fit_link(list(A2A_SIZES), list(A2A_TIMES), factor=0.5)
    assert fit.half_bytes > 1e6  # the fit's size term: about a millisecond on every call
    timed = Links.of(_profiled_links(all_reduce=AR_FIT, all_to_all=dataclasses.asdict(fit)))
    links = timed.exchanging()
    volume = np.array(fit.timed_volume)
    assert links.timed_call_s(volume) == pytest.approx(A2A_TIMES)  # each timed call as timed
    assert links.timed_call_s(1.0) == pytest.approx(A2A_TIMES[0])  # below: the smallest's
    slope = (A2A_TIMES[-1] - A2A_TIMES[-2]) / (volume[-1] - volume[-2])
    assert links.timed_call_s(2 * volume[-1]) == pytest.approx(A2A_TIMES[-1] + volume[-1] * slope)
    mid = (volume[2] + volume[3]) / 2
    assert links.timed_call_s(mid) == pytest.approx((A2A_TIMES[2] + A2A_TIMES[3]) / 2)
    # the fit alone (as before): the smallest timed call costs ~5x what it took
    untimed = dataclasses.replace(fit, timed_volume=(), timed_s=())
    fitted = Links.of(_profiled_links(all_reduce=AR_FIT, all_to_all=dataclasses.asdict(untimed)))
    assert all_to_all_seconds(2 * volume[0], 2, 1, fitted) > 4 * A2A_TIMES[0]
    assert all_to_all_seconds(2 * volume[0], 2, 1, timed) == pytest.approx(A2A_TIMES[0])
    # a step's all-to-alls: calls x the timed cost at each call's volume; nothing else moves
    old, new = _two_rank_comm("micro-ec8", 2, all_to_all=dataclasses.asdict(untimed))
    _, with_table = _two_rank_comm("micro-ec8", 2, all_to_all=dataclasses.asdict(fit))
    calls = with_table.a2a_calls
    per_call = with_table.a2a_bytes / calls
    assert with_table.a2a_s == pytest.approx(
        calls * np.interp(per_call, volume, A2A_TIMES))
    assert with_table.a2a_s < new.a2a_s and with_table.grad_reduce_s == new.grad_reduce_s


def test_timed_calls_price_rings_within_a_node_and_leave_groups_across_nodes_to_the_fit():
    """An all-reduce's, reduce-scatter's and all-gather's call at its link volume; a group
    that spans nodes crosses a NIC the profile did not time: the fit prices it, as before."""
    sizes_ = [64.0, 4096.0, 262144.0]
    table = dict(latency_s=5e-4, bw_bytes_per_s=1e9, half_bytes=0.0,
                 timed_volume=tuple(sizes_), timed_s=(5e-4, 6e-4, 1.5e-3))
    links = Links.of(_profiled_links(all_reduce=table), devices_per_node=2)
    # 2 ranks, all-reduce (factor 2): volume per call = 2 x 1/2 x bytes / calls
    assert ring_seconds(3 * 4096.0, 2, 1, links, factor=2.0, calls=3) == pytest.approx(3 * 6e-4)
    # reduce-scatter of 8 KiB: the volume of a 4 KiB all-reduce
    assert ring_seconds(8192.0, 2, 1, links, factor=1.0) == pytest.approx(6e-4)
    assert ring_seconds(8192.0, 1, 1, links, factor=1.0) == 0.0  # one rank: nothing
    across = ring_seconds(8192.0, 4, 1, links, factor=2.0)  # 2 nodes of 2
    untimed = Links.of(_profiled_links(all_reduce={**table, "timed_volume": (), "timed_s": ()}),
                       devices_per_node=2)
    assert across == pytest.approx(ring_seconds(8192.0, 4, 1, untimed, factor=2.0))


def test_link_fit_recovers_each_collectives_bandwidth():
    from ecdit_scale.evaluation.collectives import fit_link
    from ecdit_scale.planner.link_fit import COLLECTIVE_VOLUME

    sizes_ = [64 * 16**i for i in range(6)]
    n = 2
    for name, per_byte in COLLECTIVE_VOLUME.items():
        factor = per_byte * (n - 1) / n
        times = [2e-4 + factor * b / 1.5e9 for b in sizes_]
        fit = fit_link(sizes_, times, factor=factor)
        assert fit.bw_bytes_per_s == pytest.approx(1.5e9, rel=1e-9), name
        assert fit.latency_s == pytest.approx(2e-4) and fit.half_bytes == pytest.approx(0.0)


def test_the_plans_note_says_how_its_collectives_are_priced():
    from ecdit_scale.planner.plan import comm_label

    assert comm_label(H100).startswith("topology-aware NCCL")  # the catalog's model
    fit = dict(latency_s=2e-4, bw_bytes_per_s=1e9, half_bytes=0.0)
    timed = dict(fit, timed_volume=(32.0, 512.0), timed_s=(2e-4, 3e-4))
    for links, how in (({"all_to_all": fit}, "fitted to the calls it timed"),
                       ({"all_to_all": timed}, "each call at the calls it timed")):
        acc = _profiled_links(**links)
        acc = dataclasses.replace(acc, profile=dataclasses.replace(
            acc.profile, collective_backend="gloo", collective_nproc=2))
        label = comm_label(acc)
        assert "(gloo on 2 ranks: " in label and how in label and label.endswith("across nodes")
