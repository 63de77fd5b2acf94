"""Plans: the 97B default plan, plan files, the DeepSpeed config, inference, and no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ecdit_scale import sizes
from ecdit_scale.config import ClusterConfig, Optimizer, Precision, load_model_config
from ecdit_scale.errors import ConfigError
from ecdit_scale.planner import plan_files as plan_mod
from ecdit_scale.planner.deepspeed_config import deepspeed_config, deepspeed_launch_command
from ecdit_scale.planner.hardware import get_accelerator
from ecdit_scale.planner.inference import estimate_inference
from ecdit_scale.planner.plan import ScalingEstimate, make_plan
from ecdit_scale.planner.plan_files import PLAN_FILES, write_plan_files

ROOT = Path(__file__).resolve().parents[1]
M64 = sizes.resolve("97B").config
H100 = get_accelerator("h100-sxm")


@pytest.fixture(scope="module")
def plan97():
    return make_plan(M64)


# ---------------------------------------------------------------------------------------------
# The default plan
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plan97_default():
    # DeepSpeed's default placement with a replicated EMA (what the plan chose before it
    # searched either): its expert gradients cross the NICs, and a tensor-parallel layout wins
    return make_plan(M64, pin={"placement": "expert-before-data", "ema": "replicated"},
                     table=False)


def test_97b_default_plan_headline_numbers(plan97, plan97_default):
    p = plan97
    assert p.model == "ecdit-m-64e" and p.world == 512  # ClusterConfig(): 64 x 8 h100-sxm
    assert p.training.global_batch == 4096 and p.training.steps == 800_000
    assert p.search.num_feasible >= 1 and 1 <= len(p.top) <= 5 and p.top[0] is p.best
    assert 0 < p.mfu < 1 and p.days > 0
    assert p.gpu_hours == pytest.approx(p.step_s * p.training.steps * p.world / 3600)
    assert p.days == pytest.approx(p.step_s * p.training.steps / 86_400)
    assert p.cost_usd == pytest.approx(p.gpu_hours * p.cluster.price_per_gpu_hour)
    assert p.best.memory.total <= H100.memory_bytes
    assert p.flops_per_step.hardware >= p.flops_per_step.model > 0
    assert p.flops_per_image.forward_macs * 2 == pytest.approx(p.flops_per_image.forward)
    # MFU is model FLOPs over peak x step time
    assert p.mfu == pytest.approx(p.flops_per_step.model
                                  / (p.world * H100.peak_bf16_flops * p.step_s))
    assert p.compute_flops == pytest.approx(p.flops_per_step.model * p.training.steps)
    # launchable: tp = 1, and here no tensor-parallel layout is faster (once the expert-data
    # group sits on NVLink); under DeepSpeed's default placement with a replicated EMA one is,
    # and stands beside it
    assert p.best.layout.tp == 1 and all(e.layout.tp == 1 for e in p.top)
    assert p.tp_alternative is None
    assert plan97_default.best.layout.tp == 1 and plan97_default.step_s > p.step_s
    alt = plan97_default.tp_alternative
    assert alt is not None and alt.layout.tp > 1 and alt.step.total_s < plan97_default.step_s
    assert p.inference.devices == 8 and p.inference.model == p.model
    assert any("assumption" in e for e in p.estimated)  # the price is labelled


def test_plan_to_dict_is_json(plan97):
    d = json.loads(json.dumps(plan97.to_dict()))
    assert d["model"] == "ecdit-m-64e" and d["best"]["layout"]["dp"] == plan97.best.layout.dp
    assert d["params"]["total_params"] == plan97.params.total_params
    assert d["fastest_with_tensor_parallel"] is None  # tp = 1 is the fastest
    assert d["best"]["layout"]["placement"] == plan97.best.placement.value
    assert d["inference"]["latency_s"] == plan97.inference.latency_s
    assert d["scaling_estimate"] is None and d["resolved"] is None  # no scaling model was given
    assert d["estimated"] and d["assumptions"]


def test_pinned_plan_uses_the_pins():
    p = make_plan(M64, pin={"tp": 1, "ep": 64, "zero": 2})
    lay = p.best.layout
    assert (lay.tp, lay.ep, lay.zero) == (1, 64, 2) and not p.best.flags


def test_plan_of_an_impossible_request_is_one_config_error():
    with pytest.raises(ConfigError, match="on 1 GPU: best layout .* needs .* per device"):
        make_plan(M64, cluster=ClusterConfig(nodes=1, gpus_per_node=1))


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def test_plan_files_are_written_and_parse_back(plan97, tmp_path):
    out = tmp_path / "plan"
    paths = write_plan_files(plan97, out)
    assert sorted(paths) == sorted(PLAN_FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted(PLAN_FILES)  # no temp files left
    data = yaml.safe_load((out / "plan.yaml").read_text())
    assert data["days"] == pytest.approx(plan97.days) and data["model"] == plan97.model
    ds = json.loads((out / "ds_config.json").read_text())
    lay = plan97.best.layout
    assert ds["train_micro_batch_size_per_gpu"] == lay.micro_batch
    assert ds["zero_optimization"]["stage"] == lay.zero
    assert ds["train_batch_size"] == 4096 and "optimizer" not in ds  # the worker's own optimizer
    assert load_model_config(out / "card.yaml") == M64
    hosts = [ln for ln in (out / "hostfile").read_text().splitlines() if not ln.startswith("#")]
    assert hosts[0] == "node-001 slots=8" and len(hosts) == 64
    assert "PLACEHOLDER" in (out / "hostfile").read_text()
    launch = (out / "launch.sh").read_text()
    assert os.access(out / "launch.sh", os.X_OK)
    assert ("deepspeed --hostfile hostfile --num_nodes 64 --num_gpus 8 --no_local_rank "
            "--module ecdit_scale.train.worker --run-dir") in launch


def test_hostfile_parses_with_deepspeed_runner(plan97):
    pytest.importorskip("deepspeed")
    from deepspeed.launcher.runner import _parse_hostfile

    pool = _parse_hostfile(plan_mod.hostfile_text(plan97.cluster).splitlines())
    assert len(pool) == 64 and set(pool.values()) == {8}


def test_no_half_written_files_on_error(plan97, tmp_path, monkeypatch):
    out = tmp_path / "plan"
    out.mkdir()
    (out / "plan.yaml").write_text("old plan\n")

    def broken(cfg):
        raise RuntimeError("card rendering failed")

    monkeypatch.setattr(plan_mod, "card_text", broken)
    with pytest.raises(RuntimeError):
        write_plan_files(plan97, out)
    assert [p.name for p in out.iterdir()] == ["plan.yaml"]
    assert (out / "plan.yaml").read_text() == "old plan\n"


def test_out_path_that_is_a_file_is_refused(plan97, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        write_plan_files(plan97, f)


# ---------------------------------------------------------------------------------------------
# DeepSpeed config: parsed by DeepSpeed itself
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
@pytest.mark.parametrize("optimizer", list(Optimizer))
@pytest.mark.parametrize("client", [False, True])
def test_deepspeed_accepts_the_config(monkeypatch, zero, optimizer, client):
    pytest.importorskip("deepspeed")
    import deepspeed.runtime.config as dsc

    world = 16  # DeepSpeedConfig takes its world size from torch.distributed: stand it in
    monkeypatch.setattr(dsc.dist, "get_rank", lambda *a, **k: 0)
    monkeypatch.setattr(dsc.dist, "get_world_size", lambda *a, **k: world)
    cfg = deepspeed_config(micro_batch=4, grad_accum=8, zero_stage=zero, precision=Precision.BF16,
                           optimizer=optimizer, lr=1e-4, warmup_steps=20_000, world=world,
                           client_optimizer=client)
    parsed = dsc.DeepSpeedConfig(json.loads(json.dumps(cfg)))
    assert parsed.train_batch_size == 4 * 8 * world
    assert parsed.train_micro_batch_size_per_gpu == 4
    assert parsed.gradient_accumulation_steps == 8
    assert parsed.zero_optimization_stage == zero and parsed.zero_enabled == (zero > 0)
    assert parsed.bfloat16_config.enabled and parsed.gradient_clipping == 1.0
    assert parsed.scheduler_name == "WarmupLR"
    assert parsed.scheduler_params["warmup_num_steps"] == 20_000
    if client:
        assert parsed.optimizer_name is None
    else:
        import torch

        name = parsed.optimizer_name
        assert name == "adamw" or hasattr(torch.optim, name)  # DeepSpeed's fallback
    if zero and (client or optimizer is not Optimizer.ADAMW):
        assert parsed.zero_allow_untested_optimizer


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("moe", [False, True])
def test_deepspeed_config_skips_per_gradient_work_deepspeed_would_do(monkeypatch, world, moe):
    """bf16: no serial overflow check (no loss scale to protect); one data-parallel rank: no
    overlap and, for a dense model, no contiguous-gradient copies (nothing is communicated;
    DeepSpeed requires them for MoE); several: both kept. The op counts these settings save
    are measured in tests/test_engine_ops.py."""
    pytest.importorskip("deepspeed")
    import deepspeed.runtime.config as dsc

    monkeypatch.setattr(dsc.dist, "get_rank", lambda *a, **k: 0)
    monkeypatch.setattr(dsc.dist, "get_world_size", lambda *a, **k: world)
    for zero in (1, 2):
        cfg = deepspeed_config(micro_batch=4, grad_accum=1, zero_stage=zero, precision="bf16",
                               optimizer="adamw", lr=1e-4, warmup_steps=0, world=world,
                               client_optimizer=True, moe=moe)
        parsed = dsc.DeepSpeedConfig(json.loads(json.dumps(cfg)))
        assert parsed.bfloat16_config.enabled and not parsed.bfloat16_config.check_grad_overflow
        zc = parsed.zero_config
        assert zc.overlap_comm == (world > 1)
        assert zc.contiguous_gradients == (world > 1 or moe)
        assert parsed.gradient_clipping == 1.0  # clipping is kept
    fp32 = deepspeed_config(micro_batch=4, grad_accum=1, zero_stage=1, precision="fp32",
                            optimizer="adamw", lr=1e-4, warmup_steps=0, world=world)
    assert fp32["bf16"] == {"enabled": False}


def test_deepspeed_config_rejects_nonsense():
    with pytest.raises(ConfigError):
        deepspeed_config(micro_batch=0, grad_accum=1, zero_stage=1, precision="bf16",
                         optimizer="adamw", lr=1e-4, warmup_steps=0, world=1)
    with pytest.raises(ConfigError):
        deepspeed_config(micro_batch=1, grad_accum=1, zero_stage=5, precision="bf16",
                         optimizer="adamw", lr=1e-4, warmup_steps=0, world=1)


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------


def test_inference_97b_on_8_h100():
    est = estimate_inference(M64, H100, devices=8, steps=50, cfg_guidance=True, batch=1)
    assert est.ep == 8 and est.tp == 4  # 48 heads / 12 KV heads: tp 8 is not valid
    assert est.fits and est.bound == "memory"  # batch 1 reads the weights every step
    assert est.latency_s == pytest.approx(50 * est.step_s) and est.latency_s > 0
    no_cfg = estimate_inference(M64, H100, devices=8, steps=50, cfg_guidance=False)
    assert est.flops_per_step == pytest.approx(2 * no_cfg.flops_per_step)
    big = estimate_inference(M64, H100, devices=8, steps=50, batch=256)
    assert big.bound == "compute" and big.images_per_s > est.images_per_s
    assert json.loads(json.dumps(est.to_dict()))["devices"] == 8


# ---------------------------------------------------------------------------------------------
# No torch on the plan path
# ---------------------------------------------------------------------------------------------


def test_planner_never_imports_torch(tmp_path):
    code = f"""
import sys, importlib.util
import ecdit_scale.planner.plan as p
import ecdit_scale.planner.plan_files as pf
from ecdit_scale import sizes
import ecdit_scale.planner.inference, ecdit_scale.planner.deepspeed_config
import ecdit_scale.planner.examples, ecdit_scale.planner.request
plan = p.make_plan(sizes.resolve("97B").config)
pf.write_plan_files(plan, {str(tmp_path / 'out')!r})
if importlib.util.find_spec("ecdit_scale.cli.plan") is not None:
    import ecdit_scale.cli.plan  # the CLI's plan command module, once it exists
bad = sorted(m for m in ("torch", "deepspeed", "ecdit_scale.model") if m in sys.modules)
assert not bad, bad
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_plan_command_path_never_imports_torch(tmp_path):
    """`ecdit-scale plan` end to end, when the CLI command exists."""
    import importlib.util

    if importlib.util.find_spec("ecdit_scale.cli.plan") is None:
        pytest.skip("ecdit_scale.cli.plan not written yet")
    code = f"""
import sys
from typer.testing import CliRunner
from ecdit_scale.cli import app
res = CliRunner().invoke(app, ["plan", "--params", "97B", "--out", {str(tmp_path / 'p')!r}])
bad = sorted(m for m in ("torch", "deepspeed") if m in sys.modules)
print(res.exit_code, bad)
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("[]"), res.stdout


# ---------------------------------------------------------------------------------------------
# One Plan object: loss model, plan.yaml == --json, folders that appear whole
# ---------------------------------------------------------------------------------------------

SMALL = sizes.get("small-ec8")
ONE_NODE = ClusterConfig(nodes=1)


def _scaling(kind, experts, compute):
    return {"kind": kind, "source": "test", "loss": "test loss",
            "measured_compute_flops": [1e12, 1e13], "beyond_factor": compute / 1e13,
            "statistics": "test", "multipliers": [
                {"variant": f"{kind}-{experts}e", "baseline": "dense", "value": 1.5,
                 "interval": [0.9, 2.0], "note": ""},
                {"variant": kind, "baseline": "token-choice", "value": None, "interval": None,
                 "note": "not identified"}]}


def test_scaling_model_gets_kind_experts_and_compute_and_becomes_typed():
    seen = []
    p = make_plan(SMALL, cluster=ONE_NODE,
                  scaling_model=lambda k, e, c: seen.append((k, e, c)) or _scaling(k, e, c))
    assert seen == [("expert-choice", 8, p.compute_flops)]
    est = p.scaling_estimate
    assert isinstance(est, ScalingEstimate) and est.multipliers[0].interval == (0.9, 2.0)
    assert est.beyond_factor == p.compute_flops / 1e13
    d = p.to_dict()["scaling_estimate"]
    assert d["estimated"] is True and d["multipliers"][1]["value"] is None
    assert "loss" not in p.to_dict() and "predicted_loss" not in p.to_dict()
    assert make_plan(SMALL, cluster=ONE_NODE,
                     scaling_model=lambda k, e, c: None).scaling_estimate is None


@pytest.mark.parametrize("bad", [{"kind": "x"},
                                 {**_scaling("x", 8, 1.0), "beyond_factor": float("nan")},
                                 {**_scaling("x", 8, 1.0), "measured_compute_flops": [1.0]}])
def test_a_broken_scaling_estimate_is_one_config_error(bad):
    with pytest.raises(ConfigError, match="scaling estimate"):
        make_plan(SMALL, cluster=ONE_NODE, scaling_model=lambda k, e, c: bad)


def test_pinned_tp_has_no_alternative_and_top_must_be_positive():
    assert make_plan(SMALL, cluster=ONE_NODE, pin={"tp": 1}).tp_alternative is None
    with pytest.raises(ConfigError, match="--top"):
        make_plan(SMALL, cluster=ONE_NODE, top=0)


def test_plan_json_and_plan_yaml_are_the_same_object(tmp_path):
    out = tmp_path / "p"
    res = subprocess.run([sys.executable, "-m", "ecdit_scale", "plan", "--model", "small-ec8",
                          "--nodes", "1", "--out", str(out), "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)
    assert printed == yaml.safe_load((out / "plan.yaml").read_text())
    assert printed["inference"]["devices"] == 8
    assert printed["scaling_estimate"]["multipliers"] and "predicted_loss" not in printed
    assert "fastest_with_tensor_parallel" in printed and printed["compute_flops"] > 0


def test_a_folder_with_other_files_is_refused_and_kept(tmp_path):
    out = tmp_path / "p"
    out.mkdir()
    (out / "metrics.jsonl").write_text("precious\n")
    plan = make_plan(SMALL, cluster=ONE_NODE)
    with pytest.raises(ConfigError, match="metrics.jsonl"):
        write_plan_files(plan, out)
    assert [p.name for p in out.iterdir()] == ["metrics.jsonl"]
    with pytest.raises(ConfigError, match="folder name"):
        write_plan_files(plan, "")


def test_two_plans_into_one_folder_never_mix(tmp_path):
    import threading

    out = tmp_path / "p"
    a = make_plan(SMALL, cluster=ONE_NODE)
    b = make_plan(SMALL, cluster=ClusterConfig(nodes=2))
    texts = {id(a): plan_mod.plan_files(a), id(b): plan_mod.plan_files(b)}
    assert texts[id(a)]["hostfile"] != texts[id(b)]["hostfile"]
    errors = []

    def write(plan):
        try:
            for _ in range(5):
                write_plan_files(plan, out)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    found = {p.name: p.read_text() for p in out.iterdir()}
    assert found in (texts[id(a)], texts[id(b)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temporary folders left


def test_deepspeed_launch_command_is_the_plans_and_the_launchers():
    cmd = deepspeed_launch_command(num_gpus=8, num_nodes=2, hostfile="hostfile", run_dir="r")
    assert cmd == ["deepspeed", "--hostfile", "hostfile", "--num_nodes", "2", "--num_gpus", "8",
                   "--no_local_rank", "--module", "ecdit_scale.train.worker", "--run-dir", "r"]
    local = deepspeed_launch_command(num_gpus=2, run_dir="r", master_port=1234,
                                     launcher=(sys.executable, "-m", "deepspeed.launcher.runner"),
                                     worker_args=("--resume",))
    assert local[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]
    assert local[3:7] == ["--num_gpus", "2", "--master_port", "1234"] and local[-1] == "--resume"
    assert "--hostfile" not in local and "--num_nodes" not in local


def test_a_run_shorter_than_the_papers_warm_up_warms_up_for_the_same_share():
    """20,000 warm-up steps of the paper's 800,000; a 1,000-step plan used to be all warm-up."""
    from ecdit_scale.planner.request import training_for_plan

    assert training_for_plan(global_batch=8, steps=1000, optimizer="adamw").warmup_steps == 25
    assert training_for_plan(global_batch=8, steps=10, optimizer="adamw").warmup_steps == 1
    assert training_for_plan(global_batch=8, steps=800_000, optimizer="adamw").warmup_steps \
        == 20_000


def test_ema_kind_is_searched_unless_named(capsys):
    """Without --ema the run keeps an EMA and the search picks its kind (sharded at 97B);
    naming a kind pins it, and none drops it."""
    from conftest import run_main

    def ema_of(*args):
        code, out, _ = run_main(capsys, "plan", "--params", "97B", "--top", "1", "--json", *args)
        assert code in (0, None)
        d = json.loads(out)
        return d["training"]["ema"], d["best"]["layout"]["ema"], d["best"]["memory"]["ema"]

    assert ema_of()[:2] == ("sharded", "sharded")
    kind, layout_kind, bytes_ = ema_of("--ema", "replicated")
    assert kind == layout_kind == "replicated" and bytes_ > 20 * 2**30  # a 25.6 GiB replica
    assert ema_of("--ema", "none")[2] == 0
