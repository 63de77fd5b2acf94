"""The launcher's processes: started as one group, signalled as one group, gone as one group.

The ``deepspeed`` launcher runs in a session of its own (its runner, the per-node launch
script and every rank share that process group), so a signal meant for the run reaches all of
it: ``ForwardSignals`` passes SIGINT and SIGTERM that this process receives on to the whole
group (DeepSpeed's single-node runner does not pass them on; its launch script does, to the
ranks). ``end_group`` then waits until no process of the group is left, and kills what stays
past a grace period, so no rank trains on after ``launch`` returns.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import IO

FORWARDED = (signal.SIGINT, signal.SIGTERM)
EXIT_CODE = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as a shell reports


def start_group(cmd: list[str], *, log: IO, env: dict[str, str], cwd: str) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new session (its pid is the process-group id)."""
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
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
        if self.received is not None:
            signal_group(pgid, self.received)

    def _handle(self, signum, _frame) -> None:
        if self.received is None:
            self.received = signum
        if self.pgid is not None:
            signal_group(self.pgid, signum)

    def __enter__(self) -> "ForwardSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in FORWARDED:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @property
    def exit_code(self) -> int | None:
        return EXIT_CODE.get(self.received) if self.received is not None else None
