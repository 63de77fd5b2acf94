"""The checked-in example plans are what the code generates today."""

import json
from pathlib import Path

import pytest
import yaml

from ecdit_scale.planner.examples import EXAMPLES, example_files, export_examples
from ecdit_scale.planner.plan_files import PLAN_HEADER
from ecdit_scale.scaling.predict import scaling_estimate

ROOT = Path(__file__).resolve().parent.parent


def reference_scaling(kind, experts, compute_flops):
    """The scaling model `ecdit-scale plans export` passes: the reference sweep's fit."""
    return scaling_estimate(None, kind, experts, compute_flops)


@pytest.mark.parametrize("ex", EXAMPLES, ids=lambda e: e.name)
def test_checked_in_plan_is_fresh(ex):
    for fname, text in example_files(ex, scaling_model=reference_scaling).items():
        path = ROOT / "plans" / ex.name / fname
        assert path.is_file(), f"missing {path}; run `ecdit-scale plans export`"
        assert path.read_text() == text, f"stale {path}; run `ecdit-scale plans export`"


@pytest.mark.parametrize("ex", EXAMPLES, ids=lambda e: e.name)
def test_example_plans_are_consistent(ex):
    files = example_files(ex, scaling_model=reference_scaling)
    plan = yaml.safe_load(files["plan.yaml"])
    assert plan["scaling_estimate"]["kind"] == plan["model_config"]["ffn"]["kind"]
    assert "predicted_loss" not in plan  # no absolute loss extrapolated from the tiny sweep
    assert plan["inference"]["model"] == plan["model"]
    ds = json.loads(files["ds_config.json"])
    lay = plan["best"]["layout"]
    assert lay["tp"] == 1  # the written plans are launchable by ecdit_scale.train
    assert ds["train_batch_size"] == plan["training"]["global_batch"]
    assert ds["train_micro_batch_size_per_gpu"] == lay["micro_batch"]
    assert ds["zero_optimization"]["stage"] == lay["zero"]
    assert plan["best"]["memory"]["total"] <= plan["accelerator"]["memory_bytes"]
    assert ("--hostfile" in files["launch.sh"]) == (ex.cluster.nodes > 1)


def test_export_check_reports_stale(tmp_path):
    assert export_examples(tmp_path, check=True)  # nothing there yet: everything is stale
    export_examples(tmp_path)
    assert export_examples(tmp_path, check=True) == []


def test_export_keeps_the_users_files_and_drops_only_its_own(tmp_path):
    export_examples(tmp_path)
    (tmp_path / "notes.md").write_text("mine\n")
    (tmp_path / EXAMPLES[0].name / "my-run.log").write_text("mine too\n")
    old = tmp_path / "an-example-since-removed"  # a folder an older version wrote
    old.mkdir()
    (old / "plan.yaml").write_text(PLAN_HEADER + "model: x\n")
    (old / "hostfile").write_text("node-001 slots=8\n")
    (tmp_path / EXAMPLES[1].name / "plan.yaml").write_text("stale\n")
    assert export_examples(tmp_path) == [str(tmp_path / EXAMPLES[1].name / "plan.yaml")]
    assert (tmp_path / "notes.md").read_text() == "mine\n"
    assert (tmp_path / EXAMPLES[0].name / "my-run.log").read_text() == "mine too\n"
    assert not old.exists()
    assert export_examples(tmp_path, check=True) == []
