"""`ecdit-scale fit | report | sweep` as a user runs them."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "ecdit_scale", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


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


def test_fit_then_report(tmp_path):
    table = synthetic_table(tmp_path / "runs.csv")
    out = run_cli("fit", str(table), "--n-boot", "40", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert Path(data["saved"]).is_file()
    ec = next(m for m in data["multipliers"]
              if m["kind"] == "expert-choice" and m["baseline_kind"] == "dense")
    assert ec["value"] == pytest.approx(2.0, rel=0.15)
    assert data["extrapolations"]  # to the 97B plan's compute by default
    out = run_cli("report", str(table), "--json")
    assert out.returncode == 0, out.stderr
    html = Path(json.loads(out.stdout)["html"]).read_text()
    assert html.count("data:image/png;base64,") >= 3


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


def test_plan_shows_the_predicted_loss_of_the_reference_fit():
    out = run_cli("plan", "--no-write", "--json")
    assert out.returncode == 0, out.stderr
    loss = json.loads(out.stdout)["predicted_loss"]
    assert loss is not None and loss["interval"][0] <= loss["loss"] <= loss["interval"][1]
    assert "reference" in loss["source"] and loss["extrapolation_factor"] > 1
