"""Runs the tests share, each made once per test run and started in the background.

A real launch costs ~15 s of both cores. Each session run is made at most once per test run
(with pytest-xdist, once for all workers: a file lock per run in a folder the workers share),
and a background thread of every worker starts, from the first test on, the runs the collected
tests need that no other worker has started. Tests that need no run go on meanwhile instead of
waiting; a test that needs one waits for it, or makes it if nobody has started it.

A run that failed is not retried: the tests that need it fail with its error.
"""

from __future__ import annotations

import fcntl
import os
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SessionRun:
    key: str
    make: Callable[[Path, dict[str, Path]], None]  # (its folder, its dependencies' folders)
    deps: tuple[str, ...] = ()


class SessionRuns:
    def __init__(self, root: Path, runs: list[SessionRun]):
        self.root = root
        self.runs = {r.key: r for r in runs}
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key

    def _status(self, key: str) -> tuple[bool, str | None]:
        err = self.root / f"{key}.error"
        return (self.root / f"{key}.done").is_file(), (err.read_text() if err.is_file() else None)

    def ensure(self, key: str, *, wait: bool = True) -> bool:
        """Make ``key`` (and what it depends on) unless it is made; with ``wait``, wait for
        whoever is making it. Returns False if not waiting and another is making it. Raises
        RuntimeError with the run's error if it failed."""
        run = self.runs[key]
        with open(self.root / f"{key}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                return False
            try:
                done, error = self._status(key)
                if not done and error is None:
                    try:
                        deps = {d: self.get(d) for d in run.deps}
                        run.make(self.path(key), deps)
                        (self.root / f"{key}.done").write_text("")
                        done = True
                    except Exception:  # recorded for every test that needs it
                        error = traceback.format_exc()
                        (self.root / f"{key}.error").write_text(error)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        if error is not None:
            raise RuntimeError(f"session run {key!r} failed:\n{error[-4000:]}")
        return True

    def get(self, key: str) -> Path:
        """The folder of run ``key``, made or waited for."""
        self.ensure(key, wait=True)
        return self.path(key)

    def once(self, key: str, make: Callable[[Path], None]) -> Path:
        """The folder of ``key``, made by ``make(folder)`` once for all the workers (a test
        module's fixture that every worker running one of its tests would otherwise make
        again), or waited for; not started in the background."""
        self.runs.setdefault(key, SessionRun(key, lambda out, deps: make(out)))
        return self.get(key)

    def start_background(self, keys: list[str]) -> threading.Thread | None:
        """Make ``keys`` (and their dependencies) in a daemon thread, skipping those another
        worker is making; errors are left for the tests that need the run to report."""
        order = []
        for key in keys:
            order += [d for d in self.runs[key].deps if d not in order] + [key]
        if not order:
            return None

        def work() -> None:
            for key in dict.fromkeys(order):
                if self.stopping.is_set():
                    return
                try:
                    self.ensure(key, wait=False)
                except RuntimeError:
                    pass

        self.thread = threading.Thread(target=work, name="session-runs", daemon=True)
        self.thread.start()
        return self.thread

    def stop(self, timeout: float = 300) -> None:
        """Start no more runs; wait for the one under way (no launch outlives the session)."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout)


def shared_root(tmp_path_factory) -> Path:
    """A folder all workers of this test run share (the base temp's parent under xdist)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    return root / "shared-runs"
