"""Training that cannot silently go wrong, checked without training: optimizer defaults, the
divergence guard, checkpoint checksums and what an interrupted launch says (the launches
themselves: test_launch.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ecdit_scale.errors import ConfigError
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
