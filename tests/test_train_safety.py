"""Training that cannot silently go wrong, checked without training: optimizer defaults, the
divergence guard, checkpoint checksums and what an interrupted launch says (the launches
themselves: test_launch.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
