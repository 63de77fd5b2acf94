"""Every valid (dp, ep, tp, ZeRO stage, micro-batch, recompute) layout: memory, step time, rank.

Enumeration rules (world = nodes x gpus_per_node):
- dp * tp = world; tp <= gpus per node (tensor parallelism stays on NVLink), tp divides the
  number of query heads *and* of KV heads (each tp rank owns whole KV groups; replicating KV
  heads across tp ranks is not modelled);
- ep divides dp (DeepSpeed-MoE shards experts inside the data-parallel group) and the number of
  experts; ep = 1 for dense models;
- dp * micro_batch divides the global batch (gradient accumulation = global / (dp * micro));
  micro-batches up to ``MAX_MICRO_BATCH``; a micro-batch must fill whole routing groups;
- ZeRO 0/1/2/3 x recompute none/selective/full; MoE models search ZeRO 0/1/2 only
  (DeepSpeed-MoE refuses ZeRO-3; a pinned --zero 3 is an error; ``estimate_layout`` still
  estimates such a layout, flagged). tp > 1 layouts rank
  normally but carry a flag: this project's trainer (``ecdit_scale.train``) has no tensor
  parallelism, so they need a Megatron-style model (pin ``tp=1`` for a launchable plan).

Step time: ``step_time.step_time_arrays`` (term by term, exposed vs hidden), fed with this
module's columns of layouts; communication: ``comm.comm_arrays``. The same evaluator prices one
layout (``estimate_layout``) and the whole search (``search_layouts``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import EMA, ClusterConfig, ModelConfig, ParallelLayout, Recompute, TrainingConfig
from ..errors import ConfigError
from ..integers import divisors
from ..units import format_bytes
from ..zero import MOE_ZERO_STAGES, ZERO_STAGES, check_zero_stage, zero_supports_moe
from .comm import COMM_ASSUMPTIONS, CommBreakdown, Links, comm_arrays
from .flops import flops_per_image, training_flops_per_image
from .memory import (
    RECOMPUTE_ORDER,
    MemoryArrays,
    MemoryBreakdown,
    ParamSplit,
    activation_bytes_per_sample,
    ema_bytes,
    memory_arrays,
    moe_buffer_bytes_per_sample,
)
from .placement import PLACEMENT_ORDER, Placement
from .step_time import COMPUTE_ASSUMPTIONS, OVERLAP_RULES, StepTime, step_time_arrays

MAX_MICRO_BATCH = 256
ZERO3_MOE_FLAG = "zero3-moe: DeepSpeed-MoE does not support ZeRO-3 (estimate only)"
TP_FLAG = ("tp>1: needs a Megatron-style tensor-parallel model; ecdit_scale.train runs "
           "data x expert parallelism only")
PIN_KEYS = ("dp", "ep", "tp", "zero", "micro_batch", "recompute", "placement", "ema")
EMA_ORDER = (EMA.NONE, EMA.REPLICATED, EMA.SHARDED)
STEP_ASSUMPTIONS = (*COMPUTE_ASSUMPTIONS, *OVERLAP_RULES, *COMM_ASSUMPTIONS)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LayoutEstimate:
    layout: ParallelLayout
    grad_accum: int
    memory: MemoryBreakdown
    step: StepTime
    comm: CommBreakdown
    flags: tuple[str, ...] = ()
    placement: Placement = Placement.EXPERT_BEFORE_DATA  # rank order of ep and expert-dp groups
    ema: EMA = EMA.NONE  # where the EMA of the weights lives (none when the run keeps none)

    def describe(self) -> str:
        return (describe_layout(self.layout) + f" placement={self.placement.value}"
                + (f" ema={self.ema.value}" if self.ema is not EMA.NONE else ""))

    def to_dict(self) -> dict[str, Any]:
        lay = self.layout
        return {
            "layout": {"dp": lay.dp, "ep": lay.ep, "tp": lay.tp, "zero": lay.zero,
                       "micro_batch": lay.micro_batch, "recompute": lay.recompute.value,
                       "grad_accum": self.grad_accum, "expert_dp": lay.expert_dp,
                       "world": lay.world, "placement": self.placement.value,
                       "ema": self.ema.value},
            "memory": self.memory.to_dict(),
            "step": self.step.to_dict(),
            "comm": self.comm.to_dict(),
            "flags": list(self.flags),
        }


@dataclass(frozen=True, kw_only=True)
class Rejection:
    layout: ParallelLayout
    reason: str
    memory_bytes: float


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    feasible: list[LayoutEstimate]  # ranked (step time, then memory); at most ``keep``
    num_evaluated: int
    num_feasible: int
    rejected: dict[str, int]  # reason -> count
    rejected_examples: list[Rejection]
    world: int
    accelerator: str
    assumptions: tuple[str, ...] = STEP_ASSUMPTIONS

    @property
    def best(self) -> LayoutEstimate:
        return self.feasible[0]

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        return {
            "world": self.world, "accelerator": self.accelerator,
            "num_evaluated": self.num_evaluated, "num_feasible": self.num_feasible,
            "feasible": [e.to_dict() for e in self.feasible[:top]],
            "rejected": dict(self.rejected),
            "rejected_examples": [{"layout": describe_layout(r.layout), "reason": r.reason}
                                  for r in self.rejected_examples],
            "assumptions": list(self.assumptions),
        }


def describe_layout(lay: ParallelLayout) -> str:
    return (f"dp={lay.dp} ep={lay.ep} tp={lay.tp} zero={lay.zero} micro_batch={lay.micro_batch} "
            f"recompute={lay.recompute.value}")


# ---------------------------------------------------------------------------------------------
# Enumeration and pins
# ---------------------------------------------------------------------------------------------


def _list(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def valid_tp(cfg: ModelConfig, world: int, gpus_per_node: int) -> list[int]:
    return [t for t in divisors(world) if t <= gpus_per_node and cfg.num_heads % t == 0
            and cfg.num_kv_heads % t == 0]


def valid_ep(cfg: ModelConfig, dp: int) -> list[int]:
    if not cfg.ffn.is_moe:
        return [1]
    return [e for e in divisors(cfg.ffn.num_experts) if dp % e == 0]


def valid_micro_batches(cfg: ModelConfig, global_batch: int, dp: int) -> list[int]:
    if global_batch % dp:
        return []
    group = cfg.routing_group_tokens if cfg.ffn.is_moe else 1
    return [m for m in divisors(global_batch // dp)
            if m <= MAX_MICRO_BATCH and (m * cfg.tokens_per_image) % group == 0]


def _check_pins(pin: dict[str, Any] | None) -> dict[str, Any]:
    pin = {k: v for k, v in (pin or {}).items() if v is not None}
    unknown = sorted(set(pin) - set(PIN_KEYS))
    if unknown:
        raise ConfigError(f"cannot pin {', '.join(unknown)}; pinnable: {', '.join(PIN_KEYS)}")
    for key in ("dp", "ep", "tp", "micro_batch"):
        if key in pin and (isinstance(pin[key], bool) or not isinstance(pin[key], int)
                           or pin[key] < 1):
            raise ConfigError(f"--{key.replace('_', '-')} {pin[key]!r}: must be an integer >= 1")
    if "zero" in pin:
        check_zero_stage(pin["zero"], name="--zero")
    for key, kind in (("recompute", Recompute), ("placement", Placement), ("ema", EMA)):
        if key in pin:
            try:
                pin[key] = kind(pin[key])
            except ValueError:
                raise ConfigError(f"--{key} {pin[key]!r}: choose one of "
                                  f"{', '.join(r.value for r in kind)}") from None
    return pin


def enumerate_shapes(cfg: ModelConfig, training: TrainingConfig, cluster: ClusterConfig,
                     pin: dict[str, Any] | None = None) -> list[tuple[int, int, int, list[int]]]:
    """(dp, ep, tp, micro-batches) for every valid shape; a pin that breaks a rule raises
    ConfigError naming it."""
    pin = _check_pins(pin)
    world, gpn, gb = cluster.world, cluster.gpus_per_node, training.global_batch
    tps = valid_tp(cfg, world, gpn)
    if "tp" in pin:
        t = pin["tp"]
        if world % t:
            raise ConfigError(f"--tp {t} does not divide the world of {world} devices; "
                              f"valid: {_list(tps)}")
        if t > gpn:
            raise ConfigError(f"--tp {t} exceeds {gpn} devices per node (tensor parallelism "
                              f"stays inside a node); valid: {_list(tps)}")
        if cfg.num_heads % t or cfg.num_kv_heads % t:
            raise ConfigError(f"--tp {t} does not divide {cfg.num_heads} heads and "
                              f"{cfg.num_kv_heads} KV heads; valid: {_list(tps)}")
        tps = [t]
    if "dp" in pin:
        d = pin["dp"]
        if world % d:
            raise ConfigError(f"--dp {d} does not divide the world of {world} devices "
                              f"({cluster.nodes} nodes x {gpn}); valid: "
                              f"{_list([world // t for t in tps])}")
        if world // d not in tps:
            raise ConfigError(f"--dp {d} needs tp = {world // d} (dp x tp = {world}), which is "
                              f"not valid here; valid dp: {_list([world // t for t in tps])}")
        if gb % d:
            ok = [world // t for t in tps if gb % (world // t) == 0]
            hint = (f"pick dp among {_list(ok)}" if ok else
                    f"no valid dp divides it; use a global batch that is a multiple of {d}")
            raise ConfigError(f"global batch {gb} is not divisible by dp={d}; {hint}")
        tps = [world // d]
    if "ep" in pin:
        e = pin["ep"]
        experts = cfg.ffn.num_experts if cfg.ffn.is_moe else 1
        if experts % e:
            what = f"{experts} experts" if cfg.ffn.is_moe else "a dense model (1 expert)"
            raise ConfigError(f"--ep {e} does not divide {what}; valid: "
                              f"{_list(divisors(experts))}")
    shapes: list[tuple[int, int, int, list[int]]] = []
    skipped: list[str] = []  # why a tp (and its dp) was dropped under the pins
    for t in tps:
        d = world // t
        eps = valid_ep(cfg, d)
        if "ep" in pin:
            if pin["ep"] not in eps:
                skipped.append(f"--ep {pin['ep']} does not divide dp={d} (expert parallelism "
                               f"runs inside the data-parallel group); valid: {_list(eps)}")
                continue
            eps = [pin["ep"]]
        mbs = valid_micro_batches(cfg, gb, d)
        if "micro_batch" in pin:
            m = pin["micro_batch"]
            if m not in mbs:
                skipped.append(
                    f"global batch {gb} not divisible by dp={d} x micro_batch={m} = {d * m}"
                    + (f"; valid micro-batches for dp={d}: {_list(mbs)}" if mbs else
                       f"; dp={d} does not divide it either"))
                continue
            mbs = [m]
        if not mbs:
            skipped.append(
                f"global batch {gb} is not divisible by dp={d}" if gb % d else
                f"no micro-batch of dp={d} fills whole routing groups of "
                f"{cfg.routing_group_tokens} tokens (ffn.group_size = {cfg.ffn.group_size}; "
                f"a divisor of the {cfg.tokens_per_image} tokens per image always fits)")
            continue
        shapes.extend((d, e, t, mbs) for e in eps)
    if not shapes:
        if len(skipped) == 1:
            raise ConfigError(skipped[0])
        pinned = ", ".join(f"{k}={v.value if hasattr(v, 'value') else v}" for k, v in pin.items())
        raise ConfigError(
            f"no layout of {world} devices fits the rules"
            + (f" with {pinned}" if pinned else "")
            + f": {'; '.join(skipped[:2])}" + (" ..." if len(skipped) > 2 else ""))
    return shapes


# ---------------------------------------------------------------------------------------------
# Vectorised evaluation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Columns:
    dp: np.ndarray
    ep: np.ndarray
    tp: np.ndarray
    zero: np.ndarray
    mb: np.ndarray
    rc: np.ndarray  # index into RECOMPUTE_ORDER
    pl: np.ndarray  # index into placement.PLACEMENT_ORDER
    em: np.ndarray  # index into EMA_ORDER

    def __len__(self) -> int:
        return len(self.dp)


def _placements(dp: int, ep: int, placements: list[Placement]) -> list[Placement]:
    """The placements that differ for this shape: with ep = 1 or ep = dp both orders build
    the same groups (DeepSpeed's default stands for both)."""
    return placements if 1 < ep < dp else placements[:1]


def _columns(shapes, zeros, recomputes, placements=(Placement.EXPERT_BEFORE_DATA,),
             emas=(EMA.NONE,)) -> _Columns:
    rc_codes = np.array([RECOMPUTE_ORDER.index(r) for r in recomputes])
    em_codes = np.array([EMA_ORDER.index(e) for e in emas])
    zeros = np.array(zeros)
    parts: list[list[np.ndarray]] = [[] for _ in range(8)]
    for dp, ep, tp, mbs in shapes:
        pl_codes = np.array([PLACEMENT_ORDER.index(p)
                             for p in _placements(dp, ep, list(placements))])
        z, m, r, p, e = np.meshgrid(zeros, np.array(mbs), rc_codes, pl_codes, em_codes,
                                    indexing="ij")
        n = z.size
        for col, arr in zip(parts, (np.full(n, dp), np.full(n, ep), np.full(n, tp), z.ravel(),
                                    m.ravel(), r.ravel(), p.ravel(), e.ravel()),
                            strict=True):
            col.append(arr)
    cat = [np.concatenate(p).astype(np.int64) for p in parts]
    return _Columns(*cat)


def _choices(cfg: ModelConfig, training: TrainingConfig, pin: dict[str, Any]):
    """(placements, EMAs) the search covers: both rank orders for an MoE model, and where
    the run keeps an EMA both a sharded one and a replica (the ranking keeps the replica only
    where it costs nothing); a pin fixes either."""
    placements = (list(PLACEMENT_ORDER) if cfg.ffn.is_moe else [Placement.EXPERT_BEFORE_DATA])
    emas = [EMA.NONE] if training.ema is EMA.NONE else [EMA.REPLICATED, EMA.SHARDED]
    return ([pin["placement"]] if "placement" in pin else placements,
            [pin["ema"]] if "ema" in pin else emas)


@dataclass(frozen=True)
class _Evaluation:
    """Columns of layouts, evaluated: arrays over the layouts."""

    grad_accum: np.ndarray
    memory: MemoryArrays
    comm: CommBreakdown
    step: StepTime


class _Evaluator:
    """Per-model constants computed once; ``__call__`` evaluates columns of layouts."""

    def __init__(self, cfg: ModelConfig, training: TrainingConfig, cluster: ClusterConfig, acc):
        self.cfg, self.training, self.cluster, self.acc = cfg, training, cluster, acc
        # the trainer's kernels on this device: fused updates and compiled blocks but on a CPU
        self.cuda_trainer = acc.deepspeed_accelerator != "cpu"
        self.split = ParamSplit.of(cfg)
        self.links = Links.of(acc, cluster.gpus_per_node)
        self.moe_buffer = moe_buffer_bytes_per_sample(cfg, precision=training.precision)
        fwd = flops_per_image(cfg)
        self.forward_flops = fwd.forward
        self.backward_flops = fwd.backward
        tf = [training_flops_per_image(cfg, r) for r in RECOMPUTE_ORDER]
        self.model_flops = tf[0].model_flops
        self.recompute_flops = np.array([t.recompute_flops for t in tf])
        self._act: dict[int, np.ndarray] = {}

    def act_table(self, tps: np.ndarray) -> np.ndarray:
        """(len(RECOMPUTE_ORDER), max tp + 1) activation bytes per sample."""
        top = int(tps.max())
        table = np.zeros((len(RECOMPUTE_ORDER), top + 1))
        for t in np.unique(tps):
            t = int(t)
            if t not in self._act:
                self._act[t] = np.array([activation_bytes_per_sample(
                    self.cfg, r, tp=t, precision=self.training.precision).total
                    for r in RECOMPUTE_ORDER])
            table[:, t] = self._act[t]
        return table

    def __call__(self, c: _Columns) -> _Evaluation:
        tr, acc = self.training, self.acc
        world, gb = self.cluster.world, tr.global_batch
        ga = gb // (c.dp * c.mb)
        act = self.act_table(c.tp)[c.rc, c.tp]
        mem = memory_arrays(self.split, act, self.moe_buffer, dp=c.dp, ep=c.ep, tp=c.tp,
                            zero=c.zero, micro_batch=c.mb, optimizer=tr.optimizer,
                            precision=tr.precision, ema=EMA.NONE, grad_accum=ga,
                            fused=self.cuda_trainer)
        # the EMA per layout (a search column), then the peak with it
        non_expert = self.split.non_expert_per_device(c.tp)
        expert = self.split.expert_per_device(c.ep, c.tp)
        mem = dataclasses.replace(mem, ema=sum(
            np.where(c.em == code, ema_bytes(non_expert, expert, dp=c.dp, expert_dp=c.dp // c.ep,
                                             zero=c.zero, ema=kind), 0.0)
            for code, kind in enumerate(EMA_ORDER)))
        com = comm_arrays(self.cfg, self.split, self.links, dp=c.dp, ep=c.ep, tp=c.tp,
                          zero=c.zero, micro_batch=c.mb, grad_accum=ga, recompute_code=c.rc,
                          precision=tr.precision, placement_code=c.pl)
        step = step_time_arrays(
            forward_flops=self.forward_flops, backward_flops=self.backward_flops,
            recompute_flops=self.recompute_flops[c.rc], model_flops=self.model_flops, com=com,
            mem=mem, acc=acc, depth=self.cfg.depth, world=world, global_batch=gb, tp=c.tp,
            zero=c.zero, micro_batch=c.mb, grad_accum=ga, recompute_code=c.rc,
            precision=tr.precision, cfg=self.cfg, ep=c.ep, optimizer=tr.optimizer)
        return _Evaluation(grad_accum=ga, memory=mem, comm=com, step=step)


def _estimate(cfg: ModelConfig, c: _Columns, ev: _Evaluation, i: int) -> LayoutEstimate:
    layout = ParallelLayout(dp=int(c.dp[i]), ep=int(c.ep[i]), tp=int(c.tp[i]),
                            zero=int(c.zero[i]), micro_batch=int(c.mb[i]),
                            recompute=RECOMPUTE_ORDER[int(c.rc[i])])
    mem = ev.memory.at(i, c.dp.shape)
    comm = ev.comm.at(i, c.dp.shape)
    step = ev.step.at(i, c.dp.shape)
    flags = (((ZERO3_MOE_FLAG,) if cfg.ffn.is_moe and not zero_supports_moe(layout.zero) else ())
             + ((TP_FLAG,) if layout.tp > 1 else ()))
    return LayoutEstimate(layout=layout, grad_accum=int(ev.grad_accum[i]), memory=mem, step=step,
                          comm=comm, flags=flags, placement=PLACEMENT_ORDER[int(c.pl[i])],
                          ema=EMA_ORDER[int(c.em[i])])


# ---------------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------------


def search_layouts(cfg: ModelConfig, training: TrainingConfig, cluster: ClusterConfig, acc, *,
                   pin: dict[str, Any] | None = None, keep: int = 50,
                   examples: int = 5) -> SearchResult:
    """Rank every valid layout that fits ``acc.memory_bytes``; ``keep`` best are materialised.

    Raises ConfigError (one line) when a pin breaks a rule or when no layout fits in memory.
    """
    pin = _check_pins(pin)
    moe_zeros = MOE_ZERO_STAGES if cfg.ffn.is_moe else ZERO_STAGES
    if "zero" in pin and pin["zero"] not in moe_zeros:
        raise ConfigError(
            f"--zero {pin['zero']}: DeepSpeed-MoE refuses ZeRO-3 (\"MoE not supported with Stage "
            f"3\") and {cfg.name} has {cfg.ffn.num_experts} experts; choose --zero "
            f"{', '.join(map(str, moe_zeros[:-1]))} or {moe_zeros[-1]}")
    shapes = enumerate_shapes(cfg, training, cluster, pin)
    zeros = [pin["zero"]] if "zero" in pin else list(moe_zeros)
    recomputes = [pin["recompute"]] if "recompute" in pin else list(RECOMPUTE_ORDER)
    cols = _columns(shapes, zeros, recomputes, *_choices(cfg, training, pin))
    ev = _Evaluator(cfg, training, cluster, acc)(cols)
    mem_total = np.broadcast_to(ev.memory.total, cols.dp.shape)
    total_s = np.broadcast_to(ev.step.total_s, cols.dp.shape)
    fits = mem_total <= acc.memory_bytes
    world = cluster.world
    if not fits.any():
        i = int(np.argmin(mem_total))
        best = _estimate(cfg, cols, ev, i)
        devices = f"{world} GPU" + ("s" if world > 1 else "")
        raise ConfigError(
            f"{cfg.name} on {devices}: best layout ({best.describe()}) needs "
            f"{format_bytes(mem_total[i])} per device; the {acc.name} has "
            f"{format_bytes(acc.memory_bytes)}")
    unsupported = ~np.isin(cols.zero, MOE_ZERO_STAGES) & cfg.ffn.is_moe
    # rank by step time; within 0.1% of each other (the model cannot tell them apart) prefer
    # the larger micro-batch (fewer accumulation steps run faster on real kernels), then
    # memory, then DeepSpeed's default placement and an EMA replica (where they cost nothing)
    step_bucket = np.round(np.log(total_s) / 1e-3)
    sharded = cols.em == EMA_ORDER.index(EMA.SHARDED)
    order = np.lexsort((cols.pl, sharded, mem_total, -cols.mb, total_s, step_bucket,
                        unsupported))
    order = order[fits[order]]
    feasible = [_estimate(cfg, cols, ev, int(i)) for i in order[:keep]]
    over = np.flatnonzero(~fits)
    reason = f"exceeds {format_bytes(acc.memory_bytes)} of device memory"
    rejected: Counter[str] = Counter()
    if len(over):
        rejected[reason] = int(len(over))
    # examples: the rejected layouts that came closest to fitting
    ex_idx = over[np.argsort(mem_total[over])[:examples]]
    rejected_examples = [
        Rejection(layout=_estimate(cfg, cols, ev, int(i)).layout,
                  reason=f"needs {format_bytes(mem_total[i])} > {format_bytes(acc.memory_bytes)}",
                  memory_bytes=float(mem_total[i]))
        for i in ex_idx]
    return SearchResult(feasible=feasible, num_evaluated=len(cols), num_feasible=int(fits.sum()),
                        rejected=dict(rejected), rejected_examples=rejected_examples,
                        world=world, accelerator=acc.name)


def estimate_layout(cfg: ModelConfig, layout: ParallelLayout, training: TrainingConfig,
                    cluster: ClusterConfig, acc, *,
                    placement: Placement | str = Placement.EXPERT_BEFORE_DATA,
                    ema: EMA | str | None = None) -> LayoutEstimate:
    """Memory, communication and step time of one layout (fits or not), with ``placement``
    and the EMA ``ema`` (default: as ``training.ema`` says)."""
    if layout.world != cluster.world:
        raise ConfigError(f"layout dp={layout.dp} x tp={layout.tp} = {layout.world} devices, "
                          f"but the cluster has {cluster.world}")
    pin = {"dp": layout.dp, "ep": layout.ep, "tp": layout.tp, "zero": layout.zero,
           "micro_batch": layout.micro_batch, "recompute": layout.recompute}
    shapes = enumerate_shapes(cfg, training, cluster, pin)
    cols = _columns(shapes, [layout.zero], [layout.recompute], [Placement(placement)],
                    [EMA(ema if ema is not None else training.ema)])
    ev = _Evaluator(cfg, training, cluster, acc)(cols)
    return _estimate(cfg, cols, ev, 0)


__all__ = ["StepTime", "LayoutEstimate", "Rejection", "SearchResult", "search_layouts",
           "estimate_layout", "enumerate_shapes", "describe_layout", "valid_tp", "valid_ep",
           "valid_micro_batches", "PIN_KEYS", "ZERO3_MOE_FLAG", "TP_FLAG"]
