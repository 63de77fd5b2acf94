"""The IsoFLOP sweep design (issue 20): sizes around the expected optimum per level, the steps
that spend the level, learning-rate search per size and variant, and the fit's edge flag."""

from __future__ import annotations

import math

import numpy as np

from ecdit_scale.scaling.levels import edge_levels
from ecdit_scale.scaling.planted import isoflop_grid, planted_table
from ecdit_scale.train.isoflop import design_isoflop
from ecdit_scale.train.isoflop_run import best_rates, extend_grid, rate_for


def test_each_level_spends_its_flops_on_sizes_around_the_prior_optimum():
    levels = (1e13, 1e14)
    d = design_isoflop(levels, variants=["dense"], seeds=[0, 1], global_batch=16,
                       tokens_per_param=1.0, sizes_per_level=5, spread=4)
    sweep = [r for r in d.runs if r.purpose == "sweep"]
    for C in levels:
        at = [r for r in sweep if r.level_flops == C]
        sizes = sorted({r.active_params for r in at})
        assert len(sizes) >= 3
        for r in at:  # the steps spend the level to within one step
            assert abs(r.flops - C) <= r.global_batch * r.flops_per_image
        k = at[0].flops_per_image / (at[0].active_params * 64)  # 32x32 images, 64 tokens
        n_opt = math.sqrt(C / (k * 1.0))
        assert sizes[0] < n_opt < sizes[-1]  # the prior's optimum lies inside the sizes
        assert {r.seed for r in at} == {0, 1}
    lr = [r for r in d.runs if r.purpose == "lr-search"]
    assert {r.level_flops for r in lr} == {1e14}  # the middle level of two: the upper
    assert {r.lr_multiplier for r in lr} == {0.5, 1.0, 2.0} and {r.seed for r in lr} == {0, 1}
    assert any(r.synthesised for r in sweep)  # a size between ladder cards is synthesised


def test_a_level_below_the_buildable_sizes_says_where_to_start():
    d = design_isoflop((1e11,), variants=["ec8"], seeds=[0, 1], global_batch=16)
    assert any("below the smallest size built here" in n for n in d.notes)


def test_best_rate_is_the_best_seed_mean_and_an_edge_is_reported():
    rows = [{"card": "a", "variant": "dense", "lr": lr, "heldout_loss": loss}
            for lr, loss in ((1e-3, 0.50), (1e-3, 0.60), (2e-3, 0.52), (2e-3, 0.54),
                             (4e-3, 0.70), (4e-3, 0.71))]
    best, notes = best_rates(rows)
    assert best == {("a", "dense"): 2e-3} and not notes  # mean 0.53 beats 0.55
    rows[2]["heldout_loss"] = rows[3]["heldout_loss"] = 0.9
    best, notes = best_rates(rows)
    assert best[("a", "dense")] == 1e-3 and "bottom of the rates searched" in notes[0]
    d = design_isoflop((1e13,), variants=["dense"], seeds=[0], global_batch=16,
                       tokens_per_param=1.0)
    r = d.runs[0]
    assert rate_for(r, {(r.card, "dense"): 3e-3}, d.runs, 1e-3) == (3e-3, True)
    other = next(x for x in d.runs if x.card != r.card)
    assert rate_for(other, {(r.card, "dense"): 3e-3}, d.runs, 1e-3) == (3e-3, False)


def test_fit_flags_a_level_whose_minimum_is_on_an_edge():
    df = planted_table(isoflop_grid((1e11, 1e12), sizes_per_level=3, spread=4), seed=0,
                       multipliers={"dense": 1.0})
    assert edge_levels(df, "heldout_loss", df["ffn_kind"]) == []
    small = df[df["active_params"] <= df.groupby("flops_level")["active_params"]
               .transform(lambda s: np.sort(s.unique())[1])]  # drop each level's largest size
    assert edge_levels(small, "heldout_loss", small["ffn_kind"])  # 2 sizes: flagged
    shifted = df.assign(heldout_loss=df["heldout_loss"] * (df["active_params"] / 1e5) ** -0.2)
    notes = edge_levels(shifted, "heldout_loss", shifted["ffn_kind"])
    assert notes and all("largest size" in n for n in notes)


def test_a_best_rate_on_an_edge_extends_the_grid_beyond_it():
    d = design_isoflop((1e13,), variants=["dense"], seeds=[0, 1], global_batch=16,
                       tokens_per_param=1.0, lr_grid=(0.5, 1.0, 2.0))
    search = [r for r in d.runs if r.purpose == "lr-search"]
    card = search[0].card
    top = extend_grid(search, {(card, "dense"): 2e-3}, 1e-3)  # best at the top (2x)
    assert {r.lr_multiplier for r in top} == {4.0} and {r.seed for r in top} == {0, 1}
    assert {r.card for r in top} == {card}
    low = extend_grid(search, {(card, "dense"): 0.5e-3}, 1e-3)
    assert {r.lr_multiplier for r in low} == {0.25}
    assert extend_grid(search, {(card, "dense"): 1e-3}, 1e-3) == []  # bracketed: no more


def test_run_isoflop_gives_every_launch_a_slot(tmp_path, monkeypatch):
    """The launches of an IsoFLOP sweep go through the sweep's slots (one per --parallel), as a
    sweep's do: each search run and each main run reaches ``_train`` with a slot."""
    from ecdit_scale.train import sweep
    from ecdit_scale.train.isoflop_run import run_isoflop
    from ecdit_scale.train.sweep_slots import Slot

    got = []

    def fake_train(spec, run, result, on_event, i, n, slot):  # no launch: wiring only
        got.append((run.run_dir.name, slot))
        return False

    monkeypatch.setattr(sweep, "_train", fake_train)
    d = design_isoflop((1e13,), variants=["dense"], seeds=[0, 1], global_batch=16,
                       lr_grid=(0.5, 1.0, 2.0))
    run_isoflop(d, lr=1e-3, nproc=1, micro_batch=2, dataset="shapes-stream", holdout=8,
                device="cpu", out=tmp_path, parallel=2)
    assert got and all(isinstance(slot, Slot) for _, slot in got)
    assert any("-x0.5" in name for name, _ in got)  # the learning-rate search ran through them


def test_a_diverged_rate_brackets_the_search():
    """A rate that diverged (no held-out loss) was searched and lost: the best finite rate
    below it is not "at the top of the rates searched"."""
    rows = [{"card": "a", "variant": "dense", "lr": lr, "heldout_loss": loss}
            for lr, loss in ((1e-3, 0.5), (2e-3, 0.4), (4e-3, None), (4e-3, float("nan")))]
    best, notes = best_rates(rows)
    assert best == {("a", "dense"): 2e-3} and not notes
    assert best_rates(rows[2:]) == ({}, [])  # every rate diverged: no best


def test_a_main_run_that_diverges_is_trained_again_at_half_its_rate(tmp_path, monkeypatch):
    from ecdit_scale.train import isoflop_run, sweep
    from ecdit_scale.train.isoflop_run import run_isoflop

    launched = []

    def fake_train(spec, run, result, on_event, i, n, slot):  # no launch: wiring only
        launched.append((run.run_dir.name, run.lr))
        if "-x" in run.run_dir.name:  # the search: every rate finite, 1e-3 best
            run.run_dir.mkdir(parents=True, exist_ok=True)
            (run.run_dir / "summary.json").write_text(
                '{"status": "completed", "heldout_loss": %s}' % (1 + abs(run.lr - 1e-3)))
            return True
        diverged = "-lr" not in run.run_dir.name and run.seed == 1
        result.failed += [f"{run.run_dir.name}: diverged"] if diverged else []
        return not diverged

    monkeypatch.setattr(sweep, "_train", fake_train)
    monkeypatch.setattr(isoflop_run, "_diverged", lambda run: run.seed == 1
                        and "-lr" not in run.run_dir.name)
    monkeypatch.setattr(isoflop_run, "table_rows", lambda spec, run: [{"lr": run.lr}])
    d = design_isoflop((1e12, 1e13), variants=["dense"], seeds=[0, 1], global_batch=16,
                       sizes_per_level=3, lr_grid=(0.5, 1.0, 2.0))
    res = run_isoflop(d, lr=1e-3, nproc=1, micro_batch=2, dataset="shapes-stream",
                      holdout=8, device="cpu", out=tmp_path)
    again = [(name, lr) for name, lr in launched if "-lr" in name]
    assert again and all(lr == 5e-4 for _, lr in again)
    assert all(name.endswith("-lr0.0005") and "-s1" in name for name, _ in again)
    assert not res.failed and any("trained again at 0.0005" in n for n in res.notes)
