"""Shared fixtures: real launches are expensive on 2 cores, so each is made once per session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 40
EC_ARGS = ("nano-ec8", "--nproc", "2", "--ep", "2", "--zero", "2", "--steps", str(STEPS),
           "--micro-batch", "4", "--checkpoint-every", "10", "--limit", "1024", "--seed", "0")

_RUNS: dict[str, Path] = {}


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]]
                                                       if env.get("PYTHONPATH") else []))
    env.pop("ECDIT_SCALE_DEBUG", None)
    return env


def cli(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecdit_scale", *args], cwd=cwd or ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=timeout)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def launched(tmp_path_factory, key: str, *args: str, out: Path | None = None) -> Path:
    """Launch once per session and key; later callers get the same run directory. Tests that
    change a run work on a copy (``copy_run``)."""
    if key not in _RUNS:
        out = out or tmp_path_factory.mktemp("runs") / key
        t0 = time.perf_counter()
        proc = cli("launch", *args, "--out", str(out), "--json")
        assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
        result = json.loads(proc.stdout)
        assert result["status"] == "completed"
        result["test_wall_s"] = time.perf_counter() - t0
        result["stderr"] = proc.stderr
        (out / "test_launch_result.json").write_text(json.dumps(result))
        _RUNS[key] = out
    return _RUNS[key]


def launch_result(run: Path) -> dict:
    return json.loads((run / "test_launch_result.json").read_text())


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("test_launch_result.json"))
    return to


@pytest.fixture(scope="session")
def ec_run(tmp_path_factory) -> Path:
    """nano-ec8, 2 ranks, ep 2, ZeRO-2, 40 steps, checkpoints every 10."""
    return launched(tmp_path_factory, "ec-ep2-z2", *EC_ARGS)




# 1 rank, tiny: a finished 6-step run (checkpoints every 2 steps, the last two kept: step4,
# step6), and the same run resumed to 8 steps. Tests that damage a run use a copy.
SHORT_ARGS = ("nano-ec8", "--nproc", "1", "--micro-batch", "2", "--limit", "256")


@pytest.fixture(scope="session")
def short_run(tmp_path_factory) -> Path:
    return launched(tmp_path_factory, "short-6", *SHORT_ARGS, "--steps", "6",
                    "--checkpoint-every", "2")


@pytest.fixture(scope="session")
def extended_run(short_run, tmp_path_factory) -> Path:
    """``short_run`` copied and resumed with --steps 8: the reference 8-step loss curve."""
    if "short-8" not in _RUNS:
        out = copy_run(short_run, tmp_path_factory.mktemp("runs") / "short-8")
        proc = cli("launch", *SHORT_ARGS, "--steps", "8", "--out", str(out), "--resume", "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout)
        result["stderr"] = proc.stderr
        (out / "test_launch_result.json").write_text(json.dumps(result))
        _RUNS["short-8"] = out
    return _RUNS["short-8"]
