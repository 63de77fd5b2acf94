"""Physical bounds on a device's numbers: what any accelerator, or one CPU core, can have.

A catalog entry or a device profile (``ecdit-scale profile``, ``validate --save-profile``, or a
file a user wrote) whose bandwidth, peak or memory lies outside these is a typo, a unit slip or
a broken measurement: priced as given it plans a step of years (near-zero bandwidth) or of no
time at all, and the search would label that layout "cheapest, fastest". Such a file is refused
with one line naming the field, its value and the bound.

The bounds are wide on purpose, an order of magnitude or more beyond the devices we know (a
B200: 2.25e15 dense bf16 FLOP/s, 8e12 B/s HBM, 192 GB; a single slow CPU core: ~1e9 FLOP/s,
a few GB/s), so that only the meaningless is refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError

# field -> (lowest, highest, unit), for the accelerator's datasheet numbers
ACCELERATOR_BOUNDS: dict[str, tuple[float, float, str]] = {
    "peak_bf16_flops": (1e8, 1e17, "FLOP/s"),  # 0.1 GFLOP/s .. 100 PFLOP/s per device
    "memory_bytes": (2**26, 2**46, "bytes"),  # 64 MiB .. 64 TiB per device
    "memory_bw_bytes_per_s": (1e8, 1e14, "B/s"),  # 0.1 GB/s .. 100 TB/s
    "intra_node_bw_bytes_per_s": (1e6, 1e14, "B/s"),  # 1 MB/s .. 100 TB/s per device
    "inter_node_bw_bytes_per_s": (1e5, 1e13, "B/s"),  # 0.1 MB/s .. 10 TB/s per device
}

# measured rates of a device profile: (lowest, highest, unit). The lowest GEMM/SDPA rate can be
# small (a tiny shape is all launch overhead), so only their ceiling is physical.
PROFILE_RATE = (1.0, 1e17, "FLOP/s")
PROFILE_BANDWIDTH = (1e5, 1e14, "B/s")
PROFILE_SECONDS = (0.0, 1.0, "s")  # a launch, a collective's latency, per-tensor engine work


def _check(where: str, name: str, value: Any, bounds: tuple[float, float, str]) -> None:
    lo, hi, unit = bounds
    if value is None:
        return
    x = float(value)
    if not (math.isfinite(x) and lo <= x <= hi):
        raise ConfigError(f"{where}: {name} = {x:.3g} {unit} is not physical: must be in "
                          f"{lo:.3g}..{hi:.3g} {unit}")


def _each(where: str, name: str, values: Iterable[Any], bounds) -> None:
    for i, v in enumerate(values):
        _check(where, f"{name}[{i}]", v, bounds)


def check_profile(where: str, profile: Any) -> None:
    """The measured rates, bandwidths and times of a ``DeviceProfile``."""
    _each(where, "profile.gemm.flops_per_s", profile.gemm_flops_per_s, PROFILE_RATE)
    _each(where, "profile.sdpa.forward_flops_per_s", profile.sdpa_forward_flops_per_s,
          PROFILE_RATE)
    _each(where, "profile.sdpa.backward_flops_per_s", profile.sdpa_backward_flops_per_s,
          PROFILE_RATE)
    _check(where, "profile.memory_bw_bytes_per_s", profile.memory_bw_bytes_per_s,
           PROFILE_BANDWIDTH)
    for kind, bw in sorted(profile.memory_kind_bw.items()):
        _check(where, f"profile.memory_ops.{kind}", bw, PROFILE_BANDWIDTH)
    _check(where, "profile.launch.seconds", profile.launch_s, PROFILE_SECONDS)
    for kind, policies in sorted(profile.host_s_per_kernel.items()):
        for policy, seconds in sorted(policies.items()):
            _check(where, f"profile.host.{kind}.{policy}", seconds, PROFILE_SECONDS)
    for ranks, seconds in sorted(profile.trainer_s_per_kernel.items()):
        _check(where, f"profile.trainer_s_per_kernel.{ranks}", seconds, PROFILE_SECONDS)
    _check(where, "profile.engine_s_per_param_tensor", profile.engine_s_per_param_tensor,
           PROFILE_SECONDS)
    for name, fit in sorted(profile.links.items()):
        _check(where, f"profile.collectives.{name}.bw_bytes_per_s", fit.bw_bytes_per_s,
               PROFILE_BANDWIDTH)
        _check(where, f"profile.collectives.{name}.latency_s", fit.latency_s, PROFILE_SECONDS)


def check_accelerator(acc: Any) -> None:
    """Refuse an accelerator whose numbers no device has (one line naming field and bound)."""
    where = f"accelerator {acc.name!r}"
    for name, bounds in ACCELERATOR_BOUNDS.items():
        _check(where, name, getattr(acc, name), bounds)
    if acc.profile is not None:
        check_profile(where, acc.profile)
