"""IsoFLOP levels in a run table (a `flops_level` column, written by `sweep --design isoflop`):
a level tells where its compute-optimal size is only when its lowest loss lies strictly inside
its sizes. A level whose best size (by the mean loss over seeds) is its smallest or largest is
flagged: the optimum may lie beyond the sizes trained (Hoffmann et al. 2022, Approach 2, fit
a parabola only where the minimum is bracketed)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def edge_levels(df: pd.DataFrame, loss_column: str, groups) -> list[str]:
    """One note per (group, level) whose lowest mean loss sits at an edge of its sizes."""
    if "flops_level" not in df.columns:
        return []
    d = df.assign(_g=np.asarray(groups))
    notes = []
    for (g, level), rows in d.groupby(["_g", "flops_level"], sort=True):
        by_size = rows.groupby("active_params")[loss_column].mean().sort_index()
        if len(by_size) < 3:
            notes.append(f"IsoFLOP level {level:.3g} FLOPs of {g}: {len(by_size)} sizes; a "
                         "minimum needs at least 3")
            continue
        best = int(np.argmin(by_size.to_numpy()))
        if best in (0, len(by_size) - 1):
            edge = "smallest" if best == 0 else "largest"
            notes.append(f"IsoFLOP level {level:.3g} FLOPs of {g}: the lowest loss is at its "
                         f"{edge} size ({by_size.index[best]:.3g} activated parameters); the "
                         f"optimum may lie {'below' if best == 0 else 'above'} the sizes "
                         "trained: extend the level's sizes")
    return notes
