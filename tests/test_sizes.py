import pytest

from ecdit_scale import sizes
from ecdit_scale.config import FFNKind
from ecdit_scale.errors import ConfigError
from ecdit_scale.params import count_params


def test_ladder_covers_the_required_sizes():
    names = set(sizes.names())
    for size in ("xl", "xxl", "3xl", "m"):
        assert f"ecdit-{size}" in names
        for e in (8, 16, 32, 64):
            assert f"ecdit-{size}-{e}e" in names and f"ecdit-{size}-{e}e-tc" in names
    for s in ("s", "b", "l", "xl"):
        for p in (2, 4, 8):
            assert f"dit-{s}-{p}" in names
    cpu = [count_params(c).total_params for c in sizes.REGISTRY.values() if c.family == "cpu"]
    assert min(cpu) < 0.6e6 and 40e6 < max(c for c in cpu if c < 60e6)


def test_m_moe_has_38_layers_and_dense_m_46():
    assert sizes.get("ecdit-m-64e").depth == 38 and sizes.get("ecdit-m").depth == 46


def test_token_choice_twins_match_expert_choice_compute():
    ec, tc = sizes.get("ecdit-xl-32e"), sizes.get("ecdit-xl-32e-tc")
    assert tc.ffn.kind is FFNKind.TOKEN_CHOICE and tc.ffn.top_k == 2
    assert ec.expert_capacity * ec.ffn.num_experts == tc.expert_capacity * tc.ffn.num_experts


def test_resolve_97b_returns_the_named_m64e():
    r = sizes.resolve("97B")
    assert r.config.name == "ecdit-m-64e" and not r.synthesised


@pytest.mark.parametrize("target", ["1M", "3M", "20M", "350M", "2B", "20B", "150B", "200B"])
@pytest.mark.parametrize("active", [False, True])
def test_resolve_hits_any_target_within_3_percent(target, active):
    r = sizes.resolve(target, active=active)
    assert abs(r.relative_error) < 0.03, (r.config.name, r.achieved)


@pytest.mark.parametrize("kind", ["dense", "expert-choice"])
def test_sizes_below_the_cpu_ladder_are_synthesised(kind):
    """What an IsoFLOP level of ~1e11 FLOPs needs: activated sizes from ~100K, below nano
    (402K), at width 32 (one head) and depth >= 2, each counted exactly."""
    from ecdit_scale.params import count_params

    for target in (100e3, 200e3):
        r = sizes.resolve(int(target), active=True, kind=kind)
        assert r.synthesised and r.config.hidden_size == 32 and r.config.depth >= 2
        assert abs(r.relative_error) < 0.25 and r.achieved == count_params(r.config).active_params
        assert r.achieved < count_params(sizes.get(f"nano-{'dense' if kind == 'dense' else 'ec8'}")
                                         ).active_params


def test_resolve_dense_kind():
    r = sizes.resolve("5B", kind="dense")
    assert r.config.ffn.kind is FFNKind.DENSE and abs(r.relative_error) < 0.03


@pytest.mark.parametrize("bad, needle", [("97X", "not a parameter count"),
                                         ("-1", "not a parameter count"),
                                         ("20K", "between 50K and 200B"),
                                         ("900B", "between 50K and 200B")])
def test_bad_targets(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        sizes.resolve(bad)


def test_unknown_name_suggests():
    with pytest.raises(ConfigError, match="did you mean"):
        sizes.get("m-64e")


@pytest.mark.parametrize("target, kind, active", [(1.2e5, "expert-choice", True),
                                                   (3.3e6, "expert-choice", True),
                                                   (2e7, "dense", False),
                                                   (1.5e11, "token-choice", False)])
def test_synthesis_counts_few_depths_and_finds_what_building_every_one_finds(target, kind,
                                                                             active):
    """The search counts 2 x moe_every depths per width and extrapolates the rest (blocks
    repeat with the MoE period); building and counting every candidate finds the same config."""
    import math

    from ecdit_scale.config import FFNKind
    from ecdit_scale.errors import ConfigError
    from ecdit_scale.sizes import (
        SMALL_LIMIT,
        SYNTH_TOLERANCE,
        _candidate,
        _measure,
        depth_for_width,
        synthesise,
    )

    kind = FFNKind(kind)
    best = None
    step = 32 if target < SMALL_LIMIT else 128
    for d in range(step if target < SMALL_LIMIT else step * 2,
                   (4096 if target < SMALL_LIMIT else 16384) + 1, step):
        rule = depth_for_width(d)
        for depth in range(max(2, rule // 2), rule * 3 // 2 + 1):
            try:
                cfg = _candidate(target, d, depth, kind, active)
            except ConfigError:
                continue
            score = (max(abs(math.log(_measure(cfg, active) / target)), SYNTH_TOLERANCE),
                     abs(math.log(depth / rule)))
            if best is None or score < best[0]:
                best = (score, cfg)
    assert synthesise.__wrapped__(target, active=active, kind=kind) == best[1]
