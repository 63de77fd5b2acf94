"""A profile's measured collectives, as ``comm.Links`` prices them: each one's fit (latency,
bandwidth, half-bandwidth size) and the calls it timed (``profile``'s ``collective_times``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .profile_fields import aligned_lists, mapping

# each collective a profile times, and the bytes a rank's link carries per message byte, less
# the (n - 1) / n every ring and all-to-all has: all-reduce 2, all-to-all 1, all-gather 1 (its
# message is the gathered output; each rank sends its 1/n and receives the other n - 1)
COLLECTIVE_VOLUME = {"all_reduce": 2.0, "all_to_all": 1.0, "all_gather": 1.0}
COLLECTIVES = tuple(COLLECTIVE_VOLUME)


def link_factor(name: str, nproc: int) -> float:
    """The bytes one rank's link carries per message byte of collective ``name`` on ``nproc``
    ranks: ``COLLECTIVE_VOLUME`` x (n - 1) / n."""
    return COLLECTIVE_VOLUME[name] * (nproc - 1) / nproc


@dataclass(frozen=True, kw_only=True)
class LinkFit:
    """One collective: time(bytes) = latency + bytes / (bw x bytes / (bytes + half)); and,
    where the profile kept them (``provenance.collective_times``), the calls it timed: link
    volume per call (message bytes x ``COLLECTIVE_VOLUME`` x (n - 1) / n at the profiled n,
    ascending) and seconds per call, which ``comm.py`` prices a call by instead of the fit."""

    latency_s: float
    bw_bytes_per_s: float
    half_bytes: float
    timed_volume: tuple[float, ...] = ()
    timed_s: tuple[float, ...] = ()

    @property
    def timed(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        return (self.timed_volume, self.timed_s) if len(self.timed_s) >= 2 else None

    def to_dict(self) -> dict[str, float]:
        return {"latency_s": self.latency_s, "bw_bytes_per_s": self.bw_bytes_per_s,
                "half_bytes": self.half_bytes}


def timed_links(links: dict[str, LinkFit], provenance: dict, nproc: int | None,
                where: str) -> dict[str, LinkFit]:
    """``links`` with the calls the profile timed (``provenance.collective_times``: message
    bytes, strictly increasing, and each collective's seconds per call at them) where it kept
    them at a known rank count; a profile without them is priced by its fits alone."""
    table = mapping(provenance.get("collective_times"), f"{where}.collective_times")
    names = tuple(name for name in links if name in table)
    if not names or not nproc or nproc < 2:
        return links
    sizes, *times = aligned_lists(provenance, "collective_times", ("bytes", *names), where)
    if len(sizes) < 2:
        return links
    out = dict(links)
    for name, seconds in zip(names, times, strict=True):
        per_byte = link_factor(name, nproc)
        out[name] = dataclasses.replace(links[name], timed_s=seconds,
                                        timed_volume=tuple(b * per_byte for b in sizes))
    return out
