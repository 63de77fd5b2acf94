"""Run-level statistics: what a table of checkpoints can say about training runs.

A run table holds several budgets read off each training run; those rows share the run's
model, seed and data order, so they are not independent. Here:

- `variants`: the groups that are fitted and compared. A kind with one expert count is one
  group; when a kind has several (expert choice with 8 and 16 experts), every MoE variant is
  its own group ("expert-choice-16e"), so no kind gets a best-of-several against a baseline
  that has one.
- `run_resample_weights`: the bootstrap draws whole training runs (all budgets of a run
  together), within each group, and chooses the compute frontier inside each resample.
- `held_out_split`: the held-out check refits without every run that reaches within a
  factor HELD_OUT_FACTOR of the largest compute, and predicts the rows >= that factor
  beyond the largest fitted compute; when the data cannot, it says why.
- `outlier_rows`: the explicit, reported outlier rule (off unless asked for).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

# Shape suffixes: an array named x_RN has dims (R, N).
#   N rows of the run table   R bootstrap resamples (beats_NN: row against row)

HELD_OUT_FACTOR = 4.0  # held-out rows lie at least this far beyond the largest fitted compute
MIN_RUNS_PER_RESAMPLE = 2  # distinct runs per group a resample needs to show a trend in size
OUTLIER_Z = 3.5  # robust z of a log residual beyond which --drop-outliers drops a row
OUTLIER_RULE = (f"a row is an outlier when its log residual from its group's point fit L(C) "
                "(fitted to the group's compute frontier; residuals of every row) "
                f"is more than {OUTLIER_Z} robust standard deviations (1.4826 x median absolute "
                "deviation) from the group's median residual; outliers are dropped and the fit "
                "is redone")


def variant_labels(df: pd.DataFrame, known: Sequence[str] | None = None) -> pd.Series:
    """The fitted group of each row: its ffn_kind, or ffn_kind plus expert count when any kind
    has runs with more than one expert count (without an `experts` column: ffn_kind). With
    ``known`` (a saved fit's groups), a row takes the label that fit gave its variant."""
    kinds = df["ffn_kind"].astype(str)
    if "experts" not in df.columns:
        return kinds
    import pandas as pd  # here: `plan` imports kind_of without reading tables (startup)

    experts = pd.to_numeric(df["experts"], errors="coerce")
    if known is not None:
        labels = [f"{k}-{int(e)}e" if np.isfinite(e) and f"{k}-{int(e)}e" in known else k
                  for k, e in zip(kinds, experts, strict=True)]
        return pd.Series(labels, index=df.index)
    split = any(experts[kinds == k].nunique(dropna=True) > 1 for k in kinds.unique())
    if not split:
        return kinds
    labels = [k if k == "dense" or not np.isfinite(e) else f"{k}-{int(e)}e"
              for k, e in zip(kinds, experts, strict=True)]
    return pd.Series(labels, index=df.index)


def kind_of(group: str) -> str:
    """The ffn_kind of a group label ('expert-choice-16e' -> 'expert-choice')."""
    head, _, tail = group.rpartition("-")
    return head if tail.endswith("e") and tail[:-1].isdigit() else group


def run_ids(df: pd.DataFrame) -> np.ndarray:
    """The training run of each row: its run group (the budget runs of one size, variant and
    seed share warm-up, seed and data order: one unit for the bootstrap), else run_dir, else
    card, else the row's own name."""
    for column in ("run_group", "run_dir", "card"):
        if column in df.columns and df[column].notna().all():
            return df[column].astype(str).to_numpy()
    return df["name"].astype(str).to_numpy()


def config_ids(df: pd.DataFrame) -> np.ndarray | None:
    """The configuration of each row when the table holds several seeds of it: card and
    compute (the same model trained to the same budget), else None. Seeds of one
    configuration are compared by their mean, never against each other (see frontier_mask)."""
    if not {"card", "seed"} <= set(df.columns) or df["seed"].nunique(dropna=True) < 2:
        return None
    return (df["card"].astype(str) + "@" + df["compute_flops"].map("{:.6g}".format)).to_numpy()


def frontier_mask(compute_N, loss_N, present_RN, group_N, budget_N=None, config_N=None
                  ) -> np.ndarray:
    """Rows on the compute frontier of their group among the rows present in each resample:
    present, and no present row of the group with at most its compute has a lower loss. With
    budgets (several sizes per budget, as `fit.compute_frontier`): no present row of the
    group and budget has a lower loss.

    With configurations (several seeds of each, ``config_ids``): each configuration's loss is
    the mean of its present seeds (weighted by how often each was drawn), and a configuration
    is on the frontier, with all its present seeds, when no other present configuration beats
    that mean. The frontier is then not the luckiest seed at each compute."""
    C, L, g = (np.asarray(a) for a in (compute_N, loss_N, group_N))
    w = np.asarray(present_RN, float)
    present = w > 0
    if budget_N is None:
        beats_NN = C[None, :] <= C[:, None]
    else:
        b = np.asarray(budget_N)
        beats_NN = b[None, :] == b[:, None]
    beats_NN = beats_NN & (g[None, :] == g[:, None])
    if config_N is None:
        beats_RNN = beats_NN[None] & (L[None, :] < L[:, None])[None]
    else:
        cfg = np.asarray(config_N)
        same_NN = cfg[None, :] == cfg[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_RN = (w * L[None, :]) @ same_NN / (w @ same_NN)
        beats_RNN = (beats_NN & ~same_NN)[None] & (mean_RN[:, None, :] < mean_RN[:, :, None])
    beaten_RN = (present[:, None, :] & beats_RNN).any(axis=2)
    return present & ~beaten_RN


def run_resample_weights(runs_N, group_N, n_boot: int, seed, *,
                         min_runs: int = MIN_RUNS_PER_RESAMPLE) -> tuple[np.ndarray, int]:
    """Whole training runs drawn with replacement within each group, as row weights (each row
    weighted by how often its run was drawn); resamples where a group has fewer than
    `min_runs` distinct runs are redrawn. Returns (w_RN, resamples redrawn)."""
    runs_N, group_N = np.asarray(runs_N), np.asarray(group_N)
    rng = np.random.default_rng(seed)
    per_group = [np.unique(runs_N[group_N == g]) for g in dict.fromkeys(group_N.tolist())]
    need = [min(min_runs, len(r)) for r in per_group]
    out, redrawn = [], 0
    while len(out) < n_boot and redrawn < 50 * max(n_boot, 1):
        counts: dict[str, int] = {}
        ok = True
        for runs, k in zip(per_group, need, strict=True):
            drawn = rng.choice(runs, size=len(runs))
            ok &= len(np.unique(drawn)) >= k
            for r in drawn:
                counts[r] = counts.get(r, 0) + 1
        if not ok:
            redrawn += 1
            continue
        out.append([counts.get(r, 0) for r in runs_N])
    return np.array(out, dtype=float).reshape(len(out), len(runs_N)), redrawn


def frontier_weights(compute_N, loss_N, runs_N, group_N, n_boot: int, seed, budget_N=None,
                     config_N=None) -> tuple[np.ndarray, np.ndarray, int]:
    """(point frontier mask, run-level resample weights with the frontier chosen inside each
    resample, resamples redrawn for too few distinct runs)."""
    n = len(compute_N)
    point = frontier_mask(compute_N, loss_N, np.ones((1, n), bool), group_N, budget_N,
                          config_N)[0]
    w_RN, redrawn = run_resample_weights(runs_N, group_N, n_boot, seed)
    if len(w_RN):
        w_RN = w_RN * frontier_mask(compute_N, loss_N, w_RN, group_N, budget_N, config_N)
    return point, w_RN, redrawn


def held_out_split(compute_N, runs_N, factor: float = HELD_OUT_FACTOR
                   ) -> tuple[np.ndarray, np.ndarray] | str:
    """(train mask, test mask) for one group: train on the runs that never come within
    `factor` of the largest compute, test on the rows at least `factor` beyond the largest
    compute trained on. A string saying why not when the data cannot give such a check."""
    C, runs = np.asarray(compute_N, float), np.asarray(runs_N)
    span = C.max() / C.min()
    if span < factor:
        return (f"held-out check impossible: range only {span:.3g}x, under the {factor:g}x a "
                "held-out run must lie beyond the fit")
    run_max = {r: C[runs == r].max() for r in np.unique(runs)}
    train_runs = [r for r, m in run_max.items() if m <= C.max() / factor]
    if len(train_runs) < MIN_RUNS_PER_RESAMPLE:
        return (f"held-out check impossible: range {span:.3g}x, but only {len(train_runs)} "
                f"training run(s) stay {factor:g}x below the largest compute (a fit of a "
                f"trend in size needs >= {MIN_RUNS_PER_RESAMPLE})")
    train = np.isin(runs, train_runs)
    test = C >= factor * C[train].max()
    return train, test


def outlier_rows(log_residual_N, group_N) -> np.ndarray:
    """Mask of the rows OUTLIER_RULE calls outliers (residuals of each group's point fit; NaN
    for rows not fitted, never outliers)."""
    r, g = np.asarray(log_residual_N, float), np.asarray(group_N)
    out = np.zeros(len(r), bool)
    for k in np.unique(g):
        sel = (g == k) & np.isfinite(r)
        if sel.sum() < 4:
            continue
        med = np.median(r[sel])
        mad = 1.4826 * np.median(np.abs(r[sel] - med))
        if mad > 0:
            out[sel] = np.abs(r[sel] - med) > OUTLIER_Z * mad
    return out
