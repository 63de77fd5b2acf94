"""Activation bytes per sample: what autograd keeps for the backward, block by block, after
the recompute policy (Korthikanti et al. 2022, adapted to EC-DiT's blocks), and the MoE layer's
transient dispatch buffers. Derivations: ``DERIVATIONS.md``, section "Memory"."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import HALF_PRECISIONS, ModelConfig, Precision, Recompute
from .dtypes import BF16_BYTES, FP32_BYTES, INDEX_BYTES
from .flops import expert_slots_per_image


@dataclass(frozen=True, kw_only=True)
class BlockActivations:
    """Bytes autograd keeps for ONE sample in one block, by part (no recomputation).

    ``*_rep``: replicated across tp ranks; ``*_shard``: divided by tp. ``*_cheap``: the part
    selective recomputation drops (``ecdit_scale.model.recompute``: every tensor it reruns
    rather than keeps: LayerNorm and modulate outputs, the self-attention core's output and
    log-sum-exp, GELU outputs). ``moe_selective_copy_rep``: what selective
    adds: the experts' output, kept by the checkpoint as well as the copy the combine keeps
    (after the all-to-all, or DeepSpeed's per-expert stack).
    """

    attn_rep: float
    attn_shard: float
    attn_cheap_rep: float
    attn_cheap_shard: float
    cross_rep: float
    cross_shard: float
    cross_cheap_shard: float
    dense_rep: float
    dense_shard: float
    dense_cheap_rep: float
    dense_cheap_shard: float
    moe_rep: float
    moe_shard: float
    moe_cheap_rep: float
    moe_cheap_shard: float
    moe_selective_copy_rep: float = 0.0


def block_activations(cfg: ModelConfig, *, precision: Precision = Precision.BF16,
                      flash_attention: bool = True) -> BlockActivations:
    """What ``ecdit_scale.model.dit.Block.forward`` saves for backward, per sample.

    S image tokens, T text tokens, d width, F = mlp_hidden, h heads, a = activation bytes.
    Self-attention: LN input, LN output (for modulate's scale gradient), modulated input
    (q/k/v linear input), q (S d), k and v (S kv each: SDPA shares each KV head across its
    query heads, ``model.layers.grouped_query_attention``, so nothing h-wide is kept), SDPA
    output (= out-projection input) + fp32 log-sum-exp (h*S), out-projection output (gate
    multiply): 4 S d replicated + 2 S d + 2 S kv sharded. Cross-attention: its input S d, q S d,
    k/v T kv each, output S d (no gate: its projection output is not kept). Dense FFN: LN in/out,
    modulated, fc1 output (GELU input) S F, GELU output S F, fc2 output (gate). MoE: the same
    LN/modulate/gate tensors, router softmax S E (fp32), routing indices and gates per slot,
    and per device after the all-to-all the expert input slots*d, hidden 2 slots*F, expert
    output slots*d (kept for the combine weights); slots = f_c*S for expert choice, exactly
    balanced across ranks.

    Selective recompute (``model.recompute``) keeps the inputs and the matmul outputs of its
    regions. Self-attention keeps the block input, q, k, v (kv_dim wide) and the out-projection
    output: it drops the LN and modulate outputs (2 S d), the SDPA output and its log-sum-exp.
    A dense FFN keeps its input, fc1 and fc2 outputs: it drops the LN and modulate outputs
    (2 S d) and GELU's (S F). An MoE
    FFN drops the LN output (S d) and the experts' GELU output (slots F) and keeps the experts'
    output once more (slots d). Cross-attention is not recomputed.
    """
    a = BF16_BYTES if Precision(precision) in HALF_PRECISIONS else FP32_BYTES
    S, T, d, F = cfg.tokens_per_image, cfg.text_tokens, cfg.hidden_size, cfg.mlp_hidden
    h, E = cfg.num_heads, cfg.ffn.num_experts
    slots = expert_slots_per_image(cfg) if cfg.ffn.is_moe else 0.0
    kv = cfg.kv_dim
    scores = 0.0 if flash_attention else a * h * S * S
    cross_scores = 0.0 if flash_attention else a * h * S * T
    cross = cfg.has_cross_attention
    return BlockActivations(
        attn_rep=a * 4 * S * d,
        attn_shard=a * (2 * S * d + 2 * S * kv) + FP32_BYTES * h * S + scores,
        attn_cheap_rep=a * 2 * S * d,  # LN and modulate outputs
        attn_cheap_shard=a * S * d + FP32_BYTES * h * S + scores,  # SDPA output, lse
        cross_rep=a * S * d if cross else 0.0,
        cross_shard=((a * (2 * S * d + 2 * T * kv) + FP32_BYTES * h * S + cross_scores)
                     if cross else 0.0),
        cross_cheap_shard=0.0,
        dense_rep=a * 4 * S * d,
        dense_shard=a * 2 * S * F,
        dense_cheap_rep=a * 2 * S * d,  # LN and modulate outputs
        dense_cheap_shard=a * S * F,  # GELU output
        moe_rep=(a * (4 * S * d + 2 * slots * d) + FP32_BYTES * S * E
                 + (INDEX_BYTES + FP32_BYTES) * slots) if slots else 0.0,
        moe_shard=a * 2 * slots * F,
        moe_cheap_rep=a * S * d if slots else 0.0,  # LN output
        moe_cheap_shard=a * slots * F,  # the experts' GELU output
        moe_selective_copy_rep=a * slots * d,
    )


@dataclass(frozen=True, kw_only=True)
class ActivationBytes:
    """Activation bytes per sample (multiply by the micro-batch) on one device."""

    blocks: float  # all blocks (or, with full recompute, their inputs)
    working_block: float  # full recompute: one block's activations while it is recomputed
    outside_blocks: float  # embedders, caption MLP, final layer, loss, adaLN vectors

    @property
    def total(self) -> float:
        return self.blocks + self.working_block + self.outside_blocks


def activation_bytes_per_sample(cfg: ModelConfig, recompute: Recompute | str, *, tp: int = 1,
                                precision: Precision = Precision.BF16,
                                flash_attention: bool = True) -> ActivationBytes:
    """Korthikanti et al. 2022 adapted to this block (see ``block_activations``).

    none: everything every block saves. selective: keep what the matmuls make, rerun the rest
    (LN, modulate, the self-attention core, GELU; see ``block_activations``).
    full: keep each block's input (S d) only, plus one block's full set during its backward.
    """
    recompute = Recompute(recompute)
    a = BF16_BYTES if Precision(precision) in HALF_PRECISIONS else FP32_BYTES
    b = block_activations(cfg, precision=precision, flash_attention=flash_attention)
    S, T, d = cfg.tokens_per_image, cfg.text_tokens, cfg.hidden_size
    n_moe = cfg.num_moe_layers
    n_dense = cfg.depth - n_moe

    def per_block(moe: bool, drop_cheap: bool) -> float:
        rep = b.attn_rep + b.cross_rep + (b.moe_rep if moe else b.dense_rep)
        shard = b.attn_shard + b.cross_shard + (b.moe_shard if moe else b.dense_shard)
        if drop_cheap:
            rep -= b.attn_cheap_rep + (b.moe_cheap_rep - b.moe_selective_copy_rep if moe
                                       else b.dense_cheap_rep)
            shard -= b.attn_cheap_shard + b.cross_cheap_shard + (
                b.moe_cheap_shard if moe else b.dense_cheap_shard)
        return rep + shard / tp

    p2c = cfg.patch_size**2 * cfg.out_channels
    outside = (a * 3 * S * d  # final layer: LN in/out, modulated (linear input)
               + 2 * FP32_BYTES * S * p2c  # fp32 prediction and target for the MSE loss
               + a * 8 * d * (cfg.depth + 1))  # adaLN SiLU input + modulation vectors per block
    if cfg.has_cross_attention:  # caption MLP: input, fc1 out, GELU out, text tokens (shared)
        outside += a * T * (cfg.text_dim + 3 * d)
    if recompute is Recompute.FULL:
        working = max(per_block(True, False) if n_moe else 0.0,
                      per_block(False, False) if n_dense else 0.0)
        return ActivationBytes(blocks=a * S * d * cfg.depth, working_block=working,
                               outside_blocks=outside)
    drop = recompute is Recompute.SELECTIVE
    blocks = n_moe * per_block(True, drop) + n_dense * per_block(False, drop)
    return ActivationBytes(blocks=blocks, working_block=0.0, outside_blocks=outside)


def moe_buffer_bytes_per_sample(cfg: ModelConfig, *,
                                precision: Precision = Precision.BF16) -> float:
    """Transient dispatch/all-to-all buffers of one MoE layer per sample: the gathered send
    buffer and the combine receive buffer (slots x d each); the dispatched receive and combine
    send tensors are saved activations, counted there."""
    if not cfg.ffn.is_moe:
        return 0.0
    a = BF16_BYTES if Precision(precision) in HALF_PRECISIONS else FP32_BYTES
    return 2.0 * a * expert_slots_per_image(cfg) * cfg.hidden_size
