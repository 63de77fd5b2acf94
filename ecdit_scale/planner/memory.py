"""Memory per device for training: model states (DeepSpeed ZeRO semantics), activations, buffers.

Plain arithmetic on Python numbers *and* numpy arrays, so the layout search (``layouts.py``)
evaluates thousands of layouts in one vectorised pass with the very formulas that
``memory_breakdown`` reports for one layout. Derivations (bytes per parameter, which group
partitions what, the EMA, activations after Korthikanti et al. 2022, the peak):
``DERIVATIONS.md``, section "Memory".
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..config import (
    EMA,
    HALF_PRECISIONS,
    ZERO_PARTITIONS_GRADIENTS,
    ZERO_PARTITIONS_OPTIMIZER,
    ZERO_PARTITIONS_PARAMETERS,
    ModelConfig,
    Optimizer,
    ParallelLayout,
    Precision,
    Recompute,
    TrainingConfig,
    check_zero_stage,
)
from ..params import count_params
from .buckets import (
    ZERO_BUCKET_ELEMENTS,
    ZERO_BUCKETS,
    grad_buffer_bytes,
    optimizer_temp_bytes,
    zero_bucket_bytes,
)
from .derivations import assumptions
from .flops import expert_slots_per_image
from .peak import CONTEXT_BYTES, FRAGMENTATION, GiB, peak_arrays  # noqa: F401 (re-exported)

BF16_BYTES = 2
FP32_BYTES = 4
INDEX_BYTES = 8  # int64 routing indices

OPTIMIZER_STATE_BYTES = {Optimizer.ADAMW: 8, Optimizer.RMSPROP: 8, Optimizer.SGD: 4}

ZERO3_SUB_GROUP_ELEMENTS = 1_000_000_000  # DeepSpeed's default sub_group_size
ZERO3_LIVE_LAYERS = 2  # the layer being computed + the prefetched one (DeepSpeed: 4 B x largest)

RECOMPUTE_ORDER = (Recompute.NONE, Recompute.SELECTIVE, Recompute.FULL)

ASSUMPTIONS = assumptions("Memory", fragmentation=FRAGMENTATION, context_gib=CONTEXT_BYTES / GiB,
                          buckets=ZERO_BUCKETS, bucket_elements=ZERO_BUCKET_ELEMENTS)



def _part(n: Any, group: Any, zero: Any, stage: int) -> Any:
    """n elements, divided over ``group`` ranks where the ZeRO stage partitions them."""
    return np.where(np.asarray(zero) >= stage, n / np.asarray(group), n)


# ---------------------------------------------------------------------------------------------
# Parameters per device
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ParamSplit:
    """A model's parameters by how they are sharded (element counts, whole model)."""

    tp_sharded: int  # attention (self + cross) and dense FFN matrices
    replicated: int  # embedders, adaLN, router, output head
    experts: int  # all experts of all MoE layers
    num_experts: int
    largest_replicated_layer: int  # adaLN Linear(d, 6d) etc.: never tp-sharded
    largest_tp_layer: int  # fc1 / q: divided by tp
    expert_module_params: int  # one MoE layer's Experts module (all E experts)

    @classmethod
    def of(cls, cfg: ModelConfig) -> ParamSplit:
        b = count_params(cfg)
        d, f = cfg.hidden_size, cfg.mlp_hidden
        return cls(
            tp_sharded=b.self_attention + b.cross_attention + b.ffn,
            replicated=b.embedders + b.adaln + b.router + b.output_head,
            experts=b.experts,
            num_experts=cfg.ffn.num_experts,
            largest_replicated_layer=max(6 * d * d + 6 * d, cfg.text_dim * d + d),
            largest_tp_layer=max(d * f + f, d * d + d),
            expert_module_params=(cfg.ffn.num_experts * b.expert_params_per_expert
                                  if cfg.ffn.is_moe else 0),
        )

    def non_expert_per_device(self, tp: Any) -> Any:
        """Non-expert params a tp rank holds before ZeRO."""
        return self.tp_sharded / np.asarray(tp) + self.replicated

    def expert_per_device(self, ep: Any, tp: Any) -> Any:
        """Expert params an (ep, tp) rank holds before ZeRO: E/ep experts, 1/tp of each."""
        return self.experts / (np.asarray(ep) * np.asarray(tp))

    def largest_layer_per_device(self, ep: Any, tp: Any) -> Any:
        """The largest module ZeRO-3 gathers at once (DeepSpeed fetches per module)."""
        return np.maximum(np.maximum(self.largest_replicated_layer,
                                     self.largest_tp_layer / np.asarray(tp)),
                          self.expert_module_params / (np.asarray(ep) * np.asarray(tp)))


# ---------------------------------------------------------------------------------------------
# Model states
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ModelStateBytes:
    """Bytes per device of parameters, gradients and optimizer state."""

    params: float
    grads: float
    fp32_grads: float
    master_weights: float
    optimizer_states: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.fp32_grads + self.master_weights + self.optimizer_states


def ema_bytes(non_expert: Any, expert: Any, *, dp: Any, expert_dp: Any, zero: Any,
              ema: EMA | str) -> Any:
    """fp32 EMA bytes per device for ``non_expert`` and ``expert`` elements held before ZeRO."""
    ema = EMA(ema)
    if ema is EMA.NONE:
        return 0.0 * np.asarray(zero)
    if ema is EMA.REPLICATED:
        return FP32_BYTES * (np.asarray(non_expert) + np.asarray(expert)) + 0.0 * np.asarray(zero)
    return FP32_BYTES * (_part(non_expert, dp, zero, ZERO_PARTITIONS_OPTIMIZER)
                         + _part(expert, expert_dp, zero, ZERO_PARTITIONS_OPTIMIZER))


def _model_state_arrays(non_expert: Any, expert: Any, *, dp: Any, expert_dp: Any, zero: Any,
                        optimizer: Optimizer, precision: Precision) -> dict[str, Any]:
    k = OPTIMIZER_STATE_BYTES[Optimizer(optimizer)]
    bf16 = Precision(precision) in HALF_PRECISIONS
    w = BF16_BYTES if bf16 else FP32_BYTES

    def both(stage: int) -> Any:
        return _part(non_expert, dp, zero, stage) + _part(expert, expert_dp, zero, stage)

    opt_elems = both(ZERO_PARTITIONS_OPTIMIZER)
    fp32_copy = np.where(np.asarray(zero) >= ZERO_PARTITIONS_PARAMETERS, np.minimum(opt_elems, ZERO3_SUB_GROUP_ELEMENTS),
                         opt_elems)
    # DeepSpeed's ZeRO optimizers keep a flat fp32 partition (and its gradient) in fp32 too;
    # only fp32 at ZeRO-0 (the torch optimizer on the weights themselves) has neither
    copies = 1.0 if bf16 else (np.asarray(zero) >= 1) * 1.0
    return dict(
        params=w * both(ZERO_PARTITIONS_PARAMETERS),
        grads=w * both(ZERO_PARTITIONS_GRADIENTS),
        fp32_grads=FP32_BYTES * fp32_copy * copies,
        master_weights=FP32_BYTES * opt_elems * copies,
        optimizer_states=k * opt_elems,
    )


def model_state_bytes(total_params: int, *, num_devices: int, zero_stage: int,
                      optimizer: Optimizer | str = Optimizer.ADAMW,
                      precision: Precision | str = Precision.BF16,
                      expert_params: int = 0, ep: int = 1) -> ModelStateBytes:
    """Model states per device when ``total_params`` non-expert and ``expert_params`` expert
    parameters are trained data-parallel on ``num_devices`` ranks (no tensor parallelism).

    Compare with DeepSpeed (dense, AdamW, bf16, no offload):
    ZeRO-2 ``2P + 18P/N`` (= 2 params + [2 grads + 4 fp32 grads + 4 master + 8 Adam] / N) — the
    same count; ZeRO-3 ``18P/N + 4 x largest layer``: we count 20P/N (the persistent bf16
    gradient partition *and* the fp32 copy made for the step; see ``tests/test_memory.py``) and
    the gathered layers separately (``zero3_gather_buffer``).
    """
    check_zero_stage(zero_stage, name="zero_stage")
    if num_devices % ep:
        raise ValueError(f"ep = {ep} does not divide num_devices = {num_devices}")
    arrays = _model_state_arrays(float(total_params), float(expert_params) / ep, dp=num_devices,
                                 expert_dp=num_devices // ep, zero=zero_stage,
                                 optimizer=Optimizer(optimizer), precision=Precision(precision))
    return ModelStateBytes(**{k: float(v) for k, v in arrays.items()})


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------


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
    output: it drops the LN and modulate outputs (2 S d), the SDPA output and its log-sum-exp. A dense FFN keeps its input,
    fc1 and fc2 outputs: it drops the LN and modulate outputs (2 S d) and GELU's (S F). An MoE
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
        cross_shard=(a * (2 * S * d + 2 * T * kv) + FP32_BYTES * h * S + cross_scores) if cross else 0.0,
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


def moe_buffer_bytes_per_sample(cfg: ModelConfig, *, precision: Precision = Precision.BF16) -> float:
    """Transient dispatch/all-to-all buffers of one MoE layer per sample: the gathered send
    buffer and the combine receive buffer (slots x d each); the dispatched receive and combine
    send tensors are saved activations, counted there."""
    if not cfg.ffn.is_moe:
        return 0.0
    a = BF16_BYTES if Precision(precision) in HALF_PRECISIONS else FP32_BYTES
    return 2.0 * a * expert_slots_per_image(cfg) * cfg.hidden_size


# ---------------------------------------------------------------------------------------------
# The whole device
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MemoryBreakdown:
    """Bytes per device, by part, and at the peak of a training step: ``total`` is the states
    held all step plus the larger of the forward's and the step's transient parts, plus the
    overhead allowance (``peak_arrays``); not every part is alive at once."""

    params: float
    grads: float  # bf16 (or fp32) gradients
    fp32_grads: float  # DeepSpeed's fp32 copy of the gradient partition for the step
    optimizer_states: float
    master_weights: float
    ema: float  # fp32 EMA of the weights (replicated or sharded with the optimizer state)
    activations: float  # saved for backward, whole micro-batch
    moe_buffers: float  # dispatch + all-to-all buffers of one MoE layer + stacked expert weights
    zero3_gather_buffer: float  # gathered full layers (ZeRO-3 only)
    zero_buckets: float  # gradient reduce buckets (allocated in the backward)
    grad_buffers: float  # flat gradient copy at the backward's end (all-reduce / one-rank bucket)
    optimizer_temps: float  # the step's temporaries (foreach update, bf16 flattening)
    overhead: float  # fragmentation + CUDA context (see assumptions)
    grad_accum: int = 1  # > 1: gradients are held through the next micro-batch's forward
    assumptions: tuple[str, ...] = ASSUMPTIONS

    _PARTS = ("params", "grads", "fp32_grads", "optimizer_states", "master_weights", "ema",
              "activations", "moe_buffers", "zero3_gather_buffer", "zero_buckets", "grad_buffers",
              "optimizer_temps", "overhead")

    @property
    def model_states(self) -> float:
        return (self.params + self.grads + self.fp32_grads + self.optimizer_states
                + self.master_weights)

    @functools.cached_property  # the fields are frozen: computed once per breakdown
    def _peak(self) -> dict[str, Any]:
        return peak_arrays({name: getattr(self, name) for name in self._PARTS}, self.grad_accum)

    forward_peak = property(lambda self: float(self._peak["forward_peak"]),
                            doc="Bytes at the end of a micro-batch's forward (no allowance).")
    backward_peak = property(lambda self: float(self._peak["backward_peak"]),
                             doc="Bytes at the backward's end (no allowance).")
    step_peak = property(lambda self: float(self._peak["step_peak"]),
                         doc="Bytes at the optimizer step (no allowance).")
    allocated = property(lambda self: float(self._peak["subtotal"]),
                         doc="What the CUDA allocator's peak counts: the peak, no allowance.")
    total = property(lambda self: float(self._peak["total"]), doc="Peak + overhead.")
    peak_phase = property(lambda self: max(
        (("forward", self.forward_peak), ("backward", self.backward_peak), ("step", self.step_peak)),
        key=lambda kv: kv[1])[0])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: float(getattr(self, name)) for name in self._PARTS}
        out["model_states"] = float(self.model_states)
        out["forward_peak"], out["backward_peak"] = self.forward_peak, self.backward_peak
        out["step_peak"] = self.step_peak
        out["peak_phase"], out["allocated"] = self.peak_phase, self.allocated
        out["grad_accum"] = self.grad_accum
        out["total"] = float(self.total)
        out["assumptions"] = list(self.assumptions)
        return out


def memory_arrays(split: ParamSplit, act_per_sample: Any, moe_buffer_per_sample: float, *,
                  dp: Any, ep: Any, tp: Any, zero: Any, micro_batch: Any,
                  optimizer: Optimizer, precision: Precision,
                  ema: EMA | str = EMA.NONE, grad_accum: Any = 1,
                  fused: bool = True, compiled: bool = True) -> dict[str, Any]:
    """Every MemoryBreakdown field (and ``total``) as arrays over layouts.

    ``act_per_sample``: activation bytes per sample for each layout's (recompute, tp).
    ``fused``: the trainer's update kernel where torch has one (CUDA); foreach otherwise.
    ``compiled``: blocks under torch.compile (the trainer's CUDA default); eager otherwise.
    """
    dp, ep, tp = np.asarray(dp), np.asarray(ep), np.asarray(tp)
    zero, mb = np.asarray(zero), np.asarray(micro_batch)
    non_expert, expert = split.non_expert_per_device(tp), split.expert_per_device(ep, tp)
    states = _model_state_arrays(non_expert, expert, dp=dp, expert_dp=dp // ep, zero=zero,
                                 optimizer=optimizer, precision=precision)
    w = BF16_BYTES if Precision(precision) in HALF_PRECISIONS else FP32_BYTES
    out = dict(states)
    out["ema"] = ema_bytes(non_expert, expert, dp=dp, expert_dp=dp // ep, zero=zero, ema=ema)
    out["activations"] = mb * np.asarray(act_per_sample)
    # + eager: the stacked local expert weights, saved for the backward (compiled: recomputed)
    out["moe_buffers"] = mb * moe_buffer_per_sample + (0.0 if compiled else w) * expert + 0.0 * dp
    out["zero3_gather_buffer"] = np.where(
        zero >= ZERO_PARTITIONS_PARAMETERS, ZERO3_LIVE_LAYERS * w * split.largest_layer_per_device(ep, tp), 0.0)
    moe = split.experts > 0
    out["zero_buckets"] = zero_bucket_bytes(dp=dp, zero=zero, w=w, moe=moe)
    out["grad_buffers"] = grad_buffer_bytes(non_expert, expert, dp=dp, zero=zero, w=w, moe=moe)
    largest_group = np.maximum(_part(non_expert, dp, zero, ZERO_PARTITIONS_OPTIMIZER),
                               _part(expert, dp // ep, zero, ZERO_PARTITIONS_OPTIMIZER))
    out["optimizer_temps"] = optimizer_temp_bytes(
        largest_group, states["grads"], zero=zero, optimizer=optimizer, fused=fused,
        # torch steps a param group at a time (shared, experts); bf16 without contiguous
        # gradients (dense, one rank) flattens to bf16 before the fp32 cast
        flat_copy=np.where((dp == 1) & (not moe) & (w == BF16_BYTES), states["grads"], 0.0))
    peak = peak_arrays(out, grad_accum)
    out["overhead"], out["total"] = peak["overhead"], peak["total"]
    return out


def memory_breakdown(cfg: ModelConfig, layout: ParallelLayout,
                     training: TrainingConfig | None = None, *,
                     flash_attention: bool = True, fused: bool = True,
                     compiled: bool = True) -> MemoryBreakdown:
    """Peak bytes per device of one layout (the same formulas the search vectorises)."""
    training = training or TrainingConfig()
    ga = max(1, training.global_batch // (layout.dp * layout.micro_batch))
    act = activation_bytes_per_sample(cfg, layout.recompute, tp=layout.tp,
                                      precision=training.precision,
                                      flash_attention=flash_attention).total
    arrays = memory_arrays(ParamSplit.of(cfg), act,
                           moe_buffer_bytes_per_sample(cfg, precision=training.precision),
                           dp=layout.dp, ep=layout.ep, tp=layout.tp, zero=layout.zero,
                           micro_batch=layout.micro_batch, optimizer=training.optimizer,
                           precision=training.precision, ema=training.ema, grad_accum=ga,
                           fused=fused, compiled=compiled)
    return MemoryBreakdown(**{f.name: float(arrays[f.name]) for f in fields(MemoryBreakdown)
                              if f.name not in ("assumptions", "grad_accum")}, grad_accum=ga)
