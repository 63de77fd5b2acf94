"""Issue 10, planner side: the cluster-size table and --days / --budget, refusing what cannot
run (ZeRO-3 on MoE, devices without DeepSpeed, missing precisions), and the EMA option."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import run_main

from ecdit_scale import sizes
from ecdit_scale.config import ClusterConfig, TrainingConfig
from ecdit_scale.errors import ConfigError
from ecdit_scale.planner.cluster_table import (
    ClusterRow,
    ClusterTable,
    RunCost,
    cluster_table,
    mark_rows,
    pick_row,
)
from ecdit_scale.planner.hardware import get_accelerator
from ecdit_scale.planner.layouts import search_layouts
from ecdit_scale.planner.plan import make_plan
from ecdit_scale.planner.plan_files import LAUNCH_FILES, plan_files

H100 = get_accelerator("h100-sxm")
SMALL = sizes.get("small-ec8")
M64 = sizes.resolve("97B").config
SMALL_RUN = TrainingConfig(global_batch=256, steps=1000, ema="replicated")


# ---------------------------------------------------------------------------------------------
# Marks and picks on a table whose numbers are written by hand
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def a_layout():
    return search_layouts(SMALL, SMALL_RUN, ClusterConfig(nodes=1), H100, keep=1).best


def _table(a_layout, costs: dict[int, tuple[float, float]]) -> ClusterTable:
    rows = [ClusterRow(cluster=ClusterConfig(nodes=n), best=a_layout,
                       cost=RunCost(days=d, gpu_hours=0.0, cost_usd=c))
            for n, (d, c) in costs.items()]
    return ClusterTable(rows=mark_rows(rows), accelerator="h100-sxm")


# nodes: (days, USD). 4 nodes is dominated by 2 nodes (slower and dearer)
HAND = {1: (10.0, 100.0), 2: (5.0, 150.0), 4: (6.0, 200.0), 8: (2.0, 400.0)}


def test_marks_cheapest_fastest_and_pareto_by_hand(a_layout):
    t = _table(a_layout, HAND)
    marks = {r.nodes: set(r.marks) for r in t.rows}
    assert marks == {1: {"cheapest", "pareto"}, 2: {"pareto"}, 4: set(),
                     8: {"fastest", "pareto"}}
    assert t.cheapest.nodes == 1 and t.fastest.nodes == 8
    assert t.to_dict()["pareto_nodes"] == [1, 2, 8]


@pytest.mark.parametrize("kw, nodes", [
    ({"days": 5.5}, 2),  # within 5.5 days: 2 ($150) and 8 ($400) -> the cheaper
    ({"days": 10}, 1),  # every size qualifies -> the cheapest
    ({"days": 2}, 8),
    ({"budget": 160}, 2),  # within $160: 1 (10 d) and 2 (5 d) -> the faster
    ({"budget": 120}, 1),
    ({"budget": 1e6}, 8),
])
def test_days_and_budget_pick_by_hand(a_layout, kw, nodes):
    picked = pick_row(_table(a_layout, HAND), **kw)
    assert picked.picked.nodes == nodes and picked.picked_by.startswith(f"--{next(iter(kw))}")


@pytest.mark.parametrize("kw, needle", [
    ({"days": 1}, "--days 1: no cluster size (1-8 nodes) finishes in time; the fastest is 8 nodes"),
    ({"budget": 50}, "--budget 50: no cluster size (1-8 nodes) fits $50; the cheapest is 1 node "),
    ({"days": 1, "budget": 50}, "give --days or --budget, not both"),
])
def test_nothing_qualifies_is_one_line_naming_the_closest(a_layout, kw, needle):
    with pytest.raises(ConfigError) as exc:
        pick_row(_table(a_layout, HAND), **kw)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------------------
# The table of a small real cluster
# ---------------------------------------------------------------------------------------------


def test_small_cluster_rows_are_the_best_layout_at_each_size():
    t = cluster_table(SMALL, SMALL_RUN, ClusterConfig(nodes=1), H100, pin={"tp": 1})
    # 256 images divide over 8 ... 256 devices; 64 and 128 nodes (512, 1024) have no row
    assert [r.nodes for r in t.rows] == [1, 2, 4, 8, 16, 32]
    assert set(t.skipped) == {64, 128} and "does not divide" in t.skipped[64]
    for r in t.rows:
        best = search_layouts(SMALL, SMALL_RUN, r.cluster, H100, pin={"tp": 1}, keep=1).best
        assert r.best.layout == best.layout
        assert r.cost.days == pytest.approx(best.step.total_s * 1000 / 86_400)
        assert r.cost.gpu_hours == pytest.approx(r.cost.days * 24 * r.devices)
        assert r.cost.cost_usd == pytest.approx(r.cost.gpu_hours * 2.5)
    costs = [r.cost.cost_usd for r in t.rows]
    days = [r.cost.days for r in t.rows]
    assert t.cheapest.cost.cost_usd == min(costs) and t.fastest.cost.days == min(days)
    for r in t.rows:  # a Pareto row: no other row as fast and as cheap, better in one
        beaten = any(o.cost.days <= r.cost.days and o.cost.cost_usd <= r.cost.cost_usd
                     and (o.cost.days, o.cost.cost_usd) != (r.cost.days, r.cost.cost_usd)
                     for o in t.rows)
        assert r.pareto == (not beaten)
    assert [r.nodes for r in t.rows if r.is_plan] == [1]


def test_97b_table_has_8_to_128_nodes_and_the_plan_row_is_the_plan():
    p = make_plan(M64, TrainingConfig(ema="replicated"))
    t = p.cluster_table
    assert [r.nodes for r in t.rows] == [8, 16, 32, 64, 128]
    assert set(t.skipped) == {1, 2, 4} and all("needs" in why for why in t.skipped.values())
    own = next(r for r in t.rows if r.is_plan)
    assert own.nodes == 64 and own.best is p.best and own.cost.cost_usd == p.cost_usd
    # the marks follow the rows: fastest = fewest days, cheapest = lowest cost, and a row that
    # another beats on both time and cost is off the Pareto front
    assert t.fastest is min(t.rows, key=lambda r: r.cost.days)
    assert t.cheapest is min(t.rows, key=lambda r: r.cost.cost_usd)
    assert t.fastest is not t.cheapest
    # more nodes are never slower: one all-gather per param group after the step, not a
    # ring latency per bucket (the 0.13 s that made 128 nodes slower than 64)
    steps = [r.best.step.total_s for r in t.rows]
    assert all(b <= a for a, b in zip(steps, steps[1:], strict=False))
    for r in t.rows:
        beaten = any(o.cost.days < r.cost.days and o.cost.cost_usd < r.cost.cost_usd
                     for o in t.rows)
        assert r.pareto == (not beaten)
    d = p.to_dict()["cluster_table"]
    assert [r["nodes"] for r in d["rows"]] == [8, 16, 32, 64, 128]
    assert d["fastest_nodes"] == t.fastest.nodes and d["cheapest_nodes"] == t.cheapest.nodes


@pytest.mark.parametrize("kw", [{"days": 10}, {"budget": 150_000}])
def test_make_plan_with_days_or_budget_plans_the_picked_size(kw):
    full = make_plan(M64, TrainingConfig(ema="replicated")).cluster_table
    p = make_plan(M64, TrainingConfig(ema="replicated"), **kw)
    if "days" in kw:
        ok = [r for r in full.rows if r.cost.days <= kw["days"]]
        want = min(ok, key=lambda r: r.cost.cost_usd)
        assert p.days <= kw["days"]
    else:
        ok = [r for r in full.rows if r.cost.cost_usd <= kw["budget"]]
        want = min(ok, key=lambda r: r.cost.days)
        assert p.cost_usd <= kw["budget"]
    assert p.cluster.nodes == want.nodes and p.step_s == pytest.approx(want.best.step.total_s)
    assert p.cluster_table.picked.nodes == want.nodes
    assert [r.nodes for r in p.cluster_table.rows if r.is_plan] == [want.nodes]


def test_no_table_when_asked():
    assert make_plan(SMALL, SMALL_RUN, ClusterConfig(nodes=1), table=False).cluster_table is None


# ---------------------------------------------------------------------------------------------
# Refusing what cannot run
# ---------------------------------------------------------------------------------------------


def test_moe_search_and_every_table_row_never_use_zero3():
    p = make_plan(M64, TrainingConfig(ema="replicated"), top=50)
    assert all(e.layout.zero != 3 for e in p.top)
    assert all(r.best.layout.zero != 3 for r in p.cluster_table.rows)


def test_tpu_gets_a_plan_but_no_launch_files():
    p = make_plan(M64, TrainingConfig(ema="replicated"),
                  ClusterConfig(gpu="tpu-v5p", nodes=64, gpus_per_node=4))
    assert not p.launchable and "tpu-v5p has no DeepSpeed accelerator" in p.launch_note
    files = plan_files(p)
    assert set(files) == {"plan.yaml", "card.yaml"} and not set(files) & set(LAUNCH_FILES)
    assert yaml.safe_load(files["plan.yaml"].split("\n", 2)[2])["launch"]["launchable"] is False
    gpu = make_plan(SMALL, SMALL_RUN, ClusterConfig(nodes=1))
    assert gpu.launchable and set(LAUNCH_FILES) <= set(plan_files(gpu))


def test_a_precision_the_device_lacks_is_refused():
    with pytest.raises(ConfigError) as exc:
        make_plan(M64, TrainingConfig(precision="fp32"),
                  ClusterConfig(gpu="tpu-v5p", nodes=64, gpus_per_node=4))
    text = str(exc.value)
    assert text == ("--precision fp32: tpu-v5p lists no fp32 throughput (precisions: bf16); "
                    "choose --precision bf16")


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    (["--params", "97B", "--zero", "3"], "MoE not supported with Stage 3"),
    (["--params", "97B", "--gpu", "tpu-v5p", "--precision", "fp32"], "lists no fp32 throughput"),
    (["--params", "97B", "--days", "1"], "--days 1: no cluster size (8-128 nodes) finishes"),
    (["--params", "97B", "--budget", "1000"], "the cheapest is "),
    (["--params", "97B", "--placement", "nope"],
     "--placement 'nope': choose one of expert-before-data, data-before-expert"),
    (["--params", "97B", "--days", "10", "--nodes", "8"], "--days chooses the node count"),
    (["--params", "97B", "--days", "10", "--budget", "1e6"], "not both"),
    (["--params", "97B", "--days", "0"], "--days = 0.0: must be a finite number > 0"),
    (["--params", "97B", "--ema", "mirror"],
     "--ema 'mirror': choose one of none, replicated, sharded"),
    (["--params", "97B", "--precision", "fp8"],
     "--precision 'fp8': choose one of bf16, fp16, tf32, fp32"),
])
def test_plan_refusals_are_one_line_and_exit_2(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, "plan", *args)
    assert code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_plan_prints_the_table_and_json_holds_it(capsys, tmp_path):
    code, out, _ = run_main(capsys, "plan", "--model", "small-ec8", "--nodes", "1",
                            "--global-batch", "256", "--no-write")
    assert code == 0 and "cluster size" in out and "cheapest" in out and "pareto" in out
    code, out, _ = run_main(capsys, "plan", "--model", "small-ec8", "--nodes", "1",
                            "--global-batch", "256", "--out", str(tmp_path / "p"), "--json")
    printed = json.loads(out)
    assert code == 0
    assert [r["nodes"] for r in printed["cluster_table"]["rows"]] == [1, 2, 4, 8, 16, 32]
    # an EMA was asked for (the default); the search keeps it sharded, which costs less
    assert printed["training"]["ema"] == "sharded" and printed["training"]["ema_decay"] == 0.9999
    assert printed["best"]["memory"]["ema"] > 0


def test_tpu_plan_writes_no_launch_files_and_says_so(capsys, tmp_path):
    out = tmp_path / "p"
    code, stdout, err = run_main(capsys, "plan", "--params", "97B", "--gpu", "tpu-v5p",
                                 "--out", str(out))
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["card.yaml", "plan.yaml"]
    assert "no launch files: tpu-v5p has no DeepSpeed accelerator" in err
    assert "launch.sh" not in stdout


def test_days_picks_the_node_count_on_the_command_line(capsys):
    code, out, _ = run_main(capsys, "plan", "--params", "97B", "--days", "10", "--no-write",
                            "--json")
    printed = json.loads(out)
    assert code == 0 and printed["days"] <= 10
    assert printed["cluster"]["nodes"] == printed["cluster_table"]["picked_nodes"]
