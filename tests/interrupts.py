"""A launch interrupted three ways and resumed each time, as a session run (``conftest``): the
observations are recorded in ``observations.json`` and asserted by
``test_launch.test_signals_and_kill_stop_every_rank_and_resume_finishes_the_curve``.

1. SIGTERM to the launch process alone, 2 steps past the first checkpoint;
2. the printed ``--resume`` command, then Ctrl-C (SIGINT) to its whole job 2 steps past the
   second;
3. the same command, then kill -9 of its job 2 steps past the third (the CLI alone: the
   launcher's guard must end the ranks);
4. the same command to the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from conftest import EC_ARGS, EVERY, ROOT, cli, cli_env


def start(args: list[str]) -> subprocess.Popen:
    """`ecdit-scale launch` as its own process (and process group), output captured."""
    return subprocess.Popen([sys.executable, "-m", "ecdit_scale", *args], cwd=ROOT,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def signal_after(proc: subprocess.Popen, out: Path, lines: int, send) -> dict:
    """Wait until metrics.jsonl has ``lines`` lines, ``send`` the signal, wait for the end:
    what happened (sent, return code, printed result, stderr's tail)."""
    deadline = time.time() + 240
    sent = False
    try:
        while time.time() < deadline and proc.poll() is None:
            path = out / "metrics.jsonl"
            if path.exists() and len(path.read_text().splitlines()) >= lines:
                send(proc)
                sent = True
                break
            time.sleep(0.02)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return {"sent": sent, "returncode": proc.returncode,
            "result": json.loads(stdout) if stdout.strip() else None, "stderr": stderr[-3000:]}


def ranks_of(out: Path) -> int:
    """Rank processes still alive that train into ``out``."""
    found = 0
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except psutil.Error:
            continue
        if str(out) in cmd and "ecdit_scale.train.worker" in cmd:
            found += 1
    return found


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def newest_checkpoint(out: Path) -> int | None:
    """The step of the newest complete checkpoint in ``out``: where ``--resume`` must go on.
    A signal reaches the ranks a few steps after it is sent when the machine is loaded, so a
    stop may come after a later checkpoint than the one the signal was aimed past."""
    from ecdit_scale.train.records import RunDir
    found = RunDir(out).latest_checkpoint()
    return found[0] if found else None


def interrupted_run(out: Path, deps: dict[str, Path]) -> None:
    obs: dict = {}
    # the same training as ec_run; memory is not what this run is about (tracking costs CPU)
    proc = start(["launch", *EC_ARGS, "--no-track-memory", "--out", str(out), "--json"])
    term = signal_after(proc, out, EVERY + 2, lambda p: p.send_signal(signal.SIGTERM))
    term.update(ranks_left=ranks_of(out), summary=summary_of(out),
                checkpoint=newest_checkpoint(out))
    obs["sigterm"] = term
    message = (term["result"] or {}).get("message", "")
    if "continue with: " not in message:
        raise AssertionError(f"no resume command after SIGTERM: {term}")
    resume = message.split("continue with: ", 1)[1]
    obs["resume_command"] = resume
    args = resume.split()[1:]  # `ecdit-scale launch ...` as the user would run it

    proc = start([*args, "--json"])
    intr = signal_after(proc, out, 2 * EVERY + 2, lambda p: os.killpg(p.pid, signal.SIGINT))
    intr.update(ranks_left=ranks_of(out), summary=summary_of(out),
                checkpoint=newest_checkpoint(out))
    obs["sigint"] = intr

    proc = start([*args, "--json"])
    kill = signal_after(proc, out, 3 * EVERY + 2, lambda p: os.killpg(p.pid, signal.SIGKILL))
    deadline = time.time() + 30
    while ranks_of(out) and time.time() < deadline:
        time.sleep(0.1)
    kill.update(ranks_left=ranks_of(out), checkpoint=newest_checkpoint(out),
                metrics_lines=len((out / "metrics.jsonl").read_text().splitlines()))
    obs["sigkill"] = kill

    res = cli(*args, "--json")
    obs["final"] = {"returncode": res.returncode, "stderr": res.stderr[-3000:],
                    "result": json.loads(res.stdout) if res.stdout.strip() else None}
    (out / "observations.json").write_text(json.dumps(obs, indent=1))
