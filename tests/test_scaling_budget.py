"""Compute-optimal plans from a fit (issue 20): `plan --fit F --flops C` on a fit of a planted
IsoFLOP table puts activated parameters within 1.5x of the true optimum."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from ecdit_scale.cli import app
from ecdit_scale.errors import ConfigError
from ecdit_scale.scaling import planted
from ecdit_scale.scaling.allocation import allocate, optimal_params
from ecdit_scale.scaling.evidence import fit_headline, headline_data
from ecdit_scale.scaling.fit_file import save_fit
from ecdit_scale.scaling.headline import HeadlineLaw
from ecdit_scale.scaling.planted import CHINCHILLA_LAW, isoflop_grid, planted_table
from ecdit_scale.scaling.results import ScalingFit

LEVELS = (1e11, 1e12, 1e13)


def _true_optimum(compute_flops, multiplier=1.5, k=6.0):
    """The planted variant reaches the baseline's loss at multiplier x the compute, with
    N scaled by multiplier^0.5: its optimum is the baseline's at m·C, divided by s_N."""
    return planted.optimal_params(CHINCHILLA_LAW, compute_flops * multiplier, k) / multiplier ** 0.5


@pytest.fixture(scope="module")
def planted_fit():
    df = planted_table(isoflop_grid(LEVELS, sizes_per_level=5), seed=3)
    h = fit_headline(headline_data(df, "heldout_loss"), n_boot=20, constancy=False,
                     compute_flops=df["compute_flops"].to_numpy())
    return df, h


def test_golden_section_search_matches_the_closed_form():
    law = HeadlineLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28,
                      s_N={"dense": 1.0}, s_D={"dense": 1.0})
    for C in (1e12, 1e18, 1e24):
        assert optimal_params(law, "dense", C, 6.0) == pytest.approx(
            planted.optimal_params(CHINCHILLA_LAW, C, 6.0), rel=1e-6)


@pytest.mark.parametrize("compute_flops", [1e13, 1e15])
def test_allocation_of_a_planted_isoflop_fit_is_within_1_5x_of_the_true_optimum(
        planted_fit, compute_flops):
    df, h = planted_fit
    a = allocate(h.law, "expert-choice", compute_flops, h.flops_per_param_token,
                 bootstrap_laws=h.bootstrap_laws, max_measured_flops=h.compute_range[1])
    truth = _true_optimum(compute_flops)
    assert 1 / 1.5 < a.active_params / truth < 1.5, (a.active_params, truth)
    assert a.params_interval.lo <= a.active_params <= a.params_interval.hi
    assert a.tokens == pytest.approx(compute_flops / (6.0 * a.active_params), rel=1e-3)
    assert a.extrapolated == (compute_flops > 10 * 1e13)


def test_plan_fit_flops_prints_the_allocation_and_the_loss_with_its_interval(planted_fit,
                                                                              tmp_path):
    df, h = planted_fit
    fit = ScalingFit(loss_column="heldout_loss", level=0.95, n_boot=20, seed=0,
                     kinds=("dense", "token-choice", "expert-choice"),
                     max_compute_flops=float(df["compute_flops"].max()), headline=h,
                     loss_label="planted loss")
    path = save_fit(fit, tmp_path / "fit.yaml")
    runner = CliRunner()
    args = ["plan", "--fit", str(path), "--global-batch", "64", "--gpus", "1", "--no-write",
            "--no-table"]
    res = runner.invoke(app, [*args, "--flops", "1e14"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "compute-optimal allocation of 1e+14 FLOPs" in text
    assert "fitted loss at this allocation" in text and "95% CI" in text
    n = float(text.split("activated parameters ")[1].split()[0])
    assert 1 / 1.5 < n / _true_optimum(1e14) < 1.5
    far = runner.invoke(app, [*args, "--flops", "1e15"])
    assert far.exit_code == 0, far.output
    far_text = " ".join(far.output.split())
    assert "beyond the largest measured run" in far_text
    assert "fitted loss at this allocation" not in far_text
    from ecdit_scale.planner.hardware import get_accelerator

    hours = 1e15 / (3600 * get_accelerator("h100-sxm").sustained_flops)  # the same 1e15 FLOPs
    by_hours = runner.invoke(app, [*args, "--gpu-hours", f"{hours!r}"])
    assert by_hours.exit_code == 0, by_hours.output
    assert "compute-optimal allocation of 1e+15 FLOPs" in " ".join(by_hours.output.split())
    bad = runner.invoke(app, [*args, "--flops", "1e15", "--gpu-hours", "3"])
    assert isinstance(bad.exception, ConfigError) and "not both" in str(bad.exception)
    assert not math.isnan(h.flops_per_param_token)
