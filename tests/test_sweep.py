"""`ecdit-scale sweep` (train/sweep.py): one annealed (wsd) run per budget and seed on data that
never repeats, scored by the held-out loss; skip finished runs, resume interrupted ones, never
get stuck on a damaged one. Tiny settings (1 rank, <= 14 steps): the sweep logic is what is
tested here, not the model."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ecdit_scale.errors import ConfigError
from ecdit_scale.evaluation.sampled_alignment import alignment_of_run
from ecdit_scale.train.records import RunDir, append_jsonl, write_json
from ecdit_scale.train.sweep import (
    SweepRun,
    SweepSpec,
    chosen_lrs,
    eval_every,
    lr_search_notes,
    needed_steps,
    run_state,
    run_sweep,
)

TINY = dict(sizes=("nano",), micro_batch=2, alignment_samples=8, sampling_steps=4,
            budgets=(0.5, 1.0), holdout=8)


@pytest.mark.slow
def test_wsd_sweep_runs_each_budget_on_fresh_data(tmp_path):
    """(Seeds only multiply the runs: test_runs_of_a_wsd_sweep_and_its_learning_rate_search.)"""
    spec = SweepSpec(variants=("dense",), seeds=(1,), steps=10, out=str(tmp_path / "sw"),
                     **TINY)
    first = run_sweep(spec, score_alignment=alignment_of_run)
    assert len(first.launched) == 2 and not first.failed, first.failed
    df = pd.read_csv(first.table_path)
    assert sorted(df.name) == ["nano-dense-s1-b0.5", "nano-dense-s1-b1"]
    assert (df.heldout_loss > 0).all() and set(df.steps) == {5, 10}
    assert set(df.run_group) == {"nano-dense-s1"} and set(df.seed) == {1}
    assert (df.dataset == "shapes-stream").all() and (df.schedule == "wsd").all()
    assert (df.train_samples == df.images_seen).all()  # every image drawn once
    assert df.alignment.notna().sum() == 1  # the largest budget
    runs = {r.name: json.loads((r / "run.json").read_text()) for r in (tmp_path / "sw").iterdir()
            if r.is_dir()}
    short, full = runs["nano-dense-s1-b0.5"], runs["nano-dense-s1-b1"]
    # the budget runs of a group share warm-up and learning rate; each anneals at its own end
    assert (short["warmup_steps"], short["lr"]) == (full["warmup_steps"], full["lr"])
    assert (short["steps"], short["schedule"], full["steps"]) == (5, "wsd", 10)
    lrs = [json.loads(line)["lr"] for line in
           (tmp_path / "sw" / "nano-dense-s1-b0.5" / "metrics.jsonl").read_text().splitlines()]
    assert lrs[-1] < lrs[2] == spec.lr
    # one seed: the budget runs share their stable phase (same weights, same data)
    loss = {r: [json.loads(x)["loss"] for x in (tmp_path / "sw" / r / "metrics.jsonl")
                .read_text().splitlines()] for r in runs}
    assert loss["nano-dense-s1-b0.5"][:3] == pytest.approx(loss["nano-dense-s1-b1"][:3], rel=1e-6)
    again = run_sweep(spec)
    assert len(again.skipped) == 2 and not again.launched
    # wsd-branch: one launch, the 5-step budget annealed off the 10-step run's stable phase;
    # every number the table reads is the separate runs' own
    branched_spec = SweepSpec(variants=("dense",), seeds=(1,), steps=10, schedule="wsd-branch",
                              out=str(tmp_path / "br"), **TINY)
    branched = run_sweep(branched_spec)
    assert len(branched.launched) == 1 and not branched.failed, branched.failed
    got = pd.read_csv(branched.table_path).set_index("name")
    want = df.set_index("name")
    assert list(got.index) == list(want.index) and (got.schedule == "wsd-branch").all()
    cols = ["steps", "images_seen", "compute_flops", "final_loss", "smoothed_loss",
            "heldout_loss", "run_group", "seed", "lr"]
    pd.testing.assert_frame_equal(got[cols], want[cols])
    [run_dir] = [p for p in (tmp_path / "br").iterdir() if p.is_dir()]
    # step by step, the branch is the separate 5-step run (its cooldown steps, learning rates
    # and held-out loss; tests/test_launch.py checks the branch across a resume)
    branch = [json.loads(x) for x in (run_dir / "branches" / "b5.jsonl").read_text().splitlines()]
    alone = {r["step"]: r for r in (json.loads(x) for x in (
        tmp_path / "sw" / "nano-dense-s1-b0.5" / "metrics.jsonl").read_text().splitlines())}
    assert branch and branch[-1]["step"] == 5 and branch[-1]["heldout_loss"] is not None
    for key in ("loss", "lr"):
        assert [r[key] for r in branch] == [alone[r["step"]][key] for r in branch]
    assert json.loads((run_dir / "run.json").read_text())["cooldown_branches"] == [5]
    assert run_state(branched_spec, branched_spec.runs()[0]) == "done"
    (run_dir / "branches" / "b5.jsonl").unlink()  # a finished run without its branch
    assert run_state(branched_spec, branched_spec.runs()[0]) == "damaged"


@pytest.mark.slow
def test_constant_sweep_resumes_past_a_corrupt_line_and_extends(tmp_path):
    """Budgets read off one constant-lr run: one corrupt metrics line mid-file used to make a
    sweep run unresumable; a longer --steps resumes the run from its last complete
    checkpoint instead of starting over."""
    spec = SweepSpec(variants=("ec8",), seeds=(0,), steps=10, schedule="constant",
                     dataset="shapes", data_limit=256, out=str(tmp_path / "sw"), **TINY)
    first = run_sweep(spec)
    assert first.launched == ["nano-ec8-s0"] and not first.failed
    df = pd.read_csv(first.table_path)
    assert list(df.steps) == [5, 10] and df.heldout_loss.notna().all()  # scored at each budget
    ec8 = tmp_path / "sw" / "nano-ec8-s0" / "metrics.jsonl"
    lines = ec8.read_text().splitlines()
    lines[7] = "garbage"  # step 8: past checkpoint step5, before step10
    ec8.write_text("\n".join(lines) + "\n")
    longer = run_sweep(SweepSpec(variants=("ec8",), seeds=(0,), steps=14, schedule="constant",
                                 dataset="shapes", data_limit=256, out=str(tmp_path / "sw"),
                                 **TINY))
    assert longer.resumed == ["nano-ec8-s0"] and not longer.launched and not longer.failed
    assert any("resuming from step5" in n for n in longer.notes), longer.notes
    steps = [json.loads(line)["step"] for line in ec8.read_text().splitlines()]
    assert steps == list(range(1, 15))  # one continuous curve, no step twice
    assert "garbage" in (ec8.parent / "metrics.rejected").read_text()  # kept, not deleted


def _finished_run(path, steps: int, *, skip=()) -> SweepRun:
    rd = RunDir(path)
    write_json(rd.run_json, {"steps": steps})
    write_json(rd.summary, {"status": "completed", "steps_done": steps})
    for step in range(1, steps + 1):
        if step not in skip:
            append_jsonl(rd.metrics, {"step": step, "flow_loss": 1.0})
    return SweepRun(card="nano-ec8", run_dir=rd.path, steps=steps, budgets=(0.5, 1.0))


def test_a_finished_run_missing_a_step_the_table_reads_is_damaged(tmp_path):
    spec = SweepSpec(variants=("ec8",), steps=10, out=str(tmp_path), **TINY)
    ok = _finished_run(tmp_path / "ok", 10)
    assert needed_steps(ok) == list(range(1, 11))
    assert run_state(spec, ok) == "done"
    assert run_state(spec, _finished_run(tmp_path / "bad", 10, skip=(3,))) == "damaged"
    assert run_state(spec, SweepRun("x", tmp_path / "none", steps=10)) == "new"
    half = _finished_run(tmp_path / "half", 4)  # interrupted: resumed, even without checkpoint
    assert run_state(spec, SweepRun("nano-ec8", half.run_dir, steps=10)) == "resume"


def test_runs_of_a_wsd_sweep_and_its_learning_rate_search(tmp_path):
    spec = SweepSpec(sizes=("nano", "micro"), variants=("dense", "ec8"), seeds=(0, 1, 2),
                     budgets=(0.25, 0.5, 1.0), steps=40, lr_search=(0.5, 1, 2),
                     out=str(tmp_path))
    runs = spec.runs()
    assert len(runs) == 2 * 2 * 3 * 3 and len({r.run_dir for r in runs}) == len(runs)
    assert sorted({r.steps for r in runs}) == [10, 20, 40] and spec.warmup_steps == 2
    search = spec.lr_runs()  # each size's dense model at the shortest budget, seed 0
    assert [(r.card, r.steps, r.lr) for r in search[:3]] == [
        ("nano-dense", 10, 5e-4), ("nano-dense", 10, 1e-3), ("nano-dense", 10, 2e-3)]
    rows = [{"size": "nano", "lr": 5e-4, "heldout_loss": 1.2},
            {"size": "nano", "lr": 2e-3, "heldout_loss": 1.1},
            {"size": "micro", "lr": 5e-4, "heldout_loss": None}]
    lr_of = chosen_lrs(spec, rows)
    assert lr_of == {"nano": 2e-3, "micro": 1e-3}  # micro's search failed: the given lr
    assert lr_search_notes(spec, lr_of) == [
        "lr search for nano: best at the top of the grid (0.002); the optimum may lie beyond it"]
    assert {r.lr for r in spec.runs(lr_of) if r.card.startswith("nano")} == {2e-3}
    constant = SweepRun("nano-ec8", tmp_path, steps=40, budgets=(0.25, 0.5, 1.0))
    assert eval_every(constant) == 10 and eval_every(SweepRun("x", tmp_path, steps=7)) == 0


@pytest.mark.parametrize("change, words", [
    ({"seeds": (0, 0)}, "--seeds"), ({"schedule": "cosine"}, "--schedule 'cosine'"),
    ({"lr_search": (0.5, -1.0)}, "--lr-search"), ({"dataset": "shapes-stream",
                                                   "data_limit": 100}, "--limit 100"),
    ({"steps": 12, "budgets": (0.25, 1.0)}, "at least 5"), ({"cooldown_fraction": 0}, "--cooldown"),
])
def test_bad_sweep_settings_are_one_line(change, words):
    with pytest.raises(ConfigError, match=words) as exc:
        SweepSpec(**{**dict(steps=20), **change})
    assert "\n" not in str(exc.value)
