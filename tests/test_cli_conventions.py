"""CLI conventions (issue 22): --version, flags shown as flags, choices listed, plan writes only
with --out, bugs are exit 1 with a traceback file, interrupts say what is kept, COLUMNS is
honoured; and hostile device numbers and plan/run mismatches are refused in one line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_main

import ecdit_scale
from ecdit_scale.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_version(capsys):
    code, out, _ = run_main(capsys, "--version")
    assert code in (0, None) and out.strip() == f"ecdit-scale {ecdit_scale.__version__}"


def test_help_shows_flags_as_flags_and_lists_choices(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_main(capsys, "plan", "--help")
    assert code in (0, None)
    assert "<bool>" not in out
    for choice in ("<dense|token-choice|expert-choice>", "<adamw|rmsprop|sgd>",
                   "<bf16|fp16|tf32|fp32>", "<none|replicated|sharded>", "<none|selective|full>",
                   "<0|1|2|3>"):
        assert choice in out, choice
    code, out, _ = run_main(capsys, "models", "list", "--help")
    assert "<bool>" not in out and "<dense|token-choice|expert-choice>" in out


def test_the_loss_column_choices_are_the_fits():
    from ecdit_scale.cli.scaling import LOSS_COLUMN_CHOICES
    from ecdit_scale.scaling.table import LOSS_COLUMNS

    assert LOSS_COLUMN_CHOICES == "<" + "|".join(LOSS_COLUMNS) + ">"


def test_a_bad_choice_names_the_valid_ones(capsys):
    code, _, err = run_main(capsys, "plan", "--recompute", "most")
    assert code == 2
    assert "--recompute 'most': choose one of none, selective, full" in one_error_line(err)


def test_plan_writes_files_only_with_out(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_main(capsys, "plan", "--model", "nano-ec8", "--gpus", "1", "--json")
    assert code in (0, None) and json.loads(out)["ecdit_scale_version"] == ecdit_scale.__version__
    code, out, _ = run_main(capsys, "plan", "--model", "nano-ec8", "--gpus", "1")
    assert code in (0, None) and "nothing written; add --out DIR" in out
    assert list(tmp_path.iterdir()) == []
    code, _, _ = run_main(capsys, "plan", "--model", "nano-ec8", "--gpus", "1", "--out", "p")
    assert code in (0, None)
    plan = yaml.safe_load((tmp_path / "p" / "plan.yaml").read_text())
    assert plan["ecdit_scale_version"] == ecdit_scale.__version__
    code, _, err = run_main(capsys, "plan", "--out", "q", "--no-write")
    assert code == 2 and "--no-write" in one_error_line(err)


def test_a_bug_is_exit_1_with_its_traceback_in_a_file(capsys, monkeypatch):
    import ecdit_scale.planner.plan as planner

    def broken(*args, **kwargs):
        return {}["no such key"]

    monkeypatch.delenv("ECDIT_SCALE_DEBUG", raising=False)
    monkeypatch.setattr(planner, "make_plan", broken)
    code, _, err = run_main(capsys, "plan", "--model", "nano-ec8")
    line = one_error_line(err)
    assert code == 1 and "internal error (a bug in ecdit-scale" in line and "KeyError" in line
    path = Path(re.search(r"traceback in (\S+?);", line).group(1))
    try:
        assert "in broken" in path.read_text() and "KeyError: 'no such key'" in path.read_text()
    finally:
        path.unlink()


def test_a_missing_training_extra_says_what_to_install(capsys, monkeypatch):
    import ecdit_scale.cli.common as common

    def no_torch():
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(common, "need_train_extra", no_torch)
    monkeypatch.setattr("ecdit_scale.cli.scaling.need_train_extra", no_torch)
    code, _, err = run_main(capsys, "sweep")
    assert code == 2 and one_error_line(err) == (
        "error: `ecdit-scale sweep` needs the training extra (torch is not installed): "
        "pip install 'ecdit-scale[train]'")


@pytest.mark.parametrize("command, says", [
    (("plan", "--model", "nano-ec8"), "nothing was left half-written"),
    (("sweep",), "finished runs and completed checkpoints are kept"),
])
def test_an_interrupt_says_what_is_kept(capsys, monkeypatch, command, says):
    import ecdit_scale.planner.plan as planner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(planner, "make_plan", interrupted)
    monkeypatch.setattr("ecdit_scale.cli.scaling.need_train_extra", interrupted)
    code, _, err = run_main(capsys, *command)
    assert code == 130 and says in one_error_line(err)


def test_columns_sets_the_width_of_piped_output(monkeypatch):
    from ecdit_scale.cli.common import _width

    class Piped:
        def isatty(self):
            return False

    monkeypatch.setenv("COLUMNS", "91")
    assert _width(Piped(), 140) == 91
    monkeypatch.setenv("COLUMNS", "x")
    assert _width(Piped(), 140) == 140
    monkeypatch.delenv("COLUMNS")
    assert _width(Piped(), 140) == 140


# The child holds its import of the CLI (typer, rich, numpy...: the first ~0.3 s of a real start)
# until the test has sent Ctrl-C. Before that, Python's own start-up is not ours to handle.
SLOW_START = """
import builtins, signal, sys, time
# SIGINT as a terminal gives it (Python's handler, not blocked), whatever the test process has
# done with it: two -n 2 runs of the whole suite got exit 0 after the 30 s and no line, what an
# inherited SIG_IGN or blocked SIGINT gives (the test alone, or its file under -n 2, passes)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
signal.signal(signal.SIGINT, signal.default_int_handler)
import ecdit_scale.__main__ as entry
real_import = builtins.__import__
def held(name, *args, **kwargs):
    if name == "cli.common":
        sys.stderr.write("importing\\n")
        sys.stderr.flush()
        time.sleep(30)
    return real_import(name, *args, **kwargs)
builtins.__import__ = held
sys.argv = ["ecdit-scale", "models", "list"]
entry.main()
"""


def test_ctrl_c_while_starting_is_one_line_not_a_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_START], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline() == "importing\n"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err.strip()) == (130, "interrupted while starting: nothing was done")


def test_profile_threads_are_bounded_by_the_cpus(capsys):
    code, _, err = run_main(capsys, "profile", "--threads", "100000")
    assert code == 2 and re.search(r"--threads 100000: must be in 1\.\.\d+", one_error_line(err))


# ---------------------------------------------------------------------------------------------
# Physical bounds of device numbers (planner/bounds.py)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, needle", [
    ("inter_node_bw_bytes_per_s", 1e-300, "inter_node_bw_bytes_per_s = 1e-300 B/s"),
    ("memory_bw_bytes_per_s", 1e30, "memory_bw_bytes_per_s = 1e+30 B/s"),
    ("peak_bf16_flops", 1.0, "peak_bf16_flops = 1 FLOP/s"),
    ("memory_bytes", 1e20, "memory_bytes = 1e+20 bytes"),
])
def test_absurd_device_numbers_are_refused_naming_the_bound(tmp_path, capsys, field, value,
                                                            needle):
    from ecdit_scale.planner.hardware import get_accelerator

    entry = get_accelerator("h100-sxm").to_dict()
    entry.pop("profile", None)
    entry[field] = value
    path = tmp_path / "dev.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in entry.items() if v is not None}))
    with pytest.raises(ConfigError, match="is not physical: must be in") as refused:
        get_accelerator(str(path))
    assert needle in str(refused.value)
    if field == "inter_node_bw_bytes_per_s":  # the case, as a user meets it
        code, _, err = run_main(capsys, "plan", "--params", "1B", "--gpu", str(path))
        assert code == 2 and needle in one_error_line(err)


def test_absurd_profile_numbers_are_refused():
    from ecdit_scale.planner.bounds import check_profile
    from ecdit_scale.planner.device_profile import DeviceProfile

    with pytest.raises(ConfigError, match=r"profile.launch.seconds = 3.6e\+03 s"):
        check_profile("p", DeviceProfile.from_dict({"launch": {"seconds": 3600.0}}))
    with pytest.raises(ConfigError, match="profile.memory_bw_bytes_per_s"):
        check_profile("p", DeviceProfile.from_dict({"memory_bw_bytes_per_s": 1e-9}))


def test_the_catalog_is_within_the_bounds():
    from ecdit_scale.planner.bounds import check_accelerator
    from ecdit_scale.planner.hardware import catalog

    for acc in catalog().values():
        check_accelerator(acc)


# ---------------------------------------------------------------------------------------------
# validate PLAN RUN
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("accelerator, device, same", [
    ("cpu-vm", "cpu", True), ("h100-sxm", "cpu", False), ("cpu-vm", "NVIDIA H200", False),
    ("h200", "NVIDIA H200", True), ("h100-sxm", "NVIDIA H200", False), ("h200", None, True),
])
def test_a_plan_from_this_machines_profile_matches_a_cpu_run(accelerator, device, same):
    from ecdit_scale.evaluation.validate_plan import same_device

    assert same_device({"name": accelerator}, device) is same


def test_validate_refuses_a_plan_and_run_of_different_models(tmp_path, capsys):
    plan, run = tmp_path / "plan", tmp_path / "run"
    plan.mkdir()
    run.mkdir()
    (plan / "plan.yaml").write_text(yaml.safe_dump({
        "model": "ecdit-m-64e", "best": {"layout": {"ep": 8}}, "training": {},
        "cluster": {"world": 512}, "accelerator": {"name": "h100-sxm"}}))
    (run / "run.json").write_text(json.dumps({"model_name": "nano-ec8", "world": 2}))
    code, _, err = run_main(capsys, "validate", str(plan), str(run))
    line = one_error_line(err)
    assert code == 2 and "the models differ (the plan is for ecdit-m-64e, the run trained " \
                         "nano-ec8)" in line


# ---------------------------------------------------------------------------------------------
# report: readable figures, SVG too, and a folder that appears whole
# ---------------------------------------------------------------------------------------------


def test_long_titles_and_labels_are_wrapped_inside_the_figure(tmp_path):
    from matplotlib.figure import Figure

    from ecdit_scale.scaling.report_figures import _save

    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.plot([1, 2], [1, 2])
    ax.set(title="a title far longer than any axes of five inches could hold on one line " * 2,
           xlabel="an x label that is also far too long to fit under the axes on one line " * 2,
           ylabel="a y label too tall for the axes height when written on one single line")
    block = _save(fig, tmp_path, "long", "alt")
    assert block.path.is_file() and block.svg.is_file()
    assert block.svg.read_text().lstrip().startswith("<?xml")
    fig.canvas.draw()  # the layout as saved (savefig's tight crop moved the texts meanwhile)
    renderer = fig.canvas.get_renderer()
    for text in (ax.title, ax.xaxis.label, ax.yaxis.label):
        box = text.get_window_extent(renderer)
        assert "\n" in text.get_text()
        assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y0 >= 0 and box.y1 <= fig.bbox.y1


@pytest.mark.parametrize("existing", [False, True])
def test_an_interrupted_report_leaves_no_half_folder(tmp_path, monkeypatch, existing):
    import pandas as pd

    import ecdit_scale.scaling.report as report

    out = tmp_path / "report"
    if existing:
        (out / "figures").mkdir(parents=True)
        (out / "report.md").write_text("old report\n")
        (out / "mine.txt").write_text("the user's\n")
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt

    def blocks(df, fit, figures_dir, title, expert_load):
        (figures_dir / "loss_vs_compute.png").write_bytes(b"half")  # one figure written...
        interrupted()  # ... then Ctrl-C

    monkeypatch.setattr(report, "_blocks", blocks)
    with pytest.raises(KeyboardInterrupt):
        report.write_report(pd.DataFrame(), None, out)
    assert calls
    if existing:
        assert (out / "report.md").read_text() == "old report\n"
        assert (out / "mine.txt").read_text() == "the user's\n"
        assert not (out / "figures" / "loss_vs_compute.png").exists()
    else:
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["report"] if existing else [])
