"""Expert parallelism: the all-to-all exchange computes what the single-device layer computes,
and after training with ep = 2 the expert weights differ across ranks while the shared
weights stay identical."""

from __future__ import annotations

import json
import os

import pytest
import torch
from spawned import start_ranks

from ecdit_scale import sizes
from ecdit_scale.train.process import free_port


def _equivalence_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank: a single-device MoE layer vs the same layer made expert-parallel (ep=world),
    for expert choice and token choice (one pair of processes for both: each costs ~3 s)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    import deepspeed
    import deepspeed.ops
    import torch.distributed as dist

    from ecdit_scale.train.expert_parallel import create_groups

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    ep = create_groups(world)
    for kind in ("ec", "tc"):
        _compare(rank, world, kind, ep, out_dir)
    dist.barrier()
    dist.destroy_process_group()


def _compare(rank: int, world: int, kind: str, ep, out_dir: str) -> None:
    import copy

    import torch.distributed as dist

    from ecdit_scale import sizes
    from ecdit_scale.model.moe import make_ffn
    from ecdit_scale.train.expert_parallel import DeepSpeedExperts, shard_experts

    cfg = sizes.get(f"nano-{kind}8")
    torch.manual_seed(0)  # the same full layer on every rank
    full = make_ffn(cfg, moe=True)
    holder = torch.nn.Module()
    holder.layer = copy.deepcopy(full)
    holder2 = torch.nn.Module()  # for the compiled copy, below
    holder2.layer = copy.deepcopy(full)
    shard_experts(holder, ep)
    par = holder.layer
    assert isinstance(par.experts, DeepSpeedExperts)
    assert par.experts.num_local_experts == 8 // world

    torch.manual_seed(100 + rank)  # every rank routes its own tokens
    x = torch.randn(2, cfg.tokens_per_image, cfg.hidden_size)
    y_full = full(x)
    y_par = par(x)
    (y_full.square().sum()).backward()
    (y_par.square().sum()).backward()

    out = {"out_max_err": float((y_full - y_par).abs().max())}
    # router: replicated, its gradient comes from this rank's tokens only
    out["router_grad_err"] = float((full.router.weight.grad - par.router.weight.grad).abs().max())
    # experts: the owner gets the gradient of every rank's tokens routed to its experts
    g_full = full.experts.w_in_EDF.grad.clone()
    dist.all_reduce(g_full)
    lo = ep.local_expert_range(8).start
    errs = [float((g_full[lo + i] - e.w_in_DF.grad).abs().max())
            for i, e in enumerate(par.experts.local_experts)]
    out["expert_grad_err"] = max(errs)
    out["expert_grad_scale"] = float(g_full.abs().max())
    out["expert_params_marked"] = all(
        p.allreduce is False and p.group_name == f"ep_size_{world}"
        for p in par.experts.parameters())
    # the layer's forward compiled as ``--compile block`` compiles a block's (aot_eager: the
    # graph capture without inductor's code generation): the all-to-all stays out of the graph
    # and the layer computes what the eager one does
    from ecdit_scale.train.regional_compile import compile_region

    if kind != "ec":  # the exchange is the same code for token choice: compiled once, for EC
        with open(os.path.join(out_dir, f"{kind}-rank{rank}.json"), "w") as fh:
            json.dump(out, fh)
        return
    comp = shard_experts(holder2, ep).layer
    compile_region(comp, "forward", "aot_eager")
    y_comp = comp(x)
    y_comp.square().sum().backward()
    from torch._dynamo.utils import counters

    out["compiled_graphs"] = counters["stats"]["unique_graphs"]
    out["compiled_out_err"] = float((y_comp - y_par).abs().max())
    out["compiled_grad_err"] = max(
        float((a.grad - b.grad).abs().max())
        for a, b in zip(par.parameters(), comp.parameters(), strict=True))
    with open(os.path.join(out_dir, f"{kind}-rank{rank}.json"), "w") as fh:
        json.dump(out, fh)


@pytest.fixture(scope="module")
def all_to_all(session_runs):
    """Both kinds' comparisons, made once for all the workers."""
    def make(out):
        out.mkdir(parents=True, exist_ok=True)
        start_ranks(_equivalence_worker, (2, free_port(), str(out)), 2)

    return session_runs.once("all-to-all", make)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ec", "tc"])
def test_all_to_all_matches_the_single_device_layer(all_to_all, kind):
    for rank in (0, 1):
        r = json.loads((all_to_all / f"{kind}-rank{rank}.json").read_text())
        assert r["out_max_err"] < 1e-5, r
        assert r["router_grad_err"] < 1e-5, r
        assert r["expert_grad_err"] < 1e-5 * max(1.0, r["expert_grad_scale"]), r
        assert r["expert_params_marked"]
        if kind == "ec":
            assert r["compiled_graphs"] > 0, r  # compiled, not run eagerly
            assert r["compiled_out_err"] < 1e-5 and r["compiled_grad_err"] < 1e-4, r


@pytest.mark.slow
def test_after_training_experts_differ_and_shared_weights_agree(ec_run):
    from ecdit_scale.train.records import RunDir

    sums = RunDir(ec_run).read_checksums()
    assert sorted(sums) == [0, 1]
    r0, r1 = sums[0], sums[1]
    assert r0["local_experts"] == [0, 1, 2, 3] and r1["local_experts"] == [4, 5, 6, 7]
    assert r0["shared"].keys() == r1["shared"].keys() and len(r0["shared"]) > 10
    for name, value in r0["shared"].items():  # replicated and all-reduced: bit-identical
        assert value == r1["shared"][name], name
    assert r0["expert"].keys() == r1["expert"].keys()
    assert len(r0["expert"]) == 2 * 4 * 4  # 2 MoE layers x 4 local experts x 4 tensors
    for name, value in r0["expert"].items():
        if name.endswith(("w_in_DF", "w_out_FD")):
            assert value != r1["expert"][name], name


@pytest.mark.slow
def test_checkpoint_consolidates_to_the_single_device_model(ec_run):
    from ecdit_scale.model import build_model
    from ecdit_scale.train.expert_parallel import consolidate_checkpoint
    from ecdit_scale.train.records import RunDir

    rd = RunDir(ec_run)
    step, tag = rd.latest_checkpoint()
    state = consolidate_checkpoint(rd.checkpoints / tag)
    model = build_model(rd.model_config())
    model.load_state_dict(state, strict=True)
    # the consolidated experts are the ranks' experts, in global order
    sums = rd.read_checksums()
    w = model.blocks[1].ffn.experts.w_in_EDF.detach().double()
    for rank, first in ((0, 0), (1, 4)):
        key = "blocks.1.ffn.experts.deepspeed_moe.experts.deepspeed_experts.1.w_in_DF"
        assert sums[rank]["expert"][key][0] == pytest.approx(float(w[first + 1].sum()), rel=1e-9)


def _sharded(name="nano-ec8", ep=2):
    from ecdit_scale.model import build_model
    from ecdit_scale.train.expert_parallel import (
        DeepSpeedExperts,
        ExpertParallel,
        group_name,
        parallelize,
    )

    cfg = sizes.get(name)
    torch.manual_seed(0)
    rank0 = ExpertParallel(ep_size=ep, ep_rank=0, expert_dp_size=1, group_name=group_name(ep),
                           group=None)
    model = parallelize(build_model(cfg), cfg, rank0)
    return cfg, [m for m in model.modules() if isinstance(m, DeepSpeedExperts)]


def test_the_experts_weights_stack_as_a_view_and_train_as_a_copy_would():
    """The trainer's expert layers stack their local experts' weights for the batched GEMMs
    without copying them (the planner prices no copy), with the values and gradients of
    ``torch.stack``."""
    from ecdit_scale.model.moe import expert_ffn
    from ecdit_scale.train.expert_parallel import _BATCHED

    cfg, layers = _sharded()
    layer = layers[0]
    x = torch.randn(cfg.ffn.num_experts // 2, 6, cfg.hidden_size)
    views = layer.stacked_weights()
    names = list(_BATCHED)
    for name, v in zip(names, views, strict=True):
        first = getattr(layer.local_experts[0], name)
        assert v.data_ptr() == first.data_ptr()  # no copy
        assert torch.equal(v, torch.stack([getattr(e, name) for e in layer.local_experts]))
    layer(x).square().sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    copies = [torch.stack([getattr(e, name) for e in layer.local_experts]) for name in names]
    expert_ffn(x, *copies).square().sum().backward()
    for got, want in zip(grads, [p.grad for p in layer.parameters()], strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_experts_stay_a_view_under_deepspeeds_layout_and_after_a_move():
    """DeepSpeed's ZeRO-1/2 optimizer puts a param group in one flat buffer in module order,
    each tensor padded to its alignment (stage_1_and_2.py: param_alignment): the experts stay
    evenly spaced. Tensors moved one by one (``.to``) are laid out again at the next stack."""
    from ecdit_scale.train.expert_parallel import _BATCHED, evenly_spaced, expert_stacking

    cfg, layers = _sharded()
    params = [p for layer in layers for p in layer.parameters()]
    pad = [(-p.numel()) % 4 for p in params]  # fp32: 16 bytes
    flat = torch.zeros(sum(p.numel() + k for p, k in zip(params, pad, strict=True)))
    at = 0
    for p, k in zip(params, pad, strict=True):
        flat[at:at + p.numel()].copy_(p.detach().reshape(-1))
        p.data = flat[at:at + p.numel()].view_as(p)
        at += p.numel() + k
    holder = torch.nn.ModuleList(layers)
    assert expert_stacking(holder) == "view"
    for p in params:  # each tensor moved on its own
        p.data = p.data.clone()
    assert expert_stacking(holder) == "copy"
    stacked = layers[0].stacked_weights()  # laid out again: a view
    assert expert_stacking(torch.nn.ModuleList(layers[:1])) == "view"
    assert stacked[0].data_ptr() == layers[0].local_experts[0].w_in_DF.data_ptr()
    tensors = [e.w_in_DF for e in layers[0].local_experts]
    assert evenly_spaced(tensors) is not None
    tensors[0], tensors[1] = tensors[1], tensors[0]  # out of order: not evenly spaced
    assert evenly_spaced(tensors) is None and len(_BATCHED) == 4
