"""`ecdit-scale validate`: predictions next to measurements of a real CPU run and of the
checked-in GPU measurements."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import ROOT, cli_here, strict_json

GPU_RESULTS = sorted((ROOT / "bench" / "results").glob("gpu_*.json"))


@pytest.mark.slow
def test_validate_cpu_run(ec_run, measured_profile, tmp_path):
    """A 2-rank ep 2 ZeRO-2 run, its headline priced from a quick profile of this CPU (the one
    `validate` measures when given none: the next test)."""
    out_csv, profile = tmp_path / "v.csv", tmp_path / "cpu.yaml"
    proc = cli_here("validate", str(ec_run), "--profile", str(measured_profile), "--csv",
                    str(out_csv), "--save-profile", str(profile), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = strict_json(proc.stdout)
    (row,) = report["rows"]
    assert row["params_error"] == 0.0  # exact: count_params vs numel (x ep for experts)
    assert abs(row["flops_error"]) < 0.01  # planner vs FlopCounterMode
    assert row["memory_predicted"] > 0 and row["memory_measured"] > 0
    # 2 ranks, ep 2, ZeRO-2: the peak per phase (bench/step_memory.py measured them one by one)
    assert row["memory_error"] is not None and abs(row["memory_error"]) < 0.03
    assert row["states_measured"] > 0 and abs(row["states_error"]) < 0.01
    # no run predicts itself: the headline comes from a profile of this CPU, and one run
    # alone has no leave-one-out prediction
    (cal,) = report["calibrations"]
    assert 0 < cal["efficiency"] <= 1 and "measured" in cal["peak_source"]
    assert row["step_s_predicted"] > 0 and "profile" in row["step_s_source"]
    assert row["step_s_loo"] is None
    assert any("LOO" in n and "impossible" in n for n in report["notes"])
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 1 and float(rows[0]["params_error"]) == 0.0

    from ecdit_scale.planner.hardware import get_accelerator

    acc = get_accelerator(str(profile))
    assert acc.efficiency == pytest.approx(min(1.0, cal["efficiency"]))
    assert acc.calibrated_from == str(ec_run)


def test_without_a_profile_validate_measures_this_cpu_with_the_runs_ranks(ec_run, short_run,
                                                                          monkeypatch):
    """No --profile: CPU rows are priced from one quick profile of this CPU, measured with 2
    ranks when a run had several (gloo's collectives), else 1. The measurement itself is
    `profile --quick` (the ``measured_profile`` fixture runs it)."""
    from conftest import RECORDED_CPU_PROFILE

    from ecdit_scale.evaluation import profile
    from ecdit_scale.planner.hardware import get_accelerator

    asked = []

    def quick(nproc):
        asked.append(nproc)
        return get_accelerator(str(RECORDED_CPU_PROFILE))

    monkeypatch.setattr(profile, "quick_cpu_profile", quick)
    for runs, ranks in (([short_run], 1), ([short_run, ec_run], 2)):
        asked.clear()
        proc = cli_here("validate", *map(str, runs), "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = strict_json(proc.stdout)["rows"]
        assert asked == [ranks]  # once for all the CPU rows
        assert all(r["step_s_source"].startswith("quick profile of this CPU") for r in rows)


def test_cpu_runs_with_an_ema_measure_it_and_meet_the_planned_peak(short_run, plan_run):
    """The CPU tracker counts the EMA and its update (it once left both out, and a plan's EMA
    then hid the optimizer's foreach temporaries the planner missed); each tracked step records
    its peak by phase; the planner's peak for the run's layout is within 3%."""
    from ecdit_scale.evaluation.rows import row_from_run

    for run in (short_run, plan_run):  # validate's rows (the CLI's path is tested above)
        row = row_from_run(run)
        assert row.memory_error is not None and abs(row.memory_error) < 0.03, row
        assert row.states_error is not None and abs(row.states_error) < 0.01, row
    for run in (short_run, plan_run):
        recs = [json.loads(line) for line in (run / "metrics.jsonl").open()]
        tracked = [rec for rec in recs if rec["memory_tracked"]]
        assert tracked and all(rec["peak_bytes"] >= max(rec["peak_bytes_by_phase"].values())
                               for rec in tracked)
        assert set(tracked[-1]["peak_bytes_by_phase"]) == {"forward", "backward", "step", "ema"}
        assert all("peak_bytes_by_phase" not in rec for rec in recs if not rec["memory_tracked"])


@pytest.mark.slow
def test_validate_table_and_default_csv(ec_run, cpu_profile):
    # priced by the tests' CPU profile: measuring a quick one is test_validate_cpu_run's
    proc = cli_here("validate", str(ec_run), "--profile", str(cpu_profile))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Predicted" in proc.stdout and "calibration" in proc.stdout
    assert (ec_run / "validation.csv").is_file()


@pytest.mark.skipif(not GPU_RESULTS, reason="no bench/results/gpu_*.json")
def test_validate_reads_gpu_measurements(tmp_path):
    proc = cli_here("validate", *map(str, GPU_RESULTS), "--csv", str(tmp_path / "gpu.csv"),
                    "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["rows"] and all(r["kind"] == "gpu-bench" for r in report["rows"])
    for r in report["rows"]:
        assert r["params_error"] == 0.0
        assert abs(r["flops_error"]) < 0.01
        assert r["memory_measured"] > 0 and r["memory_error"] is not None
    assert report["calibrations"] and report["calibrations"][0]["device"].startswith("NVIDIA")


def test_validate_rejects_what_is_not_a_run(tmp_path):
    (tmp_path / "junk.json").write_text("{}")
    for arg in (str(tmp_path), str(tmp_path / "junk.json"), str(tmp_path / "missing")):
        proc = cli_here("validate", arg)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("error:"), proc.stderr


def _planner_flops(cfg) -> float:
    from ecdit_scale.config import Recompute
    from ecdit_scale.planner.flops import training_flops_per_image

    return training_flops_per_image(cfg, Recompute.NONE).model_flops


def test_measured_flops_match_the_planner():
    from ecdit_scale import sizes
    from ecdit_scale.evaluation.measure import measured_training_flops

    for name in ("nano-dense", "nano-ec8", "nano-tc8"):
        cfg = sizes.get(name)
        measured = measured_training_flops(cfg, images=2) / 2
        assert measured == pytest.approx(_planner_flops(cfg), rel=1e-12), name


@pytest.mark.parametrize("name, depth", [("nano-ec8", 9), ("nano-tc8", 8)])
def test_a_count_carried_from_two_shallow_depths_is_the_whole_count(name, depth):
    """Blocks repeat with the MoE period: the count of a deep model from two shallow ones is
    its whole count exactly, for either parity of the depth."""
    from ecdit_scale import sizes
    from ecdit_scale.evaluation.measure import _counted_depths, measured_training_flops

    cfg = sizes.get(name).replace(depth=depth)
    assert _counted_depths(cfg)[1] < depth  # carried, not counted whole
    assert measured_training_flops(cfg) == measured_training_flops(cfg, whole=True)


def test_fake_tensor_count_equals_a_count_on_the_real_model():
    """The count on fake tensors is the count a real forward + backward gives (token choice:
    the kind whose routing has data-dependent shapes)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ecdit_scale import sizes
    from ecdit_scale.evaluation.measure import measured_training_flops
    from ecdit_scale.model import build_model, rectified_flow_loss

    cfg = sizes.get("nano-tc8")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    x = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size)
    cond = torch.randn(2, cfg.text_tokens, cfg.text_dim)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        rectified_flow_loss(model, x, cond).loss.backward()
    assert measured_training_flops(cfg, images=2) == counter.get_total_flops()


def test_flops_of_a_large_config_are_counted_without_allocating_it():
    """ecdit-xl-32e has 5.3B parameters (21 GiB in fp32 before gradients); counting its FLOPs
    allocates none of them (issue 9: it used to be OOM-killed at 24 GB)."""
    import resource

    from ecdit_scale import sizes
    from ecdit_scale.evaluation.measure import measured_training_flops

    cfg = sizes.get("ecdit-xl-32e")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    measured = measured_training_flops(cfg, images=2) / 2
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert measured == pytest.approx(_planner_flops(cfg), rel=1e-12)
    assert grown * 1024 < 4 * 2**30


def test_row_errors():
    from ecdit_scale.evaluation.rows import Row

    r = Row(name="x", source="x", kind="run", device="cpu", model="m", world=2, ep=1, zero=1,
            micro_batch=1, global_batch=2, params_predicted=100, params_measured=110,
            flops_predicted=1.0, flops_measured=None, memory_predicted=None,
            memory_measured=5.0)
    assert r.params_error == pytest.approx(0.1)
    assert r.flops_error is None and r.memory_error is None


# ---------------------------------------------------------------------------------------------
# A run directory written by hand (no launch), and what validate says when a file is wrong
# ---------------------------------------------------------------------------------------------


def _settings(**overrides) -> dict:
    from ecdit_scale.train.records import RunSettings

    s = RunSettings.build(card="nano-ec8", model_name="nano-ec8", steps=6, nodes=1,
                    nproc_per_node=2, ep=2, zero=2, micro_batch=4, grad_accum=1, dataset="shapes",
                    data_limit=64, holdout=8, seed=0, lr=1e-3, warmup_steps=0,
                    optimizer="adamw", precision="fp32", device="cpu", checkpoint_every=3,
                    keep_checkpoints=2, track_memory=True)
    return {**s.to_dict(), **overrides}


def _hand_made_run(root):
    from ecdit_scale import sizes
    from ecdit_scale.config import save_model_config
    from ecdit_scale.params import count_params

    run = root / "hand-made"
    run.mkdir()
    cfg = sizes.get("nano-ec8")
    save_model_config(cfg, run / "card.yaml")
    (run / "run.json").write_text(json.dumps(_settings()))
    (run / "predictions.json").write_text(json.dumps(
        {"memory": {"total": 2.0e9, "model_states": 2.0e6}}))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": i, "step_s": 0.05 + 0.01 * i, "loss": 1.0}) + "\n"
        for i in range(1, 7)))
    (run / "summary.json").write_text(json.dumps(
        {"status": "completed", "peak_bytes": 5_000_000,
         "params": {"model_params": count_params(cfg).model_params},
         "model_state_bytes_rank0": {"params": 1_000_000, "grads": 1_000_000}}))
    return run


def test_validate_reads_a_hand_made_run(tmp_path, cpu_profile):
    from ecdit_scale.evaluation.validate import validate

    run = _hand_made_run(tmp_path)
    # priced by the tests' CPU profile: the files are the subject here, and measuring this
    # CPU's quick profile (test_validate_cpu_run does) takes ~9 s
    report = validate([run], profile=str(cpu_profile))
    (row,) = report.rows
    assert row.params_error == 0.0 and row.flops_error == 0.0
    assert row.step_s_measured == pytest.approx(0.095)  # median of steps 3..6 (0.08..0.11)
    assert row.memory_measured == 5_000_000 and row.states_measured == 2_000_000
    assert (run / "validation.csv").is_file()


BAD_RUN_FILES = [
    ("run.json", b"\x89PNG\r\n\x00\xff\xfe", "not a UTF-8"),
    ("run.json", b"[1, 2]", "one JSON object"),
    ("run.json", b"{not json", "malformed JSON"),
    ("run.json", json.dumps(_settings(ep=0)).encode(), "ep = 0"),
    ("run.json", json.dumps(_settings(nodes="two")).encode(), "nodes = 'two'"),
    ("run.json", json.dumps(_settings(data_limit=-1)).encode(), "data_limit = -1"),
    ("run.json", json.dumps({k: v for k, v in _settings().items() if k != "optimizer"}).encode(),
     "missing optimizer"),
    ("summary.json", b'"done"', "one JSON object"),
    ("summary.json", b'{"status": "completed", "peak_bytes": -5}', "peak_bytes = -5"),
    ("summary.json", b'{"status": "completed", "median_step_s": NaN}', "median_step_s = nan"),
    ("summary.json", b'{"params": [1]}', "params must be a JSON object"),
    ("metrics.jsonl", b'{"step": 1, "step_s": "fast"}\n', "line 1: step_s = 'fast'"),
    ("metrics.jsonl", b"\xff\xfe\x00binary", "not a UTF-8"),
    ("metrics.jsonl", b'\xff\xfe\x00binary\n{"step": 1, "step_s": 0.1}\n', "line 1: not a UTF-8"),
    ("predictions.json", b'{"memory": 3}', "memory must be a JSON object"),
    ("card.yaml", b"hidden_size: [", "card.yaml"),
    ("ds_config.json", b"{not json", "ds_config.json: malformed JSON"),
    ("ds_config.json", b'{"zero_optimization": 5}', "zero_optimization must be a JSON object"),
]


@pytest.mark.parametrize("name, content, match", BAD_RUN_FILES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD_RUN_FILES)])
def test_validate_names_the_bad_file_of_a_run(tmp_path, name, content, match):
    from ecdit_scale.errors import ConfigError
    from ecdit_scale.evaluation.validate import validate

    run = _hand_made_run(tmp_path)
    (run / name).write_bytes(content)
    with pytest.raises(ConfigError) as info:
        validate([run])
    message = str(info.value)
    assert message.startswith(str(run / name)) and match in message, message
    assert "\n" not in message and not (run / "validation.csv").exists()


def _gpu_file(tmp_path, config_changes=None, raw=None):
    data = json.loads(GPU_RESULTS[0].read_text())
    data["configs"] = data["configs"][:1]
    data["configs"][0].update(config_changes or {})
    path = tmp_path / "gpu_bad.json"
    path.write_text(raw if raw is not None else json.dumps(data))
    return path


@pytest.mark.skipif(not GPU_RESULTS, reason="no bench/results/gpu_*.json")
@pytest.mark.parametrize("changes, raw, match", [
    (None, '{"configs": 3}', "no 'configs' list"),
    (None, '{"configs": [3]}', "configs[0] must be a JSON object"),
    (None, "\ufeff\x00\x01", "malformed JSON"),
    ({"step_s": float("nan")}, None, "configs[0]: step_s = nan"),
    ({"peak_bytes": "12 GB"}, None, "configs[0]: peak_bytes = '12 GB'"),
    ({"global_batch": -1}, None, "configs[0]: global_batch = -1"),
    ({"card": "small-dense"}, None, "configs[0]: card must be"),
])
def test_validate_names_the_bad_part_of_a_gpu_file(tmp_path, changes, raw, match):
    from ecdit_scale.errors import ConfigError
    from ecdit_scale.evaluation.validate import validate

    path = _gpu_file(tmp_path, changes, raw)
    with pytest.raises(ConfigError) as info:
        validate([path])
    message = str(info.value)
    assert message.startswith(str(path)) and match in message, message
    assert "\n" not in message


@pytest.mark.parametrize("option", ["--csv", "--save-profile"])
def test_validate_rejects_an_empty_or_folder_output(tmp_path, option):
    from ecdit_scale.errors import ConfigError
    from ecdit_scale.evaluation.validate import validate

    key = {"--csv": "csv_path", "--save-profile": "save_profile"}[option]
    for value in ("", str(tmp_path)):
        with pytest.raises(ConfigError, match=f"{option} .*must be a file path"):
            validate([tmp_path / "missing"], **{key: value})
    with pytest.raises(ConfigError, match=f"{option} .*folder .*nowhere does not exist"):
        validate([tmp_path / "missing"], **{key: str(tmp_path / "nowhere" / "out.x")})


def test_validate_cli_corrupt_run_is_one_line(tmp_path):
    run = _hand_made_run(tmp_path)
    (run / "run.json").write_bytes(b"\x00\xff binary")
    proc = cli_here("validate", str(run))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(run / "run.json") in lines[0], proc.stderr


@pytest.mark.parametrize("content, why", [
    (b"\xff\xfe\x00", "passed over"),
    (b"[1]", "passed over: not a JSON object"),
    (b'{"breakdown": {"model_ms": {"gemm": NaN}, "parts_ms": {}}}',
     "passed over: model_ms.gemm: nan"),
    (b'{"breakdown": {"model_ms": {}, "parts_ms": {}}}', "passed over: no gemm"),
    (b'{"step": 3}', "no breakdown (profiled before it existed)"),
])
def test_a_damaged_profiled_step_is_passed_over_and_said_so(tmp_path, content, why,
                                                          cpu_profile):
    """The profiled step is a diagnostic: a damaged one costs its term table, not the run's
    validation; the newest of several is the one read. (Priced by the tests' CPU profile: the
    files are the subject, not a quick profile of this CPU.)"""
    from ecdit_scale.evaluation.terms import read_breakdown
    from ecdit_scale.evaluation.validate import validate

    run = _hand_made_run(tmp_path)
    (run / "profile_step2.json").write_text('{"breakdown": {}}')  # older: not read
    (run / "profile_step12.json").write_bytes(content)
    (row,) = validate([run], profile=str(cpu_profile)).rows
    assert row.breakdown is None and row.terms_measured is None
    assert why in row.breakdown_note and "profile_step12.json" in row.breakdown_note
    assert read_breakdown(tmp_path / "nowhere") == (None, "no profiled step "
                                                          "(ECDIT_SCALE_PROFILE_STEP)")
    proc = cli_here("validate", str(run), "--profile", str(cpu_profile))
    assert proc.returncode == 0 and ("passed over" in proc.stdout) == ("passed over" in why)
