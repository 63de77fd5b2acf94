"""Shared fixtures: real launches are expensive on 2 cores, so each is made once per session."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from session_runs import SessionRun, SessionRuns, shared_root

ROOT = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker (set before torch is imported): with -n 2 on 2 cores, two workers
    # of 2 threads each spin against each other (the suite took 12% more CPU). Tests that
    # measure threads set their own; an OMP_NUM_THREADS the user gave is kept.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# glibc's thresholds as the CPU ranks set them (train.cpu_allocator) are process-wide and for
# good: `profile`, run in a worker by cli_here, would leave that worker with them for every
# later test. The suite keeps glibc's defaults (its launches too; speed is not under test);
# test_cpu_allocator runs the setting in processes of its own.
os.environ.setdefault("ECDIT_SCALE_MALLOC", "default")
STEPS, EVERY = 20, 5  # steps, and a checkpoint every EVERY steps
EC_ARGS = ("nano-ec8", "--nproc", "2", "--ep", "2", "--zero", "2", "--steps", str(STEPS),
           "--micro-batch", "4", "--checkpoint-every", str(EVERY), "--limit", "256", "--seed", "0")


def bench_module(name: str):
    """``bench/NAME.py`` loaded as a module (bench scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]]
                                                       if env.get("PYTHONPATH") else []))
    env.pop("ECDIT_SCALE_DEBUG", None)
    return env


def cli(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecdit_scale", *args], cwd=cwd or ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=timeout)


def restore_environ(saved: dict[str, str]) -> None:
    """Put os.environ back as ``saved``, key by key (never cleared as a whole: the background
    thread of session runs reads it to start its launches)."""
    for key in [k for k in os.environ if k not in saved]:
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


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
        restore_environ(env)
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


def strict_json(text: str):
    """``text`` parsed as strict JSON: NaN, Infinity and -Infinity are refused."""
    def reject(name):
        raise ValueError(f"non-strict JSON constant {name}")
    return json.loads(text, parse_constant=reject)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _launch(*args: str):
    """A session run made by ``ecdit-scale launch ARGS --out FOLDER`` (a subprocess)."""
    def make(out: Path, deps: dict[str, Path]) -> None:
        proc = cli("launch", *args, "--out", str(out), "--json")
        assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
        assert json.loads(proc.stdout)["status"] == "completed", proc.stdout
    return make


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


@pytest.fixture(scope="session")
def ec_run(session_runs) -> Path:
    """nano-ec8, 2 ranks, ep 2, ZeRO-2, STEPS steps, a checkpoint every EVERY."""
    return session_runs.get("ec-ep2-z2")


# 1 rank, tiny: a finished 6-step run (checkpoints every 2 steps, the last two kept: step4,
# step6). Tests that damage or extend it use a copy. It keeps a replicated EMA (decay 0.9, so
# that it moves from step to step): a resume from step4 must give step6's EMA again.
SHORT_ARGS = ("nano-ec8", "--nproc", "1", "--micro-batch", "2", "--limit", "256", "--ema",
              "replicated", "--ema-decay", "0.9")


@pytest.fixture(scope="session")
def short_run(session_runs) -> Path:
    return session_runs.get("short-6")


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


# a profile `ecdit-scale profile --nproc 2` measured on the 2-core CI machine's kind of VM
# (matrix 15, 2026-12-06): operator classes, launch costs and gloo collectives, for tests that
# need a profile-priced step (term tables) without measuring this CPU again
RECORDED_CPU_PROFILE = (ROOT / "bench" / "results" / "cpu-heldout-matrix-15" / "profiles"
                        / "smalltc8-w1-z1-mb16-sel.profile.yaml")


@pytest.fixture(scope="session")
def cpu_profile(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("profiles") / "cpu-2core.yaml"
    path.write_text(CPU_PROFILE)
    return path


@pytest.fixture(scope="session")
def measured_profile(session_runs) -> Path:
    """A quick 2-rank profile of this CPU (``profile --quick --nproc 2``: what ``validate``
    measures when given no profile), made once for all the workers (read only)."""
    def make(out):
        out.mkdir(parents=True, exist_ok=True)
        proc = cli_here("profile", "--quick", "--nproc", "2", "--out", str(out / "cpu.yaml"),
                        "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]

    return session_runs.once("quick-cpu-profile", make) / "cpu.yaml"


def make_plan(out: Path, profile: Path, *cluster: str, run=cli_here) -> Path:
    """``plan`` with PLAN_ARGS on ``profile`` into ``out`` (``run=cli`` in a subprocess: what a
    background thread must use)."""
    proc = run("plan", *PLAN_ARGS, "--gpu", str(profile), *cluster, "--out", str(out))
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


def _cpu_plan(out: Path, deps: dict[str, Path]) -> None:
    """nano-ec8 on one 2-core machine: 1 node x 2 ranks, ep 2, ZeRO-2 (a subprocess: this may
    run in the background thread)."""
    profile = out.parent / "cpu-2core.yaml"
    profile.write_text(CPU_PROFILE)
    shutil.rmtree(out, ignore_errors=True)
    make_plan(out, profile, "--gpus", "2", run=cli)


PLAN_RUN_PROFILED = 4  # the plan run's step under torch.profiler (train.step_profile)


def _plan_run(out: Path, deps: dict[str, Path]) -> None:
    shutil.rmtree(out, ignore_errors=True)
    proc = run_launch_sh(deps["cpu-plan-1x2"], out,
                         env={"ECDIT_SCALE_PROFILE_STEP": str(PLAN_RUN_PROFILED)})
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]


@pytest.fixture(scope="session")
def cpu_plan(session_runs) -> Path:
    """One plan folder for all the workers, so that ``plan_run`` records the same plan folder
    every test compares with."""
    return session_runs.get("cpu-plan-1x2")


@pytest.fixture(scope="session")
def plan_run(session_runs) -> Path:
    """``bash cpu_plan/launch.sh`` as written, ``PLAN_RUN_STEPS`` steps."""
    return session_runs.get("plan-1x2")


# ---------------------------------------------------------------------------------------------
# The session runs, started in the background (tests/session_runs.py)
# ---------------------------------------------------------------------------------------------

def _interrupted(out: Path, deps: dict[str, Path]) -> None:
    from interrupts import interrupted_run  # (it imports this module)

    interrupted_run(out, deps)


# in the order the background threads start them: the longest first
SESSION_RUNS = [
    SessionRun("ec-ep2-z2", _launch(*EC_ARGS)),
    SessionRun("interrupted", _interrupted),
    SessionRun("short-6", _launch(*SHORT_ARGS, "--steps", "6", "--checkpoint-every", "2")),
    SessionRun("cpu-plan-1x2", _cpu_plan),
    SessionRun("plan-1x2", _plan_run, deps=("cpu-plan-1x2",)),
]
FIXTURE_RUNS = {"ec_run": "ec-ep2-z2", "short_run": "short-6",
                "cpu_plan": "cpu-plan-1x2", "plan_run": "plan-1x2",
                "interrupted_run": "interrupted"}


@pytest.fixture(scope="session")
def interrupted_run(session_runs) -> Path:
    """EC_ARGS interrupted by SIGTERM, SIGINT and kill -9, resumed each time (interrupts.py)."""
    return session_runs.get("interrupted")


# The tests that take longest (seconds of one test, `pytest -n 2 --durations` on 2 cores), run
# first and longest first: a long test that starts last keeps one core busy after the other has
# finished. A name that no longer matches only loses its place in the queue.
LONG_FIRST = (
    "test_expert_parallel.py::test_all_to_all_matches",  # 36: a 2-rank spawn, eager + compiled
    "test_collective_trace.py::",  # 31: a 4-rank spawn, 7 configurations
    "test_launch.py::test_a_cooldown_branch",  # 2 launches
    "test_engine_ops.py::",  # 11: a spawned rank, 8 engines
    "test_sweep.py::test_wsd_sweep",  # 3 launches
    "test_scaling_runlevel.py::test_run_level_intervals_cover",  # 6: 10 bootstrapped fits
    "test_install.py::test_core_commands_run_without_torch",  # 17: a fit and a report
    "test_data.py::test_text_encoder",  # 12
    "test_sweep.py::test_constant_sweep",  # 10: 2 launches
    "test_prepare.py::test_two_rank",  # 8: a 2-rank launch each
    "test_validate.py::test_validate_reads_gpu_measurements",
    "test_bad_input.py::test_json_output_is_strict",  # report refits (20 resamples)
    "test_validate.py::test_flops_of_a_large_config",
    "test_trainer_speed.py::test_compiled_blocks",
    "test_memory.py::test_bf16_zero0",
    "test_launch.py::test_resume_of_a_damaged_run",
    "test_profile.py::",
    "test_cli_scaling.py::test_drop_outliers",
    "test_scaling_report.py::",
    "test_scaling_fit.py::",
    "test_cli_conventions.py::test_ctrl_c_while_starting",
)


def _queue_rank(item) -> tuple[int, int]:
    """Where ``item`` goes in the queue: the long tests that need no session run (longest first),
    other slow ones that make their own launches, tests that wait for a session run (made in the
    background meanwhile), then the quick rest, which fills both cores to the end."""
    uses_run = bool(set(getattr(item, "fixturenames", ())) & set(FIXTURE_RUNS))
    if not uses_run:
        for i, name in enumerate(LONG_FIRST):
            if name in item.nodeid:
                return 0, i
    if item.get_closest_marker("slow") and not uses_run:
        return 1, 0
    return (2, 0) if uses_run else (3, 0)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """The queue order above. pyproject runs xdist with ``--dist worksteal``, which may split a
    module's tests between the workers (and a worker may run them between other modules' tests,
    which tears a module fixture down): a fixture that spawns ranks, measures or fits is
    made once for all the workers with ``session_runs.once`` instead."""
    items.sort(key=_queue_rank)


@pytest.fixture(scope="session")
def session_runs(tmp_path_factory) -> SessionRuns:
    return SessionRuns(shared_root(tmp_path_factory), SESSION_RUNS)


@pytest.fixture(scope="session", autouse=True)
def _start_session_runs(request, session_runs):
    """From the first test on, make in the background the runs the collected tests need."""
    needed = {FIXTURE_RUNS[f] for item in request.session.items
              for f in getattr(item, "fixturenames", ()) if f in FIXTURE_RUNS}
    session_runs.start_background([r.key for r in SESSION_RUNS if r.key in needed])
    yield
    session_runs.stop()
