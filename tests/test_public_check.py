"""The plan's note on how far its clock has been from published training runs."""

import json

import pytest

from ecdit_scale.errors import ConfigError
from ecdit_scale.files import load_yaml_file
from ecdit_scale.planner.public_check import PublicRow, clock_note, parse_check, public_rows


def _public_validate():
    from conftest import bench_module

    return bench_module("public_validate")


def test_the_packaged_ratios_are_this_models_pricing_of_the_public_rows():
    """Stale after any change to the pricing: rerun `python bench/public_validate.py --write`."""
    mod = _public_validate()
    fresh = mod.check_rows(mod.price_rows(load_yaml_file(mod.ROWS)["rows"]))
    packaged = {r.id: r for r in public_rows()}
    assert [r["id"] for r in fresh] == list(packaged)
    for row in fresh:
        assert packaged[row["id"]].gpu == row["gpu"] and packaged[row["id"]].split == row["split"]
        assert packaged[row["id"]].ratio == pytest.approx(row["ratio"], abs=1e-4), \
            f"{row['id']}: rerun `python bench/public_validate.py --write`"


def test_the_term_table_adds_up_to_each_rows_step_and_prices_the_encoders_apart():
    mod = _public_validate()
    rows = {r["id"]: r for r in load_yaml_file(mod.ROWS)["rows"]}
    for rid in ("opensora-pixart-256-t5", "fastdit-ckpt-amp-latents"):
        t = mod.row_terms(rows[rid])
        assert t["predicted"] == pytest.approx(1.0 / mod.predict(rows[rid]))
        parts = sum(v for k, v in t.items() if k != "predicted")
        assert parts == pytest.approx(t["predicted"]) and abs(t["other"]) < 1e-9
    assert mod.row_terms(rows["fastdit-ckpt-amp-latents"])["encoders"] == 0.0  # latents
    assert mod.row_terms(rows["opensora-pixart-256-t5"])["encoders"] > 0.1  # VAE + T5-XXL


ROWS = (PublicRow("a", "gpu-a", "held_out", 0.5), PublicRow("b", "gpu-a", "used", 1.5),
        PublicRow("c", "gpu-b", "used", 2.0))


def test_the_note_gives_the_range_overall_and_on_the_plans_device_both_ways():
    note = clock_note("gpu-a", ROWS)
    assert "prices 3 DiT-class training runs (1 held out) at 0.50-2.00x" in note
    assert "median |error| 50%" in note
    assert "on gpu-a, 2 runs at 0.50-1.50x: its step time may be up to 1.50x optimistic or " \
           "2.00x pessimistic" in note
    assert "on gpu-b, 1 run at 2.00x: its step time may be up to 2.00x optimistic" in \
        clock_note("gpu-b", ROWS)
    assert "none was published on cpu-x" in clock_note("cpu-x", ROWS)


def test_the_note_turns_the_devices_ratios_into_the_runs_length():
    assert "were it as far off as they were, the run would take 5.0-15.0 days, not 10.0" in \
        clock_note("gpu-a", ROWS, days=10.0)
    assert "the run would take 20.0 days, not 10.0" in clock_note("gpu-b", ROWS, days=10.0)
    assert "days" not in clock_note("cpu-x", ROWS, days=10.0)


@pytest.mark.parametrize("data, needle", [
    ({}, "non-empty 'rows'"),
    ({"rows": [{"id": "a", "gpu": "g", "split": "used", "ratio": 0}]}, "row 0"),
    ({"rows": [{"id": "a", "gpu": "g", "ratio": 1.0}]}, "needs id, gpu, split"),
])
def test_a_damaged_check_file_is_named_in_one_line(data, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_check(data, source="x.yaml")


def test_plan_says_how_far_its_clock_was_from_published_runs_on_its_device(capsys, tmp_path,
                                                                           monkeypatch):
    from conftest import run_main

    monkeypatch.chdir(tmp_path)
    code, out, _ = run_main(capsys, "plan", "--model", "dit-xl-2", "--gpu", "a100", "--gpus", "8",
                            "--no-table", "--no-write", "--json")
    assert code == 0
    notes = [n for n in json.loads(out)["estimated"] if "against published runs" in n]
    a100 = [r for r in public_rows() if r.gpu == "a100-80gb"]
    assert len(notes) == 1 and f"on a100-80gb, {len(a100)} runs at " in notes[0]
