"""Card overrides: a paper config cut down to fit one device (planner.cards.override_config)."""

from __future__ import annotations

import json

import pytest
from conftest import run_main

from ecdit_scale import sizes
from ecdit_scale.config import ModelConfig
from ecdit_scale.errors import ConfigError
from ecdit_scale.params import count_params
from ecdit_scale.planner.cards import override_config, parse_overrides


@pytest.mark.parametrize("base, text", [
    ("ecdit-xl-8e", "depth=4,ffn.num_experts=8"),
    ("ecdit-m-64e", "depth=2,ffn.num_experts=8"),
    ("ecdit-xxl-16e-tc", "depth=2,hidden_size=768,num_heads=12,num_kv_heads=4"),
    ("ecdit-3xl-32e", "depth=3,mlp_ratio=2,ffn.moe_every=1,ffn.moe_offset=0"),
])
def test_override_parameter_count_is_the_analytic_count_of_the_result(base, text):
    torch = pytest.importorskip("torch")
    from ecdit_scale.model import build_model

    cfg = override_config(sizes.get(base), text)
    for key, value in parse_overrides(text).items():
        obj = cfg.ffn if key.startswith("ffn.") else cfg
        assert getattr(obj, key.removeprefix("ffn.")) == value
    model = build_model(cfg, device="meta")
    assert sum(p.numel() for p in model.parameters()) == count_params(cfg).model_params
    assert count_params(cfg).model_params < count_params(sizes.get(base)).model_params
    del torch


def test_override_changes_only_what_it_names_and_round_trips():
    base = sizes.get("ecdit-xl-8e")
    cfg = override_config(base, "depth=4, ffn.num_experts=16")
    assert cfg.depth == 4 and cfg.ffn.num_experts == 16
    keep = {k: v for k, v in base.to_dict().items() if k not in ("name", "notes", "depth", "ffn")}
    assert {k: v for k, v in cfg.to_dict().items() if k in keep} == keep
    assert {k: v for k, v in cfg.ffn.__dict__.items() if k != "num_experts"} == \
        {k: v for k, v in base.ffn.__dict__.items() if k != "num_experts"}
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg  # card.yaml of a plan reloads it
    assert "--override depth=4,ffn.num_experts=16" in cfg.notes  # sorted keys


def test_override_name_is_stable():
    base = sizes.get("ecdit-xl-8e")
    a = override_config(base, "depth=4,ffn.num_experts=16")
    b = override_config(base, "ffn.num_experts=16 , depth=4")
    c = override_config(base, {"depth": 4, "ffn.num_experts": 16})
    assert a.name == b.name == c.name == "ecdit-xl-8e+depth4+ffn.num_experts16"
    assert a == b == c
    assert override_config(base, "depth=28,ffn.num_experts=8") is base  # nothing changes
    assert override_config(base, "depth=28,ffn.capacity_factor=1").name == \
        "ecdit-xl-8e+ffn.capacity_factor1"


@pytest.mark.parametrize("text, needle", [
    ("num_experts=8", "num_experts: unknown field; did you mean ffn.num_experts?"),
    ("blocks=4", "blocks: unknown field; valid: "),
    ("name=x", "name: unknown field"),
    ("depth", "'depth': expected key=value"),
    ("depth=4,", "expected key=value"),
    ("", "--override '': give key=value pairs"),
    ("depth=x", "depth=x: depth takes a number"),
    ("depth=0", "depth = 0: must be an integer in 1..4096"),
    ("depth=2.5", "depth = 2.5"),
    ("depth=4,depth=5", "depth: given twice"),
    ("hidden_size=1000", "num_heads = 18 does not divide hidden_size = 1000"),
    ("ffn.kind=dense", "a dense FFN has 1 expert"),
    ("ffn.kind=banana", "'banana' is not valid"),
    ("ffn.drop_tokens=maybe", "ffn.drop_tokens is true or false"),
    ("ffn.num_experts=4096", "capacity C = 256 tokens"),
])
def test_bad_override_is_one_line(text, needle):
    with pytest.raises(ConfigError) as info:
        override_config(sizes.get("ecdit-xl-8e"), text)
    message = str(info.value)
    assert needle in message and "\n" not in message and message.startswith("--override")


def test_plan_takes_an_override(capsys, tmp_path):
    code, out, err = run_main(capsys, "plan", "--model", "ecdit-xl-8e", "--override",
                               "depth=2,ffn.num_experts=8", "--gpu", "h200", "--gpus", "1",
                               "--global-batch", "8", "--steps", "10", "--no-table",
                               "--out", str(tmp_path / "p"), "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["model"] == "ecdit-xl-8e+depth2"
    card = (tmp_path / "p" / "card.yaml").read_text()
    assert "name: ecdit-xl-8e+depth2" in card and "depth: 2" in card
    code, _, err = run_main(capsys, "plan", "--model", "ecdit-xl-8e", "--override", "blocks=2",
                             "--no-write")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "blocks: unknown field" in err
    code, _, err = run_main(capsys, "plan", "--override", "depth=2", "--no-write")
    assert code == 2 and "give --model too" in err
