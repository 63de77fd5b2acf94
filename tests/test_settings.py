"""Launch settings declared once (``train.settings``): the CLI, the run record, the resume
command and the resume rules all come from the declaration; the training loop's cadences."""

from __future__ import annotations

import shlex

import pytest
import typer.main

from ecdit_scale.cli import app
from ecdit_scale.train.records import RunSettings
from ecdit_scale.train.request import LaunchRequest, resume_command
from ecdit_scale.train.settings import LaunchSettings, declared, option_of


def launch_command():
    return typer.main.get_command(app).commands["launch"]


def parsed(args: list[str]) -> dict:
    """What `ecdit-scale launch ARGS` hands the command, without running it."""
    ctx = launch_command().make_context("launch", list(args))
    return ctx.params


def test_every_setting_is_one_launch_option_with_help():
    options = {}
    for p in launch_command().params:
        for name in p.opts + p.secondary_opts:
            assert name not in options, f"{name} declared twice"
            options[name] = p
    for f, s in declared():
        assert s.option in options and s.help, f.name
        assert options[s.option].default == (None if s.parse else f.default), f.name


def test_choices_are_listed_and_flags_take_no_value():
    from typer.testing import CliRunner

    text = " ".join(CliRunner().invoke(app, ["launch", "--help"], terminal_width=400,
                                       env={"COLUMNS": "400"}).output.split())
    assert "[adamw|rmsprop|sgd]" in text and "[none|selective|full]" in text
    assert "[auto|cpu|cuda]" in text and "[ecdit|deepspeed]" in text
    assert "--track-memory --no-track-memory CPU" in text
    for flag in ("--resume", "--json", "--local", "--no-track-memory", "--no-checkpoints"):
        assert f"{flag} <bool>" not in text and f"{flag} " in text  # (--help's own: typer's)


def test_the_resume_command_gives_back_the_request():
    req = LaunchRequest(card="nano-ec8", nproc=2, steps=40, lr=2e-3, optimizer="sgd",
                        schedule="wsd", cooldown_branches=(10, 20), track_memory=False,
                        eval_every=5, compile="none", ema_decay=0.999)
    args = shlex.split(resume_command(req, "runs/x"))
    assert args[:3] == ["ecdit-scale", "launch", "nano-ec8"] and args[-1] == "--resume"
    got = parsed(args[3:])
    got["cooldown_branches"] = tuple(int(n) for n in got["cooldown_branches"].split(","))
    for f, _ in declared():
        want = "runs/x" if f.name == "out" else True if f.name == "resume" else \
            getattr(req, f.name)
        assert got[f.name] == want, f.name


def test_run_record_and_resume_rules_follow_the_declaration():
    fixed = {f.name for f, s in declared() if s.fixed and s.record}
    assert fixed <= set(RunSettings.FIXED) and {"nproc_per_node", "nodes"} <= set(RunSettings.FIXED)
    assert "steps" not in RunSettings.FIXED and "checkpoint_every" not in RunSettings.FIXED
    s = RunSettings.build(card="nano-ec8", model_name="nano-ec8", nodes=1, nproc_per_node=2,
                          ep=2, zero=1, micro_batch=4, grad_accum=1, steps=10, lr=1e-3,
                          warmup_steps=1, optimizer="adamw", precision="fp32", dataset="shapes",
                          data_limit=None, holdout=8, seed=0, device="cpu", checkpoint_every=5,
                          keep_checkpoints=2, track_memory=True)
    flat = s.to_dict()
    assert RunSettings.from_dict(flat) == s
    assert flat["ep"] == 2 and flat["compile"] == "none" and flat["checkpoints"] is True
    old = {k: v for k, v in flat.items() if k not in RunSettings.OPTIONAL}  # an older run.json
    assert RunSettings.from_dict(old).compile == "none"
    assert option_of("warmup_steps") == "--warmup" and option_of("data_limit") == "--limit"


@pytest.mark.parametrize("bad, option", [(dict(keep_checkpoints=0), "--keep-checkpoints"),
                                         (dict(eval_timesteps=65), "--eval-timesteps"),
                                         (dict(seed=-1), "--seed")])
def test_bounds_are_checked_from_the_declaration(bad, option):
    from ecdit_scale.errors import ConfigError
    from ecdit_scale.train.request import check_request

    with pytest.raises(ConfigError, match=f"^{option} "):
        check_request(LaunchRequest(card="nano-ec8", device="cpu", **bad))


def test_launch_settings_hold_no_card():
    assert "card" not in {f.name for f, _ in declared(LaunchSettings)}


def test_cadences_say_when_they_run():
    from ecdit_scale.train.cadence import Checkpointing, HeldOutScoring, MemoryTracking

    assert [n for n in range(1, 11) if Checkpointing(4, 10).due(n)] == [4, 8, 10]
    assert not any(Checkpointing(4, 10, enabled=False).due(n) for n in range(1, 11))
    score = HeldOutScoring(lambda *a, **k: {}, 0, 10)
    assert [n for n in range(1, 11) if score.due(n)] == [10]
    assert [n for n in range(1, 11) if HeldOutScoring(score.scorer, 3, 10).due(n)] == [3, 6, 9, 10]
    assert not HeldOutScoring(None, 3, 10).due(10)
    tracked = MemoryTracking(object(), start=5)
    assert [n for n in range(6, 31) if tracked.due(n)] == [6, 7, 8, 10, 20, 30]
    assert not MemoryTracking(None, start=0).due(1)
