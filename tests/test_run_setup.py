"""The setup a user states, priced (planner/run_setup.py), and precision at each device's own
rate (issue 19). Pure-python and cheap: one or two layouts priced per test."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ecdit_scale import sizes
from ecdit_scale.config import ClusterConfig, ParallelLayout, TrainingConfig
from ecdit_scale.errors import ConfigError
from ecdit_scale.planner.compute import micro_batch_terms
from ecdit_scale.planner.hardware import get_accelerator
from ecdit_scale.planner.layouts import estimate_layout
from ecdit_scale.planner.operators import operator_inventory
from ecdit_scale.planner.run_setup import (
    COMPILE_FUSION,
    RunSetup,
    apply_kernels,
    frozen_inventory,
    t5_encoder_ops,
    vae_encoder_ops,
)

DIT = sizes.get("dit-xl-2")


def _step(acc, precision="bf16", micro_batch=32, world=8):
    layout = ParallelLayout(dp=world, ep=1, tp=1, zero=0, micro_batch=micro_batch)
    training = TrainingConfig(global_batch=micro_batch * world, optimizer="adamw",
                              precision=precision)
    cluster = ClusterConfig(gpu=acc.name, nodes=1, gpus_per_node=world)
    return estimate_layout(DIT, layout, training, cluster, acc)


def test_each_precision_at_its_own_datasheet_peak():
    a100, h100 = get_accelerator("a100-80gb"), get_accelerator("h100-sxm")
    assert [a100.peak_flops_for(p) / 1e12 for p in ("bf16", "fp16", "tf32", "fp32")] == [
        312, 312, 156, 19.5]
    assert h100.peak_flops_for("tf32") == pytest.approx(494.7e12)
    assert h100.peak_flops_for("fp32") == pytest.approx(66.9e12)
    gemm = {p: _step(a100, p).step.gemm_s for p in ("bf16", "fp16", "tf32", "fp32")}
    assert gemm["fp16"] == pytest.approx(gemm["bf16"])
    assert gemm["tf32"] == pytest.approx(2 * gemm["bf16"])  # 312 / 156
    # fp32 runs on the CUDA cores, at the SGEMM curve's fraction of 19.5 TFLOP/s (about 0.9 at
    # DiT-XL/2's shapes), not at the tensor cores' fraction: faster than 16x bf16's
    assert 8 * gemm["bf16"] < gemm["fp32"] < 16 * gemm["bf16"]
    mi300x = get_accelerator("mi300x")  # fp32 matrix cores: priced like bf16, by the peaks
    fp32, bf16 = (_step(mi300x, p).step.gemm_s for p in ("fp32", "bf16"))
    assert fp32 == pytest.approx(1307.4 / 163.4 * bf16, rel=1e-3)  # bar the byte floors


def test_an_fp32_gemm_on_cuda_cores_runs_at_the_published_sgemm_curve():
    from ecdit_scale.planner.compute import gemm_flops_per_s
    from ecdit_scale.planner.vector_gemm import PUBLISHED_TFLOPS, vector_fraction

    a100 = get_accelerator("a100-80gb")
    assert a100.fp32_gemm == "vector" and get_accelerator("mi300x").fp32_gemm == "matrix"
    # at a published size the curve is within that size's neighbours' published rates
    for i in range(1, len(PUBLISHED_TFLOPS) - 1):
        s, _ = PUBLISHED_TFLOPS[i]
        near = [t for _, t in PUBLISHED_TFLOPS[i - 1:i + 2]]
        got = float(vector_fraction(s, s, s)) * 19.5
        assert min(near) - 1e-9 <= got <= max(near) + 1e-9
    # a non-square problem reads the square of the same FLOPs; beyond the ends it is held
    assert vector_fraction(8192, 1152, 1152) == pytest.approx(
        vector_fraction(*(3 * [(8192 * 1152 * 1152) ** (1 / 3)])))
    assert vector_fraction(64, 64, 64) == vector_fraction(256, 256, 256)
    assert vector_fraction(10**5, 10**4, 10**4) == vector_fraction(3200, 3200, 3200)
    rate = gemm_flops_per_s(a100, 8192, 4608, 1152, "fp32")
    assert rate == pytest.approx(19.5e12 * float(vector_fraction(8192, 4608, 1152)))
    assert 0.85 < rate / 19.5e12 < 0.97  # what cuBLAS reaches at 2,000-3,000 square
    # a GEMM of a few hundred rows is no faster in fp32 than in bf16 (both launch-bound)
    assert gemm_flops_per_s(a100, 256, 256, 256, "fp32") == pytest.approx(
        gemm_flops_per_s(a100, 256, 256, 256, "bf16"))
    assert gemm_flops_per_s(a100, 256, 256, 256, "fp32") < 19.5e12 * float(
        vector_fraction(256, 256, 256))
    # bf16 and TF32 stay the profile's tensor-core rates x the datasheet ratio
    assert gemm_flops_per_s(a100, 8192, 4608, 1152, "tf32") == pytest.approx(
        gemm_flops_per_s(a100, 8192, 4608, 1152, "bf16") / 2)


def test_fp32_gemm_units_are_checked_and_kept_only_where_they_differ(tmp_path):
    from ecdit_scale.planner.hardware import accelerator_from_dict

    fields = get_accelerator("a100-80gb").to_dict()
    assert fields["fp32_gemm"] == "vector"
    assert "fp32_gemm" not in get_accelerator("mi300x").to_dict()  # the default is not written
    assert accelerator_from_dict(fields).fp32_gemm == "vector"
    with pytest.raises(ConfigError, match=r"fp32_gemm = 'simd': choose vector or matrix"):
        accelerator_from_dict({**fields, "fp32_gemm": "simd"})


def test_amp_memory_follows_bf16_and_tf32_follows_fp32():
    a100 = get_accelerator("a100-80gb")
    mem = {p: _step(a100, p).memory for p in ("bf16", "fp16", "tf32", "fp32")}
    assert mem["fp16"] == mem["bf16"] and mem["tf32"] == mem["fp32"]
    assert mem["fp16"].master_weights > 0 and mem["fp16"].params < mem["fp32"].params


def test_vae_and_t5_encoders_cost_what_their_architectures_say():
    g, _ = vae_encoder_ops(1, 256, dtype_bytes=2)
    vae = sum(x.flops for x in g)
    assert 2.6e11 < vae < 2.9e11  # ~137 GMAC per 256x256 image (SD KL-f8 encoder)
    g, _ = t5_encoder_ops(1, 120, dtype_bytes=2)
    linear = 2 * 120 * 24 * (4 * 4096 * 4096 + 3 * 4096 * 10240)
    assert sum(x.flops for x in g) == pytest.approx(linear, rel=0.02)


def test_math_attention_is_gemms_and_scores_not_sdpa():
    inv = operator_inventory(DIT, images=8)
    math = apply_kernels(inv, RunSetup(attention="math"), dtype_bytes=2)
    assert not math.attention and inv.attention
    extra = math.gemm_flops - inv.gemm_flops
    assert extra == pytest.approx(inv.attention_flops)
    assert any("scores" in m.name for m in math.memory_ops)


def test_frozen_encoders_add_forward_time_only_and_compile_fuses():
    h100 = get_accelerator("h100-sxm")
    base = micro_batch_terms(DIT, h100, images=16, tp=1, recompute="none", precision="bf16")
    vae = dataclasses.replace(h100, setup=RunSetup(vae_in_loop=True, text_encoder="t5-xxl"))
    got = micro_batch_terms(DIT, vae, images=16, tp=1, recompute="none", precision="bf16")
    assert got.forward.gemm_s > 2 * base.forward.gemm_s
    assert got.backward == base.backward
    fused = dataclasses.replace(h100, setup=RunSetup(compiled=True))
    f = micro_batch_terms(DIT, fused, images=16, tp=1, recompute="none", precision="bf16")
    assert f.forward.memory_s == pytest.approx(COMPILE_FUSION * base.forward.memory_s)
    assert frozen_inventory(RunSetup(), images=4, resolution=256, dtype_bytes=2) is None


@pytest.mark.parametrize("kw, named", [({"attention": "slow"}, "attention = 'slow'"),
                                       ({"text_encoder": "clip-g"}, "clip-g"),
                                       ({"frames": 0}, "frames = 0")])
def test_bad_setup_names_the_value(kw, named):
    with pytest.raises(ConfigError, match=named):
        RunSetup(**kw)


def test_public_validation_prices_every_scored_row():
    from conftest import bench_module

    from ecdit_scale.files import load_yaml_file

    mod = bench_module("public_validate")

    rows = load_yaml_file(mod.ROWS)["rows"]
    scored = [r for r in rows if r["split"] != "context"]
    held = [r for r in scored if r["split"] == "held_out"]
    assert len(held) * 3 >= len(scored) - 1  # about a third held out
    for r in held:
        ratio = mod.predict(r) / r["figure"]
        assert 0.1 < ratio < 10


@pytest.mark.parametrize("args, needle", [
    (["--attention", "fast"], "attention = 'fast': choose one of flash, mem-efficient, math"),
    (["--text-encoder", "clip-g"], "text encoder = 'clip-g': choose one of none, t5-xxl"),
])
def test_plan_refuses_a_bad_setup_in_one_line(args, needle, capsys, tmp_path, monkeypatch):
    from conftest import run_main

    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, "plan", "--model", "dit-xl-2", "--no-write", *args)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_plan_prices_the_stated_setup(capsys, tmp_path, monkeypatch):
    from conftest import run_main

    monkeypatch.chdir(tmp_path)
    base = ["plan", "--model", "dit-xl-2", "--gpu", "a100", "--gpus", "8", "--global-batch",
            "256", "--zero", "0", "--micro-batch", "32", "--no-table", "--no-write", "--json"]
    steps = {}
    for name, extra in (("latents", []), ("vae", ["--vae-in-loop", "--attention", "math"])):
        code, out, _ = run_main(capsys, *base, *extra)
        assert code == 0
        d = json.loads(out)
        steps[name] = d["best"]["step"]["forward_s"]
        if name == "vae":
            assert "VAE in the loop" in " ".join(d["estimated"])
    assert steps["vae"] > 1.5 * steps["latents"]
