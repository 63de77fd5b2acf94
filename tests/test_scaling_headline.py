"""The headline estimator on planted truth laid out like the project's sweeps (issue 20): a
Chinchilla-form law per variant with 1.5x and 1.25x planted and 1% run noise. Small bootstrap
counts keep these fast; bench/planted_coverage.py runs the full coverage study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecdit_scale.scaling.evidence import HeadlineFit, fit_headline, headline_data
from ecdit_scale.scaling.headline import seed_resamples
from ecdit_scale.scaling.planted import PLANTED_MULTIPLIERS, isoflop_grid, planted_table, table_grid

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "bench" / "results" / "reference-sweep" / "runs.csv"
LEVELS = (1e11, 1e12, 1e13)
N_BOOT = 30


def _fit(df, n_boot=N_BOOT, constancy=False):
    return fit_headline(headline_data(df, "heldout_loss"), n_boot=n_boot, seed=0,
                        constancy=constancy)


@pytest.fixture(scope="module")
def isoflop_fit():
    return _fit(planted_table(isoflop_grid(LEVELS, sizes_per_level=5), seed=3), constancy=True)


def test_isoflop_grid_recovers_both_multipliers_within_10pc_with_covering_intervals(isoflop_fit):
    for variant in ("expert-choice", "token-choice"):
        truth = PLANTED_MULTIPLIERS[variant]
        c = isoflop_fit.comparison(variant, "dense")
        assert abs(c.value / truth - 1) < 0.10, (variant, c.value)
        assert c.interval.contains(truth), (variant, c.interval)
        assert c.detected and "detects multipliers from" in c.verdict()
        # the design detects far less than what was planted
        assert c.minimum_detectable < 1.15


def test_constancy_test_passes_a_constant_multiplier(isoflop_fit):
    for c in isoflop_fit.comparisons:
        assert c.constant is True, c.constancy()
        assert "no trend in size" in c.constancy()


def test_constancy_test_flags_a_multiplier_that_grows_with_size():
    df = planted_table(isoflop_grid(LEVELS, sizes_per_level=5), seed=4,
                       multipliers={"dense": 1.0, "expert-choice": 1.5},
                       size_trend={"expert-choice": 0.15})
    c = _fit(df, n_boot=0, constancy=True).comparison("expert-choice")
    assert c.constant is False and c.gamma > 0, c.constancy()
    assert c.at_largest > c.at_smallest
    assert "changes with size" in c.constancy()


def test_reference_grid_covers_the_truth_or_says_it_cannot_identify_it():
    ref = pd.read_csv(REFERENCE)
    fit = _fit(planted_table(table_grid(ref), seed=0), n_boot=20)
    for c in fit.comparisons:
        truth = PLANTED_MULTIPLIERS[c.variant]
        assert c.interval.contains(truth) or not c.identified, c.verdict()
    # three sizes, 4x of tokens, 3 seeds: the design detects far coarser effects than IsoFLOP
    assert min(c.minimum_detectable for c in fit.comparisons) > 1.2


def test_more_noise_means_a_larger_minimum_detectable_multiplier():
    grid = isoflop_grid(LEVELS, sizes_per_level=4)
    quiet, loud = (_fit(planted_table(grid, seed=5, noise=sd), n_boot=0) for sd in (0.01, 0.04))
    for v in ("expert-choice", "token-choice"):
        q, lo = quiet.comparison(v, "dense"), loud.comparison(v, "dense")
        assert 1 < q.minimum_detectable < lo.minimum_detectable
    assert loud.noise_source == "seeds" and 0.02 < loud.noise_sigma < 0.07


def test_seed_bootstrap_keeps_every_size_of_every_variant():
    df = planted_table(isoflop_grid((1e11, 1e12), sizes_per_level=3, seeds=(0, 1, 2)), seed=0)
    data = headline_data(df, "heldout_loss")
    w = seed_resamples(data, 50, seed=1)
    for stratum in np.unique(data.stratum_N):
        sel = data.stratum_N == stratum
        assert (w[:, sel].sum(axis=1) > 0).all()
        # n-1 of n seeds drawn, weighted n/(n-1): each stratum keeps its total weight
        assert np.allclose(w[:, sel].sum(axis=1), sel.sum())
    assert len({tuple(r) for r in w}) > 1


def test_headline_fit_round_trips_through_a_dict(isoflop_fit):
    back = HeadlineFit.from_dict(isoflop_fit.to_dict())
    assert back.comparisons == isoflop_fit.comparisons
    assert back.law == isoflop_fit.law and len(back.bootstrap_laws) == N_BOOT


def test_fit_run_table_leads_with_the_headline_and_saves_it(tmp_path):
    from ecdit_scale.scaling.fit import fit_run_table
    from ecdit_scale.scaling.fit_file import load_fit, save_fit
    from ecdit_scale.scaling.report import plain_answer

    df = planted_table(isoflop_grid(LEVELS, sizes_per_level=4), seed=7,
                       multipliers={"dense": 1.0, "expert-choice": 1.5})
    fit = fit_run_table(df.drop(columns=["true_loss"]), n_boot=8, sensitivity=False)
    c = fit.headline.comparison("expert-choice", "dense")
    assert abs(c.value / 1.5 - 1) < 0.1 and c.detected
    assert fit.headline.flops_per_param_token == pytest.approx(6.0)
    assert not [n for n in fit.notes if "IsoFLOP level" in n]  # every level brackets its optimum
    assert plain_answer(fit).startswith("Headline (one shared-exponent L(N, D)")
    again = load_fit(save_fit(fit, tmp_path / "fit.yaml"))
    assert again.headline.comparisons == fit.headline.comparisons
    # the check (shared-exponent L(C) on the frontier) round-trips too, and agrees
    shared = fit.shared_multiplier("expert-choice", "dense").value
    assert again.shared_multiplier("expert-choice", "dense").value == pytest.approx(shared)
    assert shared == pytest.approx(1.5, rel=0.15)


def test_a_scale_at_its_bound_is_named_in_the_notes():
    from ecdit_scale.scaling.evidence import _bound_notes
    from ecdit_scale.scaling.headline import HeadlineLaw
    law = HeadlineLaw(E=0.1, A=1.0, B=1.0, alpha=0.5, beta=0.5,
                      s_N={"dense": 1.0, "expert-choice": 1000.0},
                      s_D={"dense": 1.0, "expert-choice": 0.93})
    notes = _bound_notes(law)
    assert len(notes) == 1 and "scale on N of expert-choice is at its bound" in notes[0]
    inside = HeadlineLaw(E=0.1, A=1.0, B=1.0, alpha=0.5, beta=0.5,
                         s_N={"dense": 1.0, "ec": 1.5}, s_D={"dense": 1.0, "ec": 1.0})
    assert _bound_notes(inside) == []
