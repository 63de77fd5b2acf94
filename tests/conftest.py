"""Shared fixtures: real launches are expensive on 2 cores, so each is made once per session."""

from __future__ import annotations

import contextlib
import fcntl
import io
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


@contextlib.contextmanager
def shared_run(tmp_path_factory, key: str):
    """Where the session's run ``key`` lives, made at most once per test run: with pytest-xdist
    the workers share one folder under the run's base temp, and a file lock lets the first
    worker launch while the others wait and reuse it. Yields (path, made): ``made`` is True if
    the run is already there; otherwise the block must make it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this run
    base = root / "shared-runs"
    base.mkdir(parents=True, exist_ok=True)
    out = base / key
    with open(base / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield out, (out / "test_launch_result.json").is_file()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]]
                                                       if env.get("PYTHONPATH") else []))
    env.pop("ECDIT_SCALE_DEBUG", None)
    return env


def cli(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecdit_scale", *args], cwd=cwd or ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=timeout)


def cli_here(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``ecdit-scale ARGS`` in this process (no interpreter start, torch already imported),
    with the answer of ``cli``: exit code, stdout and stderr. For commands that are not about
    processes (launch, signals and the console entry itself keep ``cli``)."""
    from ecdit_scale.cli import main

    env, here = dict(os.environ), os.getcwd()
    os.environ.pop("ECDIT_SCALE_DEBUG", None)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        os.chdir(cwd or ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(env)
    return subprocess.CompletedProcess(["ecdit-scale", *args], code, out.getvalue(),
                                       err.getvalue())


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """The console entry in-process (no interpreter start): (exit code, stdout, stderr)."""
    from ecdit_scale.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def launched(tmp_path_factory, key: str, *args: str) -> Path:
    """Launch once per test run and key; later callers (any worker) get the same run directory.
    Tests that change a run work on a copy (``copy_run``)."""
    if key not in _RUNS:
        with shared_run(tmp_path_factory, key) as (out, made):
            if not made:
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
# It keeps a replicated EMA (decay 0.9, so that it moves in 8 steps): resuming it from step4 and
# from step6 must give the same EMA.
SHORT_ARGS = ("nano-ec8", "--nproc", "1", "--micro-batch", "2", "--limit", "256", "--ema",
              "replicated", "--ema-decay", "0.9")


@pytest.fixture(scope="session")
def short_run(tmp_path_factory) -> Path:
    return launched(tmp_path_factory, "short-6", *SHORT_ARGS, "--steps", "6",
                    "--checkpoint-every", "2")


@pytest.fixture(scope="session")
def extended_run(short_run, tmp_path_factory) -> Path:
    """``short_run`` copied and resumed with --steps 8: the reference 8-step loss curve."""
    if "short-8" not in _RUNS:
        with shared_run(tmp_path_factory, "short-8") as (out, made):
            if not made:
                shutil.rmtree(out, ignore_errors=True)  # a half-made copy of a failed attempt
                copy_run(short_run, out)
                proc = cli("launch", *SHORT_ARGS, "--steps", "8", "--out", str(out), "--resume",
                           "--json")
                assert proc.returncode == 0, proc.stderr[-3000:]
                result = json.loads(proc.stdout)
                result["stderr"] = proc.stderr
                (out / "test_launch_result.json").write_text(json.dumps(result))
        _RUNS["short-8"] = out
    return _RUNS["short-8"]


# ---------------------------------------------------------------------------------------------
# Plans that run: `plan` for 2 CPU ranks, then the plan's launch.sh as written
# ---------------------------------------------------------------------------------------------

# A CPU device profile for `plan --gpu` (the catalog holds datacenter accelerators only): its
# numbers only size the plan; what matters is deepspeed_accelerator: cpu (launch files are
# written) and fp32 (CPU ranks train in fp32).
CPU_PROFILE = """\
cpu-2core:
  name: cpu-2core
  peak_bf16_flops: 50_000_000_000
  memory_bytes: 8_000_000_000
  memory_bw_bytes_per_s: 10_000_000_000
  intra_node_bw_bytes_per_s: 5_000_000_000
  inter_node_bw_bytes_per_s: 1_000_000_000
  devices_per_node: 2
  deepspeed_accelerator: cpu
  precisions: [fp32]
  efficiency: 0.5
  source: "an assumed 2-core CPU machine (tests/conftest.py); not measured"
"""
# the layout pinned, so that a 1 x 2 and a 2 x 1 plan are the same run
PLAN_ARGS = ("--model", "nano-ec8", "--ep", "2", "--zero", "2", "--micro-batch", "4",
             "--global-batch", "16", "--steps", "1000", "--optimizer", "rmsprop",
             "--precision", "fp32", "--ema", "sharded", "--no-table")
PLAN_RUN_STEPS = 6
PLAN_RUN_ARGS = ("--steps", str(PLAN_RUN_STEPS), "--limit", "256", "--checkpoint-every", "3",
                 "--json")


@pytest.fixture(scope="session")
def cpu_profile(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("profiles") / "cpu-2core.yaml"
    path.write_text(CPU_PROFILE)
    return path


def make_plan(out: Path, profile: Path, *cluster: str) -> Path:
    proc = cli_here("plan", *PLAN_ARGS, "--gpu", str(profile), *cluster, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def run_launch_sh(plan: Path, run_dir: Path, *args: str, env: dict | None = None,
                  wait: bool = True):
    """``bash PLAN/launch.sh`` exactly as written (PYTHON: this interpreter)."""
    full = {**cli_env(), "PYTHON": sys.executable, "RUN_DIR": str(run_dir), **(env or {})}
    cmd = ["bash", str(plan / "launch.sh"), *PLAN_RUN_ARGS, *args]
    if not wait:
        return subprocess.Popen(cmd, env=full, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=full, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def cpu_plan(tmp_path_factory, cpu_profile) -> Path:
    """nano-ec8 on one 2-core machine: 1 node x 2 ranks, ep 2, ZeRO-2 (one plan for all the
    workers, so that ``plan_run`` records the same plan folder every test compares with)."""
    with shared_run(tmp_path_factory, "cpu-plan-1x2") as (out, _):
        if not (out / "plan.yaml").is_file():
            make_plan(out, cpu_profile, "--gpus", "2")
    return out


@pytest.fixture(scope="session")
def plan_run(tmp_path_factory, cpu_plan) -> Path:
    """``bash cpu_plan/launch.sh`` as written, 10 steps."""
    if "plan-1x2" not in _RUNS:
        with shared_run(tmp_path_factory, "plan-1x2") as (out, made):
            if not made:
                shutil.rmtree(out, ignore_errors=True)
                proc = run_launch_sh(cpu_plan, out)
                assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
                (out / "test_launch_result.json").write_text(proc.stdout)
        _RUNS["plan-1x2"] = out
    return _RUNS["plan-1x2"]
