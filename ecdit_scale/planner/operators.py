"""The operators one forward of a micro-batch runs on one device, by class (no torch).

Mirrors ``ecdit_scale.model`` operator by operator, so that the step-time model can price each
class from a measured device profile (``device_profile.py``):

- GEMMs (M, N, K): Y[M, N] = X[M, K] W[K, N]; a batched matmul (the experts) is one GEMM over
  all its rows (one kernel: its efficiency is that of the stacked shape). The backward runs
  dX = dY W^T (M, K, N) and dW = X^T dY (K, N, M), except for layers that read data (patch
  embedding, the first timestep linear): no dX.
- attention: ``F.scaled_dot_product_attention`` calls (batch, query heads, q_len, kv_len,
  head_dim); SDPA shares each K/V head across its query heads itself (no repeat copy).
- memory-bound operators: bytes read + written (norms, adaLN modulate, GELU, gates and residuals,
  layout copies, router softmax / top-k, MoE gathers and scatters, casts).
- kernels: one per GEMM / SDPA / elementwise op in the forward; the backward launches about two
  per forward op (``BACKWARD_KERNELS_PER_FORWARD``).

With tensor parallelism of ``tp`` (Megatron) q/k/v/fc1 split their output columns, proj/fc2 their
input rows, attention its heads; norms and residuals stay replicated. Each op carries
``block`` (inside a transformer block: rerun by full recompute) and ``selective`` (rerun by
selective recompute: attention products and the cheap elementwise ops).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import AdaLN, Conditioning, FFNKind, ModelConfig, Recompute

BACKWARD_KERNELS_PER_FORWARD = 2.0
BACKWARD_BYTES_PER_FORWARD = 2.0  # an elementwise backward reads the gradient and the input


@dataclass(frozen=True)
class Gemm:
    name: str
    m: float
    n: float
    k: float
    count: float = 1.0  # GEMMs (or batched GEMMs) of this shape per forward (layers)
    input_grad: bool = True  # False: reads data, so the backward skips dX
    block: bool = True
    selective: bool = False
    batch: float = 1.0  # problems one call multiplies (torch.bmm); m, n, k: each problem's

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k * self.batch * self.count


@dataclass(frozen=True)
class AttentionCall:
    name: str
    batch: float
    heads: float
    q_len: float
    kv_len: float
    head_dim: int
    count: float = 1.0
    block: bool = True
    selective: bool = True

    @property
    def flops(self) -> float:
        """QK^T and AV: 2 products x 2 * q_len * kv_len * head_dim per head."""
        return 4.0 * self.batch * self.heads * self.q_len * self.kv_len * self.head_dim * self.count


@dataclass(frozen=True)
class MemoryOp:
    """``kind`` (``device_profile.MEMORY_KINDS``) picks the measured throughput: copy (layout
    copies, gathers, scatters, repeats), elementwise (add, mul, modulate), activation (GELU, SiLU,
    softmax: transcendental), norm (LayerNorm)."""

    name: str
    bytes: float  # read + written per forward, all layers
    kernels: float
    block: bool = True
    selective: bool = True
    kind: str = "elementwise"


@dataclass(frozen=True)
class OperatorInventory:
    """Forward operators of ``images`` images on one device of a tp group."""

    images: int
    tp: int
    gemms: tuple[Gemm, ...]
    attention: tuple[AttentionCall, ...]
    memory_ops: tuple[MemoryOp, ...]
    param_tensors: int

    @property
    def forward_kernels(self) -> float:
        return (sum(g.count for g in self.gemms) + sum(a.count for a in self.attention)
                + sum(m.kernels for m in self.memory_ops))

    @property
    def gemm_flops(self) -> float:
        return sum(g.flops for g in self.gemms)

    @property
    def attention_flops(self) -> float:
        return sum(a.flops for a in self.attention)

    @property
    def memory_bytes(self) -> float:
        return sum(m.bytes for m in self.memory_ops)

    def recomputed(self, recompute: Recompute) -> OperatorInventory:
        """The operators the backward reruns under ``recompute`` (empty for NONE)."""
        recompute = Recompute(recompute)
        if recompute is Recompute.NONE:
            keep = lambda op: False  # noqa: E731
        elif recompute is Recompute.FULL:
            keep = lambda op: op.block  # noqa: E731
        else:
            keep = lambda op: op.block and op.selective  # noqa: E731
        return OperatorInventory(
            images=self.images, tp=self.tp, gemms=tuple(filter(keep, self.gemms)),
            attention=tuple(filter(keep, self.attention)),
            memory_ops=tuple(filter(keep, self.memory_ops)), param_tensors=0)


def trainer_param_tensors(cfg: ModelConfig, ep: Any) -> Any:
    """Parameter tensors of the trained model on one rank at expert-parallel size ``ep`` (a
    number or an array over layouts): ``train.expert_parallel`` holds each of a MoE layer's
    E/ep local experts in 4 tensors of its own (DeepSpeed checkpoints and reduces experts one
    by one), and so does DeepSpeed's own MoE layer; each tensor gets its own AccumulateGrad,
    engine hook and, without ZeRO, optimizer work."""
    local = cfg.ffn.num_experts // np.asarray(ep) if cfg.num_moe_layers else 1
    return param_tensor_count(cfg) + cfg.num_moe_layers * 4 * (local - 1)


def param_tensor_count(cfg: ModelConfig) -> int:
    """Parameter tensors of ``build_model(cfg)`` (each gets its own AccumulateGrad and optimizer
    work per step); its expert layers hold all their experts in 4 batched tensors (the trainer's
    hold each local expert apart: ``trainer_param_tensors``)."""
    attn = 3 + (3 if cfg.qkv_bias else 0) + 2  # q, k, v weights (+ biases), proj weight + bias
    per_block = attn * (2 if cfg.has_cross_attention else 1)
    per_block += 2 if cfg.adaln is AdaLN.ZERO else 1  # adaLN linear, or the scale-shift table
    moe_blocks = cfg.num_moe_layers
    dense_blocks = cfg.depth - moe_blocks
    n = cfg.depth * per_block + dense_blocks * 4 + moe_blocks * (1 + 4)
    n += 2 + 4  # patch embedding conv, timestep MLP
    if cfg.conditioning is Conditioning.CLASS:
        n += 1
    else:
        n += 4 + (1 if cfg.cond_dropout > 0 else 0)  # caption MLP, learned null caption
    n += 2 if cfg.adaln is AdaLN.SINGLE else 0  # shared t_block
    n += 2 + (2 if cfg.adaln is AdaLN.ZERO else 1)  # final linear, final adaLN / table
    return n


def operator_inventory(cfg: ModelConfig, *, images: int, tp: int = 1,
                       dtype_bytes: int = 2, ep: int | None = None) -> OperatorInventory:
    """The forward of ``images`` images on one device (see the module docstring). ``ep``: the
    trainer's expert-parallel MoE layers (``train.expert_parallel.DeepSpeedExperts``), which
    hold each local expert in tensors of its own (``trainer_param_tensors``) and stack them
    for the batched expert GEMMs as a strided view of one buffer, copying nothing; None: the
    model as ``build_model`` makes it (the experts already batched)."""
    d, s, t = cfg.hidden_size, cfg.tokens_per_image, cfg.text_tokens
    h, kv, hd, p = cfg.mlp_hidden, cfg.kv_dim, cfg.head_dim, cfg.patch_size
    b = float(images)
    tok, txt = b * s, b * t  # image and text tokens of the micro-batch
    a = float(dtype_bytes)
    x = tok * d * a  # bytes of one (B, S, d) activation
    depth, n_moe = cfg.depth, cfg.num_moe_layers
    n_dense = depth - n_moe
    heads = cfg.num_heads / tp
    gemms: list[Gemm] = []
    attn: list[AttentionCall] = []
    mem: list[MemoryOp] = []

    # ---- embedders (outside the blocks) ----
    gemms.append(Gemm("patch_embed", tok, d, cfg.in_channels * p * p, input_grad=False,
                      block=False))
    gemms.append(Gemm("timestep_fc1", b, d, cfg.timestep_freq_dim, input_grad=False, block=False))
    gemms.append(Gemm("timestep_fc2", b, d, d, block=False))
    mem.append(MemoryOp("embed_elementwise", 3 * x, 6, block=False, selective=False,
                        kind="elementwise"))
    if cfg.conditioning is Conditioning.TEXT:
        gemms.append(Gemm("caption_fc1", txt, d, cfg.text_dim, input_grad=False, block=False))
        gemms.append(Gemm("caption_fc2", txt, d, d, block=False))
        mem.append(MemoryOp("caption_gelu", 2 * txt * d * a, 1, block=False, kind="activation"))
    if cfg.adaln is AdaLN.SINGLE:
        gemms.append(Gemm("adaln_single", b, 6 * d, d, block=False))

    # ---- blocks: attention ----
    gemms += [Gemm("attn_q", tok, d / tp, d, count=depth),
              Gemm("attn_kv", tok, 2 * kv / tp, d, count=depth),
              Gemm("attn_proj", tok, d, d / tp, count=depth)]
    attn.append(AttentionCall("self_attention", b, heads, s, s, hd, count=depth))
    mem += [MemoryOp("norm1", 2 * x * depth, 1 * depth, kind="norm"),
            # (1 + scale), *, + shift
            MemoryOp("modulate1", 4 * x * depth, 3 * depth, kind="elementwise"),
            MemoryOp("attn_out_copy", 2 * x / tp * depth, 1 * depth, kind="copy"),
            MemoryOp("gate_residual1", 5 * x * depth, 2 * depth, kind="elementwise")]
    if cfg.has_cross_attention:
        gemms += [Gemm("cross_q", tok, d / tp, d, count=depth),
                  Gemm("cross_kv", txt, 2 * kv / tp, d, count=depth),
                  Gemm("cross_proj", tok, d, d / tp, count=depth)]
        attn.append(AttentionCall("cross_attention", b, heads, s, t, hd, count=depth))
        mem += [MemoryOp("cross_out_copy", 2 * x / tp * depth, 1 * depth, kind="copy"),
                MemoryOp("residual2", 3 * x * depth, 1 * depth, kind="elementwise")]
    if cfg.adaln is AdaLN.ZERO:
        gemms.append(Gemm("adaln_modulation", b, 6 * d, d, count=depth))
        mem.append(MemoryOp("adaln_silu", 2 * b * d * a * depth, 1 * depth, kind="activation"))
    else:
        mem.append(MemoryOp("adaln_table", 2 * b * 6 * d * a * depth, 1 * depth,
                            kind="elementwise"))

    # ---- blocks: FFN ----
    mem += [MemoryOp("norm2", 2 * x * depth, 1 * depth, kind="norm"),
            MemoryOp("modulate2", 4 * x * depth, 3 * depth, kind="elementwise"),
            MemoryOp("gate_residual3", 5 * x * depth, 2 * depth, kind="elementwise")]
    if n_dense:
        gemms += [Gemm("mlp_fc1", tok, h / tp, d, count=n_dense),
                  Gemm("mlp_fc2", tok, d, h / tp, count=n_dense)]
        mem.append(MemoryOp("mlp_gelu", 2 * tok * h / tp * a * n_dense, 1 * n_dense,
                            kind="activation"))
    if n_moe:
        _moe_ops(cfg, gemms, mem, tok=tok, b=b, tp=tp, a=a, n_moe=n_moe, ep=ep)

    # ---- final layer ----
    gemms += [Gemm("final_adaln", b, 2 * d, d, block=False) if cfg.adaln is AdaLN.ZERO
              else Gemm("final_adaln", 0, 0, 0, count=0, block=False),
              Gemm("output_head", tok, p * p * cfg.out_channels, d, block=False)]
    mem.append(MemoryOp("final_norm_modulate", 6 * x, 4, block=False, selective=False, kind="norm"))
    mem.append(MemoryOp("loss_elementwise", 8 * tok * p * p * cfg.out_channels * a, 8,
                        block=False, selective=False, kind="elementwise"))
    gemms = [g for g in gemms if g.count > 0]
    return OperatorInventory(images=images, tp=tp, gemms=tuple(gemms), attention=tuple(attn),
                             memory_ops=tuple(mem),
                             param_tensors=(param_tensor_count(cfg) if ep is None
                                            else int(trainer_param_tensors(cfg, ep))))


def _moe_ops(cfg: ModelConfig, gemms: list, mem: list, *, tok: float, b: float, tp: int,
             a: float, n_moe: int, ep: int | None = None) -> None:
    """Router, dispatch (gather), the experts' batched GEMMs, combine (scatter-add).

    Expert choice: C = S f_c / E per routing group; token choice without dropping pads every
    expert to the whole group (the model computes every slot, filled or not). The experts run
    as one batched matmul per weight (torch.bmm over the stacked local experts): E / ep
    problems, each of the rows one expert gathered from its ep group (ep x C x groups; ep None:
    the model's own E experts of C x groups). Priced at that per-problem shape where the
    profile measured bmm (``compute._gemm_seconds``); else as one GEMM of all the rows."""
    d, h, e = cfg.hidden_size, cfg.mlp_hidden, cfg.ffn.num_experts
    group = cfg.routing_group_tokens
    capacity = cfg.expert_capacity
    if cfg.ffn.kind is FFNKind.TOKEN_CHOICE and not cfg.ffn.drop_tokens:
        capacity = group
    groups = tok / group
    per_expert = capacity * groups  # rows each expert multiplies, from this device's tokens
    slots = e * per_expert
    group_ranks = 1 if ep is None else ep
    local, rows = e / group_ranks, per_expert * group_ranks
    gemms += [Gemm("router", tok, e, d, count=n_moe),
              Gemm("expert_fc1", rows, h / tp, d, count=n_moe, batch=local),
              Gemm("expert_fc2", rows, d, h / tp, count=n_moe, batch=local)]
    f32 = 4.0
    sd = slots * d * a
    mem += [MemoryOp("router_softmax_cast", (tok * e * a + 2 * tok * e * f32) * n_moe, 2 * n_moe,
                     kind="activation"),
            MemoryOp("routing_topk", (tok * e * f32 + 2 * slots * 8) * n_moe, 2 * n_moe,
                     kind="activation"),
            MemoryOp("dispatch_gather", 2 * sd * n_moe, 1 * n_moe, kind="copy"),
            MemoryOp("expert_major_copy", 2 * sd * n_moe, 1 * n_moe, kind="copy"),
            MemoryOp("expert_gelu", 2 * slots * h / tp * a * n_moe, 1 * n_moe, kind="activation"),
            MemoryOp("combine_copy_weight", 4 * sd * n_moe, 3 * n_moe, kind="elementwise"),
            MemoryOp("combine_scatter_add", (2 * sd + 2 * tok * d * a) * n_moe, 2 * n_moe,
                     kind="copy"),
            MemoryOp("routing_stats", (slots * 8 * 3 + tok * 8) * n_moe, 4 * n_moe,
                     selective=False, kind="copy")]
    if cfg.ffn.kind is FFNKind.TOKEN_CHOICE:  # top-k over experts, one-hot, cumsum, index_put
        mem.append(MemoryOp("token_choice_assign", (tok * e * 8 * 6 + 3 * slots * 8) * n_moe,
                            14 * n_moe, selective=False, kind="elementwise"))
