"""One way to print numbers: counts (1.23B), bytes (binary units, GiB), durations, amounts.

Memory is always shown in binary units (GiB = 2**30 bytes), the unit allocators and
``nvidia-smi`` report; an accelerator's "80 GB" datasheet figure prints as 74.5 GiB.
"""

from __future__ import annotations

import math

GIB = 2**30


def format_count(n: float) -> str:
    """1234567 -> '1.23M'; used for display only."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}" if n / scale < 100 else f"{n / scale:.1f}{unit}"
    return str(int(n))


def format_bytes(n: float) -> str:
    """Binary units: 80e9 -> '74.5 GiB', 1.5 * 2**40 -> '1.5 TiB'."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:,.1f} {unit}" if n / scale >= 100 else f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def format_gib(n: float) -> str:
    """Always in GiB, for columns that compare devices: '73.4 GiB'."""
    return f"{n / GIB:,.1f} GiB"


def format_duration(days: float) -> str:
    """Seconds for very short runs, hours under a day, days above."""
    if days * 24 < 0.1:
        return f"{days * 86400:,.3g} s"
    return f"{days:,.1f} days" if days >= 1 else f"{days * 24:,.2f} hours"


def format_amount(x: float) -> str:
    """Money and GPU-hours: thousands separators above 10, three digits below."""
    return f"{x:,.0f}" if x >= 10 else f"{x:.3g}"


def format_number(x: float | None, digits: int = 4) -> str:
    """A fitted constant: n/a for missing or NaN, infinity as a symbol."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}g}"
