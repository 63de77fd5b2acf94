"""Operator-level step time: the operator inventory, device profiles, `ecdit-scale profile`,
predictions that never see the run they predict, and the CPU validation of it all."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import cli_here

from ecdit_scale import sizes
from ecdit_scale.config import ClusterConfig, ParallelLayout, TrainingConfig
from ecdit_scale.errors import ConfigError
from ecdit_scale.params import count_params
from ecdit_scale.planner.device_profile import DeviceProfile
from ecdit_scale.planner.flops import flops_per_image
from ecdit_scale.planner.hardware import get_accelerator
from ecdit_scale.planner.layouts import estimate_layout
from ecdit_scale.planner.operators import (
    BACKWARD_KERNELS_PER_FORWARD,
    operator_inventory,
    param_tensor_count,
    trainer_param_tensors,
)

CONFIGS = ["nano-dense", "nano-ec8", "nano-tc8", "small-ec16", "dit-s-2", "ecdit-xl-8e",
           "ecdit-xl-32e"]


# ---------------------------------------------------------------------------------------------
# The inventory
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_inventory_flops_are_the_planners_forward_flops(name):
    cfg = sizes.get(name)
    inv = operator_inventory(cfg, images=3)
    assert inv.gemm_flops + inv.attention_flops == pytest.approx(3 * flops_per_image(cfg).forward)


@pytest.mark.parametrize("name", ["nano-ec8", "ecdit-xl-8e"])
def test_tensor_parallel_splits_the_sharded_operators(name):
    cfg = sizes.get(name)
    one, two = operator_inventory(cfg, images=4), operator_inventory(cfg, images=4, tp=2)
    f = flops_per_image(cfg)
    # everything but the embedders, adaLN, router and output head is split in two
    replicated = 4 * (f.patch_embed + f.timestep_embed + f.condition_embed + f.adaln
                      + f.router + f.output_head)
    split = one.gemm_flops + one.attention_flops - replicated
    assert two.gemm_flops + two.attention_flops == pytest.approx(replicated + split / 2)


@pytest.mark.parametrize("name", CONFIGS)
def test_parameter_tensors_match_the_torch_model(name):
    pytest.importorskip("torch")
    from ecdit_scale.model import build_model

    cfg = sizes.get(name)
    assert param_tensor_count(cfg) == len(list(build_model(cfg, device="meta").parameters()))


@pytest.mark.parametrize("name, ep", [("nano-ec8", 1), ("nano-ec8", 2), ("nano-tc16", 4),
                                      ("nano-dense", 1)])
def test_trainer_tensor_count_is_the_expert_parallel_models(name, ep):
    """Each local expert of the trainer's MoE layers is 4 tensors of its own: the planner's
    per-tensor engine and optimizer work counts them at the layout's ep."""
    pytest.importorskip("deepspeed")
    from ecdit_scale.model import build_model
    from ecdit_scale.train.expert_parallel import ExpertParallel, group_name, parallelize

    cfg = sizes.get(name)
    ep_rank0 = ExpertParallel(ep_size=ep, ep_rank=0, expert_dp_size=1, group_name=group_name(ep),
                              group=None)
    model = parallelize(build_model(cfg), cfg, ep_rank0)
    assert trainer_param_tensors(cfg, ep) == len(list(model.parameters()))
    assert operator_inventory(cfg, images=2, ep=ep).param_tensors == trainer_param_tensors(cfg, ep)


def test_recompute_reruns_the_blocks_or_only_their_cheap_parts():
    inv = operator_inventory(sizes.get("nano-ec8"), images=2)
    full, sel, none = (inv.recomputed(r) for r in ("full", "selective", "none"))
    assert none.forward_kernels == 0
    assert all(g.block for g in full.gemms) and not sel.gemms  # selective keeps the GEMMs
    assert sel.attention_flops == full.attention_flops == inv.attention_flops
    assert 0 < sel.memory_bytes < full.memory_bytes < inv.memory_bytes


def test_kernel_count_is_close_to_the_models_dispatched_operators():
    """Counted forward kernels vs non-view aten ops of one real forward (within 25%)."""
    torch = pytest.importorskip("torch")
    from torch.utils._python_dispatch import TorchDispatchMode

    from ecdit_scale.model import build_model, rectified_flow_loss

    views = {"view", "t", "transpose", "unsqueeze", "expand", "_unsafe_view", "detach",
             "reshape", "permute", "slice", "split", "select", "unbind", "squeeze", "alias",
             "as_strided", "chunk"}

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ not in views:
                Count.n += 1
            return func(*args, **(kwargs or {}))

    for name in ("nano-dense", "nano-ec8"):
        cfg = sizes.get(name)
        model = build_model(cfg)
        x = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size)
        c = torch.randn(2, cfg.text_tokens, cfg.text_dim)
        Count.n = 0
        with Count():
            rectified_flow_loss(model, x, c)
        counted = operator_inventory(cfg, images=2).forward_kernels
        assert counted == pytest.approx(Count.n, rel=0.25), (name, counted, Count.n)


# ---------------------------------------------------------------------------------------------
# Device profiles
# ---------------------------------------------------------------------------------------------


def _profile(**over) -> DeviceProfile:
    base = dict(dtype="fp32", gemm_m=(16.0, 256.0), gemm_n=(16.0, 256.0), gemm_k=(16.0, 256.0),
                gemm_flops_per_s=(1e9, 2e9, 2e9, 4e9, 2e9, 4e9, 4e9, 8e9),
                sdpa_flops=(1e3, 1e9), sdpa_forward_flops_per_s=(1e8, 1e10),
                sdpa_backward_flops_per_s=(5e7, 5e9), memory_bw_bytes_per_s=1e10,
                memory_kind_bw={"copy": 1e10, "elementwise": 1e10, "activation": 1e9,
                                "norm": 2e9},
                launch_s=5e-6, launch_mode="serial", optimizer_s_per_byte=1e-10,
                optimizer_s_per_tensor=1e-5, engine_s_per_param_tensor=2e-5)
    base.update(over)
    return DeviceProfile(**base)


def test_gemm_rate_interpolates_in_log_space_and_clamps():
    p = _profile()
    assert p.gemm_rate(16, 16, 16) == pytest.approx(1e9)
    assert p.gemm_rate(256, 256, 256) == pytest.approx(8e9)
    assert p.gemm_rate(64, 16, 16) == pytest.approx(math.sqrt(1e9 * 2e9))  # halfway in log2
    assert p.gemm_rate(1, 1, 1) == pytest.approx(1e9)  # clamped below
    assert p.gemm_rate(1e6, 1e6, 1e6) == pytest.approx(8e9)  # and above
    m = np.array([16, 64, 256])
    assert np.all(np.diff(p.gemm_rate(m, 256, 256)) > 0)
    assert p.sdpa_rate(1e6) == pytest.approx(1e9)  # log-linear between 1e3 and 1e9
    assert p.sdpa_rate(1e6, backward=True) == pytest.approx(5e8)


def test_profile_yaml_round_trip_and_bad_fields():
    p = _profile()
    again = DeviceProfile.from_dict(p.to_dict())
    assert again.to_dict() == p.to_dict()
    with pytest.raises(ConfigError, match="needs 8"):
        DeviceProfile.from_dict({**p.to_dict(), "gemm": {"m": [1, 2], "n": [1, 2], "k": [1, 2],
                                                         "flops_per_s": [1.0]}})
    batched = _profile(bmm_m=(16.0, 256.0), bmm_n=(16.0, 256.0), bmm_k=(16.0, 256.0),
                       bmm_batch=(8.0, 8.0), bmm_flops_per_s=(5e8,) * 8)
    back = DeviceProfile.from_dict(batched.to_dict())
    assert back.to_dict() == batched.to_dict() and back.has_bmm and not p.has_bmm
    assert back.bmm_rate(64, 64, 64) == pytest.approx(5e8)
    assert batched.measured()["batched_gemm"] and not p.measured()["batched_gemm"]
    with pytest.raises(ConfigError, match="bmm.batch has 1 entries; one per m"):
        DeviceProfile.from_dict({"bmm": {**batched.to_dict()["bmm"], "batch": [8]}})
    with pytest.raises(ConfigError, match="bmm.flops_per_s has 1 entries"):
        DeviceProfile.from_dict({"bmm": {**batched.to_dict()["bmm"], "flops_per_s": [1.0]}})
    with pytest.raises(ConfigError, match="launch.mode"):
        DeviceProfile.from_dict({"launch": {"seconds": 1e-6, "mode": "sometimes"}})
    with pytest.raises(ConfigError, match="memory_ops: unknown kind"):
        DeviceProfile.from_dict({"memory_ops": {"magic": 1e9}})
    with pytest.raises(ConfigError, match="unknown field"):
        DeviceProfile.from_dict({"gemms": {}})
    with_engine = _profile(deepspeed_engine_s={0: 1e-5, 1: 2e-6, 2: 3e-5})
    assert DeviceProfile.from_dict(with_engine.to_dict()).to_dict() == with_engine.to_dict()
    assert DeviceProfile.from_dict(with_engine.to_dict()).deepspeed_engine_s == {
        0: 1e-5, 1: 2e-6, 2: 3e-5}
    assert with_engine.measured()["deepspeed_engine"] and not p.measured()["deepspeed_engine"]
    with pytest.raises(ConfigError, match="not a ZeRO stage"):
        DeviceProfile.from_dict({"deepspeed_engine": {"seven": 1e-6}})
    per_param = _profile(deepspeed_engine_s={1: 2e-6}, deepspeed_engine_s_per_param={1: 1e-8})
    back = DeviceProfile.from_dict(per_param.to_dict())
    assert back.deepspeed_engine_s_per_param == {1: 1e-8} and back.to_dict() == per_param.to_dict()
    with pytest.raises(ConfigError, match="deepspeed_engine_per_param: key 'x' is not a ZeRO"):
        DeviceProfile.from_dict({"deepspeed_engine_per_param": {"x": 1e-9}})
    with pytest.raises(ConfigError, match=r"deepspeed_engine_per_param\.1"):
        DeviceProfile.from_dict({"deepspeed_engine_per_param": {1: "fast"}})
    micro = _profile(deepspeed_micro_s={2: 3e-6}, deepspeed_micro_s_per_param={0: 0.0, 2: 5e-9})
    back = DeviceProfile.from_dict(micro.to_dict())
    assert back.deepspeed_micro_s_per_param == {0: 0.0, 2: 5e-9}
    assert back.to_dict() == micro.to_dict()
    with pytest.raises(ConfigError, match="deepspeed_engine_micro: key 'z' is not a ZeRO"):
        DeviceProfile.from_dict({"deepspeed_engine_micro": {"z": 1e-9}})
    by_setting = _profile(deepspeed_engine_s={1: 2e-6}, deepspeed_engine_by_setting={
        "moe": {"deepspeed_engine_s": {1: 3e-5}, "deepspeed_engine_s_per_param": {1: 2e-9}},
        "dp": {"deepspeed_micro_s": {2: 4e-5}}})
    back = DeviceProfile.from_dict(by_setting.to_dict())
    assert back.to_dict() == by_setting.to_dict()
    assert back.deepspeed_engine_by_setting["moe"]["deepspeed_engine_s"] == {1: 3e-5}
    have = back.measured()
    assert have["deepspeed_engine_moe"] and not have["deepspeed_engine_moe-dp"]
    # a setting's own numbers where measured, the dense one-rank engine's elsewhere
    assert back.engine_costs("moe")["deepspeed_engine_s"] == {1: 3e-5}
    assert back.engine_costs("moe-dp")["deepspeed_engine_s"] == {1: 2e-6}
    assert back.engine_costs("")["deepspeed_engine_s"] == {1: 2e-6}
    with pytest.raises(ValueError, match="engine setting 'zero-3'"):
        back.engine_costs("zero-3")
    with pytest.raises(ConfigError, match="setting 'fast'; valid: moe, dp, moe-dp"):
        DeviceProfile.from_dict({"deepspeed_engine_by_setting": {"fast": {}}})
    with pytest.raises(ConfigError, match=r"by_setting\.dp: unknown field\(s\) engine"):
        DeviceProfile.from_dict({"deepspeed_engine_by_setting": {"dp": {"engine": {}}}})
    with pytest.raises(ConfigError, match=r"by_setting\.moe\.deepspeed_engine\.1 = -1"):
        DeviceProfile.from_dict({"deepspeed_engine_by_setting": {
            "moe": {"deepspeed_engine": {1: -1}}}})
    by_opt = _profile(optimizer_elements=(1e4, 1e6), optimizer_kernels="foreach",
                      optimizer_s_per_byte_by={"adamw": (1e-10, 4e-10), "sgd": (4e-11, 4e-11)})
    back = DeviceProfile.from_dict(by_opt.to_dict())
    assert back.to_dict() == by_opt.to_dict() and back.optimizer_kernels == "foreach"
    assert back.optimizer_rate("sgd", 1e5) == pytest.approx(4e-11)
    assert back.optimizer_rate("adamw", 1e5) == pytest.approx(2e-10)  # halfway in log-log
    assert back.optimizer_rate("adamw", 1e9) == pytest.approx(4e-10)  # clamped
    assert back.optimizer_rate("rmsprop", 1e5) == 1e-10  # not measured: AdamW's single rate
    bad = {"s_per_byte": 1e-10, "by_size": {"elements": [1, 2], "adamw": [1e-10]}}
    with pytest.raises(ConfigError, match="adamw has 1 rates for 2 sizes"):
        DeviceProfile.from_dict({"optimizer": bad})
    with pytest.raises(ConfigError, match="by_size: unknown optimizer.*valid: elements, adamw"):
        DeviceProfile.from_dict({"optimizer": {"s_per_byte": 1e-10, "by_size": {
            "elements": [1], "lion": [1e-10]}}})
    with pytest.raises(ConfigError, match="optimizer.kernels = 'magic'"):
        DeviceProfile.from_dict({"optimizer": {"s_per_byte": 1e-10, "kernels": "magic"}})


def _estimate(acc, *, micro_batch=4, zero=1, world=1, name="nano-ec8", grad_accum=1):
    cfg = sizes.get(name)
    layout = ParallelLayout(dp=world, ep=1, tp=1, zero=zero, micro_batch=micro_batch)
    training = TrainingConfig(global_batch=micro_batch * world * grad_accum, optimizer="adamw",
                              precision="fp32")
    return cfg, estimate_layout(cfg, layout, training,
                                ClusterConfig(gpu=acc.name, nodes=1, gpus_per_node=world), acc)


def test_profiled_step_is_the_sum_of_hand_priced_operators():
    import dataclasses

    prof = _profile(gemm_flops_per_s=(2e9,) * 8, sdpa_forward_flops_per_s=(1e9, 1e9),
                    sdpa_backward_flops_per_s=(5e8, 5e8),
                    memory_kind_bw={k: 1e10 for k in ("copy", "elementwise", "activation",
                                                      "norm")})
    acc = dataclasses.replace(get_accelerator("h100-sxm"), profile=prof)
    cfg, est = _estimate(acc)
    inv = operator_inventory(cfg, images=4, dtype_bytes=4, ep=1)  # the trainer's layers
    dx_flops = sum(g.flops for g in inv.gemms if g.input_grad)
    gemm = (inv.gemm_flops + dx_flops + inv.gemm_flops) / 2e9
    attn = inv.attention_flops / 1e9 + 2 * inv.attention_flops / 5e8
    mem = 3 * inv.memory_bytes / 1e10  # forward bytes, and twice them in the backward
    kernels = inv.forward_kernels * (1 + BACKWARD_KERNELS_PER_FORWARD)
    st = est.step
    assert st.gemm_s == pytest.approx(gemm)
    assert st.attention_s == pytest.approx(attn)
    assert st.memory_bound_s == pytest.approx(mem)
    assert st.kernels == pytest.approx(kernels)
    assert st.launch_s == pytest.approx(kernels * 5e-6)  # serial: the host pays every launch
    # per tensor of the trainer's model: 4 per local expert (ep 1: all 8) in each MoE layer
    tensors = param_tensor_count(cfg) + cfg.num_moe_layers * 4 * (cfg.ffn.num_experts - 1)
    assert st.engine_s == pytest.approx(2e-5 * tensors)
    assert st.forward_s + st.backward_s + st.recompute_s == pytest.approx(gemm + attn + mem)
    assert st.total_s == pytest.approx(st.compute_s + st.launch_s + st.engine_s
                                       + st.optimizer_s + st.exposed_comm_s)


HOST = {"dense": {"none": 7e-6, "selective": 3e-5, "full": 2e-5},
        "expert-choice": {"none": 9e-6, "selective": 4e-5, "full": 2.5e-5}}


def test_the_models_host_cost_per_kernel_round_trips_and_refuses_bad_entries():
    from ecdit_scale.planner.device_profile import RECOMPUTE_POLICIES
    from ecdit_scale.planner.memory import RECOMPUTE_ORDER

    assert RECOMPUTE_POLICIES == tuple(r.value for r in RECOMPUTE_ORDER)  # codes index both
    p = _profile(host_s_per_kernel=HOST)
    back = DeviceProfile.from_dict(p.to_dict())
    assert back.host_s_per_kernel == HOST and back.to_dict() == p.to_dict()
    assert p.measured()["host"] and not _profile().measured()["host"]
    with pytest.raises(ConfigError, match="host: unknown FFN kind 'moe'; valid: dense"):
        DeviceProfile.from_dict({"host": {"moe": {"none": 1e-6}}})
    with pytest.raises(ConfigError, match="host.dense: unknown recompute policy half"):
        DeviceProfile.from_dict({"host": {"dense": {"half": 1e-6}}})
    with pytest.raises(ConfigError, match=r"host\.dense\.full = -1"):
        DeviceProfile.from_dict({"host": {"dense": {"full": -1}}})


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_the_host_pays_the_models_own_cost_per_kernel_at_the_layouts_recompute(recompute):
    import dataclasses

    from ecdit_scale.config import Recompute

    h100 = get_accelerator("h100-sxm")
    cfg = sizes.get("nano-ec8")
    layout = ParallelLayout(dp=1, ep=1, tp=1, zero=1, micro_batch=4,
                            recompute=Recompute(recompute))
    training = TrainingConfig(global_batch=4, optimizer="adamw", precision="fp32")
    cluster = ClusterConfig(gpu="h100-sxm", nodes=1, gpus_per_node=1)

    def step(prof):
        return estimate_layout(cfg, layout, training, cluster,
                               dataclasses.replace(h100, profile=prof)).step

    timed, untimed = step(_profile(host_s_per_kernel=HOST)), step(_profile())
    assert timed.kernels == untimed.kernels
    assert timed.launch_s == pytest.approx(timed.kernels * HOST["expert-choice"][recompute])
    assert untimed.launch_s == pytest.approx(untimed.kernels * 5e-6)  # the launch probe's
    # a model of a kind the probe did not time: the launch probe's
    other = {"dense": HOST["dense"]}
    assert step(_profile(host_s_per_kernel=other)).launch_s == pytest.approx(untimed.launch_s)
    assert timed.total_s - untimed.total_s == pytest.approx(timed.launch_s - untimed.launch_s)


TRAINER = {1: 2e-6, 2: 1.5e-5}


def test_the_trainers_cost_per_kernel_round_trips_and_refuses_bad_entries():
    p = _profile(trainer_s_per_kernel=TRAINER)
    back = DeviceProfile.from_dict(p.to_dict())
    assert back.trainer_s_per_kernel == TRAINER and back.to_dict() == p.to_dict()
    assert p.measured()["trainer"] and not _profile().measured()["trainer"]
    with pytest.raises(ConfigError, match="trainer_s_per_kernel: key 'two' is not a number of"):
        DeviceProfile.from_dict({"trainer_s_per_kernel": {"two": 1e-6}})
    with pytest.raises(ConfigError, match="trainer_s_per_kernel: key 0 is not a number of"):
        DeviceProfile.from_dict({"trainer_s_per_kernel": {0: 1e-6}})
    with pytest.raises(ConfigError, match=r"trainer_s_per_kernel\.2 = -1"):
        DeviceProfile.from_dict({"trainer_s_per_kernel": {2: -1}})


def test_the_trainers_cost_is_the_largest_measured_rank_count_not_above_the_layouts():
    p = _profile(trainer_s_per_kernel=TRAINER)
    assert p.trainer_host_s(1) == pytest.approx(2e-6)
    assert list(p.trainer_host_s(np.array([1, 2, 3, 512]))) == pytest.approx(
        [2e-6, 1.5e-5, 1.5e-5, 1.5e-5])
    assert _profile(trainer_s_per_kernel={2: 1e-5}).trainer_host_s(1) == pytest.approx(1e-5)
    assert _profile().trainer_host_s(np.array([1, 8])).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("world", [1, 2])
def test_the_step_pays_the_trainers_cost_on_every_counted_kernel_at_its_rank_count(world):
    import dataclasses

    h100 = get_accelerator("h100-sxm")
    cfg = sizes.get("nano-ec8")
    layout = ParallelLayout(dp=world, ep=world, tp=1, zero=1, micro_batch=4)
    training = TrainingConfig(global_batch=4 * world, optimizer="adamw", precision="fp32")
    cluster = ClusterConfig(gpu="h100-sxm", nodes=1, gpus_per_node=world)

    def step(prof):
        return estimate_layout(cfg, layout, training, cluster,
                               dataclasses.replace(h100, profile=prof)).step

    charged = step(_profile(host_s_per_kernel=HOST, trainer_s_per_kernel=TRAINER))
    plain = step(_profile(host_s_per_kernel=HOST))
    assert charged.kernels == plain.kernels
    assert charged.launch_s - plain.launch_s == pytest.approx(charged.kernels * TRAINER[world])
    assert charged.total_s - plain.total_s == pytest.approx(charged.kernels * TRAINER[world])


def test_the_trainer_probe_keeps_the_launchs_step_over_its_price_per_kernel(monkeypatch, tmp_path):
    from ecdit_scale.evaluation import trainer_probe
    from ecdit_scale.evaluation.host_probe import PROBE_SIZE

    args = trainer_probe.launch_args(2, tmp_path / "r")
    assert args[:2] == ["launch", "nano-ec8"] and args[args.index("--ep") + 1] == "2"
    assert args[args.index("--device") + 1] == "cpu"
    three = trainer_probe.launch_args(3, tmp_path / "r")  # 3 does not divide its 8 experts
    assert three[three.index("--ep") + 1] == "1" and three[three.index("--nproc") + 1] == "3"
    assert args[args.index("--override") + 1] == ",".join(f"{k}={v}"
                                                           for k, v in PROBE_SIZE.items())
    assert trainer_probe.rank_counts(1) == [1] and trainer_probe.rank_counts(4) == [1, 4]

    class Row:
        step_s_measured = 0.030

    class Step:
        total_s, kernels = 0.021, 600.0

    monkeypatch.setattr("ecdit_scale.evaluation.rows.row_from_run", lambda _: Row())
    monkeypatch.setattr("ecdit_scale.evaluation.predict.profile_prediction",
                        lambda row, acc: Step())
    got = trainer_probe.residual(tmp_path, None)
    assert got["s_per_kernel"] == pytest.approx(0.009 / 600)
    Step.total_s = 0.040  # priced above the measurement: nothing to add
    assert trainer_probe.residual(tmp_path, None)["s_per_kernel"] == 0.0


def test_a_failed_trainer_probe_loses_only_its_own_term(monkeypatch):
    import dataclasses

    from ecdit_scale.evaluation import trainer_probe

    def fail(ranks, out, device):
        raise ConfigError(f"the trainer probe's launch on {ranks} rank(s) failed (exit 1): boom")

    monkeypatch.setattr(trainer_probe, "launch", fail)
    acc = dataclasses.replace(get_accelerator("h100-sxm"), profile=_profile())
    said = []
    values, record = trainer_probe.trainer_term(2, acc, said.append)
    assert values == {} and "exit 1): boom" in record["trainer_probe"]["failed"]
    assert said[-1].startswith("the trainer probe failed, its term is not charged")
    with pytest.raises(ValueError, match="without its term"):  # never priced by itself
        trainer_probe.measure_trainer(2, dataclasses.replace(
            acc, profile=_profile(trainer_s_per_kernel=TRAINER)))


def test_the_trainer_probe_keeps_the_median_of_interleaved_launches(monkeypatch):
    import dataclasses

    from ecdit_scale.evaluation import trainer_probe

    order = []
    measured = iter([0.030, 0.050, 0.024, 0.070, 0.027, 0.040])  # 1, 2, 1, 2, 1, 2 ranks

    def launch(ranks, out, device):
        order.append(ranks)
        return out

    def residual(run, acc):
        m = next(measured)
        return {"measured_s": m, "predicted_s": 0.021, "kernels": 600.0,
                "s_per_kernel": max(0.0, m - 0.021) / 600}

    monkeypatch.setattr(trainer_probe, "launch", launch)
    monkeypatch.setattr(trainer_probe, "residual", residual)
    acc = dataclasses.replace(get_accelerator("h100-sxm"), profile=_profile())
    values, record = trainer_probe.measure_trainer(2, acc)
    assert order == [1, 2, 1, 2, 1, 2]  # interleaved, so both rank counts span the same minute
    assert values[1] == pytest.approx((0.027 - 0.021) / 600)  # the median of 30, 24, 27 ms
    assert values[2] == pytest.approx((0.050 - 0.021) / 600)  # of 50, 70, 40 ms
    launches = record["trainer_probe"]["launches"]
    assert record["trainer_probe"]["repeats"] == 3
    # the record reads as one launch's (bench/rederive_trainer.py), each launch kept in order
    assert launches["2"]["measured_s"] == 0.050 and launches["2"]["kernels"] == 600.0
    assert [x["measured_s"] for x in launches["1"]["each"]] == [0.030, 0.024, 0.027]
    # the first launch of each rank count is the one launch the probe made before
    first = {r: launches[r]["each"][0]["s_per_kernel"] for r in launches}
    assert first["1"] == pytest.approx((0.030 - 0.021) / 600)
    even = trainer_probe.median_record(launches["1"]["each"][:2])
    assert even["measured_s"] == pytest.approx(0.027)
    order.clear()  # profile --trainer-launches 1 (the GPU session's): one of each, as before
    measured = iter([0.030, 0.050])
    values, record = trainer_probe.trainer_term(2, acc, device="cpu", repeats=1)
    assert order == [1, 2] and record["trainer_probe"]["repeats"] == 1
    assert values[2] == pytest.approx((0.050 - 0.021) / 600)


def test_host_probe_subtracts_what_is_priced_apart():
    from ecdit_scale.evaluation.host_probe import host_seconds_per_kernel

    assert host_seconds_per_kernel(0.010, 0.004, 600) == pytest.approx(1e-5)
    assert host_seconds_per_kernel(0.003, 0.004, 600) == 0.0  # priced above the measurement
    with pytest.raises(ValueError, match="kernels = 0"):
        host_seconds_per_kernel(0.01, 0.0, 0)


@pytest.mark.parametrize("ep", [1, 2, 4])
def test_the_experts_run_as_one_batched_matmul_of_e_over_ep_problems(ep):
    cfg = sizes.get("micro-ec16")
    inv = operator_inventory(cfg, images=4, dtype_bytes=4, ep=ep)
    model = operator_inventory(cfg, images=4, dtype_bytes=4)  # build_model's experts: ep None
    tok = 4 * cfg.tokens_per_image
    per_expert = cfg.expert_capacity * tok / cfg.routing_group_tokens
    e = cfg.ffn.num_experts
    for name in ("expert_fc1", "expert_fc2"):
        g = next(x for x in inv.gemms if x.name == name)
        assert (g.batch, g.m) == (e / ep, ep * per_expert)  # each expert: its group's rows
        assert g.flops == next(x for x in model.gemms if x.name == name).flops
    assert inv.gemm_flops == model.gemm_flops


def _expert_gemm_seconds(prof, ep: int, *, backward: bool = False) -> float:
    import dataclasses

    from ecdit_scale.planner.compute import price

    cfg = sizes.get("micro-ec16")
    inv = operator_inventory(cfg, images=2, dtype_bytes=4, ep=ep)
    experts = dataclasses.replace(inv, gemms=tuple(g for g in inv.gemms
                                                   if g.name.startswith("expert_")),
                                  attention=(), memory_ops=())
    acc = dataclasses.replace(get_accelerator("h100-sxm"), profile=prof)
    return price(experts, acc, backward=backward, precision="fp32").gemm_s


def test_the_experts_batched_matmuls_are_priced_at_one_experts_shape_where_bmm_was_measured():
    # GEMM and bmm grids whose rate rises with every dimension (x2 per axis step of 16x)
    rising = tuple(1e9 * 2 ** (i + j + k) for i in range(2) for j in range(2) for k in range(2))
    axes = dict(bmm_m=(16.0, 256.0), bmm_n=(16.0, 256.0), bmm_k=(16.0, 256.0),
                bmm_batch=(8.0, 8.0))
    plain = _profile(gemm_flops_per_s=rising)
    batched = _profile(gemm_flops_per_s=rising, bmm_flops_per_s=rising, **axes)
    cfg = sizes.get("micro-ec16")
    rows = cfg.expert_capacity * 2 * cfg.tokens_per_image / cfg.routing_group_tokens  # 16
    e, d, h = cfg.ffn.num_experts, cfg.hidden_size, cfg.mlp_hidden
    flops = 2.0 * e * rows * d * h * cfg.num_moe_layers  # per weight, all experts
    for ep in (1, 2):
        m = ep * rows  # one problem's rows: what its expert gathered from the ep group
        want = flops / batched.bmm_rate(m, h, d) + flops / batched.bmm_rate(m, d, h)
        assert _expert_gemm_seconds(batched, ep) == pytest.approx(want)
        # without a bmm measurement: one GEMM of all E x rows, whatever ep
        whole = flops / plain.gemm_rate(e * rows, h, d) + flops / plain.gemm_rate(e * rows, d, h)
        assert _expert_gemm_seconds(plain, ep) == pytest.approx(whole)
    # the backward's dW contracts over each expert's rows: bmm at K = rows, not all of them
    dw1 = flops / batched.bmm_rate(d, h, rows)
    dx1 = flops / batched.bmm_rate(rows, d, h)
    dw2 = flops / batched.bmm_rate(h, d, rows)
    dx2 = flops / batched.bmm_rate(rows, h, d)
    assert _expert_gemm_seconds(batched, 1, backward=True) == pytest.approx(dw1 + dx1 + dw2 + dx2)
    # small problems are slower per FLOP on this grid, so ep 2's larger ones price faster
    assert _expert_gemm_seconds(batched, 2) < _expert_gemm_seconds(batched, 1)
    assert _expert_gemm_seconds(plain, 2) == pytest.approx(_expert_gemm_seconds(plain, 1))


def test_an_fp32_expert_bmm_on_cuda_cores_is_no_faster_than_the_same_bmm_in_bf16():
    """fp32 on a GPU's vector units reads the SGEMM curve at all of a batched GEMM's rows, but
    is capped at what bf16 would take: the measured bmm rate at one problem's rows where the
    profile has one (not the faster one-GEMM-of-all-rows rate)."""
    import dataclasses

    from ecdit_scale.planner.compute import price

    rising = tuple(1e9 * 2 ** (i + j + k) for i in range(2) for j in range(2) for k in range(2))
    axes = dict(bmm_m=(16.0, 256.0), bmm_n=(16.0, 256.0), bmm_k=(16.0, 256.0),
                bmm_batch=(8.0, 8.0))
    # a tensor-core (bf16) profile whose rates are far below any SGEMM rate, so the cap binds;
    # bytes at a bandwidth that makes no roofline floor bind
    fast = {"memory_bw_bytes_per_s": 1e14}
    bmm = _profile(dtype="bf16", gemm_flops_per_s=rising, bmm_flops_per_s=rising, **axes, **fast)
    plain = _profile(dtype="bf16", gemm_flops_per_s=rising, **fast)
    cfg = sizes.get("micro-ec16")
    inv = operator_inventory(cfg, images=2, dtype_bytes=2, ep=1)
    experts = dataclasses.replace(inv, gemms=tuple(g for g in inv.gemms
                                                   if g.name.startswith("expert_")),
                                  attention=(), memory_ops=())
    a100 = get_accelerator("a100-80gb")
    assert a100.fp32_gemm == "vector"
    for prof in (bmm, plain):
        acc = dataclasses.replace(a100, profile=prof)
        for backward in (False, True):
            fp32 = price(experts, acc, backward=backward, precision="fp32").gemm_s
            bf16 = price(experts, acc, backward=backward, precision="bf16").gemm_s
            assert fp32 == pytest.approx(bf16)
    # and the batched bf16 time is the slower one on this grid (one problem's rows)
    acc_b, acc_p = (dataclasses.replace(a100, profile=p) for p in (bmm, plain))
    assert (price(experts, acc_b, backward=False, precision="fp32").gemm_s
            > price(experts, acc_p, backward=False, precision="fp32").gemm_s)


def test_a_gemm_takes_no_less_than_its_bytes_at_the_copy_bandwidth():
    """Below the grid's smallest M the rate is clamped at that M's; a one-row GEMM (the adaLN
    modulation at micro-batch 1) streams its weights whatever its FLOPs: the roofline floor."""
    import dataclasses

    from ecdit_scale.planner.compute import price
    from ecdit_scale.planner.operators import Gemm, OperatorInventory

    prof = _profile(memory_bw_bytes_per_s=1e9)  # grid from M = 16, rates 1-8 GFLOP/s
    acc = dataclasses.replace(get_accelerator("h100-sxm"), profile=prof)

    def seconds(m, n, k, backward=False):
        inv = OperatorInventory(images=1, tp=1, gemms=(Gemm("g", m, n, k),), attention=(),
                                memory_ops=(), param_tensors=0)
        return price(inv, acc, backward=backward, precision="fp32").gemm_s

    weights = 4096 * 4096 * 4.0
    one_row = (weights + 2 * 4096 * 4.0) / 1e9  # 67 ms, against 8.4 ms of FLOPs at 4 GFLOP/s
    assert seconds(1, 4096, 4096) == pytest.approx(one_row)
    assert 2 * 4096 * 4096 / prof.gemm_rate(1, 4096, 4096)[()] < one_row / 5
    assert seconds(1, 4096, 4096, backward=True) == pytest.approx(2 * one_row)  # dX and dW
    # a large GEMM is priced by its rate: its bytes take 0.8 ms of its 4.2 ms
    assert seconds(256, 256, 256) == pytest.approx(2 * 256**3 / 8e9)


def test_flash_attention_pads_the_head_dim_to_its_kernel_sizes_on_a_gpu_only():
    import dataclasses

    from ecdit_scale.planner.compute import flash_head_dim, price
    from ecdit_scale.planner.run_setup import RunSetup

    assert [flash_head_dim(h) for h in (16, 32, 33, 64, 72, 96, 100, 256, 300)] == [
        32, 32, 64, 64, 96, 96, 128, 256, 300]
    cfg = sizes.get("dit-xl-2")  # 16 heads of 72
    assert cfg.head_dim == 72
    inv = operator_inventory(cfg, images=8, dtype_bytes=2)

    def attention_s(prof, kernel, precision="bf16"):
        acc = dataclasses.replace(get_accelerator("h100-sxm"), profile=prof,
                                  setup=RunSetup(attention=kernel))
        return price(inv, acc, backward=False, precision=precision).attention_s

    flat = dict(sdpa_forward_flops_per_s=(1e9, 1e9), sdpa_backward_flops_per_s=(1e9, 1e9))
    gpu = _profile(launch_mode="async", sdpa_head_dim=64.0, **flat)
    cpu = _profile(launch_mode="serial", sdpa_head_dim=64.0, **flat)
    # the 96 kernel computes a third more than the FLOPs counted at 72
    assert attention_s(gpu, "flash") == pytest.approx(attention_s(gpu, "mem-efficient") * 96 / 72)
    assert attention_s(cpu, "flash") == pytest.approx(attention_s(cpu, "mem-efficient"))
    assert attention_s(gpu, "flash", "fp32") == pytest.approx(attention_s(gpu, "mem-efficient",
                                                                          "fp32"))
    # a profile timed at a padded head dim already paid for its own padding
    at_48 = _profile(launch_mode="async", sdpa_head_dim=48.0, **flat)
    assert attention_s(at_48, "flash") == pytest.approx(
        attention_s(at_48, "mem-efficient") * (96 / 72) / (64 / 48))
    # the head dim round-trips, and a profile without its key reads its recorded settings
    assert DeviceProfile.from_dict(gpu.to_dict()).sdpa_head_dim == 64.0
    old = gpu.to_dict()
    del old["sdpa"]["head_dim"]
    assert DeviceProfile.from_dict(old).sdpa_head_dim is None
    old["provenance"] = {"settings": {"head_dim": 128}}
    assert DeviceProfile.from_dict(old).sdpa_head_dim == 128.0


def test_optimizer_term_is_priced_at_the_runs_optimizers_rate_for_its_tensor_size():
    """The step's optimizer bytes (``optimizer_bytes``) at the rate the profile measured for
    the run's optimizer, at the size of the tensors it steps: ZeRO-0 every parameter tensor,
    ZeRO-1/2 one flat partition per param group."""
    import dataclasses

    from ecdit_scale.planner.operators import param_tensor_count
    from ecdit_scale.planner.step_time import OPTIMIZER_FLAT_GROUPS, fp32_optimizer_bytes_per_param

    assert fp32_optimizer_bytes_per_param("adamw") == 24  # states 2 x 8, weights 2 x 4
    assert fp32_optimizer_bytes_per_param("sgd") == 16
    h100 = get_accelerator("h100-sxm")
    curves = {"adamw": (1e-10, 4e-10), "rmsprop": (2e-10, 8e-10), "sgd": (5e-11, 2e-10)}
    prof = _profile(optimizer_s_per_tensor=0.0, optimizer_elements=(1e3, 1e6),
                    optimizer_s_per_byte_by=curves)
    acc = dataclasses.replace(h100, profile=prof)
    cfg = sizes.get("nano-dense")
    for zero in (0, 1):
        layout = ParallelLayout(dp=1, ep=1, tp=1, zero=zero, micro_batch=4)
        for name in curves:
            training = TrainingConfig(global_batch=4, optimizer=name, precision="fp32",
                                      ema="none")
            est = estimate_layout(cfg, layout, training,
                                  ClusterConfig(gpu=acc.name, nodes=1, gpus_per_node=1), acc)
            params = est.memory.params / 4  # fp32 weights, one rank
            rate = prof.optimizer_rate(name, params)  # a dense model: one param group
            assert est.step.optimizer_s == pytest.approx(
                fp32_optimizer_bytes_per_param(name) * params * rate), (zero, name)
            assert curves[name][0] < rate < curves[name][1]
    # ZeRO-0 pays per tensor stepped, ZeRO-1/2 per flat partition
    per_tensor = dataclasses.replace(acc, profile=dataclasses.replace(
        prof, optimizer_s_per_tensor=1e-3))
    training = TrainingConfig(global_batch=4, optimizer="adamw", precision="fp32", ema="none")
    extra = []
    for zero in (0, 1):
        layout = ParallelLayout(dp=1, ep=1, tp=1, zero=zero, micro_batch=4)
        a, b = (estimate_layout(cfg, layout, training, ClusterConfig(
            gpu=acc.name, nodes=1, gpus_per_node=1), x).step.optimizer_s
            for x in (per_tensor, acc))
        extra.append(a - b)
    assert extra == pytest.approx([1e-3 * param_tensor_count(cfg), 1e-3 * OPTIMIZER_FLAT_GROUPS])


def test_deepspeed_engine_term_prices_the_layouts_zero_stage():
    """What DeepSpeed adds per parameter tensor and step, at the layout's stage only."""
    import dataclasses

    h100 = get_accelerator("h100-sxm")
    plain = dataclasses.replace(h100, profile=_profile())
    eng = dataclasses.replace(h100, profile=_profile(deepspeed_engine_s={1: 1e-4, 2: 0.0}))
    cfg, a = _estimate(plain, zero=1)
    _, b = _estimate(eng, zero=1)
    _, c = _estimate(eng, zero=2)
    _, d = _estimate(eng, zero=0)  # not measured at ZeRO-0: no term
    tensors = trainer_param_tensors(cfg, 1)
    assert b.step.engine_s - a.step.engine_s == pytest.approx(1e-4 * tensors)
    assert b.step.total_s - a.step.total_s == pytest.approx(1e-4 * tensors)
    assert c.step.engine_s == pytest.approx(a.step.engine_s)
    assert d.step.engine_s == pytest.approx(a.step.engine_s)
    # per parameter the device holds: here all of them (one rank, fp32)
    passes = dataclasses.replace(h100, profile=_profile(deepspeed_engine_s_per_param={1: 1e-9}))
    _, e = _estimate(passes, zero=1)
    _, f = _estimate(passes, zero=2)
    assert e.step.engine_s - a.step.engine_s == pytest.approx(1e-9 * count_params(cfg).model_params)
    assert f.step.engine_s == pytest.approx(a.step.engine_s)


def test_deepspeed_engine_term_prices_the_settings_the_run_gets():
    """An MoE model and a data-parallel run get other ZeRO settings than a dense model on one
    rank (contiguous gradients, overlap_comm): each is priced by its own measured numbers,
    and by the dense one-rank engine's where its setting was not measured."""
    import dataclasses

    h100 = get_accelerator("h100-sxm")
    settings = {"moe": 1e-4, "dp": 2e-4, "moe-dp": 3e-4}
    eng = dataclasses.replace(h100, profile=_profile(
        deepspeed_engine_s={1: 1e-5}, deepspeed_engine_by_setting={
            k: {"deepspeed_engine_s": {1: v}} for k, v in settings.items()}))
    base = dataclasses.replace(h100, profile=_profile())
    for name, world, per_tensor in (("nano-dense", 1, 1e-5), ("nano-ec8", 1, 1e-4),
                                    ("nano-dense", 2, 2e-4), ("nano-ec8", 2, 3e-4)):
        cfg, a = _estimate(base, zero=1, world=world, name=name)
        _, b = _estimate(eng, zero=1, world=world, name=name)
        assert b.step.engine_s - a.step.engine_s == pytest.approx(
            per_tensor * trainer_param_tensors(cfg, 1)), (name, world)
    # the MoE setting measured at ZeRO-1 only: ZeRO-2 falls back to the dense one-rank engine
    partial = dataclasses.replace(h100, profile=_profile(
        deepspeed_engine_s={1: 1e-5, 2: 5e-5},
        deepspeed_engine_by_setting={"moe": {"deepspeed_engine_s": {1: 1e-4}}}))
    cfg, a = _estimate(base, zero=2)
    _, b = _estimate(partial, zero=2)
    assert b.step.engine_s - a.step.engine_s == pytest.approx(5e-5 * trainer_param_tensors(cfg, 1))


def test_engine_work_per_micro_step_is_priced_once_per_further_micro_step():
    """ZeRO-2's hooks run in every backward: an accumulating step pays the probe's per-micro
    part (ga - 1) times more, at the layout's stage only; a step of one micro-step pays none."""
    import dataclasses

    h100 = get_accelerator("h100-sxm")
    plain = dataclasses.replace(h100, profile=_profile())
    micro = dataclasses.replace(h100, profile=_profile(deepspeed_micro_s={2: 1e-4},
                                                       deepspeed_micro_s_per_param={2: 1e-9}))
    cfg = sizes.get("mini-dense")
    tensors, params = param_tensor_count(cfg), count_params(cfg).model_params
    for ga in (1, 2, 4):
        _, a = _estimate(plain, zero=2, grad_accum=ga, name="mini-dense")
        _, b = _estimate(micro, zero=2, grad_accum=ga, name="mini-dense")
        _, c = _estimate(micro, zero=1, grad_accum=ga, name="mini-dense")
        assert b.step.engine_s - a.step.engine_s == pytest.approx(
            (ga - 1) * (1e-4 * tensors + 1e-9 * params))
        assert c.step.engine_s == pytest.approx(
            _estimate(plain, zero=1, grad_accum=ga, name="mini-dense")[1].step.engine_s)


def test_engine_cost_splits_into_per_tensor_and_per_parameter_parts():
    from ecdit_scale.evaluation.engine_probe import split_engine_cost

    small = {"tensors": 256, "params": 135_168, "plain_step_s": 0.01}
    large = {"tensors": 8, "params": 16_785_408, "plain_step_s": 0.1}
    a, b = 2e-6, 1e-8  # seconds per tensor, per parameter
    for toy in (small, large):
        toy["engine_step_s"] = toy["plain_step_s"] + toy["tensors"] * a + toy["params"] * b
    assert split_engine_cost(small, large) == pytest.approx((a, b))
    # noise that makes one part negative leaves it at 0 and the other carries the excess
    quiet = {**small, "engine_step_s": small["plain_step_s"]}
    assert split_engine_cost(quiet, large)[0] == 0.0 and split_engine_cost(quiet, large)[1] > 0
    with pytest.raises(ValueError, match="more parameters per tensor"):
        split_engine_cost(large, small)


def test_engine_probe_measures_the_trainers_engine_against_plain_torch():
    """One ZeRO stage of ``evaluation.engine_probe`` in its own process, as profile runs it."""
    from ecdit_scale.evaluation.engine_probe import probe

    # ZeRO-0: the cheapest stage (its data-parallel settings are its one-rank ones; which
    # settings measure what is tested apart, in test_engine_settings_...)
    got = probe("cpu", quick=True, stages=(0,))
    assert set(got) == {0}
    # the model's own code's four (dense, one rank), each other setting's, the toy's (the record)
    assert set(got[0]) == {"", "moe", "dp", "moe-dp", "toy"}
    assert all(len(v) == 4 for v in got[0].values())
    per_tensor, per_param, micro_tensor, micro_param = got[0][""]
    assert 0.0 <= per_tensor < 1e-2 and 0.0 <= per_param < 1e-6
    assert 0.0 <= micro_tensor < 1e-2 and 0.0 <= micro_param < 1e-6
    assert all(0.0 <= v < 1e-2 for k, four in got[0].items() if k for v in four)
    assert got[0]["dp"] == got[0][""] and got[0]["moe-dp"] == got[0]["moe"]


def test_engine_probe_times_the_data_parallel_settings_on_two_ranks():
    """``engine_probe.measure_ranks`` as profile --nproc 2 runs it: a 2-rank engine per
    setting, its steps timed less their collectives (which ZeRO-0 issues too: DeepSpeed
    all-reduces the gradients), plain torch beside it."""
    from ecdit_scale.evaluation.engine_probe import DP_SETTINGS, measure_ranks

    got = measure_ranks("cpu", 0, True, 2, timeout_s=150)
    assert got is not None and got["world"] == 2 and set(got["settings"]) == set(DP_SETTINGS)
    assert all(len(v) == 4 and all(0.0 <= x < 1e-2 for x in v)
               for v in got["settings"].values())
    # each model and setting: one and two micro-steps; the large toy once for both settings
    assert sorted((r["setting"], r["ga"], r["params"] > 10**6) for r in got["runs"]) == sorted(
        [(s, ga, False) for s in DP_SETTINGS for ga in (1, 2)]
        + [("dp", 1, True), ("dp", 2, True)])
    large = [r for r in got["runs"] if r["params"] > 10**6]
    # the large toy's gradients (MBs) cross gloo every step: time the engine step excludes
    assert all(r["collectives_s"] > 0 for r in large)
    assert all(r["engine_step_s"] > 0 and r["plain_step_s"] > 0 for r in got["runs"])


def test_engine_settings_time_each_model_and_zero_section_once():
    """Each setting is solved from its own small model against the large toy under its own
    ZeRO section; the toy is timed once per section (MoE: contiguous gradients; data-parallel:
    contiguous gradients and overlap_comm), and at ZeRO-0 (no section) not again."""
    from ecdit_scale.evaluation.engine_probe import measure_settings, split_engine_cost

    def run(tensors, params, extra, ga):
        plain = 0.01 * ga
        return {"tensors": tensors, "params": params, "plain_step_s": plain,
                "engine_step_s": plain + extra * ga}

    per_tensor = {"moe": 3e-5, "dp": 5e-5, "moe-dp": 4e-5}
    calls: list[tuple[str, int, str]] = []

    def small(ga, setting):
        calls.append(("small", ga, setting))
        return run(200, 10_000, 200 * per_tensor[setting] + 10_000 * 2e-9, ga)

    def large(ga, setting):
        calls.append(("large", ga, setting))
        return run(8, 16_000_000, 16_000_000 * 2e-9, ga)  # the same under either section

    base_large = (run(8, 16_000_000, 0.02, 1), run(8, 16_000_000, 0.02, 2))
    got = measure_settings(1, [1e-5, 1e-9, 0.0, 0.0], base_large, small, large)
    assert set(got) == {"moe", "dp", "moe-dp"}
    for setting, four in got.items():
        assert four[0] == pytest.approx(per_tensor[setting], rel=1e-3)
        assert four[1] == pytest.approx(2e-9, rel=2e-2)
        # each further micro-step costs what the first did (the fakes scale with ga)
        assert four[2:] == pytest.approx(four[:2], rel=1e-6)
    assert sorted(c for c in calls if c[0] == "large") == [
        ("large", 1, "dp"), ("large", 1, "moe"), ("large", 2, "dp"), ("large", 2, "moe")]
    assert {c[2] for c in calls if c[0] == "small"} == {"moe", "dp", "moe-dp"}
    calls.clear()
    zero0 = measure_settings(0, [1e-5, 1e-9, 2e-6, 0.0], base_large, small, large)
    assert not [c for c in calls if c[0] == "large"]
    assert {c[2] for c in calls} == {"moe"}
    assert zero0["dp"] == [1e-5, 1e-9, 2e-6, 0.0] and zero0["moe-dp"] == zero0["moe"]
    assert zero0["moe"][:2] == pytest.approx(list(split_engine_cost(
        small(1, "moe"), base_large[0])))
    # on several ranks (no world-1 base): the data-parallel settings only, ZeRO-0 included
    # (it reduces the gradients there), the toy once per ZeRO section
    for zero in (0, 1):
        calls.clear()
        ranks = measure_settings(zero, None, None, small, large, settings=("dp", "moe-dp"))
        assert set(ranks) == {"dp", "moe-dp"}
        assert ranks["dp"][0] == pytest.approx(per_tensor["dp"], rel=1e-3)
        assert sorted(c for c in calls if c[0] == "large") == [("large", 1, "dp"),
                                                               ("large", 2, "dp")]


def test_a_further_micro_step_is_the_difference_of_two_steps():
    from ecdit_scale.evaluation.engine_probe import further_micro_step, split_engine_cost

    a, b, m_a, m_b = 2e-6, 1e-8, 1e-6, 5e-9  # per step, and per further micro-step
    toys = {"small": {"tensors": 256, "params": 135_168, "plain": 0.01},
            "large": {"tensors": 8, "params": 16_785_408, "plain": 0.1}}
    one, two = {}, {}
    for name, t in toys.items():
        base = {"tensors": t["tensors"], "params": t["params"]}
        one[name] = {**base, "plain_step_s": t["plain"],
                     "engine_step_s": t["plain"] + t["tensors"] * a + t["params"] * b}
        two[name] = {**base, "plain_step_s": 2 * t["plain"],
                     "engine_step_s": one[name]["engine_step_s"] + t["plain"]
                     + t["tensors"] * m_a + t["params"] * m_b}
    assert split_engine_cost(*(further_micro_step(two[n], one[n]) for n in toys)) == \
        pytest.approx((m_a, m_b))


def test_async_launch_floor_only_where_the_host_falls_behind():
    import dataclasses

    h100 = get_accelerator("h100-sxm")
    fast = dataclasses.replace(h100, profile=_profile(launch_mode="async", launch_s=1e-9))
    slow = dataclasses.replace(h100, profile=_profile(launch_mode="async", launch_s=1e-2))
    _, a = _estimate(fast)
    _, b = _estimate(slow)
    assert a.step.launch_s == 0.0
    assert b.step.compute_s + b.step.launch_s == pytest.approx(b.step.kernels * 1e-2)


def test_a_catalog_device_is_priced_from_a_profile_derived_from_the_h200_and_says_so():
    from ecdit_scale.planner.compute import term_sources

    h100, h200 = get_accelerator("h100-sxm"), get_accelerator("h200")
    assert h100.profile.provenance["derived_from"].startswith("h200 profile")
    assert "derived" in term_sources(h100)["compute"]
    assert set(h100.number_sources()[k] for k in ("profile.gemm", "profile.attention")) == {
        "derived"}
    # same die: the GEMM grid carries over at ratio 1; a100: x 312 / 989.4
    assert h100.profile.gemm_flops_per_s == pytest.approx(h200.profile.gemm_flops_per_s)
    a100 = get_accelerator("a100-80gb")
    assert a100.profile.gemm_flops_per_s[-1] == pytest.approx(
        h200.profile.gemm_flops_per_s[-1] * 312 / 989.4)
    assert a100.profile.memory_bw_bytes_per_s == pytest.approx(
        h200.profile.memory_bw_bytes_per_s * 2.039 / 4.8)
    _, est = _estimate(h100)
    assert est.step.kernels > 0 and est.step.gemm_s > 0  # by operator class, no flat 45%


def test_a_derived_profile_scales_every_per_parameter_engine_cost_by_bandwidth():
    from ecdit_scale.planner.derived_profile import derive_profile

    template = _profile(deepspeed_engine_s={2: 1e-5}, deepspeed_engine_s_per_param={2: 4e-9},
                        deepspeed_micro_s={2: 2e-6}, deepspeed_micro_s_per_param={2: 1e-9},
                        deepspeed_engine_by_setting={"moe": {
                            "deepspeed_engine_s": {2: 3e-5},
                            "deepspeed_engine_s_per_param": {2: 6e-9}}})
    half = derive_profile(template, template_peak_bf16_flops=1e15, template_bw_bytes_per_s=4e12,
                          peak_bf16_flops=1e15, bw_bytes_per_s=2e12)
    # passes over gradients and weights: half the bandwidth, twice the seconds per parameter
    assert half.deepspeed_engine_s_per_param == {2: pytest.approx(8e-9)}
    assert half.deepspeed_micro_s_per_param == {2: pytest.approx(2e-9)}
    # host-side work per tensor carries over unchanged
    assert half.deepspeed_engine_s == {2: 1e-5} and half.deepspeed_micro_s == {2: 2e-6}
    # in every setting
    moe = half.deepspeed_engine_by_setting["moe"]
    assert moe["deepspeed_engine_s_per_param"] == {2: pytest.approx(1.2e-8)}
    assert moe["deepspeed_engine_s"] == {2: 3e-5}


# ---------------------------------------------------------------------------------------------
# `ecdit-scale profile` and validate
# ---------------------------------------------------------------------------------------------


def test_profile_table_shows_the_batched_gemm_grid(measured_profile, capsys):
    from ecdit_scale.cli.profile import render_profile

    render_profile(get_accelerator(str(measured_profile)), measured_profile)
    out = capsys.readouterr().out
    words = out.split()  # the table may wrap the label at the console's width
    assert "batched" in words and "(bmm)," in words and "GFLOP/s" in words
    assert "meeting" in words  # the ranks' drift apart over compute, measured on 2 ranks


def test_profile_command_writes_a_profile_plan_reads(measured_profile, tmp_path):
    acc = get_accelerator(str(measured_profile))
    p = acc.profile
    # --quick measures all but DeepSpeed's engine (three fresh processes; the full profile does)
    engine = {k for k in p.measured() if k.startswith("deepspeed_engine") or k == "trainer"}
    assert all(v for k, v in p.measured().items() if k not in engine), p.measured()
    assert engine and not any(p.measured()[k] for k in engine)
    assert p.provenance["settings"]["quick"] and p.provenance["torch"]
    assert acc.number_sources()["peak_bf16_flops"] == "measured"
    # the ranks meeting after compute, at each measured segment (2 ranks: excess > 0)
    assert len(p.sync.segment_s) == 2 and list(p.sync.segment_s) == sorted(p.sync.segment_s)
    assert all(e > 0 for e in p.sync.excess_s) and all(w > 0 for w in p.sync.wait_s)
    assert acc.number_sources()["inter_node_bw_bytes_per_s"] == "datasheet"
    assert max(p.gemm_flops_per_s) == acc.peak_bf16_flops
    # the grid reaches one-row GEMMs (the adaLN modulation at micro-batch 1), measured, not
    # clamped to the next M's rate: a one-row GEMM streams its weights for 2 FLOPs per element
    assert p.gemm_m[0] == 1 and p.bmm_m[0] == 1
    assert p.gemm_k[0] == 1 and p.bmm_k[0] == 1  # a weight gradient contracts over those rows
    # the model's own code per kernel, for every FFN kind and recompute policy; the recompute
    # wrappers run in Python on the host (selective: a dispatch mode over every op)
    assert set(p.host_s_per_kernel) == {"dense", "expert-choice", "token-choice"}
    for kind, policies in p.host_s_per_kernel.items():
        assert list(policies) == ["none", "selective", "full"], kind
        assert policies["selective"] > policies["none"] > 0, (kind, policies)
    big = max(p.gemm_n)
    assert p.gemm_rate(1, big, big)[()] < 0.5 * p.gemm_rate(p.gemm_m[1], big, big)[()]
    # the optimizers as the CPU trainer steps them (foreach), each at its own rate per byte
    assert p.optimizer_kernels == "foreach" and set(p.optimizer_s_per_byte_by) == {
        "adamw", "rmsprop", "sgd"}
    assert all(len(c) == len(p.optimizer_elements) for c in p.optimizer_s_per_byte_by.values())
    # no --precision: a CPU profile lists no bf16 throughput, so the plan is fp32 and says so
    # (the README's `profile ... && plan --gpu cpu.yaml` used to stop at a bf16 refusal)
    proc = cli_here("plan", "--model", "nano-ec8", "--gpu", str(measured_profile),
                    "--nodes", "1", "--gpus-per-node", "2", "--global-batch", "16",
                    "--json", "--out", str(tmp_path / "plan"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "precision fp32" in proc.stderr and "lists no bf16" in proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["training"]["precision"] == "fp32"
    assert plan["best"]["step"]["kernels"] > 0 and plan["best"]["step"]["gemm_s"] > 0
    assert any("measured profile" in n for n in plan["estimated"])


@pytest.mark.parametrize("args, match", [
    (("--device", "tpu"), "--device 'tpu'"),
    (("--threads", "0"), "--threads 0"),
    (("--nproc", "0"), "--nproc 0"),
    (("--dtype", "int8"), "--dtype 'int8'"),
    (("--trainer-launches", "0"), "--trainer-launches 0: must be in 1..9"),
    (("--out", "/nonexistent/dir/p.yaml"), "--out"),
])
def test_profile_bad_input_is_one_line(args, match, tmp_path):
    proc = cli_here("profile", "--quick", *args)
    assert proc.returncode == 2 and match in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_leave_one_out_never_uses_the_run_it_predicts():
    from ecdit_scale.evaluation.predict import leave_one_out
    from ecdit_scale.evaluation.rows import Row

    def row(name, eff):
        return Row(name=name, source=name, kind="run", device="cpu", model="m", world=1, ep=1,
                   zero=1, micro_batch=1, global_batch=1, params_predicted=1,
                   params_measured=1, flops_predicted=1.0, flops_measured=1.0,
                   memory_predicted=None, memory_measured=None, efficiency=eff,
                   peak_flops_per_s=1e9, hardware_flops=1e9, step_s_measured=1.0 / eff)

    a, b, c = row("a", 0.1), row("b", 0.2), row("c", 0.4)
    assert leave_one_out([a, b, c]) == []
    assert a.step_s_loo == pytest.approx(1 / 0.3)  # median of b and c
    assert c.step_s_loo == pytest.approx(1 / 0.15) and c.calibrated_on == "a, b"
    leave_one_out([a, b, c], calibrate_on=b)
    assert a.step_s_loo == pytest.approx(5.0) and b.step_s_loo == pytest.approx(1 / 0.25)
    lone = row("lone", 0.3)
    (note,) = leave_one_out([lone])
    assert lone.step_s_loo is None and "impossible" in note


@pytest.mark.slow
def test_cpu_validation_profile_only(ec_run, short_run, measured_profile, tmp_path):
    """Two runs of the session (2 ranks ep 2 ZeRO-2, and 1 rank) predicted from the module's
    profile of this CPU alone, and leave-one-out: each row's prediction comes from the profile
    (never from a run), its LOO efficiency from the other run only, and the errors are the
    measured / predicted ratios. How far off the predictions are on an idle machine is a
    measurement, not a test: `python bench/cpu_validate.py` (tests share 2 cores with each
    other, so their step times measure the neighbours too)."""
    runs = [ec_run, short_run]
    proc = cli_here("validate", *map(str, runs), "--profile", str(measured_profile), "--csv",
                    str(tmp_path / "v.csv"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)["rows"]
    assert [r["name"] for r in rows] == [run.name for run in runs]
    for r, other in zip(rows, reversed(rows), strict=True):
        assert "profile" in r["step_s_source"] and r["calibrated_on"] == other["name"]
        assert 0 < r["step_s_predicted"] < 10 and math.isfinite(r["step_s_loo"])
        assert r["step_s_error"] == pytest.approx(r["step_s_measured"] / r["step_s_predicted"] - 1)
        assert r["step_s_loo_error"] == pytest.approx(r["step_s_measured"] / r["step_s_loo"] - 1)


def test_a_memory_bound_op_larger_than_its_kinds_timed_call_runs_at_most_at_copy_bandwidth():
    """The kinds are timed on one tensor (in cache on a CPU); an op that moves more per kernel
    than that call did streams from memory: priced at min(kind, large-copy bandwidth)."""
    import dataclasses

    from ecdit_scale.planner.compute import price
    from ecdit_scale.planner.operators import MemoryOp, OperatorInventory

    kinds = {"copy": 8e10, "elementwise": 8e10, "activation": 4e9, "norm": 1e10}
    acc = dataclasses.replace(get_accelerator("h100-sxm"), profile=_profile(
        memory_bw_bytes_per_s=2e10, memory_kind_bw=kinds, memory_ops_tensor_bytes=2**20))
    ops = (MemoryOp("small_add", 3 * 2**20, 1), MemoryOp("big_add", 3 * 2**20 + 3, 1),
           MemoryOp("big_gelu", 64 * 2**20, 1, kind="activation"),
           MemoryOp("big_copy", 4 * 2**21, 2, kind="copy"))  # 4 MiB a kernel
    inv = OperatorInventory(images=1, tp=1, gemms=(), attention=(), memory_ops=ops,
                            param_tensors=0)
    seconds = {op.name: price(dataclasses.replace(inv, memory_ops=(op,)), acc,
                              backward=False).memory_s for op in ops}
    assert seconds["small_add"] == pytest.approx(3 * 2**20 / 8e10)  # the call timed: in cache
    assert seconds["big_add"] == pytest.approx((3 * 2**20 + 3) / 2e10)  # past it: from memory
    assert seconds["big_gelu"] == pytest.approx(64 * 2**20 / 4e9)  # slower than memory anyway
    assert seconds["big_copy"] == pytest.approx(4 * 2**21 / 2e10)
    old = dataclasses.replace(acc, profile=_profile(memory_bw_bytes_per_s=2e10,
                                                    memory_kind_bw=kinds))
    assert price(dataclasses.replace(inv, memory_ops=(ops[1],)), old,
                 backward=False).memory_s == pytest.approx((3 * 2**20 + 3) / 8e10)
    back = DeviceProfile.from_dict(acc.profile.to_dict())
    assert back.memory_ops_tensor_bytes == 2**20 and back.to_dict() == acc.profile.to_dict()


def test_ranks_meeting_after_compute_are_priced_at_each_all_to_all_and_the_reduce():
    """A profile's ``sync`` (ranks drift apart over compute; the step waits for the last):
    an expert-parallel step pays it at every all-to-all and once at the gradients' reduction,
    each at its share of the step's compute; one rank, or a profile without it, pays none."""
    import dataclasses

    from ecdit_scale.planner.link_fit import LinkFit
    from ecdit_scale.planner.rank_sync import SyncFit

    sync = SyncFit(segment_s=(1e-3, 10e-3), excess_s=(2e-4, 1e-3), wait_s=(6e-4, 9e-4))
    excess, wait = sync.at(np.array([0.5e-3, 1e-3, 5.5e-3, 20e-3]))
    assert excess == pytest.approx([1e-4, 2e-4, 6e-4, 2e-3])  # in proportion beyond the ends
    assert wait == pytest.approx([6e-4, 6e-4, 7.5e-4, 9e-4])
    link = LinkFit(latency_s=4e-4, bw_bytes_per_s=1e9, half_bytes=0.0)
    h100 = get_accelerator("h100-sxm")
    plain = _profile(links={"all_to_all": link, "all_reduce": link, "all_gather": link})
    with_sync = dataclasses.replace(plain, sync=sync)
    cfg = sizes.get("micro-ec16")
    training = TrainingConfig(global_batch=16, optimizer="adamw", precision="fp32", ema="none")
    for world, ep in ((2, 2), (2, 1), (1, 1)):
        layout = ParallelLayout(dp=world, ep=ep, tp=1, zero=1, micro_batch=16 // world)
        a, b = (estimate_layout(cfg, layout, training, ClusterConfig(
            gpu=h100.name, nodes=1, gpus_per_node=world),
            dataclasses.replace(h100, profile=p)).step for p in (with_sync, plain))
        assert b.sync_s == 0.0
        calls = cfg.num_moe_layers * 4 if ep > 1 else 0  # dispatch, combine; both backward
        meetings = calls + 1 if world > 1 else 0
        if meetings:
            e, w = sync.at(a.compute_s / meetings)
            assert a.sync_s == pytest.approx(meetings * e + calls * (w - 4e-4))
            assert a.sync_a2a_s == pytest.approx(calls * (e + w - 4e-4))
        else:
            assert a.sync_s == 0.0
        assert a.total_s == pytest.approx(b.total_s + a.sync_s)
    back = DeviceProfile.from_dict(with_sync.to_dict())
    assert back.sync == sync and back.measured()["sync"]
    with pytest.raises(ConfigError, match=r"sync: segment_s \(strictly increasing\)"):
        DeviceProfile.from_dict({"sync": {"segment_s": [2e-3, 1e-3], "excess_s": [1e-4, 2e-4],
                                          "wait_s": [1e-4, 1e-4]}})


def test_the_timed_collectives_are_kept_beside_their_fits_and_survive_the_yaml():
    """The calls timed reach the links as measured (link volume per call: message bytes x
    the collective's bytes per byte x (n - 1) / n) and as read back from the profile file."""
    from ecdit_scale.evaluation.collectives import fit_link
    from ecdit_scale.evaluation.profile import collective_table
    from ecdit_scale.planner.link_fit import COLLECTIVE_VOLUME

    sizes_ = [64, 1024, 16384]
    times = {"all_reduce": [1e-3, 1.1e-3, 2e-3], "all_to_all": [2e-4, 3e-4, 1e-3],
             "all_gather": [4e-4, 5e-4, 1.5e-3], "sync": [[1e-3, 1e-4, 5e-4]]}
    links = {k: fit_link(sizes_, times[k], factor=per_byte / 2)
             for k, per_byte in COLLECTIVE_VOLUME.items()}  # 2 ranks
    assert links["all_reduce"].timed == ((64.0, 1024.0, 16384.0), tuple(times["all_reduce"]))
    assert links["all_to_all"].timed == ((32.0, 512.0, 8192.0), tuple(times["all_to_all"]))
    table = collective_table({"links": links, "sizes": sizes_, "times": times})["collective_times"]
    assert table == {"bytes": sizes_, "all_reduce": times["all_reduce"],
                     "all_to_all": times["all_to_all"], "all_gather": times["all_gather"]}
    assert collective_table(None) == {}  # one process: nothing timed
    prof = _profile(links=links, collective_nproc=2, provenance={"collective_times": table})
    back = DeviceProfile.from_dict(prof.to_dict(), where="p")
    assert back.provenance["collective_times"] == table and back.links == prof.links
    # a profile from before the table, or without its rank count: the fits alone
    data = prof.to_dict()
    del data["provenance"]
    assert all(f.timed is None for f in DeviceProfile.from_dict(data, where="p").links.values())
    data = prof.to_dict()
    data["collectives"]["nproc"] = None
    assert all(f.timed is None for f in DeviceProfile.from_dict(data, where="p").links.values())
    data = prof.to_dict()
    data["provenance"]["collective_times"]["all_to_all"] = [2e-4, 3e-4]
    with pytest.raises(ConfigError, match=r"p\.provenance\.collective_times: bytes"):
        DeviceProfile.from_dict(data, where="p")
