"""Exact parameter accounting in pure Python (no torch).

Every count mirrors a module of ``ecdit_scale.model``; ``tests/test_params.py`` checks that the
totals equal ``sum(p.numel())`` of the torch model built on the meta device. The frozen text
encoder is not part of the torch model: it appears as its own component, counted in the totals
only when the config says so (``count_text_encoder``; the EC-DiT paper counts it).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .config import AdaLN, Conditioning, ModelConfig


def linear_params(d_in: int, d_out: int, *, bias: bool = True) -> int:
    return d_in * d_out + (d_out if bias else 0)


def mlp_params(d: int, hidden: int) -> int:
    """Two-layer GELU MLP d -> hidden -> d with biases (an FFN, or one expert)."""
    return linear_params(d, hidden) + linear_params(hidden, d)


def attention_params(cfg: ModelConfig) -> int:
    """Grouped-query attention: q and out projections d x d, k and v d x kv_dim."""
    d, kv, bias = cfg.hidden_size, cfg.kv_dim, cfg.qkv_bias
    return (
        linear_params(d, d, bias=bias)
        + 2 * linear_params(d, kv, bias=bias)
        + linear_params(d, d)  # output projection, always with bias
    )


def router_params(cfg: ModelConfig) -> int:
    return cfg.hidden_size * cfg.ffn.num_experts  # x . W_r, no bias


def expert_params(cfg: ModelConfig) -> int:
    """One expert: a full-size FFN (hidden width mlp_ratio * d)."""
    return mlp_params(cfg.hidden_size, cfg.mlp_hidden)


@dataclass(frozen=True, kw_only=True)
class ParamBreakdown:
    embedders: int  # patch, timestep and condition embedders (incl. the CFG null condition)
    self_attention: int
    cross_attention: int
    ffn: int  # dense FFNs (non-MoE blocks)
    experts: int  # all experts of all MoE layers
    router: int
    adaln: int
    output_head: int  # final linear to patches
    text_encoder: int  # frozen; counted in totals only if the config says so
    text_encoder_counted: bool
    expert_params_per_expert: int
    num_moe_layers: int
    experts_per_token: float

    @property
    def model_params(self) -> int:
        """Parameters of the torch model (= sum(p.numel()))."""
        return (self.embedders + self.self_attention + self.cross_attention + self.ffn
                + self.experts + self.router + self.adaln + self.output_head)

    @property
    def total_params(self) -> int:
        return self.model_params + (self.text_encoder if self.text_encoder_counted else 0)

    @property
    def active_params(self) -> int:
        """Parameters that touch one image token on average.

        Expert choice: f_c experts per token on average (E*C = S*f_c slots per group);
        token choice: top_k; the embedders and adaLN count in full, as in the paper's totals.
        """
        active_experts = round(
            self.num_moe_layers * self.experts_per_token * self.expert_params_per_expert
        )
        return self.total_params - self.experts + active_experts

    def to_dict(self) -> dict[str, int | float | bool]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(model_params=self.model_params, total_params=self.total_params,
                   active_params=self.active_params)
        return out


def count_params(cfg: ModelConfig) -> ParamBreakdown:
    d, p = cfg.hidden_size, cfg.patch_size
    embed = linear_params(cfg.in_channels * p * p, d)  # patch embedding (a p x p conv)
    embed += linear_params(cfg.timestep_freq_dim, d) + linear_params(d, d)  # timestep MLP
    if cfg.conditioning is Conditioning.CLASS:
        embed += (cfg.num_classes + (1 if cfg.cond_dropout > 0 else 0)) * d  # + CFG null class
    else:
        embed += linear_params(cfg.text_dim, d) + linear_params(d, d)  # caption projection MLP
        if cfg.cond_dropout > 0:
            embed += cfg.text_tokens * cfg.text_dim  # learned null caption for CFG

    n_moe = cfg.num_moe_layers
    n_dense = cfg.depth - n_moe
    attn = attention_params(cfg)
    if cfg.adaln is AdaLN.ZERO:
        adaln = cfg.depth * linear_params(d, 6 * d) + linear_params(d, 2 * d)
    else:  # one shared Linear(d, 6d) on the timestep; per-block (6, d) and final (2, d) tables
        adaln = linear_params(d, 6 * d) + cfg.depth * 6 * d + 2 * d
    return ParamBreakdown(
        embedders=embed,
        self_attention=cfg.depth * attn,
        cross_attention=cfg.depth * attn if cfg.has_cross_attention else 0,
        ffn=n_dense * mlp_params(d, cfg.mlp_hidden),
        experts=n_moe * cfg.ffn.num_experts * expert_params(cfg),
        router=n_moe * router_params(cfg),
        adaln=adaln,
        output_head=linear_params(d, p * p * cfg.out_channels),
        text_encoder=cfg.text_encoder_params,
        text_encoder_counted=cfg.count_text_encoder,
        expert_params_per_expert=expert_params(cfg),
        num_moe_layers=n_moe,
        experts_per_token=cfg.ffn.experts_per_token() if cfg.ffn.is_moe else 0.0,
    )
