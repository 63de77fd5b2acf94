"""Routing invariants and the diffusion objective of the single-device model."""

import pytest
import torch

from ecdit_scale import sizes
from ecdit_scale.config import FFNConfig, FFNKind
from ecdit_scale.model import build_model, rectified_flow_loss, sample
from ecdit_scale.model.layers import Mlp
from ecdit_scale.model.moe import ExpertChoiceMoE, TokenChoiceMoE


def _inputs(cfg, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    t = torch.rand(batch, generator=g)
    if cfg.has_cross_attention:
        cond = torch.randn(batch, cfg.text_tokens, cfg.text_dim, generator=g)
    else:
        cond = torch.randint(0, cfg.num_classes, (batch,), generator=g)
    return x, t, cond


@pytest.mark.parametrize("experts, group", [(8, None), (16, None), (8, 32), (4, 128)])
def test_expert_choice_loads_every_expert_with_exactly_c_tokens(experts, group):
    cfg = sizes.get("nano-dense").replace(
        ffn=FFNConfig(kind=FFNKind.EXPERT_CHOICE, num_experts=experts, group_size=group))
    layer = ExpertChoiceMoE(cfg)
    x = torch.randn(4, cfg.tokens_per_image, cfg.hidden_size)
    layer(x)
    stats = layer.last_stats
    groups = 4 * cfg.tokens_per_image // cfg.routing_group_tokens
    assert stats.tokens_per_expert.tolist() == [cfg.expert_capacity * groups] * experts
    assert stats.experts_per_token.shape == (4, cfg.tokens_per_image)
    assert int(stats.experts_per_token.sum()) == experts * cfg.expert_capacity * groups
    assert stats.experts_per_token.min() >= 0 and stats.experts_per_token.max() <= experts
    assert stats.dropped == 0 and float(stats.aux_loss) == 0.0


def test_expert_choice_gives_tokens_a_variable_number_of_experts():
    cfg = sizes.get("tiny-ec16")
    layer = ExpertChoiceMoE(cfg)
    torch.nn.init.normal_(layer.router.weight, std=1.0)  # a decisive router
    layer(torch.randn(2, cfg.tokens_per_image, cfg.hidden_size))
    counts = layer.last_stats.experts_per_token
    assert counts.min() < 2 < counts.max()  # adaptive: some tokens get 0-1, others many
    assert counts.float().mean().item() == pytest.approx(cfg.ffn.capacity_factor)


def test_one_expert_with_capacity_one_equals_the_dense_ffn():
    cfg = sizes.get("nano-dense").replace(
        ffn=FFNConfig(kind=FFNKind.EXPERT_CHOICE, num_experts=1, capacity_factor=1.0))
    moe = ExpertChoiceMoE(cfg)
    dense = Mlp(cfg.hidden_size, cfg.mlp_hidden)
    with torch.no_grad():
        for b in (moe.experts.b_in_EF, moe.experts.b_out_ED):
            b.normal_()
        dense.fc1.weight.copy_(moe.experts.w_in_EDF[0].T)
        dense.fc1.bias.copy_(moe.experts.b_in_EF[0])
        dense.fc2.weight.copy_(moe.experts.w_out_EFD[0].T)
        dense.fc2.bias.copy_(moe.experts.b_out_ED[0])
    x = torch.randn(3, cfg.tokens_per_image, cfg.hidden_size)
    torch.testing.assert_close(moe(x), dense(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["nano-dense", "nano-ec8", "nano-tc8", "dit-s-8"])
def test_adaln_zero_blocks_are_identity_at_init(name):
    cfg = sizes.get(name)
    model = build_model(cfg)
    x_BSD = torch.randn(2, cfg.tokens_per_image, cfg.hidden_size)
    c_BD = torch.randn(2, cfg.hidden_size)
    text = torch.randn(2, cfg.text_tokens, cfg.hidden_size) if cfg.has_cross_attention else None
    for block in model.blocks:
        torch.testing.assert_close(block(x_BSD, c_BD, text), x_BSD)
    x, t, cond = _inputs(cfg, batch=2)
    assert torch.count_nonzero(model(x, t, cond)) == 0  # zero-initialised output head


def test_token_choice_drops_over_capacity_and_reports_it():
    cfg = sizes.get("nano-tc8")
    layer = TokenChoiceMoE(cfg)
    with torch.no_grad():  # every token prefers expert 0, then expert 1: most must be dropped
        layer.router.weight.zero_()
        layer.router.weight[0] = 1.0
        layer.router.weight[1] = 0.5
    x = torch.ones(2, cfg.tokens_per_image, cfg.hidden_size).abs()
    layer(x)
    s = layer.last_stats
    cap = cfg.expert_capacity
    assert s.tokens_per_expert[0] == 2 * cap and s.tokens_per_expert[1] == 2 * cap
    assert s.dropped == 2 * (2 * cfg.tokens_per_image - 2 * cap)
    assert int(s.experts_per_token.sum()) == 4 * cap
    assert float(s.aux_loss.detach()) > 0


def test_token_choice_without_pressure_drops_nothing():
    cfg = sizes.get("nano-tc8").replace(
        ffn=FFNConfig(kind=FFNKind.TOKEN_CHOICE, num_experts=8, top_k=2, drop_tokens=False))
    layer = TokenChoiceMoE(cfg)
    layer(torch.randn(2, cfg.tokens_per_image, cfg.hidden_size))
    assert layer.last_stats.dropped == 0
    assert (layer.last_stats.experts_per_token == 2).all()


CLASS_COND_NANO = sizes.get("nano-dense").replace(name="nano-class", conditioning="class",
                                                  num_classes=10, learn_sigma=True)


@pytest.mark.parametrize("cfg", [sizes.get("nano-dense"), sizes.get("nano-ec8"),
                                 sizes.get("nano-tc8"), CLASS_COND_NANO], ids=lambda c: c.name)
def test_training_step_reduces_loss(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, _, cond = _inputs(cfg, batch=4)
    losses = []
    for step in range(15):
        g = torch.Generator().manual_seed(step % 5)
        parts = rectified_flow_loss(model, x, cond, generator=g)
        opt.zero_grad()
        parts.loss.backward()
        opt.step()
        losses.append(parts.flow_loss.item())
    assert sum(losses[-5:]) < sum(losses[:5])


def test_logit_normal_timesteps_concentrate_mid_path():
    from ecdit_scale.model import logit_normal_timesteps
    t = logit_normal_timesteps(20000, generator=torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1
    assert abs(t.mean().item() - 0.5) < 0.01
    assert ((t > 0.25) & (t < 0.75)).float().mean() > 0.6  # uniform would give 0.5


def test_sampler_with_guidance_is_deterministic_and_shaped():
    cfg = sizes.get("nano-ec8")
    model = build_model(cfg).eval()
    _, _, cond = _inputs(cfg, batch=2)
    a = sample(model, cond, steps=3, generator=torch.Generator().manual_seed(1))
    b = sample(model, cond, steps=3, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 3, 32, 32)
    torch.testing.assert_close(a, b)


def test_adaln_single_variant_builds_and_trains():
    cfg = sizes.get("nano-ec8").replace(adaln="single")
    model = build_model(cfg)
    x, _, cond = _inputs(cfg, batch=2)
    rectified_flow_loss(model, x, cond).loss.backward()
    assert model.blocks[0].scale_shift_table.grad is not None


@pytest.mark.parametrize("name", ["nano-ec8", "nano-tc8"])
def test_moe_runs_under_autocast(name):
    cfg = sizes.get(name)
    model = build_model(cfg)
    x, t, cond = _inputs(cfg, batch=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, cond)
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all()


def _attention_reference(q, k, v, mask=None):
    """Softmax(q k^T / sqrt(d)) v with each KV head repeated for its query heads, by hand."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("heads, kv_heads, masked", [(6, 2, False), (6, 2, True), (4, 4, False),
                                                     (4, 1, False)])
def test_grouped_query_attention_equals_repeated_kv(heads, kv_heads, masked):
    """Native GQA (SDPA's enable_gqa, no repeated K/V) gives the repeated-K/V attention, in
    value and in gradient; with a mask too (that path repeats)."""
    from ecdit_scale.model.layers import grouped_query_attention

    g = torch.Generator().manual_seed(0)
    B, S, T, K = 2, 5, 7, 8
    q = torch.randn(B, heads, S, K, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, kv_heads, T, K, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, kv_heads, T, K, generator=g, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(B, 1, 1, T, generator=g) < 0.7) if masked else None
    if mask is not None:
        mask[..., 0] = True  # no row without a key
    out = grouped_query_attention(q, k, v, mask)
    ref = _attention_reference(q, k, v, mask)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b)


def test_native_gqa_repeats_no_keys():
    """Where torch has enable_gqa, an unmasked GQA attention makes no H-wide copy of K/V."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from ecdit_scale.model.layers import NATIVE_GQA, Attention

    if not NATIVE_GQA:
        pytest.skip("torch < 2.5: no enable_gqa")
    copies = []  # ops that write a new (B, heads, T, head_dim) tensor before SDPA

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            if "attention" in name:
                raise StopIteration  # what SDPA reads is what we check
            # as many elements as K for all 6 heads, written by anything but a projection
            if isinstance(out, torch.Tensor) and out.numel() == 2 * 6 * 5 * 8 and \
                    name not in ("addmm", "view", "transpose", "_unsafe_view", "t"):
                copies.append(name)
            return out

    attn = Attention(48, 6, 2)  # 2 KV heads for 6 query heads, head_dim 8
    x = torch.randn(2, 5, 48)
    with Ops(), pytest.raises(StopIteration):
        attn(x)
    assert copies == [], f"K/V repeated to all heads by {copies}"
