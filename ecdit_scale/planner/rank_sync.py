"""Ranks meeting at collectives after compute: what a step loses waiting for the last rank.

Ranks that run the same ops between two collectives do not reach the second at once. On a
CPU, whose ranks share its cores with each other's communication threads and the OS, they
drift apart by a share of the compute between the meetings, and each blocking collective
waits for the last to arrive; and a collective after a stretch of compute waits longer than
one of a back-to-back loop (which the link fits time), its threads woken first. A profile
measured on several CPU ranks records both (``evaluation.collectives._sync_waits``); the
step-time model prices them at each of the model's all-to-alls and at the gradients'
reduction (``sync_seconds``). A GPU's ranks queue their kernels ahead of the host: no profile
of one records it, and nothing is priced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, kw_only=True)
class SyncFit:
    """What a collective costs where ranks meet after a stretch of compute, measured on a CPU's
    ranks (``evaluation.collectives._sync_waits``), at each measured segment of compute
    between two collectives: ``excess_s``, the last rank's arrival less the mean arrival (the
    step waits for the slowest rank), and ``wait_s``, the last rank's own wait (the transfer of
    a small message, waking the communication threads included)."""

    segment_s: tuple[float, ...]
    excess_s: tuple[float, ...]
    wait_s: tuple[float, ...]

    def at(self, segment_s: Any) -> tuple[np.ndarray, np.ndarray]:
        """(excess, wait) seconds per collective after ``segment_s`` of compute: linear
        between the measured segments; beyond them the excess in proportion to the segment
        (the ranks drift apart at the rate measured at the nearest end) and the wait as at
        the nearest end."""
        seg = np.asarray(segment_s, dtype=float)
        x, e = np.asarray(self.segment_s), np.asarray(self.excess_s)
        rate = np.where(seg < x[0], e[0] / x[0], e[-1] / x[-1])
        excess = np.where((seg < x[0]) | (seg > x[-1]), rate * seg, np.interp(seg, x, e))
        return np.maximum(excess, 0.0), np.interp(seg, x, np.asarray(self.wait_s))

    def to_dict(self) -> dict[str, list[float]]:
        return {"segment_s": list(self.segment_s), "excess_s": list(self.excess_s),
                "wait_s": list(self.wait_s)}


def sync_seconds(prof: Any, compute_s: Any, a2a_calls: Any, world: int) -> tuple[Any, Any]:
    """(all, at the all-to-alls) seconds a step of ``world`` ranks loses where its ranks meet
    (``DeviceProfile.sync``; 0 without one, or on one rank): at each of its ``a2a_calls``
    blocking all-to-alls and once where the gradients are reduced after the backward, the
    step waits for the last rank to arrive, the ranks having drifted apart over the compute
    since the last meeting (the step's compute split evenly between the meetings); and each
    all-to-all's wait after compute beyond the link fit's latency (which is timed on
    back-to-back calls)."""
    if prof is None or getattr(prof, "sync", None) is None or world <= 1:
        return 0.0, 0.0
    calls = np.asarray(a2a_calls, dtype=float)
    meetings = calls + 1.0
    excess, wait = prof.sync.at(np.asarray(compute_s, dtype=float) / meetings)
    link = prof.links.get("all_to_all")
    wake = np.maximum(wait - (link.latency_s if link is not None else 0.0), 0.0)
    return meetings * excess + calls * wake, calls * (excess + wake)
