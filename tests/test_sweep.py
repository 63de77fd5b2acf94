"""`ecdit-scale sweep` (train/sweep.py): skip finished runs, resume interrupted ones, never get
stuck on a damaged one. Tiny settings (1 rank, 10 steps, 256 samples, 8 alignment samples):
the sweep logic is what is tested here, not the model."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ecdit_scale.train.records import RunDir, append_jsonl, write_json
from ecdit_scale.evaluation.sampled_alignment import alignment_of_run
from ecdit_scale.train.sweep import SweepRun, SweepSpec, needed_steps, run_state, run_sweep

TINY = dict(sizes=("nano",), micro_batch=2, data_limit=256, alignment_samples=8,
            sampling_steps=4, budgets=(0.5, 1.0))


@pytest.mark.slow
def test_sweep_runs_skips_finished_and_writes_a_table(tmp_path):
    spec = SweepSpec(variants=("dense", "ec8"), steps=10, out=str(tmp_path / "sw"), **TINY)
    first = run_sweep(spec, score_alignment=alignment_of_run)
    assert sorted(first.launched) == ["nano-dense", "nano-ec8"] and not first.failed
    df = pd.read_csv(first.table_path)
    assert len(df) == 4 and set(df.ffn_kind) == {"dense", "expert-choice"}
    assert (df.compute_flops > 0).all() and df.alignment.dropna().between(0, 1).all()
    again = run_sweep(spec, score_alignment=alignment_of_run)
    assert sorted(again.skipped) == ["nano-dense", "nano-ec8"] and not again.launched

    # one corrupt metrics line mid-file used to make a sweep run unresumable; and a longer
    # budget resumes the run from its last complete checkpoint instead of starting over
    ec8 = tmp_path / "sw" / "nano-ec8" / "metrics.jsonl"
    lines = ec8.read_text().splitlines()
    lines[8] = "garbage"  # step 9: past checkpoint step8, before step10
    ec8.write_text("\n".join(lines) + "\n")
    longer = run_sweep(SweepSpec(variants=("ec8",), steps=14, out=str(tmp_path / "sw"), **TINY))
    assert longer.resumed == ["nano-ec8"] and not longer.launched and not longer.failed
    assert any("resuming from step8" in n for n in longer.notes), longer.notes
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
    return SweepRun(card="nano-ec8", run_dir=rd.path)


def test_a_finished_run_missing_a_step_the_table_reads_is_damaged(tmp_path):
    spec = SweepSpec(variants=("ec8",), steps=10, out=str(tmp_path), **TINY)
    assert needed_steps(spec) == list(range(1, 11))
    assert run_state(spec, _finished_run(tmp_path / "ok", 10)) == "done"
    assert run_state(spec, _finished_run(tmp_path / "bad", 10, skip=(3,))) == "damaged"
    assert run_state(spec, SweepRun("x", tmp_path / "none")) == "new"
    half = _finished_run(tmp_path / "half", 4)  # interrupted: resumed, even without checkpoint
    assert run_state(spec, half) == "resume"
