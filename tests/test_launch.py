"""`ecdit-scale launch`: real 2-rank DeepSpeed-MoE runs on CPU, bad input, kill and resume.

The launched runs are shared with test_expert_parallel.py and test_validate.py through the
session fixture ``ec_run`` in conftest.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EC_ARGS, ROOT, STEPS, cli, cli_env, launched, metrics  # noqa: F401


# ---------------------------------------------------------------------------------------------
# A real run
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_expert_choice_ep2_zero2_loss_goes_down(ec_run):
    recs = metrics(ec_run)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    first = sum(r["loss"] for r in recs[:5]) / 5
    last = sum(r["loss"] for r in recs[-5:]) / 5
    assert last < first - 0.1, (first, last)
    wall = json.loads((ec_run / "test_launch_result.json").read_text())["test_wall_s"]
    assert wall < 120, f"2-rank launch took {wall:.0f} s"


@pytest.mark.slow
def test_run_directory_records(ec_run):
    from ecdit_scale.config import load_model_config
    from ecdit_scale.params import count_params

    cfg = load_model_config(ec_run / "card.yaml")
    assert cfg.name == "nano-ec8"
    run = json.loads((ec_run / "run.json").read_text())
    assert (run["world"], run["ep"], run["zero"], run["global_batch"]) == (2, 2, 2, 8)
    ds = json.loads((ec_run / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2 and "optimizer" not in ds
    pred = json.loads((ec_run / "predictions.json").read_text())
    assert pred["params"]["model_params"] == count_params(cfg).model_params
    assert pred["flops"]["model_flops_per_step"] > 0 and pred["memory"]["total"] > 0
    summary = json.loads((ec_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_done"] == STEPS
    assert summary["params"]["model_params"] == count_params(cfg).model_params
    rec = metrics(ec_run)[0]
    for key in ("loss", "flow_loss", "aux_loss", "lr", "step_s", "images_per_s",
                "tokens_per_expert", "experts_per_token", "peak_bytes"):
        assert key in rec
    # expert choice: every expert takes C = S f_c / E tokens of every image
    assert rec["tokens_per_expert"] == [[8 * cfg.expert_capacity] * 8] * cfg.num_moe_layers
    ept = rec["experts_per_token"]
    assert len(ept["hist"]) == 9 and ept["mean"] == pytest.approx(2.0)
    assert 0 <= ept["min"] <= 2 <= ept["max"] <= 8
    assert rec["peak_bytes"] > summary["params"]["rank_params"] * 4
    assert (ec_run / "checkpoints" / "latest").read_text().strip() == f"step{STEPS}"


@pytest.mark.slow
def test_adaptive_on_the_run(ec_run, tmp_path):
    proc = cli("adaptive", str(ec_run), "--out", str(tmp_path), "--samples", "8",
               "--timesteps", "3", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert len(res["by_layer"]) == 2 and len(res["by_timestep"]) == 3
    for row in res["by_layer"]:
        assert sum(row["hist"]) == 3 * 8 * 64 and row["mean"] == pytest.approx(2.0)
    assert "pearson_std" in res["caption_length"]
    for name in ("heatmap_samples.png", "layer_timestep_std.png", "histograms.png",
                 "summary.json"):
        assert (tmp_path / name).stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# Kill and resume
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_and_resume_reproduces_the_loss_curve(ec_run, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "ecdit_scale", "launch", *EC_ARGS,
                             "--out", str(out), "--json"], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    killed_at = None
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            lines = (out / "metrics.jsonl").read_text().splitlines() if (
                out / "metrics.jsonl").exists() else []
            if len(lines) >= 23:  # past the checkpoint at step 20
                os.killpg(proc.pid, signal.SIGKILL)  # the whole job: CLI, launcher, ranks
                killed_at = len(lines)
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_at is not None, "the run ended before it could be killed"
    assert len((out / "metrics.jsonl").read_text().splitlines()) < STEPS

    res = cli("launch", *EC_ARGS, "--out", str(out), "--resume", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout)
    assert result["status"] == "completed" and result["resumed_from"] in (20, 30)
    resumed, reference = metrics(out), metrics(ec_run)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(resumed, reference):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7), a["step"]


# ---------------------------------------------------------------------------------------------
# Bad input fails before anything starts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, words", [
    (("no-such-model", "--nproc", "1", "--steps", "2"), "unknown model"),
    (("cards/missing.yaml", "--nproc", "1", "--steps", "2"), "no such file"),
    (("nano-ec8", "--nproc", "2", "--ep", "3", "--steps", "2"), "--ep 3"),
    (("nano-ec8", "--nproc", "4096", "--steps", "2"), "--nproc 4096"),
    (("nano-ec8", "--nproc", "2", "--zero", "3", "--steps", "2"), "zero 3"),
    (("nano-dense", "--nproc", "1", "--ep", "2", "--steps", "2"), "dense"),
    (("nano-ec8", "--nproc", "1", "--steps", "2", "--dataset", "mnist"), "--dataset"),
])
def test_bad_input_is_one_line_before_anything_starts(tmp_path, args, words):
    out = tmp_path / "run"
    proc = cli("launch", *args, "--out", str(out), cwd=tmp_path, timeout=60)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error:") and words.lower() in err.lower(), err
    assert not out.exists()  # nothing was written or started


@pytest.mark.slow
def test_resume_with_more_steps_extends_the_run(tmp_path):
    out = tmp_path / "short"
    args = ("nano-ec8", "--nproc", "1", "--steps", "4", "--micro-batch", "2", "--limit", "256",
            "--out", str(out), "--json")
    assert cli("launch", *args).returncode == 0
    args = tuple("8" if a == "4" else a for a in args)  # --steps 8: the warm-up default stays
    res = cli("launch", *args, "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["resumed_from"] == 4
    assert [r["step"] for r in metrics(out)] == list(range(1, 9))


def test_resume_needs_a_run(tmp_path):
    proc = cli("launch", "nano-ec8", "--nproc", "1", "--steps", "2", "--resume", "--out",
               str(tmp_path / "nothing"), timeout=60)
    assert proc.returncode != 0 and "no run to resume" in proc.stderr
