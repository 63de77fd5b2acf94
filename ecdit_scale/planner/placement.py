"""Rank placement: which ranks form the expert-parallel and expert-data-parallel groups.

One description that the planner prices (``group_shapes``: size and stride of each group) and
the trainer builds (``expert_group_ranks``: the rank lists, checked against DeepSpeed's own).
DeepSpeed 0.19.8, ``deepspeed/utils/groups.py`` ``_create_expert_and_data_parallel`` (legacy
path, no model parallelism), world W, expert-parallel size ep, edp = W / ep:

- expert-before-data (the default): expert-parallel groups are ep consecutive ranks,
  expert-data-parallel groups are edp ranks at stride ep;
- data-before-expert (ds_config ``"use_data_before_expert_parallelism": true``; the engine
  passes it to every MoE layer's ``set_deepspeed_parallelism``): expert-data-parallel groups
  are edp consecutive ranks, expert-parallel groups are ep ranks at stride edp.

The data-parallel group of the non-expert parameters is every rank either way. With tensor
parallelism (priced only) every stride is multiplied by tp (tp innermost).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np


class Placement(str, enum.Enum):
    EXPERT_BEFORE_DATA = "expert-before-data"  # DeepSpeed's default
    DATA_BEFORE_EXPERT = "data-before-expert"  # use_data_before_expert_parallelism


PLACEMENT_ORDER = (Placement.EXPERT_BEFORE_DATA, Placement.DATA_BEFORE_EXPERT)
DS_CONFIG_KEY = "use_data_before_expert_parallelism"  # deepspeed/runtime/constants.py


def data_before_expert(placement: Placement | str) -> bool:
    return Placement(placement) is Placement.DATA_BEFORE_EXPERT


@dataclass(frozen=True)
class GroupShapes:
    """Size and rank stride of each process group (numbers or arrays over layouts)."""

    dp: Any
    dp_stride: Any
    ep: Any
    ep_stride: Any
    edp: Any
    edp_stride: Any


def group_shapes(*, dp: Any, ep: Any, tp: Any, placement_code: Any) -> GroupShapes:
    """The groups of each layout; ``placement_code`` indexes ``PLACEMENT_ORDER``."""
    dp, ep, tp = np.asarray(dp), np.asarray(ep), np.asarray(tp)
    edp = dp // ep
    dbe = np.asarray(placement_code) == PLACEMENT_ORDER.index(Placement.DATA_BEFORE_EXPERT)
    return GroupShapes(dp=dp, dp_stride=tp, ep=ep, ep_stride=np.where(dbe, edp * tp, tp),
                       edp=edp, edp_stride=np.where(dbe, tp, ep * tp))


def expert_group_ranks(world: int, ep: int,
                       placement: Placement | str) -> tuple[list[list[int]], list[list[int]]]:
    """(expert-parallel groups, expert-data-parallel groups) as rank lists, as DeepSpeed
    builds them for ``placement`` (no tensor or pipeline parallelism)."""
    if ep < 1 or world % ep:
        raise ValueError(f"expert-parallel size {ep} must divide the world size {world}")
    edp = world // ep
    if data_before_expert(placement):
        ep_groups = [list(range(i, world, edp)) for i in range(edp)]
        edp_groups = [list(range(i * edp, (i + 1) * edp)) for i in range(ep)]
    else:
        ep_groups = [list(range(i * ep, (i + 1) * ep)) for i in range(edp)]
        edp_groups = [list(range(i, world, ep)) for i in range(ep)]
    return ep_groups, edp_groups


def placement_code(placement: Placement | str) -> int:
    return PLACEMENT_ORDER.index(Placement(placement))
