"""`ecdit-scale fit | report | sweep` as a user runs them."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cli_here, strict_json


def run_cli(*args):
    return cli_here(*args)  # in process: the commands' own work, not interpreter starts


def synthetic_table(path: Path, seed: int = 0) -> Path:
    """Three kinds on a C grid; expert choice needs exactly 2x less compute than dense."""
    rng = np.random.default_rng(seed)
    rows = []
    laws = {"dense": 1.0, "token-choice": 1.3, "expert-choice": 2.0}
    for kind, mult in laws.items():
        for i, c in enumerate(np.geomspace(1e12, 1e15, 9)):
            loss = 0.5 + 60.0 * (c * mult) ** -0.15 * (1 + rng.normal(0, 0.002))
            n = 1e6 * (1 + i)
            rows.append(dict(name=f"{kind}-{i}", ffn_kind=kind, params=n, active_params=n,
                             images_seen=c / (6 * n * 64), tokens_seen=c / (6 * n),
                             compute_flops=c, final_loss=loss, smoothed_loss=loss))
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# fit -> report as a user runs them: tests/test_install.py runs them without torch.


@pytest.mark.parametrize("mutate, needle", [
    (lambda df: df.drop(columns=["compute_flops"]), "compute_flops"),
    (lambda df: df.assign(smoothed_loss=[np.nan] + list(df.smoothed_loss[1:])), "dense-0"),
    (lambda df: df.assign(compute_flops=[-1.0] + list(df.compute_flops[1:])), "dense-0"),
])
def test_bad_run_tables_name_the_rows(tmp_path, mutate, needle):
    table = synthetic_table(tmp_path / "runs.csv")
    mutate(pd.read_csv(table)).to_csv(table, index=False)
    out = run_cli("fit", str(table), "--n-boot", "0")
    assert out.returncode != 0 and needle in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_plan_shows_multipliers_not_an_extrapolated_loss():
    out = run_cli("plan", "--no-write", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    est = data["scaling_estimate"]
    assert "predicted_loss" not in data and est["estimated"] is True
    assert "reference" in est["source"] and est["beyond_factor"] > 100
    lo, hi = est["measured_compute_flops"]
    assert 0 < lo < hi and "flow-matching" in est["loss"]
    baselines = {m["baseline"] for m in est["multipliers"]}
    assert any(b.startswith("dense") for b in baselines)
    assert any(b.startswith("token-choice") for b in baselines)
    for m in est["multipliers"]:
        if m["value"] is not None and m["interval"] is not None:
            assert m["interval"][0] <= m["value"] <= m["interval"][1]
    text = run_cli("plan", "--no-write")
    assert "[estimated]" in text.stdout and "predicted final loss" not in text.stdout



def one_line_error(out, *needles):
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    for needle in needles:
        assert needle in out.stderr, (needle, out.stderr)


def test_report_json_without_a_fit_prints_only_json_on_stdout(tmp_path):
    table = synthetic_table(tmp_path / "runs.csv")
    df = pd.read_csv(table)
    df[df.ffn_kind == "dense"].head(4).to_csv(table, index=False)  # L(C) only: quick
    out = run_cli("report", str(table), "--json", "--out", str(tmp_path / "rep"))
    assert out.returncode == 0, out.stderr
    assert Path(strict_json(out.stdout)["html"]).is_file()
    assert "fitting now" in out.stderr


def test_missing_or_broken_fit_files_are_errors_not_a_refit(tmp_path):
    table = synthetic_table(tmp_path / "runs.csv")
    one_line_error(run_cli("report", str(table), "--fit", str(tmp_path / "nope.yaml")),
                   "nope.yaml", "no such file")
    partial = tmp_path / "partial.yaml"
    partial.write_text("format: ecdit-scale/scaling-fit/v1\nloss_column: smoothed_loss\n")
    one_line_error(run_cli("report", str(table), "--fit", str(partial)), "partial.yaml",
                   "missing field 'level'")
    one_line_error(run_cli("plan", "--no-write", "--fit", str(partial)), "partial.yaml",
                   "missing field")
    (tmp_path / "empty.yaml").write_text("")
    one_line_error(run_cli("plan", "--no-write", "--fit", str(tmp_path / "empty.yaml")),
                   "empty.yaml", "empty file")


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_fit_rejects_a_non_positive_or_non_finite_extrapolation_target(tmp_path, value):
    table = synthetic_table(tmp_path / "runs.csv")
    one_line_error(run_cli("fit", str(table), "--extrapolate-to", value),
                   "--extrapolate-to", "finite and > 0")
    assert not (tmp_path / "fit.yaml").exists()


def test_one_row_table_says_how_many_runs_a_fit_needs(tmp_path):
    table = synthetic_table(tmp_path / "runs.csv")
    pd.read_csv(table).head(1).to_csv(table, index=False)
    one_line_error(run_cli("fit", str(table)), "needs at least 3 runs", "dense: 1")


def test_fit_json_writes_non_finite_numbers_as_null_with_a_note(capsys):
    from ecdit_scale.cli.scaling import print_strict_json

    print_strict_json({"value": float("nan"), "interval": {"lo": 0.0, "hi": float("inf")}})
    data = strict_json(capsys.readouterr().out)
    assert data["value"] is None and data["interval"]["hi"] is None
    assert "not finite" in data["json_note"]


def test_progress_goes_to_stderr_once_work_takes_a_while(monkeypatch, capsys):
    import ecdit_scale.cli.scaling as cli

    monkeypatch.setattr(cli, "PROGRESS_AFTER_S", 0.0)
    show = cli.stderr_progress("fit")
    show("L(C) for dense", 0, 2)
    show("done", 2, 2)
    out = capsys.readouterr()
    assert out.out == ""
    assert "fit: L(C) for dense (1/2" in out.err and "fit: done in" in out.err
    monkeypatch.setattr(cli, "PROGRESS_AFTER_S", 1e9)
    quick = cli.stderr_progress("fit")
    quick("L(C) for dense", 0, 2)
    quick("done", 2, 2)
    assert capsys.readouterr().err == ""  # quick work prints nothing


def test_drop_outliers_is_explicit_and_reported_and_loss_is_not_extrapolated_past_100x(tmp_path):
    table = synthetic_table(tmp_path / "runs.csv")
    df = pd.read_csv(table)
    df = df[df.ffn_kind == "dense"].copy()  # one kind is enough here (and 3x quicker)
    df.loc[4, "smoothed_loss"] *= 1.3  # dense-4: far off its curve
    df.to_csv(table, index=False)
    out = run_cli("fit", str(table), "--n-boot", "0", "--drop-outliers", "--json",
                  "--extrapolate-to", "1e20")
    assert out.returncode == 0, out.stderr
    data = strict_json(out.stdout)
    assert data["outliers"]["applied"] is True and data["outliers"]["dropped"] == ["dense-4"]
    assert "robust standard deviations" in data["outliers"]["rule"]
    assert data["extrapolations"] == []  # 1e20 is 1e5x beyond the largest run
    assert any("100x limit" in n for n in data["notes"])


def test_sweep_isoflop_dry_run_lists_the_runs_without_training(tmp_path):
    import json

    from typer.testing import CliRunner

    from ecdit_scale.cli import app
    from ecdit_scale.errors import ConfigError

    runner = CliRunner()
    args = ["sweep", "--design", "isoflop", "--flops", "1e13,1e14", "--tokens-per-param", "1",
            "--variants", "dense,ec8", "--seeds", "0,1", "--out", str(tmp_path / "s"),
            "--dry-run", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    design = json.loads(res.stdout)
    runs = design["runs"]
    assert {r["variant"] for r in runs} == {"dense", "ec8"} and {r["seed"] for r in runs} == {0, 1}
    for key in ("card", "active_params", "steps", "flops", "level_flops", "purpose"):
        assert all(key in r for r in runs)
    for level in (1e13, 1e14):
        sizes = {r["active_params"] for r in runs if r["level_flops"] == level
                 and r["variant"] == "dense" and r["purpose"] == "sweep"}
        assert len(sizes) >= 3
    assert not (tmp_path / "s").exists()  # nothing trained, nothing written
    bad = runner.invoke(app, ["sweep", "--design", "isoflop", "--dry-run"])
    assert isinstance(bad.exception, ConfigError) and "--flops" in str(bad.exception)
