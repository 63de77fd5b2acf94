"""Layout search: validity, memory feasibility, ranking, pins and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from ecdit_scale import sizes
from ecdit_scale.config import ClusterConfig, ParallelLayout, TrainingConfig
from ecdit_scale.errors import ConfigError
from ecdit_scale.planner.comm import comm_breakdown
from ecdit_scale.planner.hardware import get_accelerator
from ecdit_scale.planner.layouts import TP_FLAG, ZERO3_MOE_FLAG, estimate_layout, search_layouts
from ecdit_scale.planner.memory import memory_breakdown

H100 = get_accelerator("h100-sxm")
M64 = sizes.resolve("97B").config
TRAIN = TrainingConfig()


@pytest.fixture(scope="module")
def m64_search():
    return search_layouts(M64, TRAIN, ClusterConfig(nodes=128), H100, keep=10_000)


def test_97b_search_finds_layouts_and_accounts_for_every_candidate(m64_search):
    r = m64_search
    assert r.num_feasible >= 1 and len(r.feasible) == r.num_feasible
    assert r.num_evaluated == r.num_feasible + sum(r.rejected.values())
    assert r.rejected_examples and all("needs" in x.reason for x in r.rejected_examples)


def test_every_returned_layout_fits_by_the_planners_own_accounting(m64_search):
    for est in m64_search.feasible:
        assert est.memory.total <= H100.memory_bytes
    for est in m64_search.feasible[::37]:  # the scalar path agrees with the vectorised one
        again = memory_breakdown(M64, est.layout, TRAIN)
        assert again.total == pytest.approx(est.memory.total, rel=1e-12)


def test_every_returned_layout_obeys_the_rules(m64_search):
    world, gb = 1024, TRAIN.global_batch
    for est in m64_search.feasible:
        lay = est.layout
        assert lay.dp * lay.tp == world and lay.tp <= 8
        assert M64.num_heads % lay.tp == 0 and M64.num_kv_heads % lay.tp == 0
        assert lay.dp % lay.ep == 0 and M64.ffn.num_experts % lay.ep == 0
        assert lay.dp * lay.micro_batch * est.grad_accum == gb
        assert 0 < est.step.mfu < 1
        assert est.step.total_s == pytest.approx(est.step.compute_s + est.step.exposed_comm_s
                                                 + est.step.optimizer_s + est.step.launch_s
                                                 + est.step.engine_s)


def test_ranked_by_step_time_then_memory_and_no_zero3_for_moe(m64_search):
    feas = m64_search.feasible
    assert {e.layout.zero for e in feas} <= {0, 1, 2}  # DeepSpeed-MoE refuses ZeRO-3
    assert not any(ZERO3_MOE_FLAG in e.flags for e in feas)
    assert m64_search.num_evaluated % 3 == 0  # 3 stages x shapes x recompute, none with ZeRO-3
    keys = [(e.step.total_s, e.memory.total) for e in feas]
    assert keys == sorted(keys)
    assert all((e.layout.tp > 1) == (TP_FLAG in e.flags) for e in feas)


def test_dense_search_keeps_zero3():
    r = search_layouts(sizes.get("ecdit-xl"), TRAIN, ClusterConfig(nodes=2), H100, keep=10_000)
    assert 3 in {e.layout.zero for e in r.feasible}


def test_estimate_layout_reproduces_the_search(m64_search):
    best = m64_search.best
    again = estimate_layout(M64, best.layout, TRAIN, ClusterConfig(nodes=128), H100,
                            placement=best.placement, ema=best.ema)
    assert again.step.total_s == pytest.approx(best.step.total_s)
    assert again.comm == best.comm


def test_dense_model_uses_no_expert_parallelism():
    cfg = sizes.get("ecdit-xl")
    r = search_layouts(cfg, TRAIN, ClusterConfig(nodes=2), H100, keep=1000)
    assert r.feasible and all(e.layout.ep == 1 and e.step.a2a_s == 0 for e in r.feasible)


def test_pins_restrict_the_search():
    pin = {"ep": 32, "zero": 2, "recompute": "full", "tp": 1}
    r = search_layouts(M64, TRAIN, ClusterConfig(nodes=64), H100, pin=pin)
    assert r.feasible
    for e in r.feasible:
        assert (e.layout.ep, e.layout.zero, e.layout.recompute.value, e.layout.tp) == (
            32, 2, "full", 1)


def test_zero3_pinned_on_moe_is_one_line_naming_the_constraint():
    with pytest.raises(ConfigError) as exc:
        search_layouts(M64, TRAIN, ClusterConfig(nodes=64), H100, pin={"zero": 3})
    text = _one_line(exc)
    assert "--zero 3" in text and "MoE not supported with Stage 3" in text and "0, 1 or 2" in text


def test_zero3_with_moe_is_still_estimated_but_flagged_one_layout():
    lay = ParallelLayout(dp=512, ep=64, zero=3, micro_batch=8)
    est = estimate_layout(M64, lay, TRAIN, ClusterConfig(nodes=64), H100)
    assert ZERO3_MOE_FLAG in est.flags
    assert est.comm.zero3_gather_s > 0 and est.memory.zero3_gather_buffer > 0


# ---------------------------------------------------------------------------------------------
# One-line errors that name the constraint
# ---------------------------------------------------------------------------------------------


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_97b_on_one_gpu_says_how_much_it_needs():
    with pytest.raises(ConfigError) as exc:
        search_layouts(M64, TRAIN, ClusterConfig(nodes=1, gpus_per_node=1), H100)
    text = _one_line(exc)
    assert "on 1 GPU" in text and "needs" in text and "TiB per device" in text
    assert "the h100-sxm has 74.5 GiB" in text


def test_pinned_ep_not_dividing_the_experts():
    with pytest.raises(ConfigError) as exc:
        search_layouts(M64, TRAIN, ClusterConfig(), H100, pin={"ep": 3})
    assert _one_line(exc) == "--ep 3 does not divide 64 experts; valid: 1, 2, 4, 8, 16, 32, 64"


def test_pinned_ep_not_dividing_dp():
    cluster = ClusterConfig(nodes=1, gpus_per_node=8)
    with pytest.raises(ConfigError) as exc:
        search_layouts(M64, TRAIN, cluster, H100, pin={"ep": 16, "dp": 8})
    assert "--ep 16 does not divide dp=8" in _one_line(exc)


def test_global_batch_not_divisible_by_dp():
    cluster = ClusterConfig(nodes=3, gpus_per_node=1)
    for pin in ({"dp": 3}, None):
        with pytest.raises(ConfigError) as exc:
            search_layouts(M64, TRAIN, cluster, H100, pin=pin)
        assert "global batch 4096 is not divisible by dp=3" in _one_line(exc)


def test_micro_batch_pin_that_breaks_the_global_batch():
    with pytest.raises(ConfigError) as exc:
        search_layouts(M64, TRAIN, ClusterConfig(nodes=64), H100,
                       pin={"dp": 512, "micro_batch": 16})
    text = _one_line(exc)
    assert "global batch 4096 not divisible by dp=512 x micro_batch=16" in text
    assert "valid micro-batches for dp=512: 1, 2, 4, 8" in text


@pytest.mark.parametrize("pin,needle", [
    ({"tp": 3}, "--tp 3 does not divide the world of 512"),
    ({"tp": 16}, "--tp 16 exceeds 8 devices per node"),
    ({"dp": 7}, "--dp 7 does not divide the world"),
    ({"zero": 4}, "ZeRO stage must be 0, 1, 2 or 3"),
    ({"recompute": "some"}, "--recompute 'some'"),
    ({"pp": 2}, "cannot pin pp"),
])
def test_bad_pins_name_their_constraint(pin, needle):
    with pytest.raises(ConfigError) as exc:
        search_layouts(M64, TRAIN, ClusterConfig(), H100, pin=pin)
    assert needle in _one_line(exc)


def test_tp_must_divide_kv_heads():
    cfg = sizes.get("ecdit-xl")  # 18 heads, 6 KV heads
    with pytest.raises(ConfigError) as exc:
        search_layouts(cfg, TRAIN, ClusterConfig(nodes=1, gpus_per_node=4), H100, pin={"tp": 4})
    assert "--tp 4 does not divide 18 heads and 6 KV heads; valid: 1, 2" in _one_line(exc)


# ---------------------------------------------------------------------------------------------
# Communication
# ---------------------------------------------------------------------------------------------


def test_comm_terms_vanish_without_their_parallelism():
    lay = ParallelLayout(dp=1, ep=1, tp=1, zero=0, micro_batch=4)
    c = comm_breakdown(M64, lay, H100, grad_accum=1024)
    assert c.a2a_s == 0 and c.tp_s == 0 and c.grad_reduce_s == 0 and c.param_allgather_s == 0
    assert c.zero3_gather_s == 0
    c2 = comm_breakdown(M64, ParallelLayout(dp=64, ep=8, tp=1, zero=2, micro_batch=4), H100,
                        grad_accum=16)
    assert c2.a2a_s > 0 and c2.grad_reduce_s == pytest.approx(16 * c2.grad_reduce_per_micro_s)
    c1 = comm_breakdown(M64, ParallelLayout(dp=64, ep=8, tp=1, zero=1, micro_batch=4), H100,
                        grad_accum=16)
    assert c1.grad_reduce_s == pytest.approx(c1.grad_reduce_per_micro_s)  # once per step


def test_a2a_volume_follows_the_capacity_factor():
    lay = ParallelLayout(dp=8, ep=8, micro_batch=2)
    c = comm_breakdown(M64, lay, H100, grad_accum=1)
    # per MoE layer: dispatch + combine forward, twice more backward; f_c x S x d bf16 each,
    # (ep-1)/ep of it leaves the device
    per = 2.0 * M64.ffn.capacity_factor * M64.tokens_per_image * M64.hidden_size * 2
    expected = M64.num_moe_layers * 4 * per * 7 / 8
    assert c.a2a_bytes == pytest.approx(expected)


def test_vectorised_arrays_are_finite(m64_search):
    vals = np.array([[e.step.total_s, e.memory.total, e.comm.total_bytes]
                     for e in m64_search.feasible])
    assert np.isfinite(vals).all() and (vals > 0).all()
