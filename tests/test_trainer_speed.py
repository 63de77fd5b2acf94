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


# ---------------------------------------------------------------------------------------------
# Regional compile
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, recompute", [("nano-ec8", "full"), ("nano-dense", "selective")])
def test_compiled_blocks_give_the_eager_loss_and_gradients(name, recompute):
    """Each block's forward compiled (``--compile block``) trains the same function as eager,
    and keeps the eager model's parameter names (checkpoints and resume read them). Full
    recompute reruns the compiled region from outside (the plain path, recompute none, is the
    same region called once); selective recompute checkpoints inside it. Two blocks: a dense
    one and, for nano-ec8, an expert-choice one.

    The compiler is dynamo + AOTAutograd with the ``aot_eager`` backend: the same graph
    capture, functionalisation and joint forward/backward graphs as inductor, without code
    generation. Inductor itself takes ~45 s on these CPUs for one nano model (measured); the
    GPU benchmark (bench/train_throughput.py) runs it and compares its loss with eager's.
    """
    import copy

    from ecdit_scale import sizes
    from ecdit_scale.model import build_model, rectified_flow_loss
    from ecdit_scale.train.regional_compile import Compile, compile_blocks, is_compiled

    cfg = sizes.get(name).replace(depth=2)
    torch.manual_seed(0)
    eager = build_model(cfg, recompute=recompute)
    compiled = copy.deepcopy(eager)
    assert compile_blocks(compiled, Compile.BLOCK, backend="aot_eager") == cfg.depth
    assert all(is_compiled(b) for b in compiled.blocks)
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    c = torch.randn(2, cfg.text_tokens, cfg.text_dim, generator=g)
    for step in range(2):  # the second step runs the compiled graphs, not the first capture
        losses = []
        for model in (eager, compiled):
            model.zero_grad(set_to_none=True)
            loss = rectified_flow_loss(model, x, c, generator=torch.Generator().manual_seed(step))
            loss.loss.backward()
            losses.append(loss.loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
        for (n, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=n)
    if cfg.ffn.is_moe:  # the routing statistics the trainer reads come out of the graph
        for a, b in zip(eager.routing_stats(), compiled.routing_stats(), strict=True):
            assert torch.equal(a.tokens_per_expert, b.tokens_per_expert)
    compiled.load_state_dict(eager.state_dict())  # a checkpoint of either loads into the other


def test_compile_setting_defaults_and_refusals(tmp_path):
    """--compile: none on CPU by default; block is recorded and turns CPU memory tracking off
    (its dispatch mode would make dynamo run the blocks eagerly); a bad value is one line."""
    from ecdit_scale.errors import ConfigError
    from ecdit_scale.train.regional_compile import Compile
    from ecdit_scale.train.request import LaunchRequest, check_request, resume_command

    base = dict(card="nano-ec8", nproc=1, steps=4, device="cpu", data_limit=64, holdout=4)
    plain = check_request(LaunchRequest(**base, out=str(tmp_path / "a"))).settings
    assert plain.compile == Compile.NONE and plain.track_memory
    req = LaunchRequest(**base, out=str(tmp_path / "b"), compile="block")
    s = check_request(req).settings
    assert s.compile == Compile.BLOCK and not s.track_memory
    assert any("memory not tracked" in n for n in s.notes)
    assert s.to_dict()["compile"] == "block"  # run.json
    assert "--compile block" in resume_command(req, tmp_path / "b")
    with pytest.raises(ConfigError, match="--compile 'fast': choose one of none, block"):
        check_request(LaunchRequest(**base, out=str(tmp_path / "c"), compile="fast"))


# ---------------------------------------------------------------------------------------------
# The step reads nothing back from the device
# ---------------------------------------------------------------------------------------------


# ops that make the host wait for a CUDA device: a scalar read, and shapes that depend on data
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2"}


@pytest.mark.parametrize("name", ["nano-ec8", "nano-tc8"])
def test_forward_backward_reads_no_value_from_the_device(name):
    """Routing (top-k, one-hot, capacity, dropped count) and the loss run without a scalar
    read or a data-dependent shape: on CUDA each is a stream sync per MoE layer."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from ecdit_scale import sizes
    from ecdit_scale.model import build_model, rectified_flow_loss

    cfg = sizes.get(name)
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size)
    c = torch.randn(2, cfg.text_tokens, cfg.text_dim)
    syncs = []

    class Syncs(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in SYNC_OPS:
                syncs.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Syncs():
        rectified_flow_loss(model, x, c, generator=torch.Generator().manual_seed(0)).loss.backward()
    assert syncs == []


def test_step_statistics_accumulate_on_the_device_and_reduce_once():
    """collect_routing + StepStats keep tensors; reduce_stats gives the numbers the metrics
    had before (histogram, per-layer means, tokens per expert, dropped)."""
    import torch.distributed as dist

    from ecdit_scale import sizes
    from ecdit_scale.model import build_model, rectified_flow_loss
    from ecdit_scale.train import worker

    cfg = sizes.get("nano-tc8")
    torch.manual_seed(0)
    model = build_model(cfg)
    st = worker.StepStats()
    expected_hist = torch.zeros(cfg.ffn.num_experts + 1, dtype=torch.long)
    dropped = 0
    for micro in range(2):
        x = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size)
        c = torch.randn(2, cfg.text_tokens, cfg.text_dim)
        parts = rectified_flow_loss(model, x, c, generator=torch.Generator().manual_seed(micro))
        d = worker.collect_routing(model, st, cfg.ffn.num_experts)
        st.add(parts.loss, parts.flow_loss, parts.aux_loss, d)
        for s in model.routing_stats():
            expected_hist += torch.bincount(s.experts_per_token.reshape(-1),
                                            minlength=cfg.ffn.num_experts + 1)
            dropped += int(s.dropped)
    assert isinstance(st.sums, torch.Tensor) and isinstance(st.hist, torch.Tensor)

    class OneRank:  # reduce_stats' collectives over a world of one
        def all_reduce(self, t, op=None):
            return t

    from ecdit_scale.train import step_stats

    real = step_stats.dist
    step_stats.dist = type("D", (), {"all_reduce": OneRank().all_reduce,
                                     "ReduceOp": dist.ReduceOp})
    try:
        out = worker.reduce_stats(st, 1, 2, -1, torch.device("cpu"))
    finally:
        step_stats.dist = real
    assert out["experts_per_token"]["hist"] == expected_hist.tolist()
    assert out["dropped"] == dropped > 0
    assert out["peak_bytes"] is None and not out["memory_tracked"]
    L = cfg.num_moe_layers
    assert len(out["tokens_per_expert"]) == L
    assert len(out["experts_per_token"]["per_layer_mean"]) == L


@pytest.mark.gpu
def test_device_feed_gives_the_same_batches_on_the_device():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from ecdit_scale.train.feed import DeviceFeed

    src = [(torch.randn(4, 3, 8, 8), torch.randn(4, 5, 6)) for _ in range(3)]
    feed = DeviceFeed(iter(src + src[:1]), torch.device("cuda", 0), torch.bfloat16)
    for images, text in src:
        a, b = next(feed)
        assert a.is_cuda and a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float().cpu(), images.bfloat16().float())
        torch.testing.assert_close(b.float().cpu(), text.bfloat16().float())


# ---------------------------------------------------------------------------------------------
# The profiled step and the GPU benchmark's plan
# ---------------------------------------------------------------------------------------------


def test_step_profiler_writes_the_counts_of_the_step_it_names(tmp_path, monkeypatch):
    from ecdit_scale.train.records import RunDir
    from ecdit_scale.train.step_profile import PROFILE_ENV, StepProfiler, summarize

    monkeypatch.setenv(PROFILE_ENV, "2")
    rd = RunDir(tmp_path)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
    prof = StepProfiler(rd, rank=0, on_gpu=False)
    assert StepProfiler(rd, rank=1, on_gpu=False).step is None  # rank 0 only
    records = []
    for step in (1, 2, 3):
        prof.start(step)
        model(torch.randn(4, 8)).sum().backward()
        records.append(prof.stop(step, 0.01))
    assert records == [{}, {"profiled": True}, {}]
    import json

    data = json.loads((tmp_path / "profile_step2.json").read_text())
    assert data["step"] == 2 and data["accumulate_grad"] == 4  # 2 weights + 2 biases
    assert data["kernels"] == data["aten_compute_ops"] >= 6  # 2 addmm + gelu, and backward
    assert not list(tmp_path.glob("profile_step1.json"))
    # the CUDA summary reads device events the same way (none on a CPU profile)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as p:
        model(torch.randn(4, 8)).sum().backward()
    gpu = summarize(p.events(), on_gpu=True)
    assert gpu["kernels"] == 0 and gpu["host_syncs"] == 0 and gpu["device_ops"] == 0
    assert p.events()[0].time_range.elapsed_us() >= 0


def _bench():
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "bench"))
    import train_throughput

    return train_throughput


def test_gpu_benchmark_plan_covers_the_issue_and_fits_an_h100():
    """The points the GPU script runs, checked here so a GPU session is not spent on a typo:
    every config of the issue at two micro-batches (XL at three, up to 128 for the share-of-peak
    target), an eager twin of the first, cards that
    resolve, data that fits them, routing groups that divide the batch, and planned memory
    within an H100."""
    from ecdit_scale.config import ParallelLayout, TrainingConfig
    from ecdit_scale.datasets.kinds import check_dataset_fits
    from ecdit_scale.planner.hardware import get_accelerator
    from ecdit_scale.planner.memory import memory_breakdown

    tt = _bench()
    points = tt.GPU_POINTS
    assert len({p.name for p in points}) == len(points)
    mbs: dict[str, set] = {}
    for p in points:
        if p.compile == "block":
            mbs.setdefault(p.model, set()).add(p.micro_batch)
    assert set(mbs) == {"ecdit-xl", "ecdit-xl-8e", "ecdit-xl-8e-tc", "ecdit-xl-32e",
                        "base-ec16"}
    assert all(len(v) >= 2 for v in mbs.values()), mbs
    assert {32, 128} <= mbs["ecdit-xl"] and 128 in mbs["base-ec16"]
    first = points[0]
    assert (first.model, first.micro_batch, first.compile) == ("ecdit-xl", 32, "block")
    assert tt.Point("ecdit-xl", 32, compile="none") in points
    h100 = get_accelerator("h100-sxm").memory_bytes
    for p in points:
        cfg = tt.point_config(p)
        check_dataset_fits(p.dataset, cfg)
        assert (p.micro_batch * cfg.tokens_per_image) % cfg.routing_group_tokens == 0
        mem = memory_breakdown(cfg, ParallelLayout(dp=1, ep=1, zero=1, micro_batch=p.micro_batch),
                               TrainingConfig(global_batch=p.micro_batch, precision="bf16",
                                              optimizer="adamw"))
        # the planned total, its 10% + 1.5 GiB allowance included, within the card
        assert mem.total < h100, (p.name, mem.total / 2**30)
    assert any(p.model == "ecdit-xl-32e" and p.depth and p.depth < 28 for p in points)


def test_benchmark_reads_a_run_and_checks_compiled_against_eager(ec_run):
    """The result of a point from a run directory (the shared 2-rank run), and the
    compiled/eager check on two results."""
    tt = _bench()
    r = tt.read_run(ec_run, warmup=5, timed=10, profile_step=99)
    assert r["steps_recorded"] == 20 and len(r["step_s_all"]) == 10
    assert r["step_s"]["min"] <= r["step_s"]["median"] <= r["step_s"]["max"]
    assert r["model_flops_per_s_per_device"]["median"] > 0 and r["pct_of_peak"] is None
    assert r["settings"]["ep"] == 2 and r["profile"] is None
    compiled = {"name": "x-mb4-block", "losses": [1.0, 0.9, 0.8], "step_s": {"median": 0.5}}
    eager = {"name": "x-mb4-none", "losses": [1.0, 0.9005, 0.8], "step_s": {"median": 1.0}}
    c = tt.checks([compiled, eager], "cuda")["x-mb4"]
    assert c["eager_over_compiled_step_s"] == 2.0 and c["same_loss"]
    assert not tt.checks([compiled, {**eager, "losses": [1.1, 0.9, 0.8]}], "cuda")["x-mb4"][
        "same_loss"]
    # the engine A/B: DeepSpeed's defaults beside the lean engine, same losses
    base = {**compiled, "name": "x-mb4-block-dsdefaults", "step_s": {"median": 1.5}}
    e = tt.checks([compiled, base], "cuda")["x-mb4-block engine"]
    assert e["defaults_over_lean_step_s"] == 3.0 and e["same_loss"]
    assert tt.Point("ecdit-xl", 32, engine="deepspeed-defaults") in tt.GPU_POINTS
    assert r["ceilings"] is None  # no profiled step (and no peak on a CPU)


def test_benchmark_ceilings_scale_the_measured_share_of_peak_by_term():
    """20% of peak in a 100 ms step whose parts take 80 ms of device time: 25% without host
    gaps, 40% with the model's 50 ms only, 66.7% with its 30 ms of GEMMs and attention."""
    tt = _bench()
    parts = {"forward/model": 20.0, "backward/model": 30.0, "backward/hooks": 4.0,
             "backward/engine": 2.0, "step/optimizer": 15.0, "step/engine": 3.0, "ema": 5.0,
             "outside": 1.0}
    b = {"model_ms": {"gemm": 25.0, "attention": 5.0, "memory_bound": 20.0}, "parts_ms": parts,
         "basis": "device time"}
    r = {"step_s": {"median": 0.1}, "pct_of_peak": {"median": 20.0},
         "profile": {"breakdown": b}}
    c = tt.ceilings(r)
    assert c["optimizer_ms"] == 20.0 and c["engine_ms"] == 9.0 and c["outside_ms"] == 1.0
    assert c["host_gap_ms"] == pytest.approx(20.0)
    assert c["pct_if_no_host_gaps"] == pytest.approx(25.0)
    assert c["pct_if_model_only"] == pytest.approx(40.0)
    assert c["pct_if_gemm_and_attention_only"] == pytest.approx(200 / 3)
    assert tt.ceilings({**r, "profile": {"kernels": 3}}) is None  # profiled before breakdowns


# ---------------------------------------------------------------------------------------------
# The profiled step by part and operator class (the step-time model's terms, measured)
# ---------------------------------------------------------------------------------------------


class _Attn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.out = torch.nn.Linear(16, 48), torch.nn.Linear(16, 16)

    def forward(self, x):
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, 2, 8).unbind(2)
        a = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.out(torch.nn.functional.gelu(a.transpose(1, 2).reshape(x.shape)))


def test_breakdown_splits_a_profiled_step_by_part_and_class():
    """On a CPU the parts are host time: the forward mark, autograd's nodes (gradient
    accumulation apart), the optimizer's own range inside the step; the model's GEMMs and
    attention are their outermost ops, memory-bound is the rest of the model's time."""
    from torch.profiler import ProfilerActivity, profile

    from ecdit_scale.train.step_profile import (
        MODEL_PARTS,
        PARTS,
        breakdown,
        op_class,
        phase,
        summarize,
    )

    model = _Attn()
    opt = torch.optim.AdamW(model.parameters(), foreach=True)
    x = torch.randn(4, 32, 16)
    with profile(activities=[ProfilerActivity.CPU]) as p:
        with phase("forward"):
            loss = model(x).square().mean()
        with phase("backward"):
            loss.backward()
        with phase("step"):
            opt.step()
        with phase("ema"):
            torch.add(x, 1.0)
        torch.mul(x, 2.0)  # outside every phase
    b = breakdown(p.events(), on_gpu=False)
    assert set(b["parts_ms"]) == set(PARTS) and set(b["phase_wall_ms"]) == {
        "forward", "backward", "step", "ema"}
    parts, model_ms, wall = b["parts_ms"], b["model_ms"], b["phase_wall_ms"]
    for part in ("forward/model", "backward/model", "backward/hooks", "step/optimizer", "ema"):
        assert parts[part] > 0, part
    assert parts["forward/model"] == wall["forward"]
    assert parts["backward/model"] + parts["backward/hooks"] + parts["backward/engine"] == \
        pytest.approx(wall["backward"])
    assert parts["step/optimizer"] + parts["step/engine"] == pytest.approx(wall["step"])
    assert model_ms["gemm"] > 0 and model_ms["attention"] > 0 and model_ms["memory_bound"] > 0
    assert sum(model_ms.values()) == pytest.approx(sum(parts[p] for p in MODEL_PARTS))
    k = b["kernels"]
    assert k["forward/model"] >= 5  # 2 addmm, sdpa, gelu, square, mean
    assert k["outside"] >= 1 and k["ema"] >= 1 and k["step/optimizer"] >= 1
    assert b["model_kernels"] == k["forward/model"] + k["backward/model"]
    # the ten heaviest memory-bound ops by host time: which ten moves with the machine's load
    # (aten::square, 4x32x16 elements, once fell out of them with the suite running), so the
    # test holds what does not: each listed op is memory-bound, GEMMs are not listed
    heavy = dict(b["memory_bound_top_ms"])
    assert heavy and "aten::addmm" not in heavy
    assert all(op_class([name]) == "memory_bound" for name in heavy), heavy
    assert op_class(["aten::gelu"]) == op_class(["aten::square"]) == "memory_bound"
    # the summary carries it; a step without the worker's marks has none
    assert summarize(p.events(), on_gpu=False)["breakdown"] == b
    with profile(activities=[ProfilerActivity.CPU]) as q:
        model(x).sum().backward()
    assert breakdown(q.events(), on_gpu=False) is None
    assert "breakdown" not in summarize(q.events(), on_gpu=False)


def test_breakdown_on_cuda_attributes_each_kernel_to_the_op_that_launched_it():
    """A CUDA profile, made by hand: kernels count toward the part their launching op's start
    falls in (the backward's ops run on autograd's thread, outside the mark's op tree) and the
    class of that op or its ancestors; a labelled range's mirror on the device is no kernel."""
    from types import SimpleNamespace as NS

    from torch.autograd import DeviceType

    from ecdit_scale.train.step_profile import breakdown, summarize

    def ev(name, start, end, parent=None, kernels=(), device=DeviceType.CPU, annotation=False):
        return NS(name=name, time_range=NS(start=start, end=end,
                                           elapsed_us=lambda: end - start),
                  cpu_parent=parent, cpu_children=[], device_type=device,
                  is_user_annotation=annotation,
                  kernels=[NS(name=k, duration=d) for k, d in kernels])

    fwd = ev("ecdit::forward", 0, 1000, kernels=[("ecdit::forward", 900)], annotation=True)
    bwd = ev("ecdit::backward", 1000, 3000, annotation=True)
    stp = ev("ecdit::step", 3000, 4000, annotation=True)
    graph = ev("## Call CompiledFxGraph abc ##", 10, 500, fwd, [("triton_poi_fused_0", 40)])
    node = ev("autograd::engine::evaluate_function: CompiledFunctionBackward", 1100, 2000)
    acc = ev("autograd::engine::evaluate_function: torch::autograd::AccumulateGrad", 2100, 2200)
    optr = ev("Optimizer.step#AdamW.step", 3100, 3900, stp, annotation=True)
    events = [
        fwd, bwd, stp, graph, node, acc, optr,
        ev("aten::mm", 20, 60, graph, [("sm90_xmma_gemm_bf16", 300)]),
        ev("aten::_scaled_dot_product_cudnn_attention", 70, 90, graph, [("cudnn_sdpa", 100)]),
        ev("aten::mm", 1200, 1300, node, [("nvjet_gemm", 600)]),
        ev("aten::_scaled_dot_product_cudnn_attention_backward", 1400, 1500, node,
           [("cudnn_bprop", 200), ("memset", 1)]),
        ev("aten::add_", 2110, 2120, acc, [("add_kernel", 5)]),
        ev("aten::copy_", 2500, 2510, bwd, [("copy_kernel", 7)]),
        ev("aten::_fused_adamw_", 3200, 3800, optr, [("fused_adamw", 50)]),
        ev("aten::norm", 3950, 3960, stp, [("reduce_kernel", 3)]),
        # expert parallelism's all-to-all in the forward: NCCL's kernel is communication
        ev("c10d::alltoall_base_", 600, 620, fwd, [("ncclDevKernel_SendRecv", 20)]),
        ev("sm90_xmma_gemm_bf16", 30, 330, device=DeviceType.CUDA),
        ev("ecdit::forward", 0, 950, device=DeviceType.CUDA, annotation=True),
    ]
    b = breakdown(events, on_gpu=True)
    assert b["parts_ms"] == pytest.approx({
        "forward/model": 0.46, "backward/model": 0.801, "backward/hooks": 0.005,
        "backward/engine": 0.007, "step/optimizer": 0.05, "step/engine": 0.003, "ema": 0.0,
        "outside": 0.0})
    assert b["model_ms"] == pytest.approx({"gemm": 0.9, "attention": 0.301,
                                           "memory_bound": 0.04, "comm": 0.02})
    assert b["kernels"]["forward/model"] == 4 and b["model_kernels"] == 4 + 3
    assert b["memory_bound_top_ms"] == [("triton_poi_fused_0", 0.04)]
    s = summarize(events, on_gpu=True)
    assert s["kernels"] == 1 and s["device_busy_ms"] == pytest.approx(0.3)  # no mirror


class _Ev:
    """The fields of a profiler event ``breakdown`` reads (CPU)."""

    def __init__(self, name, start_us, dur_us, parent=None):
        from torch.autograd import DeviceType

        self.name, self.device_type, self.cpu_parent = name, DeviceType.CPU, parent
        self.cpu_children, self.kernels = [], []
        self.time_range = type("R", (), {"start": start_us, "end": start_us + dur_us,
                                         "elapsed_us": lambda _self, d=dur_us: d})()
        if parent is not None:
            parent.cpu_children.append(self)


def test_breakdown_counts_the_models_collectives_as_comm_not_memory_bound():
    """gloo runs a collective on its own thread ("gloo:<name>", no parent) while the caller
    waits: the all-to-alls starting in the forward or backward are the model's communication,
    not memory-bound time; a gradient reduce (in the backward or the step) is not the model's."""
    from ecdit_scale.train.step_profile import PHASE_MARK, breakdown

    fwd, bwd = _Ev(PHASE_MARK + "forward", 0, 100_000), _Ev(PHASE_MARK + "backward", 100_000,
                                                              200_000)
    step = _Ev(PHASE_MARK + "step", 300_000, 50_000)
    node = _Ev("autograd::engine::evaluate_function: MmBackward0", 120_000, 150_000)
    events = [fwd, bwd, step, node,
              _Ev("aten::mm", 1_000, 30_000),  # a forward GEMM: 30 ms
              _Ev("c10d::alltoall_base_", 40_000, 100),
              _Ev("gloo:all_to_all", 40_050, 20_000),  # forward all-to-all: 20 ms
              _Ev("aten::mm", 121_000, 60_000, parent=node),  # a backward GEMM: 60 ms
              _Ev("gloo:all_to_all", 200_000, 25_000),  # backward all-to-all: 25 ms
              # DeepSpeed's gradient reduce from a backward hook, on gloo's thread: not the
              # model's (its wait is the engine's), and one in the step
              _Ev("gloo:all_reduce", 210_000, 40_000),
              _Ev("gloo:all_reduce", 310_000, 30_000)]
    b = breakdown(events, on_gpu=False)
    m = b["model_ms"]
    assert m["gemm"] == pytest.approx(90.0) and m["comm"] == pytest.approx(45.0)
    # forward 100 + backward node 150, less GEMMs and the model's collectives
    assert m["memory_bound"] == pytest.approx(100.0 + 150.0 - 90.0 - 45.0)
    assert sum(m.values()) == pytest.approx(250.0)


def test_terms_carry_the_models_comm_and_read_old_breakdowns_without_it():
    from types import SimpleNamespace

    from ecdit_scale.evaluation.terms import TERMS, measured_terms, predicted_terms

    assert "comm" in TERMS
    parts = {"step/optimizer": 10.0, "ema": 0.0}
    old = {"model_ms": {"gemm": 50.0, "attention": 5.0, "memory_bound": 30.0},
           "parts_ms": parts, "model_kernels": 100}
    t = measured_terms(old, 0.2)
    assert t["comm"] == 0.0 and t["rest"] == pytest.approx(0.2 - 0.095)
    new = {**old, "model_ms": {**old["model_ms"], "comm": 20.0}}
    assert measured_terms(new, 0.2)["comm"] == pytest.approx(0.02)
    st = SimpleNamespace(kernels=100, launch_s=0.001, gemm_s=0.05, attention_s=0.005,
                         memory_bound_s=0.03, optimizer_s=0.01, a2a_exposed_s=0.015,
                         tp_exposed_s=0.002, sync_a2a_s=0.003, total_s=0.2)
    p = predicted_terms(st, serial=True)  # the ranks' meeting at the all-to-alls is comm
    assert p["comm"] == pytest.approx(0.020) and p["memory_bound"] == pytest.approx(0.031)
    assert p["rest"] == pytest.approx(0.2 - 0.05 - 0.005 - 0.031 - 0.020 - 0.01)
