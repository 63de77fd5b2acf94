"""Step-time predictions ``validate`` tests, none of which sees the run it predicts.

- ``profile_prediction``: the planner's whole step-time model (``planner.layouts.
  estimate_layout``: operators priced from a measured device profile, collectives, optimizer,
  overheads) for the run's own layout. Nothing is fitted to any run.
- ``leave_one_out``: compute-only, hardware FLOPs / world / (peak x efficiency) with the
  efficiency calibrated on the *other* runs of the same device (their median; or the
  ``--calibrate-on`` run where that is another run). One run alone has no LOO prediction.
"""

from __future__ import annotations

import statistics
from typing import Any

from ..config import ClusterConfig, ModelConfig, ParallelLayout, Recompute, TrainingConfig
from ..planner.layouts import estimate_layout
from ..planner.step_time import StepTime
from .rows import Row


def profile_prediction(row: Row, acc: Any) -> StepTime:
    """The planner's step time for the run's layout on ``acc`` (a profiled accelerator, or a
    catalog entry: then the datasheet path)."""
    cfg = ModelConfig.from_dict(row.card, source=row.source)
    per_node = row.world // max(row.nodes, 1)
    layout = ParallelLayout(dp=row.world, ep=row.ep, tp=1, zero=row.zero,
                            micro_batch=row.micro_batch, recompute=Recompute(row.recompute))
    training = TrainingConfig(global_batch=row.global_batch, optimizer=row.optimizer,
                              precision=row.precision, ema=row.ema)
    cluster = ClusterConfig(gpu=acc.name, nodes=max(row.nodes, 1), gpus_per_node=per_node)
    return estimate_layout(cfg, layout, training, cluster, acc).step


def leave_one_out(rows: list[Row], calibrate_on: Row | None = None) -> list[str]:
    """Fill each row's ``step_s_loo`` (and ``calibrated_on``) from the other runs of its device;
    returns notes (runs that could not be predicted and why)."""
    notes = []
    for dev in dict.fromkeys(r.device for r in rows):
        same = [r for r in rows if r.device == dev and r.efficiency]
        if len(same) < 2:
            names = ", ".join(r.name for r in same) or "no run with a step time"
            notes.append(f"step time LOO ({dev}): impossible with one run ({names}); "
                         "only the profile prediction tests it")
            continue
        for r in same:
            if calibrate_on is not None and calibrate_on is not r and calibrate_on in same:
                refs = [calibrate_on]
            else:
                refs = [o for o in same if o is not r]
            eff = statistics.median(o.efficiency for o in refs)
            r.step_s_loo = r.hardware_flops / r.world / (r.peak_flops_per_s * eff)
            r.calibrated_on = ", ".join(o.name for o in refs)
    return notes
