"""Run records: atomic files, metrics that survive a crash, checkpoint bookkeeping."""

from __future__ import annotations

import json

import pytest

from ecdit_scale.train.records import (
    RunDir,
    RunSettings,
    append_jsonl,
    read_json,
    read_jsonl,
    write_json,
)


def settings(**over) -> RunSettings:
    base = dict(card="nano-ec8", model_name="nano-ec8", steps=10, nodes=1, nproc_per_node=2,
                ep=2, zero=2, micro_batch=4, grad_accum=2, dataset="emoji", data_limit=None,
                holdout=64, seed=0, lr=1e-3, warmup_steps=1, optimizer="adamw",
                precision="fp32", device="cpu", checkpoint_every=5, keep_checkpoints=2,
                track_memory=True)
    return RunSettings(**{**base, **over})


def test_settings_round_trip_and_derived():
    s = settings()
    assert (s.world, s.global_batch) == (2, 16)
    data = s.to_dict()
    assert data["world"] == 2 and data["global_batch"] == 16
    assert RunSettings.from_dict(json.loads(json.dumps(data))) == s


def test_write_json_is_atomic(tmp_path):
    path = write_json(tmp_path / "a" / "x.json", {"k": 1})
    write_json(path, {"k": 2})
    assert read_json(path) == {"k": 2}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temp files left


def test_metrics_survive_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2, 3):
        append_jsonl(path, {"step": step, "loss": 1.0 / step})
    with open(path, "a") as fh:
        fh.write('{"step": 4, "lo')  # a rank killed mid-write
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]
    rd = RunDir(tmp_path)
    assert rd.truncate_metrics(2) == 2  # step 3 and the torn line go
    assert [r["step"] for r in rd.read_metrics()] == [1, 2]
    append_jsonl(path, {"step": 3, "loss": 0.3})
    assert [r["step"] for r in rd.read_metrics()] == [1, 2, 3]


def _fake_checkpoint(rd: RunDir, step: int, latest: bool = True) -> None:
    d = rd.checkpoints / f"step{step}"
    d.mkdir(parents=True)
    (d / "mp_rank_00_model_states.pt").write_bytes(b"x")
    if latest:
        (rd.checkpoints / "latest").write_text(f"step{step}")


def test_latest_checkpoint_and_pruning(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.latest_checkpoint() is None
    for step in (5, 10, 15):
        _fake_checkpoint(rd, step)
    _fake_checkpoint(rd, 20, latest=False)  # being written when the job died
    assert rd.latest_checkpoint() == (15, "step15")
    assert [s for s, _ in rd.checkpoint_tags()] == [5, 10, 15, 20]
    removed = rd.prune_checkpoints(keep=2)
    assert removed == ["step5", "step10"]
    assert rd.latest_checkpoint() == (15, "step15")


def test_latest_must_exist(tmp_path):
    rd = RunDir(tmp_path)
    rd.checkpoints.mkdir()
    (rd.checkpoints / "latest").write_text("step7")
    assert rd.latest_checkpoint() is None


def test_summary_updates_merge(tmp_path):
    rd = RunDir(tmp_path)
    rd.update_summary(status="running")
    rd.update_summary(status="completed", steps_done=3)
    assert rd.read_summary() == {"status": "completed", "steps_done": 3}


def test_running_pid_only_for_a_live_worker(tmp_path):
    import os

    rd = RunDir(tmp_path)
    assert rd.running_pid() is None
    rd.worker_pid.write_text(f"{os.getpid()}\n")  # alive, but not a worker of this run
    assert rd.running_pid() is None


def test_checksums_are_read_by_rank(tmp_path):
    rd = RunDir(tmp_path)
    for r in (1, 0):
        write_json(rd.checksums / f"rank{r}.json", {"rank": r})
    assert list(rd.read_checksums()) == [0, 1]


@pytest.mark.parametrize("bad", ["{", "[1, 2"])
def test_malformed_json_is_a_config_error(tmp_path, bad):
    from ecdit_scale.errors import ConfigError

    (tmp_path / "x.json").write_text(bad)
    with pytest.raises(ConfigError, match="malformed JSON"):
        read_json(tmp_path / "x.json")
