"""FLOPs of one image through the (EC-)DiT, component by component, in pure Python (no torch).

Convention: 2 FLOPs per multiply-accumulate, matmul-like ops only (linear, conv, attention
products), as ``torch.utils.flop_counter.FlopCounterMode`` counts; norms, softmax, GELU and
gathers count zero. ``forward_macs`` is the DiT paper's "Gflops" (Peebles & Xie 2023 count one
multiply-add as one flop; see their answer in facebookresearch/DiT issue #14).
``tests/test_flops.py`` checks every formula against FlopCounterMode on the torch model.

Every formula mirrors a module of ``ecdit_scale.model`` (S image tokens, T text tokens, d width):
- per-token linears: 2 * tokens * d_in * d_out (Linear / patch conv; biases are not counted);
- attention products QK^T and AV: 2 * 2 * S_q * S_kv * d (each KV head serves its group of
  query heads, so the products run over all query heads);
- per-image linears (timestep MLP, adaLN): once per image, not per token;
- experts: the model runs every expert on all E * C slots of a routing group, padded or not.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..config import AdaLN, Conditioning, FFNKind, ModelConfig, Recompute
from ..params import count_params

# ---------------------------------------------------------------------------------------------
# Primitive counts
# ---------------------------------------------------------------------------------------------


def linear_flops(tokens: float, d_in: int, d_out: int) -> float:
    """y = x W on ``tokens`` rows: one multiply-accumulate per weight per row."""
    return 2.0 * tokens * d_in * d_out


def mlp_flops(tokens: float, d: int, hidden: int) -> float:
    """Two-layer MLP d -> hidden -> d (a dense FFN, or one expert on its slots)."""
    return linear_flops(tokens, d, hidden) + linear_flops(tokens, hidden, d)


def attention_linear_flops(cfg: ModelConfig, q_tokens: float, kv_tokens: float) -> float:
    """GQA projections: q and out (d x d) on the queries, k and v (d x kv_dim) on the context."""
    d = cfg.hidden_size
    return 2 * linear_flops(q_tokens, d, d) + 2 * linear_flops(kv_tokens, d, cfg.kv_dim)


def attention_score_flops(cfg: ModelConfig, q_tokens: float, kv_tokens: float) -> float:
    """QK^T and AV over all query heads: 2 products x 2 * S_q * S_kv * d."""
    return 2 * 2.0 * q_tokens * kv_tokens * cfg.hidden_size


# ---------------------------------------------------------------------------------------------
# MoE slots: what the model actually computes
# ---------------------------------------------------------------------------------------------


def expert_slots_per_group(cfg: ModelConfig) -> int:
    """E * C token slots each MoE layer computes per routing group.

    Expert choice: C = S * f_c / E (every slot holds a token). Token choice (GShard): C =
    ceil(k * S * f / E), computed in full even where slots are empty (padding); without token
    dropping the model sizes C to the whole group (ecdit_scale.model.moe.TokenChoiceMoE).
    """
    ffn = cfg.ffn
    if not ffn.is_moe:
        return 0
    capacity = cfg.expert_capacity
    if ffn.kind is FFNKind.TOKEN_CHOICE and not ffn.drop_tokens:
        capacity = cfg.routing_group_tokens
    return ffn.num_experts * capacity


def expert_slots_per_image(cfg: ModelConfig) -> float:
    """Slots per MoE layer per image: (slots per group) x (groups per image), possibly fractional
    when a routing group spans several images. Paper configs: f_c * S (EC) = k * S (TC, f = 1)."""
    return expert_slots_per_group(cfg) * cfg.tokens_per_image / cfg.routing_group_tokens


# ---------------------------------------------------------------------------------------------
# Forward FLOPs per image
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FlopsBreakdown:
    """Forward FLOPs per image, by component (2 FLOPs per multiply-accumulate)."""

    patch_embed: float
    timestep_embed: float
    condition_embed: float  # class: 0 (a lookup); text: caption projection MLP on T tokens
    self_attention_linear: float
    self_attention_scores: float
    cross_attention_linear: float  # q/out on S image tokens, k/v on T text tokens, every block
    cross_attention_scores: float
    ffn: float  # dense FFNs of the non-MoE blocks
    experts: float
    router: float
    adaln: float  # per-block adaLN (or the shared adaLN-single) + the final layer's adaLN
    output_head: float
    # Not part of ``forward``: FLOPs of the layers that read data rather than activations (patch
    # embedding, first timestep linear). Autograd computes no gradient w.r.t. their inputs.
    data_input_flops: float = 0.0

    _COMPONENTS = ("patch_embed", "timestep_embed", "condition_embed", "self_attention_linear",
                   "self_attention_scores", "cross_attention_linear", "cross_attention_scores",
                   "ffn", "experts", "router", "adaln", "output_head")

    @property
    def forward(self) -> float:
        return sum(getattr(self, name) for name in self._COMPONENTS)

    @property
    def forward_macs(self) -> float:
        """Forward multiply-accumulates: the DiT paper's "Gflops" x 1e9."""
        return self.forward / 2

    @property
    def backward(self) -> float:
        """Gradients w.r.t. inputs and weights: 2 x forward (each matmul Y = XW needs dX = dY W^T
        and dW = X^T dY; Kaplan et al. 2020, Sec. 2.1), less the input gradients of the layers
        that read data, which autograd skips."""
        return 2 * self.forward - self.data_input_flops

    @property
    def attention_scores(self) -> float:
        return self.self_attention_scores + self.cross_attention_scores

    def to_dict(self) -> dict[str, float]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(forward=self.forward, backward=self.backward, forward_macs=self.forward_macs)
        return out


def adaln_flops(cfg: ModelConfig) -> float:
    """adaLN runs once per image on the conditioning vector c, never per token (DiT Sec. 3.2).

    adaLN-Zero: Linear(d, 6d) in every block + the final layer's Linear(d, 2d).
    adaLN-single (PixArt-alpha): one shared Linear(d, 6d); per-block tables are additions.
    """
    d = cfg.hidden_size
    if cfg.adaln is AdaLN.ZERO:
        return cfg.depth * linear_flops(1, d, 6 * d) + linear_flops(1, d, 2 * d)
    return linear_flops(1, d, 6 * d)


def condition_embed_flops(cfg: ModelConfig) -> float:
    """Class labels: an embedding lookup (0). Text: caption MLP text_dim -> d -> d on T tokens."""
    if cfg.conditioning is Conditioning.CLASS:
        return 0.0
    t, d = cfg.text_tokens, cfg.hidden_size
    return linear_flops(t, cfg.text_dim, d) + linear_flops(t, d, d)


def flops_per_image(cfg: ModelConfig) -> FlopsBreakdown:
    d, s, t, p = cfg.hidden_size, cfg.tokens_per_image, cfg.text_tokens, cfg.patch_size
    n_moe = cfg.num_moe_layers
    patch = linear_flops(s, cfg.in_channels * p * p, d)  # a p x p stride-p conv
    t_fc1 = linear_flops(1, cfg.timestep_freq_dim, d)
    cross = cfg.has_cross_attention
    return FlopsBreakdown(
        patch_embed=patch,
        timestep_embed=t_fc1 + linear_flops(1, d, d),
        condition_embed=condition_embed_flops(cfg),
        self_attention_linear=cfg.depth * attention_linear_flops(cfg, s, s),
        self_attention_scores=cfg.depth * attention_score_flops(cfg, s, s),
        cross_attention_linear=cfg.depth * attention_linear_flops(cfg, s, t) if cross else 0.0,
        cross_attention_scores=cfg.depth * attention_score_flops(cfg, s, t) if cross else 0.0,
        ffn=(cfg.depth - n_moe) * mlp_flops(s, d, cfg.mlp_hidden),
        experts=n_moe * mlp_flops(expert_slots_per_image(cfg), d, cfg.mlp_hidden),
        router=n_moe * linear_flops(s, d, cfg.ffn.num_experts),  # 2 * d * E per token
        adaln=adaln_flops(cfg),
        output_head=linear_flops(s, d, p * p * cfg.out_channels),
        data_input_flops=patch + t_fc1,
    )


# ---------------------------------------------------------------------------------------------
# Training and inference
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TrainingFlops:
    """FLOPs of one training image (Chowdhery et al. 2022, App. B: model vs hardware FLOPs)."""

    model_flops: float  # forward + backward: what the model needs; MFU divides this
    hardware_flops: float  # model_flops + recompute_flops: what the devices execute
    recompute_flops: float

    def to_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def blocks_forward_flops(cfg: ModelConfig) -> float:
    """Forward FLOPs inside the transformer blocks: one forward less the embedders, the final
    layer and (adaLN-single) the shared modulation, which all run outside the blocks."""
    f = flops_per_image(cfg)
    d = cfg.hidden_size
    per_block_adaln = linear_flops(1, d, 6 * d) if cfg.adaln is AdaLN.ZERO else 0.0
    return (f.self_attention_linear + f.self_attention_scores + f.cross_attention_linear
            + f.cross_attention_scores + f.ffn + f.experts + f.router
            + cfg.depth * per_block_adaln)


def recompute_flops_per_image(cfg: ModelConfig, recompute: Recompute) -> float:
    """Extra forward work in backward (Korthikanti et al. 2022, Sec. 4-5).

    FULL: keep each block's input, rerun the blocks' forward (checkpointing per block; the
    embedders and final layer are not rerun). SELECTIVE (``ecdit_scale.model.recompute``):
    rerun the self-attention core (QK^T and AV) and the elementwise ops around the kept matmul
    outputs (LayerNorm, modulate, softmax, GELU: zero in matmul FLOPs); cross-attention is not
    recomputed. NONE: nothing.
    """
    recompute = Recompute(recompute)
    fwd = flops_per_image(cfg)
    if recompute is Recompute.FULL:
        return blocks_forward_flops(cfg)
    if recompute is Recompute.SELECTIVE:
        return fwd.self_attention_scores
    return 0.0


def training_flops_per_image(cfg: ModelConfig, recompute: Recompute) -> TrainingFlops:
    fwd = flops_per_image(cfg)
    model = fwd.forward + fwd.backward
    extra = recompute_flops_per_image(cfg, recompute)
    return TrainingFlops(model_flops=model, hardware_flops=model + extra, recompute_flops=extra)


def inference_flops_per_image(cfg: ModelConfig, *, steps: int, cfg_guidance: bool) -> float:
    """Sampling: one forward per step, two with classifier-free guidance (cond + uncond batch)."""
    if steps < 1:
        raise ValueError(f"steps = {steps}: must be >= 1")
    return flops_per_image(cfg).forward * steps * (2 if cfg_guidance else 1)


def activated_flops_per_token_6nd(cfg: ModelConfig) -> float:
    """The 6·N·D shortcut (Kaplan et al. 2020): training FLOPs per image token = 6 x activated
    non-embedding parameters. N excludes the embedders, adaLN (applied per image, not per token)
    and the output head, and counts experts at f_c (EC) or k (TC) per token; it ignores
    attention products and treats cross-attention k/v as if applied to image tokens. For
    comparison only; ``training_flops_per_image`` is the exact count.
    """
    b = count_params(cfg)
    active_experts = b.num_moe_layers * b.experts_per_token * b.expert_params_per_expert
    n = b.self_attention + b.cross_attention + b.ffn + b.router + active_experts
    return 6.0 * n
