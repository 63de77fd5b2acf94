"""Run-level statistics: variants, whole-run resamples with the frontier inside, the held-out
check >= 4x beyond the fit, the outlier rule, and interval coverage on synthetic data."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ecdit_scale.scaling.runlevel import (
    frontier_mask,
    frontier_weights,
    held_out_split,
    kind_of,
    outlier_rows,
    run_resample_weights,
    variant_labels,
)
from ecdit_scale.scaling.shared import fit_shared_power_law

FRACTIONS = (0.5, 0.75, 1.0)


def test_variants_split_a_kind_with_several_expert_counts():
    df = pd.DataFrame({"ffn_kind": ["dense", "token-choice", "expert-choice", "expert-choice"],
                       "experts": [1, 8, 8, 16]})
    assert variant_labels(df).tolist() == ["dense", "token-choice-8e", "expert-choice-8e",
                                           "expert-choice-16e"]
    assert [kind_of(g) for g in variant_labels(df)] == df["ffn_kind"].tolist()
    one_each = df.iloc[:3]
    assert variant_labels(one_each).tolist() == one_each["ffn_kind"].tolist()


def test_resamples_draw_whole_runs_within_each_group():
    runs = np.repeat(["a", "b", "c", "d", "e", "f"], 3)
    groups = np.repeat(["x", "x", "x", "y", "y", "y"], 3)
    w, _ = run_resample_weights(runs, groups, 50, seed=0)
    assert w.shape == (50, 18)
    for r in range(6):  # every row of a run carries the run's draw count
        assert np.all(w[:, 3 * r:3 * r + 3] == w[:, [3 * r]])
    assert np.all(w[:, :9].sum(axis=1) == 9) and np.all(w[:, 9:].sum(axis=1) == 9)
    assert np.all([(w[i, :9:3] > 0).sum() >= 2 for i in range(50)])  # >= 2 distinct runs


def test_frontier_is_chosen_inside_each_resample():
    C = np.array([1.0, 2.0, 1.5, 3.0])
    L = np.array([1.0, 0.5, 0.4, 0.45])  # row 2 beats row 1 and row 3 beats nothing earlier
    g = np.zeros(4)
    both = frontier_mask(C, L, np.ones((1, 4), bool), g)[0]
    assert both.tolist() == [True, False, True, False]
    without_2 = frontier_mask(C, L, np.array([[True, True, False, True]]), g)[0]
    assert without_2.tolist() == [True, True, False, True]


def test_held_out_check_says_when_the_data_cannot_give_one():
    runs = np.repeat(["s", "m", "l"], 3)
    narrow = np.array([1, 1.2, 1.4, 1.5, 1.8, 2.0, 2.2, 2.6, 3.0])
    assert held_out_split(narrow, runs) == ("held-out check impossible: range only 3x, under "
                                            "the 4x a held-out run must lie beyond the fit")
    one_below = np.array([1, 1.5, 2, 3, 4, 6, 10, 15, 20.0])
    assert "only 1 training run(s)" in held_out_split(one_below, runs)
    wide = np.concatenate([one_below[:6], [30, 45, 60.0]])
    train, test = held_out_split(wide, runs)
    assert train.tolist() == [True] * 6 + [False] * 3
    assert test.tolist() == [False] * 6 + [True] * 3  # 30/6 >= 4
    assert wide[test].min() >= 4 * wide[train].max()


def test_outlier_rule_flags_a_planted_outlier_only():
    rng = np.random.default_rng(0)
    r = rng.normal(0, 0.01, 12)
    r[5] = 0.2
    flagged = outlier_rows(r, np.zeros(12))
    assert flagged.tolist() == [i == 5 for i in range(12)]


def _synthetic(rng, *, sizes=5, multiplier=1.5, run_sd=0.02, row_sd=0.003):
    """Two kinds along a shared law L = E + A C^-alpha; expert choice has `multiplier`x the
    effective compute. Every run gets one noise draw shared by its budgets."""
    E, A, alpha = 0.1, 40.0, 0.25
    rows = []
    for kind, gain in (("dense", 1.0), ("expert-choice", multiplier)):
        for s in range(sizes):
            run_noise = rng.normal(0, run_sd)
            for f in FRACTIONS:
                C = 1e12 * 2.0 ** s * f
                loss = (E + A * (gain * C) ** -alpha) * np.exp(run_noise + rng.normal(0, row_sd))
                rows.append((kind, f"{kind}-{s}", C, loss))
    return pd.DataFrame(rows, columns=["group", "run", "C", "loss"])


def test_run_level_intervals_cover_the_true_multiplier():
    """K synthetic data sets with run-level noise: the 95% run-level bootstrap interval of the
    shared-fit multiplier should cover the truth in most of them."""
    rng = np.random.default_rng(1)
    covered, K = 0, 10
    for k in range(K):
        df = _synthetic(rng)
        C, L = df["C"].to_numpy(), df["loss"].to_numpy()
        point, w, _ = frontier_weights(C, L, df["run"], df["group"], 40, seed=k)
        fit = fit_shared_power_law(C, L, df["group"].to_numpy(), point_rows=point,
                                   boot_weights=w, n_boot=40)
        iv = fit.multiplier("expert-choice", "dense").interval
        covered += iv.lo <= 1.5 <= iv.hi
    assert covered >= 8, f"covered the truth in {covered} of {K}"


def test_seeds_of_a_configuration_are_compared_by_their_mean():
    """Two sizes at one compute, three seeds each: the frontier takes the size with the lower
    seed mean (with all its seeds), not whichever single seed was luckiest."""
    import pandas as pd

    from ecdit_scale.scaling.runlevel import config_ids

    C = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # size a: mean 1.00 with one unlucky-low seed 0.90; size b: mean 0.95, all seeds 0.95
    L = np.array([0.90, 1.05, 1.05, 0.95, 0.95, 0.95])
    g = np.array(["dense"] * 6)
    df = pd.DataFrame({"card": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2, "compute_flops": C})
    cfg = config_ids(df)
    by_seed = frontier_mask(C, L, np.ones((1, 6), bool), g)[0]
    assert by_seed.tolist() == [True, False, False, False, False, False]  # the luckiest seed
    by_mean = frontier_mask(C, L, np.ones((1, 6), bool), g, config_N=cfg)[0]
    assert by_mean.tolist() == [False, False, False, True, True, True]
    # a resample that drew seed 0 of a twice and no other seed of a: a's mean is 0.90
    w = np.array([[2.0, 0, 0, 1, 1, 1]])
    assert frontier_mask(C, L, w, g, config_N=cfg)[0].tolist() == [True] + [False] * 5
    assert config_ids(df.assign(seed=0)) is None  # one seed: rows are their own configurations
