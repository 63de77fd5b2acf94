"""What keeps the trainer's device busy: optimizer kernels, regional compile, the achieved
FLOP/s a run records. The launched runs these tests read are the session runs of conftest.py."""

from __future__ import annotations

import pytest
import torch

from ecdit_scale.config import Optimizer
from ecdit_scale.train.records import Device


@pytest.mark.parametrize("optimizer", list(Optimizer))
def test_optimizers_use_multi_tensor_kernels_without_a_jit_build(optimizer):
    """CPU: foreach for every optimizer; CUDA: fused where torch has it (AdamW, SGD), foreach
    for RMSprop; never the one-tensor-at-a-time loop."""
    from ecdit_scale.train.engine import OPTIMIZER_CLASSES, optimizer_impl, optimizer_kernels

    cls = OPTIMIZER_CLASSES[optimizer]
    assert optimizer_kernels(cls, Device.CPU) == {"foreach": True}
    on_cuda = optimizer_kernels(cls, Device.CUDA)
    assert on_cuda == ({"foreach": True} if optimizer is Optimizer.RMSPROP else {"fused": True})
    opt = cls([torch.nn.Parameter(torch.zeros(3))], lr=0.1, **optimizer_kernels(cls, Device.CPU))
    assert optimizer_impl(opt) == "foreach"
    assert optimizer_impl(cls([torch.nn.Parameter(torch.zeros(3))], lr=0.1,
                              foreach=False)) == "for-loop"


def test_achieved_flops_and_share_of_peak():
    """Per device: model FLOPs of the global batch / world / step time; the share of the
    catalog's dense bf16 peak for a known CUDA device, none for a CPU or an unknown device."""
    from ecdit_scale import sizes
    from ecdit_scale.planner.flops import training_flops_per_image
    from ecdit_scale.planner.hardware import get_accelerator
    from ecdit_scale.train.records import RunSettings
    from ecdit_scale.train.throughput import make_meter

    cfg = sizes.get("ecdit-xl-8e")
    s = RunSettings.build(card=cfg.name, model_name=cfg.name, steps=10, nodes=1,
                          nproc_per_node=2, ep=2, zero=1, micro_batch=32, grad_accum=2,
                          dataset="latents", data_limit=None, holdout=0, seed=0, lr=1e-4,
                          warmup_steps=0, optimizer="adamw", precision="bf16", device="cuda",
                          checkpoint_every=10, keep_checkpoints=1, track_memory=False)
    per_image = training_flops_per_image(cfg, s.recompute).model_flops
    h100 = make_meter(cfg, s, "NVIDIA H100 80GB HBM3")
    rec = h100.record(0.5)
    per_device = per_image * 128 / 2 / 0.5  # global batch 32 x 2 x 2, world 2
    assert rec["model_flops_per_s_per_device"] == pytest.approx(per_device)
    peak = get_accelerator("h100-sxm").peak_bf16_flops
    assert rec["pct_of_peak"] == pytest.approx(100 * per_device / peak)
    summary = h100.summary([rec, h100.record(1.0)])
    assert summary["mean_model_flops_per_s_per_device"] == pytest.approx(per_device * 0.75)
    assert summary["mean_pct_of_peak"] == pytest.approx(75 * per_device / peak)
    assert "h100-sxm" in summary["peak_source"]
    for name in (None, "Some Future GPU"):
        meter = make_meter(cfg, s, name)
        assert meter.record(0.5)["pct_of_peak"] is None and "n/a" in meter.peak_source
        assert meter.record(0.5)["model_flops_per_s_per_device"] == pytest.approx(per_device)


def test_progress_line_shows_step_time_rate_and_share_of_peak():
    from ecdit_scale.cli.train import _mean_rate, _speed

    line = _speed(0.052, 1.234e12, 12.345)
    assert "0.052 s/step" in line and "1.23 TFLOP/s/device" in line and "12.3% of peak" in line
    assert "peak n/a" in _speed(0.052, 5.9e9, None) and "5.9 GFLOP/s" in _speed(0.1, 5.9e9, None)
    assert _mean_rate({"mean_model_flops_per_s_per_device": 2e14, "mean_pct_of_peak": 20.2}) \
        == ", 200 TFLOP/s per device (20.2% of peak)"
    assert _mean_rate({}) == ""
