"""`ecdit-scale models ...` as a user runs it, and the golden model cards."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ecdit_scale import sizes
from ecdit_scale.planner.cards import card_text, export_cards
from ecdit_scale.config import load_model_config
from ecdit_scale.params import count_params

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "ecdit_scale", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_list_json_has_every_named_config_with_counts():
    out = run_cli("models", "list", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {r["name"] for r in rows} == set(sizes.names())
    m = next(r for r in rows if r["name"] == "ecdit-m-64e")
    b = count_params(sizes.get("ecdit-m-64e"))
    assert (m["total_params"], m["active_params"]) == (b.total_params, b.active_params)


def test_list_table_and_filters():
    out = run_cli("models", "list", "--family", "ec-dit", "--kind", "dense")
    assert out.returncode == 0
    assert "ecdit-m" in out.stdout and "nano" not in out.stdout


def test_show_json_has_params_and_flops():
    out = run_cli("models", "show", "ecdit-m-64e", "--json")
    assert out.returncode == 0, out.stderr
    card = json.loads(out.stdout)
    assert set(card["flops_per_image"]) == {"forward", "backward", "forward_macs"}
    assert card["summary"]["params"]["total_params"] == count_params(sizes.get("ecdit-m-64e")).total_params


def test_show_params_target_and_card_path(tmp_path):
    out = run_cli("models", "show", "--params", "97B", "--json")
    assert json.loads(out.stdout)["name"] == "ecdit-m-64e"
    out = run_cli("models", "show", "--params", "12M", "--active", "--json")
    card = json.loads(out.stdout)
    assert abs(card["resolved"]["relative_error"]) < 0.03
    out = run_cli("models", "show", str(ROOT / "models" / "nano-ec8.yaml"))
    assert out.returncode == 0 and "nano-ec8" in out.stdout


@pytest.mark.parametrize("args, needle", [
    (["models", "show", "nonsense"], "unknown model 'nonsense'"),
    (["models", "show", "--params", "97X"], "not a parameter count"),
    (["models", "show", "--params", "-1"], "not a parameter count"),
    (["models", "list", "--family", "gpt"], "valid families"),
])
def test_bad_input_is_one_line_without_traceback(args, needle):
    out = run_cli(*args)
    assert out.returncode != 0
    assert needle in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("text, needle", [
    ("name: broken\nhidden_size: [1, 2\n", "malformed YAML"),
    ("name: broken\nhidden_size: 100\nnum_heads: 16\n", "does not divide hidden_size"),
    ("name: broken\nffn: {kind: dense, num_experts: 8}\n", "a dense FFN has 1 expert"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_malformed_or_contradictory_cards(tmp_path, text, needle):
    card = tmp_path / "card.yaml"
    card.write_text(text)
    out = run_cli("models", "show", str(card))
    assert out.returncode != 0 and needle in out.stderr
    assert "Traceback" not in out.stderr


def test_checked_in_cards_are_fresh():
    for name, cfg in sizes.REGISTRY.items():
        path = ROOT / "models" / f"{name}.yaml"
        assert path.is_file(), f"missing card {path}; run `ecdit-scale models export`"
        assert path.read_text() == card_text(cfg), f"stale card {path}; run `ecdit-scale models export`"
        assert load_model_config(path) == cfg
    assert len(list((ROOT / "models").glob("*.yaml"))) == len(sizes.REGISTRY)


def test_export_writes_and_detects_staleness(tmp_path):
    first = export_cards(tmp_path)
    assert len(first.written) == len(sizes.REGISTRY)
    (tmp_path / "nano-ec8.yaml").write_text("name: nano-ec8\n")
    assert export_cards(tmp_path, check=True).stale == ["nano-ec8.yaml"]
    assert export_cards(tmp_path).written == ["nano-ec8.yaml"]
