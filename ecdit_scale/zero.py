"""ZeRO: the one definition of the stages and what they allow (the planner prices them, the
trainer writes them into DeepSpeed's config)."""

from __future__ import annotations

from typing import Any

from .checks import short
from .errors import ConfigError

ZERO_STAGES = (0, 1, 2, 3)
# The stage from which ZeRO partitions each model state over the data-parallel group.
ZERO_PARTITIONS_OPTIMIZER = 1  # optimizer states, master weights, fp32 gradient copy
ZERO_PARTITIONS_GRADIENTS = 2
ZERO_PARTITIONS_PARAMETERS = 3
MOE_ZERO_STAGES = (0, 1, 2)  # DeepSpeed-MoE refuses ZeRO-3 (stage 3 partitions expert params)


def check_zero_stage(stage: Any, *, name: str = "zero") -> int:
    """``stage`` as an int if it is a ZeRO stage (0-3), else a ConfigError naming ``name``."""
    if isinstance(stage, bool) or not isinstance(stage, int) or stage not in ZERO_STAGES:
        raise ConfigError(f"{name} = {short(stage)}: ZeRO stage must be 0, 1, 2 or 3")
    return stage


def zero_supports_moe(stage: int) -> bool:
    """Whether DeepSpeed-MoE runs with this ZeRO stage (it refuses ZeRO-3)."""
    return check_zero_stage(stage) in MOE_ZERO_STAGES
