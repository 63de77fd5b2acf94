"""`ecdit-scale validate`: predictions next to measurements of a real CPU run and of the
checked-in GPU measurements."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import ROOT, cli

GPU_RESULTS = sorted((ROOT / "bench" / "results").glob("gpu_*.json"))


@pytest.mark.slow
def test_validate_cpu_run(ec_run, tmp_path):
    out_csv, profile = tmp_path / "v.csv", tmp_path / "cpu.yaml"
    proc = cli("validate", str(ec_run), "--csv", str(out_csv), "--save-profile", str(profile),
               "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    (row,) = report["rows"]
    assert row["params_error"] == 0.0  # exact: count_params vs numel (x ep for experts)
    assert abs(row["flops_error"]) < 0.01  # planner vs FlopCounterMode
    assert row["memory_predicted"] > 0 and row["memory_measured"] > 0
    assert row["memory_error"] is not None and abs(row["memory_error"]) < 1.0
    assert row["states_measured"] > 0 and row["states_error"] is not None
    # calibrated on itself: the efficiency reproduces its own step time
    (cal,) = report["calibrations"]
    assert 0 < cal["efficiency"] <= 1 and "measured" in cal["peak_source"]
    assert row["step_s_error"] == pytest.approx(0.0, abs=1e-9)
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 1 and float(rows[0]["params_error"]) == 0.0

    from ecdit_scale.planner.hardware import get_accelerator

    acc = get_accelerator(str(profile))
    assert acc.efficiency == pytest.approx(min(1.0, cal["efficiency"]))
    assert acc.calibrated_from == str(ec_run)


@pytest.mark.slow
def test_validate_table_and_default_csv(ec_run):
    proc = cli("validate", str(ec_run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Predicted" in proc.stdout and "calibration" in proc.stdout
    assert (ec_run / "validation.csv").is_file()


@pytest.mark.skipif(not GPU_RESULTS, reason="no bench/results/gpu_*.json")
def test_validate_reads_gpu_measurements(tmp_path):
    proc = cli("validate", *map(str, GPU_RESULTS), "--csv", str(tmp_path / "gpu.csv"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["rows"] and all(r["kind"] == "gpu-bench" for r in report["rows"])
    for r in report["rows"]:
        assert r["params_error"] == 0.0
        assert abs(r["flops_error"]) < 0.01
        assert r["memory_measured"] > 0 and r["memory_error"] is not None
    assert report["calibrations"] and report["calibrations"][0]["device"].startswith("NVIDIA")


def test_validate_rejects_what_is_not_a_run(tmp_path):
    (tmp_path / "junk.json").write_text("{}")
    for arg in (str(tmp_path), str(tmp_path / "junk.json"), str(tmp_path / "missing")):
        proc = cli("validate", arg, timeout=60)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("error:"), proc.stderr


def test_measured_flops_match_the_planner():
    from ecdit_scale import sizes
    from ecdit_scale.config import Recompute
    from ecdit_scale.planner.flops import training_flops_per_image
    from ecdit_scale.evaluation.measure import measured_training_flops

    for name in ("nano-dense", "nano-ec8", "nano-tc8"):
        cfg = sizes.get(name)
        measured = measured_training_flops(cfg, images=2) / 2
        predicted = training_flops_per_image(cfg, Recompute.NONE).model_flops
        assert measured == pytest.approx(predicted, rel=0.01), name


def test_row_errors():
    from ecdit_scale.evaluation.rows import Row

    r = Row(name="x", source="x", kind="run", device="cpu", model="m", world=2, ep=1, zero=1,
            micro_batch=1, global_batch=2, params_predicted=100, params_measured=110,
            flops_predicted=1.0, flops_measured=None, memory_predicted=None,
            memory_measured=5.0)
    assert r.params_error == pytest.approx(0.1)
    assert r.flops_error is None and r.memory_error is None
