"""Bad input never breaks `ecdit-scale` (issue #12, "Reliability"), by the issue's categories.

The cases are defined once, in bench/fuzz_cases.py; `bench/fuzz_scan.py` runs all of them (as
subprocesses, with timeouts); this module runs the representative ones (``quick``) and judges
them with the scan's own rule (``fuzz_scan.judge``): refused with exit code 2 and ONE line on
stderr that names the bad value, option or file; no traceback; no hang; exit 0 only for valid
input, with strict JSON where --json was asked; no user file lost; nothing half-written.

Most cases run in-process (``ecdit_scale.cli.main`` with patched argv) to keep this fast;
cases that could launch training, hang or allocate without bound (``isolate``) run as
subprocesses of the real entry point, killed with their children at their timeout.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import traceback
from pathlib import Path

import pytest
from conftest import restore_environ

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from fuzz_cases import all_cases  # noqa: E402
from fuzz_files import Case, materialize  # noqa: E402
from fuzz_scan import judge, run_subprocess  # noqa: E402

ALL = all_cases()
CATEGORIES = ("traceback", "hang", "silent", "usage", "message", "dataloss", "json", "partial")


def run_in_process(case: Case, tmp_path: Path, monkeypatch) -> tuple[str, str, int, str, str]:
    """Run ``ecdit-scale ARGS`` in this process, in ``tmp_path``:
    (outcome, detail, rc, out, err)."""
    from ecdit_scale import cli

    materialize(case, tmp_path, ROOT)
    snapshot = {rel: (tmp_path / rel).read_bytes()
                for rel in case.keep if (tmp_path / rel).is_file()}
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ECDIT_SCALE_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["ecdit-scale", *case.args(ROOT)])
    env = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    rc = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # noqa: BLE001 - an escaped exception is the finding
                traceback.print_exc()
                rc = 1
    finally:
        restore_environ(env)
    outcome, detail = judge(case, rc, out.getvalue(), err.getvalue(), tmp_path, snapshot)
    return outcome, detail, rc, out.getvalue(), err.getvalue()


def check(case: Case, tmp_path: Path, monkeypatch) -> None:
    if case.isolate:
        r = run_subprocess(case, ROOT)
        outcome, detail, rc, err = r.outcome, r.detail, r.rc, r.stderr
    else:
        outcome, detail, rc, _, err = run_in_process(case, tmp_path, monkeypatch)
    assert outcome == "ok", (f"{case.id}: {outcome}: {detail}\n  $ ecdit-scale "
                             f"{' '.join(case.argv)}\n  exit {rc}; stderr: {err[-800:]}")


def cases_of(category: str) -> list:
    return [pytest.param(c, id=c.id)
            for c in ALL if c.category == category and c.quick and not c.slow]


# ---------------------------------------------------------------------------------------------
# The categories
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases_of("traceback"))
def test_bad_files_give_one_line_not_a_traceback(case, tmp_path, monkeypatch):
    """Cards with a non-string key or a wrongly typed ffn, malformed/empty/partial fit files,
    ragged tables, corrupt run directories."""
    check(case, tmp_path, monkeypatch)


@pytest.mark.parametrize("case", cases_of("hang"))
def test_bombs_and_huge_values_end_quickly(case, tmp_path, monkeypatch):
    """YAML alias bombs, 50 MB strings, 2^62 sizes, constant-loss tables, 10^8 timesteps."""
    check(case, tmp_path, monkeypatch)


@pytest.mark.parametrize("case", cases_of("silent"))
def test_numbers_out_of_range_are_refused(case, tmp_path, monkeypatch):
    """0, negative, NaN and inf nodes, GPUs, tp, price, compute; one-row tables; a missing fit."""
    check(case, tmp_path, monkeypatch)


@pytest.mark.parametrize("case", cases_of("usage"))
def test_usage_errors_are_one_line(case, tmp_path, monkeypatch):
    """typer's own errors (unknown option, missing argument, not a number) too."""
    check(case, tmp_path, monkeypatch)


@pytest.mark.parametrize("case", cases_of("message"))
def test_messages_name_the_file_or_field(case, tmp_path, monkeypatch):
    """Binary and non-UTF-8 files, unknown names: the line says which file or field."""
    check(case, tmp_path, monkeypatch)


@pytest.mark.parametrize("case", cases_of("dataloss"))
def test_no_user_file_is_lost(case, tmp_path, monkeypatch):
    """`models export` and `plan --out` keep files they did not write."""
    check(case, tmp_path, monkeypatch)


@pytest.mark.parametrize("case", cases_of("json"))
def test_json_output_is_strict(case, tmp_path, monkeypatch):
    """--json gives one strict JSON document on stdout (no NaN/Infinity, no progress lines)."""
    check(case, tmp_path, monkeypatch)


@pytest.mark.parametrize("case", cases_of("partial"))
def test_failed_commands_leave_nothing_half_written(case, tmp_path, monkeypatch):
    check(case, tmp_path, monkeypatch)


# ---------------------------------------------------------------------------------------------
# The real entry point, and the scan's own rule
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", ["usage/unknown option", "plan/--nodes 0",
                                     "models-show/card:int-key", "plan/--json valid"])
def test_the_real_entry_point_behaves_as_in_process(case_id):
    """`python -m ecdit_scale` (a subprocess) gives the same outcome as in-process calls."""
    case = next(c for c in ALL if c.id == case_id)
    r = run_subprocess(case, ROOT)
    assert r.outcome == "ok", f"{case.id}: {r.outcome}: {r.detail}; stderr: {r.stderr[-800:]}"


def test_the_scan_is_at_least_as_large_as_the_reviewers():
    assert len(ALL) >= 364
    assert len({c.id for c in ALL}) == len(ALL)
    assert {c.category for c in ALL} == set(CATEGORIES)
    assert {c.area for c in ALL} == {"core", "scaling", "eval", "run"}
    commands = {c.argv[0] if c.argv[0] not in ("models", "plans") else " ".join(c.argv[:2])
                for c in ALL}
    for command in ("models list", "models show", "models export", "plans export", "plan",
                    "launch", "validate", "adaptive", "sweep", "fit", "report"):
        assert command in commands, command
    for category in CATEGORIES:
        assert cases_of(category), f"no quick case for {category}"


def _case(**kw) -> Case:
    return Case(**{"id": "t", "area": "core", "category": "silent",
                   "argv": ("plan", "--nodes", "0"), "mention": ("--nodes",), **kw})


@pytest.mark.parametrize("rc, out, err, expected", [
    (2, "", "error: --nodes 0: must be >= 1\n", "ok"),
    (0, "plan ...", "", "silent"),
    (1, "", "Traceback (most recent call last):\n  File ...\nValueError: x\n", "traceback"),
    (2, "", "Usage: ecdit-scale plan [OPTIONS]\nTry 'ecdit-scale plan --help'\n╭─ Error ─╮\n",
     "usage-box"),
    (2, "", "error: cannot convert float NaN to integer\n", "unclear"),
    (1, "", "error: --nodes 0: must be >= 1\n", "exit-code"),
    (2, "", "", "no-message"),
    (None, "", "", "hang"),
])
def test_judge(rc, out, err, expected, tmp_path):
    assert judge(_case(), rc, out, err, tmp_path, {})[0] == expected


def test_judge_json_and_files(tmp_path):
    js = _case(expect="json", argv=("models", "list", "--json"))
    assert judge(js, 0, '{"a": 1}', "", tmp_path, {})[0] == "ok"
    assert judge(js, 0, '{"a": NaN}', "", tmp_path, {})[0] == "json"
    assert judge(js, 0, 'fitting...\n{"a": 1}', "", tmp_path, {})[0] == "json"
    (tmp_path / "mine.yaml").write_text("changed")
    kept = _case(expect="sane", keep=("mine.yaml",))
    assert judge(kept, 0, "", "", tmp_path, {"mine.yaml": b"original"})[0] == "data-loss"
    assert judge(kept, 0, "", "", tmp_path, {"gone.yaml": b"x"})[0] == "data-loss"
    written = _case(absent=("mine.yaml",))
    assert judge(written, 2, "", "error: --nodes 0\n", tmp_path, {})[0] == "partial"
