"""Training that cannot silently go wrong, checked without training: optimizer defaults, the
divergence guard, checkpoint checksums and what an interrupted launch says (the launches
themselves: test_launch.py)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from ecdit_scale.errors import ConfigError
from ecdit_scale.train.records import COMPLETE_MARKER, RunDir
from ecdit_scale.train.request import LaunchRequest, check_request


def settings_for(tmp_path: Path, **asked):
    return check_request(LaunchRequest(card="nano-dense", device="cpu", out=str(tmp_path / "r"),
                                       **asked)).settings


@pytest.mark.parametrize("optimizer, lr, warmup", [("adamw", 1e-3, 10), ("sgd", 1e-3, 10),
                                                   ("rmsprop", 1e-4, 1000)])
def test_lr_and_warmup_defaults_follow_the_optimizer(tmp_path, optimizer, lr, warmup):
    """A direct launch gets what a plan gets: RMSProp's lr (the paper's 1e-4) and its warm-up
    floor (planner.deepspeed_config.warmup_floor), with a note saying why."""
    s = settings_for(tmp_path, optimizer=optimizer, steps=100)
    assert (s.lr, s.warmup_steps) == (lr, warmup)
    assert any("bias-corrected" in n for n in s.notes) == (optimizer == "rmsprop")
    given = settings_for(tmp_path, optimizer=optimizer, steps=100, lr=5e-4, warmup_steps=3)
    assert (given.lr, given.warmup_steps) == (5e-4, 3)  # what the user gives stands


def test_the_guard_stops_a_non_finite_or_exploding_loss():
    from ecdit_scale.train.cadence import DivergenceGuard

    guard = DivergenceGuard(10.0)
    assert [guard.check(n, x) for n, x in enumerate([1.9, 2.5, 18.9], 1)] == [None] * 3
    assert "19x the first step's 1.9" in guard.check(4, 36.1)
    assert "loss is nan" in guard.check(5, math.nan)
    assert "loss is inf" in DivergenceGuard(0.0).check(1, math.inf)
    assert DivergenceGuard(0.0, first_loss=1.0).check(2, 1e9) is None  # 0: non-finite only
    resumed = DivergenceGuard(10.0, first_loss=2.0)  # from a checkpoint's client state
    assert resumed.check(7, 21.0) is not None


@pytest.mark.parametrize("factor", [-1.0, math.nan, math.inf, "abc"])
def test_a_bad_divergence_factor_is_one_line(tmp_path, factor):
    with pytest.raises(ConfigError, match="^--divergence-factor .*must be a number >= 0"):
        settings_for(tmp_path, divergence_factor=factor)


def fake_run(tmp_path: Path, steps: tuple[int, ...]) -> RunDir:
    """A run directory with records of steps 1..max and a marked checkpoint per step."""
    rd = RunDir(tmp_path / "run")
    rd.checkpoints.mkdir(parents=True)
    rd.metrics.write_text("".join(json.dumps({"step": n, "loss": 1.0}) + "\n"
                                  for n in range(1, max(steps) + 1)))
    for n in steps:
        d = rd.checkpoints / f"step{n}"
        d.mkdir()
        for name in ("mp_rank_00_model_states.pt", "ema_rank0.pt"):
            (d / name).write_bytes(os.urandom(256))
        rd.mark_complete(f"step{n}", n)
    (rd.checkpoints / "latest").write_text(f"step{max(steps)}")
    return rd


@pytest.mark.parametrize("damage, said", [
    (lambda f: f.write_bytes(os.urandom(f.stat().st_size)), "differs from what was saved"),
    (lambda f: f.write_bytes(b""), "is empty"),
    (lambda f: f.unlink(), "is missing")])
def test_resume_falls_back_past_a_damaged_checkpoint(tmp_path, damage, said):
    rd = fake_run(tmp_path, (2, 4))
    marker = json.loads((rd.checkpoints / "step4" / COMPLETE_MARKER).read_text())
    assert set(marker["files"]["ema_rank0.pt"]) == {"bytes", "sha256"}
    damage(rd.checkpoints / "step4" / "ema_rank0.pt")
    point = rd.resume_point()
    assert point.tag == "step2"
    assert any(f"step4 is not intact (ema_rank0.pt {said}" in n for n in point.notes)
    assert any("resuming from step2" in n for n in point.notes)


def test_no_intact_checkpoint_is_one_line_not_a_traceback(tmp_path):
    rd = fake_run(tmp_path, (2,))
    f = rd.checkpoints / "step2" / "mp_rank_00_model_states.pt"
    f.write_bytes(os.urandom(f.stat().st_size))  # same size: only the checksum sees it
    with pytest.raises(ConfigError, match="no usable checkpoint.*sha256"):
        rd.resume_point()


def test_a_marker_from_before_the_checksums_still_reads(tmp_path):
    rd = fake_run(tmp_path, (2,))
    path = rd.checkpoints / "step2" / COMPLETE_MARKER
    marker = json.loads(path.read_text())
    marker["files"] = {k: v["bytes"] for k, v in marker["files"].items()}
    path.write_text(json.dumps(marker))
    assert rd.resume_point().tag == "step2"


def test_an_interrupt_says_where_a_rerun_goes_on(tmp_path):
    from ecdit_scale.train.launch import interrupted_message

    req = LaunchRequest(card="nano-dense", steps=8, out=str(tmp_path / "run"))
    rd = fake_run(tmp_path, (2, 4))
    s = settings_for(tmp_path, steps=8)
    said = interrupted_message(req, s, rd, 5)
    assert "newest complete checkpoint is step4 (training goes on from step 5)" in said
    assert said.split("continue with: ")[1].endswith("--resume")
    for tag in ("step2", "step4"):
        (rd.checkpoints / tag / COMPLETE_MARKER).unlink()
    (rd.checkpoints / "latest").unlink()
    said = interrupted_message(req, s, rd, 1)
    assert "no checkpoint to continue from (none was saved yet)" in said
    assert "starts it again at step 1" in said
