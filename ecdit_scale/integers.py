"""Integer helpers shared by configs, the planner and the launcher (no imports of ours)."""

from __future__ import annotations

import math


def divisors(n: int) -> list[int]:
    """Every positive divisor of ``n`` (n >= 1), ascending; O(sqrt n)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"divisors({n!r}): need an integer >= 1")
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def divisor_hint(n: int, *, head: int = 6, tail: int = 3) -> str:
    """The divisors of ``n`` for an error message: '1, 2, 3, 4, 6, 8, ..., 288, 576, 1152'."""
    ds: list[int | str] = list(divisors(n))
    if len(ds) > head + tail + 3:
        ds = ds[:head] + ["..."] + ds[-tail:]
    return ", ".join(str(d) for d in ds)
