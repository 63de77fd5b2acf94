"""The collectives the real DeepSpeed engine issues (recorded on 4 CPU/gloo ranks) are the
planner's list (``planner.collectives.planned_calls``) for ZeRO 0/1/2 x dense/MoE, and both
rank placements build the groups the plan names and train to the same loss.

One launch of 4 ranks covers every configuration (DeepSpeed's start-up is most of the cost)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from spawned import start_ranks

from ecdit_scale import sizes
from ecdit_scale.config import ParallelLayout, Precision
from ecdit_scale.planner.collectives import planned_calls
from ecdit_scale.planner.placement import Placement, expert_group_ranks
from ecdit_scale.train.process import free_port

WORLD = 4
MIN_ELEMENTS = 64  # below: the scalar all-reduces of the gradient norm (latency only)
CONFIGS = [
    dict(model="nano-ec8", ep=2, placement="expert-before-data", zero=1, steps=2),
    dict(model="nano-ec8", ep=2, placement="data-before-expert", zero=1, steps=2),
    dict(model="nano-ec8", ep=2, placement="data-before-expert", zero=2, steps=1),
    dict(model="nano-ec8", ep=2, placement="expert-before-data", zero=0, steps=1),
    dict(model="nano-dense", ep=1, placement="expert-before-data", zero=0, steps=1),
    dict(model="nano-dense", ep=1, placement="expert-before-data", zero=1, steps=1),
    dict(model="nano-dense", ep=1, placement="expert-before-data", zero=2, steps=1),
]


@pytest.fixture(scope="module")
def traced(session_runs):
    """The ranks' recorded calls, traced once for all the workers."""
    from ecdit_scale.evaluation.collective_trace import trace_worker

    def make(out):
        out.mkdir(parents=True, exist_ok=True)
        start_ranks(trace_worker, (WORLD, free_port(), str(out), CONFIGS), WORLD)

    out = session_runs.once("collective-trace", make)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_recorded_collectives_are_the_planners(traced, index):
    c = CONFIGS[index]
    cfg = sizes.get(c["model"])
    layout = ParallelLayout(dp=WORLD, ep=c["ep"], tp=1, zero=c["zero"], micro_batch=2)
    planned = planned_calls(cfg, layout, grad_accum=1, precision=Precision.FP32,
                            placement=c["placement"])
    want = Counter()
    for p in planned:
        want[(p.op, p.group_size, p.dtype)] += p.calls
    assert want[("all_reduce", WORLD, "float32")] >= 1  # the gradients of the shared params
    assert want[("all_gather_into_tensor", WORLD, "float32")] == (c["zero"] in (1, 2))
    assert want[("all_to_all_single", c["ep"], "float32")] == (8 if c["ep"] > 1 else 0)
    for rank in range(WORLD):
        calls = traced[rank][index]["calls"]
        have = Counter((op, n, dt) for op, n, dt, numel in calls
                       if numel >= MIN_ELEMENTS and n > 1)
        assert have == want, (rank, c, calls)


@pytest.mark.slow
def test_both_placements_build_the_planned_groups_and_train_alike(traced):
    for rank in range(WORLD):
        by_order = {}
        for c, r in zip(CONFIGS[:2], traced[rank][:2], strict=True):
            ep_groups, edp_groups = expert_group_ranks(WORLD, c["ep"], c["placement"])
            assert r["ep_ranks"] == next(g for g in ep_groups if rank in g)
            assert r["edp_ranks"] == next(g for g in edp_groups if rank in g)
            by_order[Placement(c["placement"])] = r["losses"]
        a, b = by_order.values()
        assert len(a) == 2 and a == pytest.approx(b, rel=1e-5)
    # the two orders really differ: rank 1 shares its experts' group with different ranks
    assert traced[1][0]["ep_ranks"] != traced[1][1]["ep_ranks"]
