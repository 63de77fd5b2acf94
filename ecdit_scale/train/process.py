"""The launcher's processes: started as one group, signalled as one group, gone as one group.

The ``deepspeed`` launcher runs in a session of its own (its runner, the per-node launch
script and every rank share that process group), so a signal meant for the run reaches all of
it: ``ForwardSignals`` passes SIGINT and SIGTERM that this process receives on to the whole
group (DeepSpeed's single-node runner does not pass them on; its launch script does, to the
ranks). ``end_group`` then waits until no process of the group is left, and kills what stays
past a grace period, so no rank trains on after ``launch`` returns.

A process killed outright (SIGKILL) cannot pass anything on, so the group's leader is a small
guard (this file run as a script, ``guard``): it starts the launcher in its group and, when
``launch`` dies, the kernel tells it (PR_SET_PDEATHSIG) and it ends the group.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO

EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
LISTEN_PORTS = (20000, 32767)  # below Linux's default ephemeral range (32768-60999)
ADDRESS_IN_USE = "EADDRINUSE"  # how torch's TCPStore reports a rendezvous port taken


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out to outgoing connections (gloo opens one per rank pair)."""
    try:
        lo, hi = (int(x) for x in open(EPHEMERAL_RANGE_FILE).read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A rendezvous port that is free now and unlikely to be taken before rank 0 listens on it.

    Binding port 0 gets a port from the ephemeral range, the one the kernel also gives every
    outgoing connection: with gloo runs side by side (a sweep, a test suite), another run's
    connection can take it between this check and rank 0's listen (EADDRINUSE). So draw ports
    outside the ephemeral range at random, keep the first one that binds, and fall back to
    port 0 only if none does. ``launch`` also retries a run whose rendezvous port was taken."""
    lo, hi = ephemeral_range()
    candidates = [p for p in range(*LISTEN_PORTS) if not lo <= p <= hi]
    draw = random.SystemRandom()  # not the global generator: a seeded one repeats its ports
    for port in draw.sample(candidates, k=min(64, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


FORWARDED = (signal.SIGINT, signal.SIGTERM)
EXIT_CODE = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as a shell reports


def start_group(cmd: list[str], *, log: IO, env: dict[str, str], cwd: str) -> subprocess.Popen:
    """Start ``cmd`` in a new session, under ``guard`` (whose pid is the process-group id)."""
    guarded = [sys.executable, os.path.abspath(__file__), str(os.getpid()), *cmd]
    return subprocess.Popen(guarded, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a pid reused by another user's group: not ours any more
        return False
    return True


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def end_group(proc: subprocess.Popen, *, grace_s: float = 15.0, poll_s: float = 0.05) -> None:
    """Wait for the launcher and every process of its group to exit; SIGKILL the group if
    any is left after ``grace_s``."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not group_alive(proc.pid):
            return
        time.sleep(poll_s)
    signal_group(proc.pid, signal.SIGKILL)
    proc.wait()
    while group_alive(proc.pid) and time.monotonic() < deadline + 5:
        time.sleep(poll_s)


_ACTIVE: set[ForwardSignals] = set()  # every ForwardSignals now attached, in any thread
_ACTIVE_LOCK = threading.Lock()


def interrupt_all(signum: int = signal.SIGINT) -> int:
    """Pass ``signum`` to every launcher group now running, from any thread (only the main
    thread receives signals: a sweep that launches from worker threads calls this on Ctrl-C).
    Returns how many groups were signalled."""
    with _ACTIVE_LOCK:
        active = list(_ACTIVE)
    for fs in active:
        fs._handle(signum, None)
    return len(active)


class ForwardSignals:
    """While active, SIGINT/SIGTERM to this process go to the launcher's whole group and are
    remembered (``received``) instead of raising KeyboardInterrupt or ending this process.

    Enter it before starting the group and ``attach`` the group after, so a signal that comes
    in between is passed on too. Only the main thread can install handlers; elsewhere this
    does nothing."""

    def __init__(self) -> None:
        self.pgid: int | None = None
        self.received: int | None = None
        self._old: dict[int, object] = {}

    def attach(self, pgid: int) -> None:
        self.pgid = pgid
        with _ACTIVE_LOCK:
            _ACTIVE.add(self)
        if self.received is not None:
            signal_group(pgid, self.received)

    def _handle(self, signum, _frame) -> None:
        if self.received is None:
            self.received = signum
        if self.pgid is not None:
            signal_group(self.pgid, signum)

    def __enter__(self) -> ForwardSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in FORWARDED:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self)
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @property
    def exit_code(self) -> int | None:
        return EXIT_CODE.get(self.received) if self.received is not None else None


# ---------------------------------------------------------------------------------------------
# The guard: python process.py PARENT_PID CMD...
# ---------------------------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def guard(parent: int, cmd: list[str], grace_s: float = 15.0) -> int:
    """Run ``cmd`` in this process group; end the whole group if ``parent`` dies first.

    SIGINT/SIGTERM are left to the commands (``launch`` sends them to the whole group); this
    process only ends the group when its parent is gone (SIGUSR1 from PR_SET_PDEATHSIG):
    SIGTERM to the group, then SIGKILL to what is left after ``grace_s``."""
    orphaned: list[bool] = []

    def on_orphaned(_signum, _frame) -> None:
        if not orphaned:
            orphaned.append(True)
            signal_group(0, signal.SIGTERM)
            signal.alarm(int(grace_s))  # then SIGKILL (``on_alarm``) whatever is left

    def on_alarm(_signum, _frame) -> None:
        signal_group(0, signal.SIGKILL)  # the group, this process too

    signal.signal(signal.SIGUSR1, on_orphaned)
    signal.signal(signal.SIGALRM, on_alarm)
    for sig in FORWARDED:  # a handler, not SIG_IGN: the command must not inherit "ignore"
        signal.signal(sig, lambda _s, _f: None)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGUSR1))
    except (OSError, AttributeError):  # not Linux: signals still reach the group via launch
        pass
    child = subprocess.Popen(cmd)
    if os.getppid() != parent:  # the parent died before the kernel could be told
        on_orphaned(signal.SIGUSR1, None)
    rc = child.wait()  # blocks; the handlers run meanwhile
    if orphaned:  # the launcher is gone: give the rest of the group a moment, then end it
        time.sleep(0.5)
        on_alarm(signal.SIGALRM, None)
    return rc


if __name__ == "__main__":
    sys.exit(guard(int(sys.argv[1]), sys.argv[2:]))
