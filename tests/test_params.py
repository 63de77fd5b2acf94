"""Analytic parameter counts equal the torch model's, and land near the paper's totals."""

import pytest

from ecdit_scale import sizes
from ecdit_scale.model import build_model
from ecdit_scale.params import count_params


@pytest.mark.parametrize("name", list(sizes.REGISTRY))
def test_analytic_count_equals_torch_numel_on_meta(name):
    cfg = sizes.get(name)
    model = build_model(cfg, device="meta")
    assert sum(p.numel() for p in model.parameters()) == count_params(cfg).model_params


@pytest.mark.parametrize("target", ["1M", "37M", "2B", "97B", "150B"])
def test_synthesised_configs_count_exactly_too(target):
    cfg = sizes.resolve(target).config
    model = build_model(cfg, device="meta")
    assert sum(p.numel() for p in model.parameters()) == count_params(cfg).model_params


def test_dit_xl2_matches_the_published_count():
    # DiT's train.py prints 675,129,632 for DiT-XL/2; it stores the fixed sin-cos position
    # embedding as a frozen Parameter (256 x 1152) where we keep a buffer.
    assert count_params(sizes.get("dit-xl-2")).total_params + 256 * 1152 == 675_129_632


def test_m64e_near_reported_total_and_activation():
    b = count_params(sizes.get("ecdit-m-64e"))
    assert abs(b.total_params / 97.21e9 - 1) < 0.03
    assert abs(b.active_params / 8.3e9 - 1) < 0.10


@pytest.mark.parametrize("name, reported", [("ecdit-xl-32e", 6.08e9), ("ecdit-xxl-32e", 13.47e9),
                                            ("ecdit-3xl-32e", 32.15e9)])
def test_32_expert_totals_within_5_percent(name, reported):
    assert abs(count_params(sizes.get(name)).total_params / reported - 1) < 0.05


def test_moe_total_follows_the_papers_consistency_rule():
    # facts: MoE total = dense total + (L/2)(E-1)*8d^2 (plus biases and the router here)
    dense, moe = sizes.get("ecdit-xl"), sizes.get("ecdit-xl-32e")
    d, L, E = 1152, 28, 32
    extra = count_params(moe).total_params - count_params(dense).total_params
    assert abs(extra / ((L // 2) * (E - 1) * 8 * d * d) - 1) < 0.01


def test_activated_params_count_fc_experts_per_token():
    cfg = sizes.get("nano-ec8")
    b = count_params(cfg)
    assert b.active_params == b.total_params - b.experts + round(
        cfg.num_moe_layers * 2.0 * b.expert_params_per_expert)
    tc = count_params(sizes.get("nano-tc8"))
    assert tc.active_params == b.active_params  # the twins activate the same compute


def test_text_encoder_counted_only_when_configured():
    paper, cpu = count_params(sizes.get("ecdit-xl")), count_params(sizes.get("nano-dense"))
    assert paper.total_params - paper.model_params == 670_000_000
    assert cpu.total_params == cpu.model_params


def test_breakdown_components_match_module_groups():
    cfg = sizes.get("tiny-ec8")
    model = build_model(cfg, device="meta")
    b = count_params(cfg)
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    router = sum(p.numel() for n, p in model.named_parameters() if ".router." in n)
    cross = sum(p.numel() for n, p in model.named_parameters() if ".cross_attn." in n)
    assert (experts, router, cross) == (b.experts, b.router, b.cross_attention)
