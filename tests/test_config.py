import pytest

from ecdit_scale import sizes
from ecdit_scale.config import (
    FFNConfig,
    FFNKind,
    ModelConfig,
    ParallelLayout,
    load_model_config,
    save_model_config,
)
from ecdit_scale.errors import ConfigError


@pytest.mark.parametrize("name", ["nano-ec8", "tiny-tc16", "dit-xl-2", "ecdit-m-64e", "ecdit-3xl"])
def test_yaml_round_trip_preserves_every_field(tmp_path, name):
    cfg = sizes.get(name)
    path = save_model_config(cfg, tmp_path / "card.yaml")
    assert load_model_config(path) == cfg


@pytest.mark.parametrize("changes, needle", [
    (dict(num_heads=5), "num_heads = 5 does not divide hidden_size"),
    (dict(num_kv_heads=3), "num_kv_heads = 3 does not divide num_heads"),
    (dict(patch_size=3), "patch_size = 3 does not divide input_size"),
    (dict(depth=0), "depth = 0"),
    (dict(adaln="sometimes"), "adaln: 'sometimes' is not valid"),
    (dict(ffn=FFNConfig(kind="expert-choice", num_experts=64, capacity_factor=0.5)),
     "below one token per expert"),
])
def test_invalid_model_configs_name_the_problem(changes, needle):
    base = sizes.get("nano-ec8").to_dict()
    base.update({k: v for k, v in changes.items() if k != "ffn"})
    if "ffn" in changes:
        base["ffn"] = changes["ffn"]
    with pytest.raises(ConfigError, match=needle):
        ModelConfig.from_dict(base)


@pytest.mark.parametrize("ffn, needle", [
    (dict(kind="expert-choice", num_experts=0), "num_experts = 0"),
    (dict(kind="dense", num_experts=4), "a dense FFN has 1 expert"),
    (dict(kind="token-choice", num_experts=2, top_k=3), "top_k = 3 exceeds"),
    (dict(kind="routing-by-vibes"), "ffn.kind"),
])
def test_invalid_ffn_configs(ffn, needle):
    with pytest.raises(ConfigError, match=needle):
        FFNConfig(**ffn)


def test_unknown_and_missing_fields_are_rejected():
    data = sizes.get("nano-ec8").to_dict()
    data["hiden_size"] = 3
    with pytest.raises(ConfigError, match="unknown field.*hiden_size"):
        ModelConfig.from_dict(data)
    data = sizes.get("nano-ec8").to_dict()
    del data["name"]
    with pytest.raises(ConfigError, match="missing required field 'name'"):
        ModelConfig.from_dict(data)


def test_malformed_yaml_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nhidden_size: [1, 2\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_model_config(bad)


def test_expert_choice_capacity_formula():
    cfg = sizes.get("ecdit-m-64e")
    assert cfg.routing_group_tokens == 256
    assert cfg.expert_capacity == 256 * 2 // 64
    assert cfg.moe_block_indices == tuple(range(1, 38, 2))
    grouped = cfg.replace(ffn=FFNConfig(kind=FFNKind.EXPERT_CHOICE, num_experts=64,
                                        group_size=1024))
    assert grouped.expert_capacity == 32


def test_layout_requires_ep_to_divide_dp():
    with pytest.raises(ConfigError, match="ep = 3 does not divide dp = 8"):
        ParallelLayout(dp=8, ep=3)


# ---------------------------------------------------------------------------------------------
# Rules defined once: ZeRO stages, divisors; bounds and types at construction
# ---------------------------------------------------------------------------------------------


def test_zero_stage_rule():
    from ecdit_scale.zero import ZERO_STAGES, check_zero_stage, zero_supports_moe

    assert [check_zero_stage(s) for s in ZERO_STAGES] == [0, 1, 2, 3]
    assert [zero_supports_moe(s) for s in ZERO_STAGES] == [True, True, True, False]
    for bad in (4, -1, True, 1.0, "1", None):
        with pytest.raises(ConfigError, match="--zero = .*ZeRO stage must be 0, 1, 2 or 3"):
            check_zero_stage(bad, name="--zero")
    with pytest.raises(ConfigError, match="zero = 7"):
        ParallelLayout(zero=7)


def test_divisors_and_their_hint():
    from ecdit_scale.integers import divisor_hint, divisors

    assert divisors(1) == [1] and divisors(12) == [1, 2, 3, 4, 6, 12]
    assert divisors(2**40) == [2**i for i in range(41)]  # O(sqrt n), no hang
    assert divisor_hint(1152) == "1, 2, 3, 4, 6, 8, ..., 384, 576, 1152"
    with pytest.raises(ValueError):
        divisors(0)


@pytest.mark.parametrize("changes, needle", [
    (dict(hidden_size=2**62),
     "hidden_size = 4611686018427387904: must be an integer in 1..1048576"),
    (dict(depth=10**6), "depth = 1000000: must be an integer in 1..4096"),
    (dict(mlp_ratio=float("inf")), "mlp_ratio = inf: must be a finite number"),
    (dict(mlp_ratio="4"), "mlp_ratio = '4'"),
    (dict(cond_dropout=1.0), "cond_dropout = 1.0"),
    (dict(qkv_bias="yes"), "qkv_bias = 'yes': must be a boolean"),
    (dict(name="../x"), "name = '../x'"),
    (dict(notes="n" * 10_001), "at most 10,000"),
    (dict(ffn={"kind": "expert-choice", "drop_tokens": "no"}), "ffn.drop_tokens = 'no'"),
    (dict(ffn=3), "ffn = 3: must be a mapping"),
])
def test_fields_are_bounded_and_typed(changes, needle):
    with pytest.raises(ConfigError) as exc:
        sizes.get("nano-ec8").replace(**changes)
    assert needle in str(exc.value)


def test_training_and_cluster_numbers_are_finite_and_bounded():
    from ecdit_scale.config import ClusterConfig, TrainingConfig

    for bad in (float("nan"), float("inf"), -1.0, "2.5"):
        with pytest.raises(ConfigError, match="price_per_gpu_hour"):
            ClusterConfig(price_per_gpu_hour=bad)
    for bad in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ConfigError, match="lr = "):
            TrainingConfig(lr=bad)
    with pytest.raises(ConfigError, match="global_batch"):
        TrainingConfig(global_batch=10**30)
    with pytest.raises(ConfigError, match="nodes"):
        ClusterConfig(nodes=0)
