"""Checked fields of a device profile as ``DeviceProfile.from_dict`` reads them: each bad value
is a ``ConfigError`` naming where it is and what would be valid."""

from __future__ import annotations

import math
from typing import Any

from ..checks import short
from ..errors import ConfigError


def number(where: str, value: Any, *, positive: bool = True) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (value <= 0 if positive else value < 0):
        raise ConfigError(f"{where} = {short(value)}: must be a "
                          f"{'positive' if positive else 'non-negative'} number")
    return float(value)


def optional_number(data: dict, key: str, where: str, *, positive: bool = True) -> float | None:
    value = data.get(key)
    return None if value is None else number(f"{where}.{key}", value, positive=positive)


def numbers(where: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{where} = {short(value)}: must be a non-empty list of numbers")
    return tuple(number(f"{where}[{i}]", v) for i, v in enumerate(value))


def mnk_grid(data: dict, key: str, where: str) -> dict[str, tuple[float, ...]]:
    """A measured (m, n, k) grid's axes and its m-major flat rates, checked."""
    part = mapping(data.get(key), f"{where}.{key}")
    if not part:
        return {}
    axes = [numbers(f"{where}.{key}.{a}", part.get(a)) for a in ("m", "n", "k")]
    rates = numbers(f"{where}.{key}.flops_per_s", part.get("flops_per_s"))
    if len(rates) != len(axes[0]) * len(axes[1]) * len(axes[2]):
        raise ConfigError(f"{where}.{key}.flops_per_s has {len(rates)} entries; the "
                          f"m x n x k grid needs {len(axes[0]) * len(axes[1]) * len(axes[2])}")
    for name, ax in zip("mnk", axes, strict=True):
        if list(ax) != sorted(set(ax)):
            raise ConfigError(f"{where}.{key}.{name} must be strictly increasing")
    out = {"m": axes[0], "n": axes[1], "k": axes[2], "flops_per_s": rates}
    if key == "bmm":
        batch = numbers(f"{where}.bmm.batch", part.get("batch"))
        if len(batch) != len(axes[0]):
            raise ConfigError(f"{where}.bmm.batch has {len(batch)} entries; one per m "
                              f"({len(axes[0])}) is needed")
        out["batch"] = batch
    return out


def zero_stages(data: dict, name: str, where: str) -> dict[int, float]:
    """{ZeRO stage: non-negative seconds} under ``data[name]``, checked."""
    stages = {}
    for key, value in mapping(data.get(name), f"{where}.{name}").items():
        if str(key) not in ("0", "1", "2", "3"):
            raise ConfigError(f"{where}.{name}: key {short(key)} is not a ZeRO stage (0-3)")
        stages[int(key)] = number(f"{where}.{name}.{key}", value, positive=False)
    return stages


def mapping(data: Any, where: str) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, not {type(data).__name__}")
    return data


def aligned_lists(data: dict, key: str, names: tuple[str, ...],
                  where: str) -> list[tuple[float, ...]] | None:
    """The lists ``names`` under ``data[key]`` (None where the key is absent), checked: the
    first strictly increasing (the axis the others are measured along), all the same length."""
    part = mapping(data.get(key), f"{where}.{key}")
    if not part:
        return None
    lists = [numbers(f"{where}.{key}.{a}", part.get(a)) for a in names]
    if len({len(v) for v in lists}) != 1 or list(lists[0]) != sorted(set(lists[0])):
        raise ConfigError(f"{where}.{key}: {names[0]} (strictly increasing) and "
                          f"{' and '.join(names[1:])} must have the same length")
    return lists


def by_ranks(data: Any, where: str) -> dict[int, float]:
    """{ranks: seconds}: each key a positive whole number of ranks."""
    out = {}
    for ranks, seconds in mapping(data, where).items():
        if isinstance(ranks, bool) or not str(ranks).isdigit() or int(ranks) < 1:
            raise ConfigError(f"{where}: key {short(ranks)} is not a number of ranks "
                              "(a whole number >= 1)")
        out[int(ranks)] = number(f"{where}.{ranks}", seconds, positive=False)
    return out


def by_kind_and_policy(data: Any, where: str, kinds: tuple[str, ...],
                       policies_known: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """The profile's ``host`` part: {FFN kind: {recompute policy: seconds per kernel}}."""
    out = {}
    for kind, policies in mapping(data, where).items():
        if kind not in kinds:
            raise ConfigError(f"{where}: unknown FFN kind {short(kind)}; valid: "
                              f"{', '.join(kinds)}")
        policies = mapping(policies, f"{where}.{kind}")
        bad = sorted(map(str, set(policies) - set(policies_known)))
        if bad:
            raise ConfigError(f"{where}.{kind}: unknown recompute policy {', '.join(bad)}; "
                              f"valid: {', '.join(policies_known)}")
        out[kind] = {p: number(f"{where}.{kind}.{p}", v, positive=False)
                     for p, v in policies.items()}
    return out
