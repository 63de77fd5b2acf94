"""The planner's list of the collectives one optimizer step issues under DeepSpeed 0.19.8:
op, process group, dtype, calls and elements per call (``DERIVATIONS.md``, "Collectives per
step"). ``comm.comm_arrays`` prices the same calls; ``evaluation.collective_trace`` records
them from the real engine on CPU/gloo and ``tests/test_collective_trace.py`` compares.

Only the tensor traffic is listed: DeepSpeed also all-reduces a few scalars per step (the
gradient norm for clipping, per group), which cost latency only and are not priced.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ModelConfig, ParallelLayout, Precision, Recompute
from .buckets import ALLREDUCE_BUCKET_ELEMENTS, ZERO_BUCKET_ELEMENTS
from .comm import forward_passes
from .flops import expert_slots_per_image
from .memory import RECOMPUTE_ORDER, ParamSplit
from .placement import Placement


@dataclass(frozen=True, kw_only=True)
class PlannedCall:
    op: str  # torch.distributed name: all_reduce, all_gather_into_tensor, all_to_all_single
    group: str  # dp (shared parameters), expert_dp, ep
    group_size: int
    dtype: str  # bfloat16 | float32
    calls: int  # per optimizer step
    elements: int  # per call, per rank (the local input)


def _bucket_calls(elements: int, bucket: int) -> int:
    return -(-elements // bucket) if elements > 0 else 0


def planned_calls(cfg: ModelConfig, layout: ParallelLayout, *, grad_accum: int,
                  precision: Precision | str = Precision.BF16,
                  placement: Placement | str = Placement.EXPERT_BEFORE_DATA,
                  bucket_elements: int = ZERO_BUCKET_ELEMENTS) -> list[PlannedCall]:
    """The tensor collectives of one step of ``layout`` (tp = 1), groups of one rank skipped.
    The group sizes do not depend on ``placement``; which ranks share nodes does."""
    del placement  # same sizes and counts; comm.py prices where the ranks sit
    dtype = "bfloat16" if Precision(precision) is Precision.BF16 else "float32"
    split = ParamSplit.of(cfg)
    shared = int(split.non_expert_per_device(1))
    expert = int(split.expert_per_device(layout.ep, 1))
    edp = layout.dp // layout.ep
    out: list[PlannedCall] = []
    if cfg.ffn.is_moe and layout.ep > 1:
        forwards = int(forward_passes(RECOMPUTE_ORDER.index(Recompute(layout.recompute))))
        slots = int(expert_slots_per_image(cfg)) * layout.micro_batch
        out.append(PlannedCall(op="all_to_all_single", group="ep", group_size=layout.ep,
                               dtype=dtype, calls=cfg.num_moe_layers * (2 * forwards + 2)
                               * grad_accum, elements=slots * cfg.hidden_size))
    reductions = grad_accum if layout.zero >= 2 else 1
    for group, size, elements in (("dp", layout.dp, shared), ("expert_dp", edp, expert)):
        if size == 1 or elements == 0:
            continue
        if layout.zero == 0:  # engine.buffered_allreduce_fallback, each group by itself
            calls = _bucket_calls(elements, ALLREDUCE_BUCKET_ELEMENTS)
            per_call = min(elements, ALLREDUCE_BUCKET_ELEMENTS)
        else:  # reduce buckets hold both kinds; one all-reduce per group in each
            calls = reductions * _bucket_calls(shared + expert, bucket_elements)
            per_call = -(-elements // max(1, calls // reductions))
        out.append(PlannedCall(op="all_reduce", group=group, group_size=size, dtype=dtype,
                               calls=calls, elements=per_call))
        if layout.zero in (1, 2):  # all_gather_dp_groups: one call per param group
            out.append(PlannedCall(op="all_gather_into_tensor", group=group, group_size=size,
                                   dtype=dtype, calls=1, elements=-(-elements // size)))
    return out
