"""Reading a measured rate table between its points (``device_profile.DeviceProfile``'s GEMM,
bmm and optimizer curves): linear in log space, clamped at the table's edges."""

from __future__ import annotations

from typing import Any

import numpy as np


def log_log(q: Any, xs: Any, ys: Any) -> np.ndarray:
    """``ys`` over ``xs`` interpolated at ``q`` linearly in log-log space, clamped to the ends
    (a measured rate curve read between its points)."""
    x, y = np.log(np.asarray(xs, dtype=float)), np.log(np.asarray(ys, dtype=float))
    return np.exp(np.interp(np.log(np.maximum(np.asarray(q, dtype=float), 1.0)), x, y))


def log_grid(ms: Any, ns: Any, ks: Any, rates: Any) -> tuple[list[np.ndarray], np.ndarray]:
    axes = [np.log2(np.asarray(a, dtype=float)) for a in (ms, ns, ks)]
    grid = np.log(np.asarray(rates, dtype=float)).reshape([len(a) for a in axes])
    return axes, grid


def trilinear(axes: list[np.ndarray], grid: np.ndarray, m: Any, n: Any, k: Any) -> np.ndarray:
    """exp of the trilinear interpolation of ``grid`` (log rates over log2 axes) at (m, n, k),
    clamped at the grid's edges."""
    q = [np.log2(np.maximum(np.asarray(v, dtype=float), 1.0)) for v in (m, n, k)]
    q = np.broadcast_arrays(*q)
    lo, w = [], []
    for ax, v in zip(axes, q, strict=True):
        if len(ax) == 1:
            lo.append(np.zeros(v.shape, dtype=int))
            w.append(np.zeros(v.shape))
            continue
        vc = np.clip(v, ax[0], ax[-1])
        i = np.clip(np.searchsorted(ax, vc, side="right") - 1, 0, len(ax) - 2)
        lo.append(i)
        w.append((vc - ax[i]) / (ax[i + 1] - ax[i]))
    out = np.zeros(q[0].shape)
    for corner in range(8):
        bits = [(corner >> j) & 1 for j in range(3)]
        idx, weight = [], np.ones(q[0].shape)
        for j, bit in enumerate(bits):
            size = grid.shape[j]
            if size == 1 and bit:
                weight = weight * 0.0
                idx.append(lo[j])
                continue
            idx.append(np.minimum(lo[j] + bit, size - 1))
            weight = weight * (w[j] if bit else 1.0 - w[j])
        out = out + weight * grid[tuple(idx)]
    return np.exp(out)
