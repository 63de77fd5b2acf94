"""Memory per device for training: model states (DeepSpeed ZeRO semantics), activations, buffers.

Activations have their own module (``activations.py``). Plain arithmetic on Python
numbers *and* numpy arrays, so the layout search (``layouts.py``) evaluates thousands of
layouts in one vectorised pass with the very formulas that ``memory_breakdown`` reports for
one layout. Derivations (bytes per parameter, which group
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
    ModelConfig,
    Optimizer,
    ParallelLayout,
    Precision,
    Recompute,
    TrainingConfig,
)
from ..params import count_params
from ..zero import (
    ZERO_PARTITIONS_GRADIENTS,
    ZERO_PARTITIONS_OPTIMIZER,
    ZERO_PARTITIONS_PARAMETERS,
    check_zero_stage,
)
from .activations import activation_bytes_per_sample, moe_buffer_bytes_per_sample
from .buckets import (
    ZERO_BUCKET_ELEMENTS,
    ZERO_BUCKETS,
    grad_buffer_bytes,
    optimizer_temp_bytes,
    zero_bucket_bytes,
)
from .derivations import assumptions
from .dtypes import BF16_BYTES, FP32_BYTES
from .peak import CONTEXT_BYTES, FRAGMENTATION, GiB, Peak, peak_arrays  # noqa: F401 (re-exported)

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
    """Bytes per device of parameters, gradients and optimizer state (numbers, or arrays over
    layouts inside ``memory_arrays``)."""

    params: Any
    grads: Any
    fp32_grads: Any
    master_weights: Any
    optimizer_states: Any

    @property
    def total(self) -> float:
        return (self.params + self.grads + self.fp32_grads + self.master_weights
                + self.optimizer_states)


MODEL_STATE_PARTS = tuple(f.name for f in fields(ModelStateBytes))


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
                        optimizer: Optimizer, precision: Precision) -> ModelStateBytes:
    k = OPTIMIZER_STATE_BYTES[Optimizer(optimizer)]
    bf16 = Precision(precision) in HALF_PRECISIONS
    w = BF16_BYTES if bf16 else FP32_BYTES

    def both(stage: int) -> Any:
        return _part(non_expert, dp, zero, stage) + _part(expert, expert_dp, zero, stage)

    opt_elems = both(ZERO_PARTITIONS_OPTIMIZER)
    fp32_copy = np.where(np.asarray(zero) >= ZERO_PARTITIONS_PARAMETERS,
                         np.minimum(opt_elems, ZERO3_SUB_GROUP_ELEMENTS),
                         opt_elems)
    # DeepSpeed's ZeRO optimizers keep a flat fp32 partition (and its gradient) in fp32 too;
    # only fp32 at ZeRO-0 (the torch optimizer on the weights themselves) has neither
    copies = 1.0 if bf16 else (np.asarray(zero) >= 1) * 1.0
    return ModelStateBytes(
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
    return ModelStateBytes(**{k: float(getattr(arrays, k)) for k in MODEL_STATE_PARTS})


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
    moe_buffers: float  # dispatch + all-to-all buffers of one MoE layer
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
    def _peak(self) -> Peak:
        return peak_arrays(self, self.grad_accum)

    forward_peak = property(lambda self: float(self._peak.forward_peak),
                            doc="Bytes at the end of a micro-batch's forward (no allowance).")
    backward_peak = property(lambda self: float(self._peak.backward_peak),
                             doc="Bytes at the backward's end (no allowance).")
    step_peak = property(lambda self: float(self._peak.step_peak),
                         doc="Bytes at the optimizer step (no allowance).")
    allocated = property(lambda self: float(self._peak.subtotal),
                         doc="What the CUDA allocator's peak counts: the peak, no allowance.")
    total = property(lambda self: float(self._peak.total), doc="Peak + overhead.")
    peak_phase = property(lambda self: max(
        (("forward", self.forward_peak), ("backward", self.backward_peak),
         ("step", self.step_peak)),
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


@dataclass(frozen=True, kw_only=True)
class MemoryArrays:
    """MemoryBreakdown's parts as arrays over layouts (``memory_arrays``), and their peak."""

    params: Any
    grads: Any
    fp32_grads: Any
    optimizer_states: Any
    master_weights: Any
    ema: Any
    activations: Any
    moe_buffers: Any
    zero3_gather_buffer: Any
    zero_buckets: Any
    grad_buffers: Any
    optimizer_temps: Any
    grad_accum: Any = 1

    @functools.cached_property  # frozen: computed once (``dataclasses.replace`` starts afresh)
    def peak(self) -> Peak:
        return peak_arrays(self, self.grad_accum)

    overhead = property(lambda self: self.peak.overhead, doc="The allowance on the peak.")
    total = property(lambda self: self.peak.total, doc="Peak + overhead.")

    def at(self, i: int, shape: tuple[int, ...]) -> MemoryBreakdown:
        """Layout ``i`` of arrays over layouts of ``shape``."""

        def one(x: Any) -> float:
            return float(np.broadcast_to(x, shape)[i])

        parts = {name: one(getattr(self, name)) for name in MemoryBreakdown._PARTS
                 if name != "overhead"}
        return MemoryBreakdown(**parts, overhead=one(self.overhead),
                               grad_accum=int(np.broadcast_to(self.grad_accum, shape)[i]))


def memory_arrays(split: ParamSplit, act_per_sample: Any, moe_buffer_per_sample: float, *,
                  dp: Any, ep: Any, tp: Any, zero: Any, micro_batch: Any,
                  optimizer: Optimizer, precision: Precision,
                  ema: EMA | str = EMA.NONE, grad_accum: Any = 1,
                  fused: bool = True) -> MemoryArrays:
    """Every MemoryBreakdown part as arrays over layouts, and their peak.

    ``act_per_sample``: activation bytes per sample for each layout's (recompute, tp).
    ``fused``: the trainer's update kernel where torch has one (CUDA); foreach otherwise.
    """
    dp, ep, tp = np.asarray(dp), np.asarray(ep), np.asarray(tp)
    zero, mb = np.asarray(zero), np.asarray(micro_batch)
    non_expert, expert = split.non_expert_per_device(tp), split.expert_per_device(ep, tp)
    states = _model_state_arrays(non_expert, expert, dp=dp, expert_dp=dp // ep, zero=zero,
                                 optimizer=optimizer, precision=precision)
    w = BF16_BYTES if Precision(precision) in HALF_PRECISIONS else FP32_BYTES
    moe = split.experts > 0
    largest_group = np.maximum(_part(non_expert, dp, zero, ZERO_PARTITIONS_OPTIMIZER),
                               _part(expert, dp // ep, zero, ZERO_PARTITIONS_OPTIMIZER))
    gathered_layers = ZERO3_LIVE_LAYERS * w * split.largest_layer_per_device(ep, tp)
    return MemoryArrays(
        **{k: getattr(states, k) for k in MODEL_STATE_PARTS},
        ema=ema_bytes(non_expert, expert, dp=dp, expert_dp=dp // ep, zero=zero, ema=ema),
        activations=mb * np.asarray(act_per_sample),
        # the stacked local expert weights hold no memory of their own: a strided view of
        # the experts' buffer (train.expert_parallel), built outside any compiled region
        moe_buffers=mb * moe_buffer_per_sample + 0.0 * dp,
        zero3_gather_buffer=np.where(zero >= ZERO_PARTITIONS_PARAMETERS, gathered_layers, 0.0),
        zero_buckets=zero_bucket_bytes(dp=dp, zero=zero, w=w, moe=moe),
        grad_buffers=grad_buffer_bytes(non_expert, expert, dp=dp, zero=zero, w=w, moe=moe),
        optimizer_temps=optimizer_temp_bytes(
            largest_group, states.grads, zero=zero, optimizer=optimizer, fused=fused,
            # torch steps a param group at a time (shared, experts); bf16 without contiguous
            # gradients (dense, one rank) flattens to bf16 before the fp32 cast
            flat_copy=np.where((dp == 1) & (not moe) & (w == BF16_BYTES), states.grads, 0.0)),
        grad_accum=grad_accum)


def memory_breakdown(cfg: ModelConfig, layout: ParallelLayout,
                     training: TrainingConfig | None = None, *,
                     flash_attention: bool = True, fused: bool = True) -> MemoryBreakdown:
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
                           fused=fused)
    return arrays.at(0, (1,))
