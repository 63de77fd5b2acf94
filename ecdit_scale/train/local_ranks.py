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

Several nodes (a hostfile, ``--node-rank``) still go through DeepSpeed's runner, which is what
reaches the other hosts. Run as
``python -m ecdit_scale.train.local_ranks --nproc N --master-port P [--devices 0,1] -- CMD...``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

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


def end_ranks(procs: list[subprocess.Popen], *, grace_s: float = GRACE_S) -> None:
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
    procs: list[subprocess.Popen] = []

    def on_signal(signum, frame) -> None:  # the ranks end; the loop below sees them go
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    for rank in range(nproc):
        procs.append(subprocess.Popen(cmd, env=rank_env(
            os.environ, rank=rank, nproc=nproc, master_addr=master_addr,
            master_port=master_port, devices=devices)))
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
