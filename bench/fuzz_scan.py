"""Scan `ecdit-scale` with bad input, as a new user and a hostile file would (issue #12).

Every case of `bench/fuzz_cases.py` runs `python -m ecdit_scale ...` in a fresh temporary
folder (PYTHONPATH = the tree under test), in its own session, killed with its children when
it passes its timeout. Each outcome is one of:

    ok          refused with exit 2 and one stderr line naming the bad value/option/file,
                or (for valid edge input) exit 0 with strict JSON where --json was asked
    traceback   a Python traceback on stdout or stderr
    hang        still running at the case's timeout (killed, with its process group)
    silent      exit 0 on bad input
    usage-box   a multi-line usage error (typer's box)
    multiline   any other error of more than one line
    unclear     one line, but it names neither the bad value, the option nor the file
    exit-code   one clear line, but an exit code other than 2
    no-message  non-zero exit and nothing on stderr
    refused     valid input (expected JSON) refused
    json        --json output that a strict parser rejects (NaN, Infinity, extra lines)
    data-loss   a file the user had is gone or changed
    partial     the command left behind an output it should not have written

    python bench/fuzz_scan.py [--quick] [--skip-slow] [--only SUBSTRING] [--out report.json]

Exits 1 if any case is not ok. The case list lives in bench/fuzz_cases.py (shared with
tests/test_bad_input.py), and bench/fuzz_train_cases.py (damaged checkpoints, divergence).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_cases import all_cases  # noqa: E402
from fuzz_files import Case, materialize  # noqa: E402
from fuzz_train_cases import train_cases  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 6 * 2**30  # address space per case: a runaway allocation fails, not the machine


@dataclass
class Outcome:
    case: Case
    outcome: str
    detail: str
    rc: int | None
    stdout: str
    stderr: str
    wall_s: float

    def to_dict(self) -> dict:
        return {"id": self.case.id, "area": self.case.area, "category": self.case.category,
                "argv": list(self.case.argv), "expect": self.case.expect, "outcome": self.outcome,
                "detail": self.detail, "rc": self.rc, "wall_s": round(self.wall_s, 2),
                "stderr_tail": self.stderr[-1500:], "stdout_tail": self.stdout[-500:]}


# ---------------------------------------------------------------------------------------------
# Judging one run
# ---------------------------------------------------------------------------------------------


def _strict_json(text: str) -> str | None:
    """None if ``text`` is one strict JSON document, else what is wrong."""
    def no_constant(name):
        raise ValueError(f"non-standard constant {name}")
    try:
        json.loads(text, parse_constant=no_constant)
    except ValueError as exc:
        return f"stdout is not strict JSON: {str(exc)[:120]}"
    return None


def _mentions(case: Case, line: str) -> bool:
    low = line.lower()
    return not case.mention or any(m.lower() in low for m in case.mention if m)


def judge(case: Case, rc: int | None, stdout: str, stderr: str, cwd: Path,
          snapshot: dict[str, bytes]) -> tuple[str, str]:
    """(outcome, detail) for one run; ``snapshot`` holds the keep files' bytes before it."""
    if rc is None:
        return "hang", f"still running after {case.timeout:g} s"
    if "Traceback (most recent call last)" in stderr + stdout:
        last = [ln for ln in stderr.splitlines() if ln.strip()][-1:] or ["?"]
        return "traceback", last[0][:200]
    for rel, before in snapshot.items():
        path = cwd / rel
        if not path.is_file():
            return "data-loss", f"{rel} was deleted"
        if path.read_bytes() != before:
            return "data-loss", f"{rel} was changed"
    written = [rel for rel in case.absent if (cwd / rel).exists()]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if rc == 0 and case.expect == "error":
        return "silent", "exit 0" + (f" and wrote {', '.join(written)}" if written else "")
    if written:
        return "partial", f"{', '.join(written)} written (exit {rc})"
    if rc == 0:
        if case.expect == "json" or "--json" in case.argv:
            bad = _strict_json(stdout)
            if bad:
                return "json", bad
        return "ok", "exit 0"
    if case.expect == "json":
        detail = lines[0][:200] if lines else f"exit {rc}"
        return ("traceback" if not lines else "refused"), detail
    if not lines:
        return "no-message", f"exit {rc}, empty stderr"
    if len(lines) > 1:
        box = "Usage:" in stderr or "╭" in stderr
        return (("usage-box" if box else "multiline"),
                " | ".join(ln.strip() for ln in lines[:3])[:240])
    if not _mentions(case, lines[0]):
        return "unclear", lines[0][:240]
    if rc != case.exit_code:
        return "exit-code", f"exit {rc}: {lines[0][:200]}"
    return "ok", lines[0][:240]


# ---------------------------------------------------------------------------------------------
# Running one case as a subprocess
# ---------------------------------------------------------------------------------------------


def case_env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo)
    env.pop("ECDIT_SCALE_DEBUG", None)
    env.update(COLUMNS="200", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _limit_memory() -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_subprocess(case: Case, repo: Path = REPO, python: str = sys.executable) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        cwd = Path(tmp)
        materialize(case, cwd, repo)
        snapshot = {rel: (cwd / rel).read_bytes() for rel in case.keep if (cwd / rel).is_file()}
        t0 = time.perf_counter()
        proc = subprocess.Popen([python, "-m", "ecdit_scale", *case.args(repo)], cwd=cwd,
                                env=case_env(repo), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True, errors="replace",
                                start_new_session=True, preexec_fn=_limit_memory)
        try:
            out, err = proc.communicate(timeout=case.timeout)
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            out, err = proc.communicate()
            rc = None
        _kill_group(proc.pid)  # anything the command left running (a launcher's ranks)
        wall = time.perf_counter() - t0
        outcome, detail = judge(case, rc, out, err, cwd, snapshot)
        return Outcome(case, outcome, detail, rc, out, err, wall)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------
# The scan
# ---------------------------------------------------------------------------------------------


def select(cases: list[Case], *, quick: bool, skip_slow: bool, only: str | None) -> list[Case]:
    return [c for c in cases if (not quick or c.quick) and not (skip_slow and c.slow)
            and (only is None or only in c.id)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="only the representative subset")
    ap.add_argument("--skip-slow", action="store_true", help="skip cases marked slow")
    ap.add_argument("--only", help="only cases whose id contains this")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repo", type=Path, default=REPO, help="the tree under test")
    ap.add_argument("--out", type=Path, help="write the JSON report here")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)

    cases = select(all_cases() + train_cases(), quick=args.quick, skip_slow=args.skip_slow,
                   only=args.only)
    if args.list:
        for c in cases:
            print(f"{c.area:8} {c.category:10} {c.id}")
        print(f"{len(cases)} cases")
        return 0
    results: list[Outcome] = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        futures = [pool.submit(run_subprocess, c, args.repo.resolve()) for c in cases]
        for i, fut in enumerate(as_completed(futures), 1):
            r = fut.result()
            results.append(r)
            mark = "." if r.outcome == "ok" else "!"
            print(f"[{i:4}/{len(cases)} {time.perf_counter() - t0:6.0f}s] {mark} {r.outcome:10} "
                  f"{r.case.id}" + ("" if r.outcome == "ok" else f"  -- {r.detail[:150]}"),
                  file=sys.stderr, flush=True)
    order = {c.id: i for i, c in enumerate(cases)}
    results.sort(key=lambda r: order[r.case.id])
    failed = [r for r in results if r.outcome != "ok"]
    by_outcome = Counter(r.outcome for r in results)
    print(f"\n{len(results)} cases in {time.perf_counter() - t0:.0f} s: "
          + ", ".join(f"{n} {k}" for k, n in by_outcome.most_common()))
    for key in ("category", "area"):
        print(f"\nby {key}:")
        for name in sorted({getattr(r.case, key) for r in results}):
            rs = [r for r in results if getattr(r.case, key) == name]
            bad = Counter(r.outcome for r in rs if r.outcome != "ok")
            print(f"  {name:10} {len(rs):4} cases, {len(rs) - sum(bad.values()):4} ok"
                  + (": " + ", ".join(f"{n} {k}" for k, n in bad.most_common()) if bad else ""))
    if failed:
        print("\nnot ok:")
        for r in failed:
            print(f"  [{r.case.area}] {r.outcome:10} {r.case.id}: {r.detail[:160]}")
    if args.out:
        report = {"cases": len(results), "failed": len(failed), "by_outcome": dict(by_outcome),
                  "results": [r.to_dict() for r in results]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"\nreport: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
