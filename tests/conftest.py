"""Shared fixtures: real launches are expensive on 2 cores, so each is made once per session."""

from __future__ import annotations

import json
import os
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


def launched(tmp_path_factory, key: str, *args: str) -> Path:
    """Launch once per session and key; later callers get the same run directory."""
    if key not in _RUNS:
        out = tmp_path_factory.mktemp("runs") / key
        t0 = time.perf_counter()
        proc = cli("launch", *args, "--out", str(out), "--json")
        assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
        result = json.loads(proc.stdout)
        assert result["status"] == "completed"
        result["test_wall_s"] = time.perf_counter() - t0
        (out / "test_launch_result.json").write_text(json.dumps(result))
        _RUNS[key] = out
    return _RUNS[key]


@pytest.fixture(scope="session")
def ec_run(tmp_path_factory) -> Path:
    """nano-ec8, 2 ranks, ep 2, ZeRO-2, 40 steps, checkpoints every 10."""
    return launched(tmp_path_factory, "ec-ep2-z2", *EC_ARGS)


