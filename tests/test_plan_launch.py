"""A plan folder is a complete run spec: ``plan`` then ``bash launch.sh`` runs exactly the
plan's settings and records them; the same files run as 2 "nodes" over loopback through
DeepSpeed's multi-node path (no ssh) and give the 1-node run's losses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import PLAN_RUN_STEPS, cli_here, make_plan, metrics, run_launch_sh

from ecdit_scale.train.process import free_port


def _plan(plan: Path) -> dict:
    return yaml.safe_load((plan / "plan.yaml").read_text())


# ---------------------------------------------------------------------------------------------
# Without a launch: the request a plan makes
# ---------------------------------------------------------------------------------------------


def test_scaled_warmup_keeps_the_fraction():
    from ecdit_scale.train.plan_run import scaled_warmup

    assert scaled_warmup(20_000, 800_000, 40) == 1  # 2.5% of 40 steps, at least one
    assert scaled_warmup(20_000, 800_000, 400_000) == 10_000
    assert scaled_warmup(20_000, 800_000, 800_000) == 20_000
    assert scaled_warmup(20_000, 800_000, 900_000) == 20_000  # longer: the plan's warm-up
    assert scaled_warmup(0, 1000, 10) == 0
    assert scaled_warmup(20_000, 1000, 10) == 200  # longer than the plan's run: in proportion
    # RMSProp's floor: a short run keeps 1,000 warm-up steps, unless the plan had fewer
    assert scaled_warmup(20_000, 800_000, 40, floor=1000) == 1000
    assert scaled_warmup(20_000, 800_000, 400_000, floor=1000) == 10_000
    assert scaled_warmup(25, 1000, 40, floor=1000) == 25


def test_rmsprop_plans_warm_up_over_its_average_horizon():
    from ecdit_scale.planner.deepspeed_config import warmup_floor, warmup_floor_note
    from ecdit_scale.planner.request import training_for_plan

    assert (warmup_floor("rmsprop"), warmup_floor("adamw"), warmup_floor("sgd")) == (1000, 0, 0)
    assert training_for_plan(global_batch=8, steps=1000, optimizer="rmsprop").warmup_steps == 1000
    assert training_for_plan(global_batch=8, steps=40, optimizer="rmsprop").warmup_steps == 1000
    assert training_for_plan(global_batch=8, steps=800_000,
                             optimizer="rmsprop").warmup_steps == 20_000
    assert "ends at 4% of the peak lr" in warmup_floor_note("rmsprop", 1000, 40)
    assert warmup_floor_note("rmsprop", 20_000, 800_000) is None
    assert warmup_floor_note("adamw", 1000, 40) is None


def test_plan_ds_config_never_warms_up_past_the_run(tmp_path, cpu_profile):
    plan = make_plan(tmp_path / "p", cpu_profile, "--gpus", "2")
    # a 1000-step RMSProp plan warms up over RMSProp's floor of 1000 steps, not the paper's
    # 2.5% (25 steps diverge) nor its 20,000 (all warm-up); ds_config says the same
    assert _plan(plan)["training"]["warmup_steps"] == 1000
    ds = json.loads((plan / "ds_config.json").read_text())
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 1000


def test_request_from_plan_takes_every_setting_of_the_plan(cpu_plan):
    from ecdit_scale.train.plan_run import request_from_plan
    from ecdit_scale.train.request import check_request

    p = _plan(cpu_plan)
    lay, tr = p["best"]["layout"], p["training"]
    req = request_from_plan(cpu_plan, steps=40, out=str(cpu_plan / "never-run"))
    assert (req.nproc, req.hostfile, req.ep, req.zero, req.micro_batch, req.grad_accum,
            req.recompute) == (2, None, lay["ep"], lay["zero"], lay["micro_batch"],
                               lay["grad_accum"], lay["recompute"])
    assert (req.optimizer, req.lr, req.precision, req.ema, req.ema_decay) == (
        tr["optimizer"], tr["lr"], tr["precision"], tr["ema"], tr["ema_decay"])
    assert req.warmup_steps == tr["warmup_steps"] == 1000  # RMSProp's floor: not scaled down
    s = check_request(req).settings
    assert s.global_batch == tr["global_batch"] and s.plan == str(cpu_plan.resolve())
    assert s.warmup_steps == 1000 and not s.notes


def test_a_plan_launch_compiles_what_the_plan_priced(cpu_plan):
    import shutil

    import yaml

    from ecdit_scale.files import load_yaml_file
    from ecdit_scale.train.plan_run import request_from_plan

    assert _plan(cpu_plan)["launch"]["compile"] == "none"  # planned eager (the default)
    req = request_from_plan(cpu_plan, steps=40, out=str(cpu_plan / "never-run"))
    assert req.compile == "none" and not req.notes  # not the launch's CUDA default (block)
    asked = request_from_plan(cpu_plan, steps=40, out=str(cpu_plan / "never-run"),
                              compile="block")
    assert asked.compile == "block" and "priced compile none" in " ".join(asked.notes)
    # a plan written before the key existed: the launch decides, as it did then
    old = cpu_plan.parent / "old-plan"
    shutil.copytree(cpu_plan, old)
    data = load_yaml_file(old / "plan.yaml", what="plan")
    del data["launch"]["compile"]
    (old / "plan.yaml").write_text(yaml.safe_dump(data))
    assert request_from_plan(old, steps=40, out=str(old / "never-run")).compile is None


@pytest.mark.parametrize("args, words", [
    (("--lr", "0.1"), "--lr is decided by the plan"),
    (("--nproc", "1"), "--nproc is decided by the plan"),
])
def test_a_plan_run_refuses_options_the_plan_decides(cpu_plan, tmp_path, args, words):
    proc = cli_here("launch", "--plan", str(cpu_plan), *args, "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_a_missing_plan_folder_is_one_line(tmp_path):
    proc = cli_here("launch", "--plan", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "no such folder" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# CI: the plan's launch.sh as written, 2 CPU ranks, expert choice, ep 2
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_plan_launch_sh_runs_the_plan(cpu_plan, plan_run):
    p = _plan(cpu_plan)
    lay, tr = p["best"]["layout"], p["training"]
    run = json.loads((plan_run / "run.json").read_text())
    summary = json.loads((plan_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_done"] == PLAN_RUN_STEPS
    assert p["model_config"]["ffn"]["kind"] == "expert-choice" and run["world"] == 2
    for rec in (run, summary):  # every knob of the plan, in both records
        assert (rec["ep"], rec["zero"], rec["micro_batch"], rec["grad_accum"],
                rec["recompute"]) == (lay["ep"], lay["zero"], lay["micro_batch"],
                                      lay["grad_accum"], lay["recompute"])
        assert (rec["optimizer"], rec["lr"], rec["precision"], rec["ema"], rec["ema_decay"]) == (
            tr["optimizer"], tr["lr"], tr["precision"], tr["ema"], tr["ema_decay"])
        assert rec["plan"] == str(cpu_plan.resolve())
    assert (lay["ep"], lay["zero"], tr["optimizer"]) == (2, 2, "rmsprop")
    assert summary["optimizer_class"] == "RMSprop" and summary["precision"] == "fp32"
    # RMSProp's warm-up is not scaled below its floor: the short run ramps as the plan does
    assert tr["warmup_steps"] == run["warmup_steps"] == 1000
    recs = metrics(plan_run)
    assert [r["lr"] for r in recs] == pytest.approx([tr["lr"] * r["step"] / 1000 for r in recs])
    ds = json.loads((plan_run / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2 and "bf16" not in ds
    assert ds["train_batch_size"] == tr["global_batch"]
    losses = [r["loss"] for r in recs]
    assert max(losses) < 1.1 * losses[0]  # no early blow-up (a 1-step warm-up gives one)
    # the sharded EMA: each rank keeps about half (by parameter index), both are saved
    ranks = [json.loads((plan_run / "checksums" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["ema"]["mode"] == "sharded" for r in ranks)
    assert {f.name for f in (plan_run / "checkpoints" / f"step{PLAN_RUN_STEPS}").glob("ema_*")} \
        == {"ema_rank0.pt", "ema_rank1.pt"}
    assert summary["ema_bytes_per_rank_max"] == max(r["ema"]["bytes"] for r in ranks) > 0


# ---------------------------------------------------------------------------------------------
# Multi-node: the hostfile's 2 nodes as 2 processes of this machine, over loopback
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_nodes_over_loopback_match_one_node(tmp_path, cpu_profile, plan_run):
    plan = make_plan(tmp_path / "cpu-2x1", cpu_profile, "--nodes", "2", "--gpus-per-node", "1")
    assert len([x for x in (plan / "hostfile").read_text().splitlines()
                if x and not x.startswith("#")]) == 2
    out = tmp_path / "run-2x1"
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    nodes = [run_launch_sh(plan, out, env={**env, "NODE_RANK": str(i)}, wait=False)
             for i in (0, 1)]
    results = [p.communicate(timeout=300) for p in nodes]
    for p, (stdout, stderr) in zip(nodes, results, strict=True):
        assert p.returncode == 0, stderr[-3000:]
        assert "--no_ssh" in json.loads(stdout)["command"]
    run = json.loads((out / "run.json").read_text())
    assert (run["nodes"], run["nproc_per_node"], run["world"]) == (2, 1, 2)
    two, one = metrics(out), metrics(plan_run)
    assert [r["step"] for r in two] == list(range(1, PLAN_RUN_STEPS + 1))
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-6)


@pytest.mark.slow
def test_validate_plan_run_lists_every_knob_and_the_predictions(cpu_plan, plan_run):
    proc = cli_here("validate", str(cpu_plan), str(plan_run), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    [c] = json.loads(proc.stdout)
    assert c["differs"] == []  # RMSProp's 1000-step warm-up is kept by the short run
    names = {k["name"] for k in c["knobs"]}
    assert {"optimizer", "lr", "precision", "ema", "zero", "ep", "micro_batch", "grad_accum",
            "recompute", "world"} <= names
    mem, step = c["predictions"]
    assert mem["predicted"] > 0 and mem["measured"] > 0 and mem["ratio"] > 0
    assert step["predicted"] > 0 and step["measured"] > 0 and step["ratio"] > 0


@pytest.mark.slow
def test_validate_sets_the_profiled_step_beside_the_prediction_term_by_term(plan_run):
    """The plan run profiles one step (``ECDIT_SCALE_PROFILE_STEP``): ``validate`` puts its
    parts beside the profile prediction's terms, the rest being the median step less the
    others, and the model's kernels (CPU: leaf compute ops) beside the operator count."""
    from conftest import PLAN_RUN_PROFILED

    b = json.loads((plan_run / f"profile_step{PLAN_RUN_PROFILED}.json").read_text())["breakdown"]
    parts = b["parts_ms"]
    for part in ("forward/model", "backward/model", "backward/hooks", "step/optimizer", "ema"):
        assert parts[part] > 0, part  # ZeRO-2 hooks, RMSProp's own range, the sharded EMA
    # priced by a recorded profile of this kind of CPU (measuring a quick one on this machine
    # is test_validate_cpu_run's)
    from conftest import RECORDED_CPU_PROFILE

    proc = cli_here("validate", str(plan_run), "--profile", str(RECORDED_CPU_PROFILE), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    [row] = json.loads(proc.stdout)["rows"]
    meas, pred = row["terms_measured"], row["terms_predicted"]
    terms = ("gemm", "attention", "memory_bound", "comm", "optimizer", "rest")
    assert set(terms) < set(meas) and set(terms) < set(pred)
    assert sum(meas[t] for t in terms) == pytest.approx(row["step_s_measured"])
    assert sum(pred[t] for t in terms) == pytest.approx(row["step_s_predicted"])
    assert meas["optimizer"] == pytest.approx((parts["step/optimizer"] + parts["ema"]) / 1e3)
    assert meas["gemm"] > 0 and pred["gemm"] > 0 and meas["kernels"] == b["model_kernels"] > 0
    assert row["gemm_s_measured"] == meas["gemm"] and row["kernels_predicted"] == pred["kernels"]
    table = cli_here("validate", str(plan_run), "--profile", str(RECORDED_CPU_PROFILE))
    assert table.returncode == 0 and "Step time by term" in table.stdout
    assert "host time" in table.stdout  # the basis of a CPU run's terms is named
