"""The checked-in example plans are what the code generates today."""

import json
from pathlib import Path

import pytest
import yaml

from ecdit_scale.planner.examples import EXAMPLES, example_files, export_examples

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("ex", EXAMPLES, ids=lambda e: e.name)
def test_checked_in_plan_is_fresh(ex):
    for fname, text in example_files(ex).items():
        path = ROOT / "plans" / ex.name / fname
        assert path.is_file(), f"missing {path}; run `ecdit-scale plans export`"
        assert path.read_text() == text, f"stale {path}; run `ecdit-scale plans export`"


@pytest.mark.parametrize("ex", EXAMPLES, ids=lambda e: e.name)
def test_example_plans_are_consistent(ex):
    files = example_files(ex)
    plan = yaml.safe_load(files["plan.yaml"])
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
