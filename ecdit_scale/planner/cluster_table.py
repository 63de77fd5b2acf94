"""How many GPUs should I rent? The best layout at each cluster size, with its time and cost.

``cluster_table`` runs the layout search at node counts 1, 2, 4 ... ``MAX_TABLE_NODES`` (powers
of two) plus the requested size, keeping the sizes where the global batch divides over the
data-parallel ranks and the model fits in memory. Each row is the fastest launchable layout at
that size (the same search and pins as the plan, except a pinned ``dp``, which is tied to one
size). Rows are marked cheapest (lowest cost), fastest (fewest days) and Pareto (no other size is
both as fast and as cheap, and strictly better in one). ``pick_row`` answers ``--days`` (the
cheapest size that meets the deadline) and ``--budget`` (the fastest size within the budget).

Time and cost follow one rule (``run_cost``): days = step time x steps; GPU-hours = days x 24 x
devices; cost = GPU-hours x price. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..config import ClusterConfig, ModelConfig, TrainingConfig
from ..errors import ConfigError
from ..units import format_amount
from .layouts import LayoutEstimate, search_layouts

SECONDS_PER_DAY = 86_400
MAX_TABLE_NODES = 128
TABLE_PIN_DROPPED = ("dp",)  # a pinned dp names one cluster size; other rows choose their own


@dataclass(frozen=True, kw_only=True)
class RunCost:
    days: float
    gpu_hours: float
    cost_usd: float


def run_cost(step_s: float, training: TrainingConfig, cluster: ClusterConfig) -> RunCost:
    """Days, GPU-hours and cost of ``training.steps`` steps of ``step_s`` on ``cluster``."""
    seconds = step_s * training.steps
    gpu_hours = seconds * cluster.world / 3600
    return RunCost(days=seconds / SECONDS_PER_DAY, gpu_hours=gpu_hours,
                   cost_usd=gpu_hours * cluster.price_per_gpu_hour)


@dataclass(frozen=True, kw_only=True)
class ClusterRow:
    cluster: ClusterConfig
    best: LayoutEstimate
    cost: RunCost
    is_plan: bool = False  # the plan's own size (requested, or picked by --days / --budget)
    cheapest: bool = False
    fastest: bool = False
    pareto: bool = False

    @property
    def nodes(self) -> int:
        return self.cluster.nodes

    @property
    def devices(self) -> int:
        return self.cluster.world

    @property
    def marks(self) -> list[str]:
        return [name for name, on in (("plan", self.is_plan), ("cheapest", self.cheapest),
                                      ("fastest", self.fastest), ("pareto", self.pareto)) if on]

    def to_dict(self) -> dict[str, Any]:
        s = self.best.step
        return {"nodes": self.nodes, "devices": self.devices, "days": self.cost.days,
                "gpu_hours": self.cost.gpu_hours, "cost_usd": self.cost.cost_usd,
                "step_s": s.total_s, "mfu": s.mfu, "images_per_s": s.images_per_s,
                "memory_bytes": self.best.memory.total, "layout": self.best.describe(),
                "grad_accum": self.best.grad_accum, "marks": self.marks}


@dataclass(frozen=True, kw_only=True)
class ClusterTable:
    rows: list[ClusterRow]  # by node count
    skipped: dict[int, str] = field(default_factory=dict)  # node count -> why it has no row
    accelerator: str = ""
    picked: ClusterRow | None = None  # the row --days / --budget chose
    picked_by: str | None = None  # e.g. "--days 30: the cheapest size that finishes in 30 days"

    @property
    def cheapest(self) -> ClusterRow:
        return next(r for r in self.rows if r.cheapest)

    @property
    def fastest(self) -> ClusterRow:
        return next(r for r in self.rows if r.fastest)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [r.to_dict() for r in self.rows],
                "skipped": {str(n): why for n, why in self.skipped.items()},
                "cheapest_nodes": self.cheapest.nodes, "fastest_nodes": self.fastest.nodes,
                "pareto_nodes": [r.nodes for r in self.rows if r.pareto],
                "picked_nodes": self.picked.nodes if self.picked else None,
                "picked_by": self.picked_by,
                "rule": "each row: the fastest launchable layout at that size (the plan's pins "
                        "except dp); pareto: no other size is as fast and as cheap"}


def candidate_nodes(cluster: ClusterConfig, *, max_nodes: int = MAX_TABLE_NODES) -> list[int]:
    """Powers of two from 1 to ``max_nodes``, plus the requested node count."""
    sizes = {1 << k for k in range(max_nodes.bit_length()) if 1 << k <= max_nodes}
    return sorted(sizes | {cluster.nodes})


def mark_rows(rows: list[ClusterRow]) -> list[ClusterRow]:
    if not rows:
        return rows
    cheapest = min(rows, key=lambda r: (r.cost.cost_usd, r.cost.days))
    fastest = min(rows, key=lambda r: (r.cost.days, r.cost.cost_usd))

    def dominated(r: ClusterRow) -> bool:
        return any(o is not r and o.cost.days <= r.cost.days and o.cost.cost_usd <= r.cost.cost_usd
                   and (o.cost.days < r.cost.days or o.cost.cost_usd < r.cost.cost_usd)
                   for o in rows)

    return [replace(r, cheapest=r is cheapest, fastest=r is fastest, pareto=not dominated(r))
            for r in rows]


def cluster_table(cfg: ModelConfig, training: TrainingConfig, cluster: ClusterConfig, acc, *,
                  pin: dict[str, Any] | None = None,
                  known: dict[int, LayoutEstimate] | None = None,
                  nodes: list[int] | None = None) -> ClusterTable:
    """The best layout, time and cost at each candidate size (``known``: node count -> a best
    layout already searched, e.g. the plan's own)."""
    pin = {k: v for k, v in (pin or {}).items() if k not in TABLE_PIN_DROPPED and v is not None}
    tp = pin.get("tp", 1)
    rows: list[ClusterRow] = []
    skipped: dict[int, str] = {}
    for n in nodes or candidate_nodes(cluster):
        c = replace(cluster, nodes=n)
        dp = c.world // tp if c.world % tp == 0 else 0
        if not dp or training.global_batch % dp:
            skipped[n] = (f"global batch {training.global_batch} does not divide over "
                          f"{c.world} devices")
            continue
        best = (known or {}).get(n)
        if best is None:
            try:
                best = search_layouts(cfg, training, c, acc, pin={"tp": tp, **pin}, keep=1).best
            except ConfigError as exc:
                skipped[n] = str(exc)
                continue
        rows.append(ClusterRow(cluster=c, best=best, cost=run_cost(best.step.total_s, training, c),
                               is_plan=n == cluster.nodes))
    return ClusterTable(rows=mark_rows(rows), skipped=skipped, accelerator=acc.name)


def _describe(row: ClusterRow, acc: str) -> str:
    return (f"{row.nodes} node{'s' if row.nodes > 1 else ''} ({row.devices:,} {acc}) at "
            f"{row.cost.days:,.1f} days for ${format_amount(row.cost.cost_usd)}")


def pick_row(table: ClusterTable, *, days: float | None = None,
             budget: float | None = None) -> ClusterTable:
    """The table with ``picked`` set: the cheapest row within ``days`` or the fastest within
    ``budget`` (USD). One-line ConfigError naming the closest option when none qualifies."""
    if days is not None and budget is not None:
        raise ConfigError("give --days or --budget, not both")
    if days is None and budget is None:
        return table
    if not table.rows:
        why = next(iter(table.skipped.values()), "no size was tried")
        raise ConfigError(f"no cluster size of {table.accelerator} can run this plan ({why})")
    span = f"{table.rows[0].nodes}-{table.rows[-1].nodes} nodes"
    if days is not None:
        ok = [r for r in table.rows if r.cost.days <= days]
        if not ok:
            raise ConfigError(f"--days {days:g}: no cluster size ({span}) finishes in time; the "
                              f"fastest is {_describe(table.fastest, table.accelerator)}")
        row = min(ok, key=lambda r: (r.cost.cost_usd, r.cost.days))
        how = f"--days {days:g}: the cheapest size that finishes in {days:g} days"
    else:
        ok = [r for r in table.rows if r.cost.cost_usd <= budget]
        if not ok:
            raise ConfigError(f"--budget {budget:g}: no cluster size ({span}) fits ${budget:,.0f};"
                              f" the cheapest is {_describe(table.cheapest, table.accelerator)}")
        row = min(ok, key=lambda r: (r.cost.days, r.cost.cost_usd))
        how = f"--budget {budget:g}: the fastest size within ${format_amount(budget)}"
    return replace(table, picked=row, picked_by=how)


__all__ = ["ClusterRow", "ClusterTable", "RunCost", "cluster_table", "candidate_nodes",
           "pick_row", "run_cost", "mark_rows", "MAX_TABLE_NODES", "SECONDS_PER_DAY"]
