"""Checks of single values for configs and command-line options: one-line ConfigErrors that
name the value and say what would be valid (finite numbers, bounded integers, types)."""

from __future__ import annotations

import math
import reprlib
from typing import Any

from .errors import ConfigError

MAX_SIZE = 2**20


_REPR = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
for _name, _limit in (("maxlevel", 2), ("maxdict", 3), ("maxlist", 3), ("maxtuple", 3),
                      ("maxset", 3), ("maxstring", 50), ("maxother", 50), ("maxlong", 50)):
    setattr(_REPR, _name, _limit)


def short(value: Any) -> str:
    """repr of a value, at most 60 characters; never walks a whole nested value (a hostile
    file can make one huge)."""
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_int(name: str, value: Any, *, minimum: int = 1, maximum: int = MAX_SIZE) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(f"{name} = {short(value)}: must be an integer in {minimum}..{maximum}")


def check_number(name: str, value: Any, *, minimum: float = 0.0, inclusive: bool = False,
                 maximum: float | None = None) -> float:
    """A finite int or float above ``minimum`` (or at it, with ``inclusive``), returned as float."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
          and (maximum is None or value < maximum))
    if not ok:
        low = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        high = f" and < {maximum:g}" if maximum is not None else ""
        raise ConfigError(f"{name} = {short(value)}: must be a finite number {low}{high}")
    return float(value)


_TYPE_NAMES = {str: "string", bool: "boolean (true or false)"}


def check_type(name: str, value: Any, kind: type) -> None:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"{name} = {short(value)}: must be a "
                          f"{_TYPE_NAMES.get(kind, kind.__name__)}")


def string_keys(data: dict, what: str) -> None:
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{what}: field name {short(bad[0])} is not a string")
