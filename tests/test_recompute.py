"""Activation recomputation (model.recompute): none / selective / full give the same loss and
gradients, rerun exactly the FLOPs the planner adds, and keep the bytes the planner predicts."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from ecdit_scale import sizes  # noqa: E402
from ecdit_scale.config import Recompute  # noqa: E402
from ecdit_scale.model import build_model, rectified_flow_loss  # noqa: E402
from ecdit_scale.model.moe import LocalExchange, MoELayer  # noqa: E402
from ecdit_scale.planner.activations import activation_bytes_per_sample, block_activations  # noqa: E402
from ecdit_scale.planner.flops import training_flops_per_image  # noqa: E402
from ecdit_scale.train.peak_memory import PeakBytes  # noqa: E402

BATCH = 2


def _inputs(cfg, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(BATCH, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    cond = torch.randn(BATCH, cfg.text_tokens, cfg.text_dim, generator=g)
    return x0.to(dtype), cond.to(dtype), torch.rand(BATCH, generator=g)


def _step(model, x0, cond, t):
    """Loss and gradients of one forward + backward (same noise every call)."""
    model.zero_grad(set_to_none=True)
    parts = rectified_flow_loss(model, x0, cond, generator=torch.Generator().manual_seed(5), t_B=t)
    parts.loss.backward()
    return parts.loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name, autocast", [("nano-dense", False), ("nano-ec8", False),
                                            ("nano-tc8", False), ("nano-ec8", True)])
def test_policies_give_the_same_loss_and_gradients(name, autocast):
    cfg = sizes.get(name)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    inputs = _inputs(cfg)
    results = {}
    for policy in Recompute:
        model.set_recompute(policy)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            results[policy] = _step(model, *inputs)
    loss0, grads0 = results[Recompute.NONE]
    for policy in (Recompute.SELECTIVE, Recompute.FULL):
        loss, grads = results[policy]
        torch.testing.assert_close(loss, loss0, rtol=1e-6, atol=0)
        for g, g0 in zip(grads, grads0, strict=True):
            torch.testing.assert_close(g, g0, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in grads0[-4:])  # the test sees real gradients


@pytest.mark.parametrize("name", ["nano-ec8"])
def test_recomputed_flops_are_what_the_planner_adds(name):
    """FlopCounterMode over forward + backward (math SDPA, so attention products are counted):
    selective reruns the self-attention products only, full the blocks' whole forward."""
    cfg = sizes.get(name)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    x0, cond, t = _inputs(cfg)
    for policy in Recompute:
        model.set_recompute(policy)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            _step(model, x0, cond, t)
        predicted = training_flops_per_image(cfg, policy).hardware_flops
        assert fc.get_total_flops() / BATCH == pytest.approx(predicted, rel=1e-9), policy


class CountingExchange(LocalExchange):
    """An exchange that counts its calls: where the all-to-all of expert parallelism runs."""

    def __init__(self):
        super().__init__()
        self.dispatches = self.combines = 0

    def dispatch(self, x_ECD):
        self.dispatches += 1
        return x_ECD

    def combine(self, y_ECD):
        self.combines += 1
        return y_ECD


@pytest.mark.parametrize("policy, passes", [(Recompute.NONE, 1), (Recompute.SELECTIVE, 1),
                                            (Recompute.FULL, 2)])
def test_all_to_all_reruns_only_under_full_recompute(policy, passes):
    """Selective never reruns the exchange; full reruns dispatch and combine once each in
    backward, on every rank alike (planner.comm.forward_passes prices exactly that). The routing
    statistics the trainer reads are the forward's, not the replay's."""
    cfg = sizes.get("nano-ec8")
    torch.manual_seed(0)
    model = build_model(cfg, recompute=policy).train()
    layers = [m for m in model.modules() if isinstance(m, MoELayer)]
    for layer in layers:
        layer.exchange = CountingExchange()
    model.zero_grad(set_to_none=True)
    parts = rectified_flow_loss(model, *_inputs(cfg)[:2],
                                generator=torch.Generator().manual_seed(5))
    stats = model.routing_stats()
    parts.loss.backward()
    assert all(a is b for a, b in zip(model.routing_stats(), stats, strict=True))
    for layer in layers:
        assert (layer.exchange.dispatches, layer.exchange.combines) == (passes, passes)


def _bf16_model(cfg, policy):
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        return build_model(cfg, recompute=policy).train()
    finally:
        torch.set_default_dtype(torch.float32)


def measure_activation_bytes(cfg, policy) -> tuple[int, int]:
    """(bytes kept after the forward, peak bytes during forward + backward) beyond the model
    states, bf16 on CPU, counted by PeakBytes (live tensor storages)."""
    model = _bf16_model(cfg, policy)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # gradients exist before, as from the second step on
    x0, cond, t = _inputs(cfg, torch.bfloat16)
    mode = PeakBytes()
    mode.register([*model.parameters(), *(p.grad for p in model.parameters()), model.pos_embed])
    base = mode.current
    with mode:
        parts = rectified_flow_loss(model, x0, cond, generator=torch.Generator().manual_seed(5),
                                    t_B=t)
        kept = mode.current - base
        parts.loss.backward()
    return kept, mode.peak - base


def single_device_selective_copy(cfg) -> float:
    """The planner counts, for selective, the experts' output twice (the launched model's
    combine keeps a copy: after the all-to-all, or DeepSpeed's per-expert stack). The
    single-device batched experts feed the combine a view of the same storage."""
    return cfg.num_moe_layers * block_activations(cfg).moe_selective_copy_rep


@pytest.mark.parametrize("name", ["tiny-ec8"])  # dense and expert-choice blocks
def test_activation_memory_per_policy_matches_the_planner(name):
    """Kept after the forward = the planner's activations (blocks + outside) within 4%, for each
    policy (seen at micro-batch 2: none +0.8%, selective +1.0%, full +3.7%); the peak over
    forward + backward is ordered full < selective < none and lies within [1, 1.8] x the
    planner's activation total (seen: 1.20, 1.40, 1.72): backward's transient gradients come
    on top, a large share at this size (d = 128, 6 blocks, full keeps 0.4 MB)."""
    cfg = sizes.get(name)
    peaks = {}
    for policy in Recompute:
        kept, peak = measure_activation_bytes(cfg, policy)
        pred = activation_bytes_per_sample(cfg, policy)
        held = BATCH * (pred.blocks + pred.outside_blocks)
        if policy is Recompute.SELECTIVE:
            held -= BATCH * single_device_selective_copy(cfg)
        assert kept == pytest.approx(held, rel=0.04), policy
        assert 1.0 <= peak / (held + BATCH * pred.working_block) <= 1.8, policy
        peaks[policy] = peak
    assert peaks[Recompute.FULL] < peaks[Recompute.SELECTIVE] < peaks[Recompute.NONE]


@pytest.mark.gpu
def test_activation_memory_per_policy_on_cuda():
    """On a GPU (bf16, flash SDPA), cut-down XL-8E at micro-batch 8: memory held after the
    forward = the planner's activations for each policy (not yet run: no GPU in the session
    that wrote it; the CPU counterpart above holds within 4%)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from ecdit_scale.planner.cards import override_config

    cfg = override_config(sizes.get("ecdit-xl-8e"), "depth=4")
    batch = 8
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = build_model(cfg, device="cuda").train()
    finally:
        torch.set_default_dtype(torch.float32)
    g = torch.Generator(device="cuda").manual_seed(1)
    x0 = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, device="cuda",
                     generator=g, dtype=torch.bfloat16)
    cond = torch.randn(batch, cfg.text_tokens, cfg.text_dim, device="cuda", generator=g,
                       dtype=torch.bfloat16)
    kept = {}
    for policy in Recompute:
        model.set_recompute(policy)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        parts = rectified_flow_loss(model, x0, cond, generator=g)
        torch.cuda.synchronize()
        kept[policy] = torch.cuda.memory_allocated() - base
        del parts
        pred = activation_bytes_per_sample(cfg, policy)
        held = batch * (pred.blocks + pred.outside_blocks)
        if policy is Recompute.SELECTIVE:
            held -= batch * single_device_selective_copy(cfg)
        assert kept[policy] == pytest.approx(held, rel=0.05), policy
    assert kept[Recompute.FULL] < kept[Recompute.SELECTIVE] < kept[Recompute.NONE]
