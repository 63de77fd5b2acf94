"""ZeRO-1/2 gradient buckets: their size in ds_config.json and the bytes they hold per device.

With ``contiguous_gradients`` DeepSpeed 0.19.8 allocates a bucket of ``reduce_bucket_size``
elements up front, and a second with ``overlap_comm`` (dp > 1; measured on an H200 before
one-rank runs turned both off: 916 MB of 2 x 2e8 bf16 elements for a 14M model;
bench/results/). On one data-parallel rank (``deepspeed_config.zero_section``) a dense model
has neither: gradients are flattened a bucket at a time for the (trivial) all-reduce and copied
back, one transient flat bucket of at most the rank's parameters (``stage_1_and_2.py``:
``allreduce_bucket``); an MoE model keeps contiguous gradients (DeepSpeed requires them at
ZeRO-2), one preallocated bucket. Counted as held all step (the transient one: conservative).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import ZERO_PARTITIONS_OPTIMIZER

ZERO_BUCKET_ELEMENTS = 200_000_000  # reduce/all-gather bucket size written into ds_config.json
ZERO_BUCKETS = 2  # double-buffered with overlap_comm (dp > 1)


def zero_bucket_bytes(params_per_device: Any, *, dp: Any, zero: Any, w: int,
                      moe: bool = False) -> Any:
    """Bucket bytes per device (numbers or arrays over layouts); ``w`` bytes per element."""
    dp, zero = np.asarray(dp), np.asarray(zero)
    alone = (ZERO_BUCKET_ELEMENTS if moe
             else np.minimum(ZERO_BUCKET_ELEMENTS, params_per_device)) * w
    return np.where(zero >= ZERO_PARTITIONS_OPTIMIZER,
                    np.where(dp == 1, alone, ZERO_BUCKETS * ZERO_BUCKET_ELEMENTS * w), 0.0)


def recorded_bucket_bytes(zero_section: dict[str, Any], *, params_per_device: float,
                          w: int) -> float | None:
    """The buckets a run's recorded ``zero_optimization`` section implies (a run launched
    before one-rank runs dropped contiguous gradients kept two preallocated buckets); None
    outside ZeRO-1/2. DeepSpeed's defaults: contiguous gradients on, overlap off."""
    if zero_section.get("stage", 0) not in (1, 2):
        return None
    elements = zero_section.get("reduce_bucket_size", ZERO_BUCKET_ELEMENTS)
    if zero_section.get("contiguous_gradients", True):
        return float((1 + bool(zero_section.get("overlap_comm", False))) * elements * w)
    return float(min(elements, params_per_device) * w)
