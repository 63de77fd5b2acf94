"""The ranks of a one-node run, started as DeepSpeed's launcher starts them, without it.

``deepspeed --num_gpus N`` on one node runs two interpreters before any rank: the runner
(``deepspeed.launcher.runner``: it reads no hostfile here and only builds the next command)
and the per-node launcher (``deepspeed.launcher.launch``: it gives each rank its environment,
waits, and ends every rank when one fails). Both import DeepSpeed and torch: about 4 CPU
seconds and 4 s of wall time before a nano run's first step on two cores, and DeepSpeed's
launcher polls its ranks once a second. This module does the per-node launcher's job with the
standard library alone:

- each rank gets the environment ``deepspeed.launcher.launch`` (0.19.8) gives it: RANK,
  LOCAL_RANK, WORLD_SIZE, LOCAL_SIZE, CROSS_RANK = 0, CROSS_SIZE = 1, MASTER_ADDR, MASTER_PORT,
  and CUDA_VISIBLE_DEVICES when the run was given devices (``sweep --parallel``);
- a rank that exits with an error ends the others (SIGTERM, SIGKILL after a grace period) and
  its code is this process's;
- SIGINT or SIGTERM here is passed to every rank as SIGTERM, as DeepSpeed's launcher does.

On CPU (``DS_ACCELERATOR=cpu``), when the command is the worker, this process imports what
every rank imports first (torch, DeepSpeed, dynamo, the worker) once and forks the ranks from
it, instead of each rank importing it again. Measured on 2 cores (README): a 4-step 2-rank
nano-ec8 run costs ~1.5 CPU s less (copy-on-write takes back part of the import), but ~1 s
more wall time on idle cores, since the one import runs before any rank starts: it pays where
the cores are busy. Only on CPU: on a GPU node an import may initialise CUDA, which a forked
process cannot use. Each forked rank gets the same environment and signal dispositions
as an exec'd one; where a thread was started by the imports, the ranks are exec'd as before.

Several nodes (a hostfile, ``--node-rank``) still go through DeepSpeed's runner, which is what
reaches the other hosts. Run as
``python -m ecdit_scale.train.local_ranks --nproc N --master-port P [--devices 0,1] -- CMD...``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
import traceback

# planner.deepspeed_config.WORKER_MODULE, not imported from there: that import costs 0.25 s
# (numpy) at every start of this launcher (tests/test_launch.py checks the two agree)
WORKER_MODULE = "ecdit_scale.train.worker"

POLL_S = 0.05
GRACE_S = 15.0


def rank_env(base: dict[str, str], *, rank: int, nproc: int, master_addr: str,
             master_port: int, devices: str | None) -> dict[str, str]:
    env = dict(base)
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
               LOCAL_SIZE=str(nproc), CROSS_RANK="0", CROSS_SIZE="1",
               MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = devices
    return env


class ForkedRank:
    """A rank forked from this process, with the part of ``subprocess.Popen`` ``run`` uses."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:  # as Popen: -N when ended by signal N
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def worker_args(cmd: list[str]) -> list[str] | None:
    """The worker's arguments when ``cmd`` runs the worker with this Python on CPU (the case a
    rank can be forked from here), else None."""
    head = [sys.executable, "-u", "-m", WORKER_MODULE]
    if os.environ.get("DS_ACCELERATOR") != "cpu" or cmd[:len(head)] != head:
        return None
    return cmd[len(head):]


def preload() -> object | None:
    """Import the worker, and with it torch and DeepSpeed, and dynamo (which ``torch.optim``
    imports at a rank's first step): the worker module, or None where the imports left a
    thread running (a fork would copy a process whose other threads are gone)."""
    worker = importlib.import_module(WORKER_MODULE)
    importlib.import_module("torch._dynamo")
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 0
    return worker if threading.active_count() == 1 and threads <= 1 else None


def fork_rank(worker, args: list[str], env: dict[str, str]) -> ForkedRank:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return ForkedRank(pid)
    code = 1
    try:  # the child: what an exec'd rank would start with
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = [worker.__file__, *args]
        worker.main(args)  # ends the process itself (os._exit)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported, then this rank fails
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def end_ranks(procs: list, *, grace_s: float = GRACE_S) -> None:
    """SIGTERM every rank still running; SIGKILL what is left after ``grace_s``."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def run(cmd: list[str], *, nproc: int, master_addr: str, master_port: int,
        devices: str | None) -> int:
    """Start ``nproc`` ranks of ``cmd`` and wait: 0 when every rank ends with 0, else a failed
    rank's code (the other ranks ended), or 128 + the signal this process received."""
    received: list[int] = []
    procs: list = []  # subprocess.Popen or ForkedRank

    def on_signal(signum, frame) -> None:  # the ranks end; the loop below sees them go
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    args = worker_args(cmd)
    worker = preload() if args is not None else None
    if received:  # asked to stop while importing: no rank started
        return 128 + received[0]
    if args is not None:  # (in the run's launch.log)
        print(f"[local_ranks] {nproc} ranks " + (
            "forked after importing torch and DeepSpeed once" if worker is not None else
            "started as processes of their own: the imports left a thread running"),
            file=sys.stderr, flush=True)
    for rank in range(nproc):
        env = rank_env(os.environ, rank=rank, nproc=nproc, master_addr=master_addr,
                       master_port=master_port, devices=devices)
        procs.append(fork_rank(worker, args, env) if worker is not None
                     else subprocess.Popen(cmd, env=env))
    failed = 0
    while True:
        codes = [p.poll() for p in procs]
        failed = next((c for c in codes if c not in (None, 0)), 0)
        if failed or all(c == 0 for c in codes):
            break
        time.sleep(POLL_S)
    if failed:  # the code of the rank that failed first, not of those ended after it
        end_ranks(procs)
    return 128 + received[0] if received else failed


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: python -m ecdit_scale.train.local_ranks --nproc N "
                         "--master-port P [--master-addr A] [--devices D] -- CMD...")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m ecdit_scale.train.local_ranks")
    parser.add_argument("--nproc", type=int, required=True)
    parser.add_argument("--master-addr", default="127.0.0.1")
    parser.add_argument("--master-port", type=int, required=True)
    parser.add_argument("--devices", default=None)
    args = parser.parse_args(argv[:split])
    sys.exit(run(argv[split + 1:], nproc=args.nproc, master_addr=args.master_addr,
                 master_port=args.master_port, devices=args.devices))


if __name__ == "__main__":
    main()
