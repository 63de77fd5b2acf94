"""Fit a whole run table: per group (FFN kind or variant) L(C), the held-out check, L(N, D)
and compute-optimal allocation, then the shared-exponent fit, compute multipliers, the
sensitivity table and (within 100x of the data) extrapolations. Statistics are by training
run (`runlevel`).

The fits themselves are in `laws` and `shared`; this module picks the runs each one sees (the
compute frontier), turns what the data cannot support into notes, and reports progress.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pandas as pd

from .evidence import fit_headline, headline_data
from .formulas import DEFAULT_LEVEL, identification
from .laws import (
    MIN_RUNS_POWER_LAW,
    compute_multiplier,
    compute_optimal,
    fit_chinchilla,
    fit_power_law,
    flops_per_param_token,
    predict,
)
from .levels import edge_levels
from .results import (
    Extrapolation,
    HeldOutResult,
    HeldOutRun,
    Multiplier,
    ScalingFit,
    SensitivityRow,
    comparison_pairs,
)
from .robust import MIN_LOG_LOSS_SPREAD, FitError, Progress
from .runlevel import (
    HELD_OUT_FACTOR,
    OUTLIER_RULE,
    config_ids,
    frontier_mask,
    frontier_weights,
    held_out_split,
    kind_of,
    outlier_rows,
    run_ids,
    run_resample_weights,
    variant_labels,
)
from .shared import fit_shared_power_law
from .table import FFN_KINDS, LOSS_COLUMNS, RunTableError, validate_run_table

# Shape suffixes: a tensor named w_RN has dims (R, N).
#   R bootstrap resamples   N rows of the run table

MIN_RUNS_FOR_INTERVALS = 5  # below this a resample of distinct runs is nearly the data itself

T = TypeVar("T")


MAX_EXTRAPOLATION = 100.0  # no absolute loss is predicted further beyond the data than this
SENSITIVITY_BOOT = 100  # resamples per variation in the sensitivity table
BUDGET_SUBSETS = (("all budgets", None), ("final budget only", "final"),
                  ("without the smallest budget", "drop_smallest"))


def fit_run_table(df: pd.DataFrame, *, n_boot: int = 200, seed: int = 0,
                  extrapolate_to_flops: float | None = None, loss_column: str | None = None,
                  held_out_factor: float = HELD_OUT_FACTOR, level: float = DEFAULT_LEVEL,
                  drop_outliers: bool = False, sensitivity: bool = True, loss_label: str = "",
                  progress: Progress | None = None) -> ScalingFit:
    """Per group (FFN kind, or variant when a kind has several expert counts): L(C) power law,
    held-out check, Chinchilla L(N, D) and compute-optimal allocation; the shared-exponent
    fit and its multiplier per (expert-choice variant, baseline) pair; a sensitivity table.

    Intervals come from a bootstrap of training runs (every budget of a run drawn together)
    with the compute frontier chosen inside each resample. progress(what, done, total) is
    called before each of the fits and once at the end."""
    _check_options(n_boot, level, extrapolate_to_flops)
    df = validate_run_table(df)
    loss_column = loss_column or default_loss_column(df)
    check_loss_column(df, loss_column)
    df["_group"], df["_run"] = variant_labels(df).to_numpy(), run_ids(df)
    kinds = _ordered_groups(df)
    _check_fittable(df, kinds, loss_column)
    notes: list[str] = []
    outliers = {"rule": OUTLIER_RULE, "applied": bool(drop_outliers), "dropped": []}
    if drop_outliers:
        df, outliers["dropped"] = _without_outliers(df, kinds, loss_column)
        if outliers["dropped"]:
            notes.append(f"--drop-outliers dropped {len(outliers['dropped'])} rows: "
                         + ", ".join(outliers["dropped"]))
    power_laws, chinchilla, optimal, held_out, status = {}, {}, {}, {}, {}
    n_columns = len(sensitivity_columns(df))
    step = _Steps(progress, 3 * len(kinds) + 2
                  + (len(BUDGET_SUBSETS) * n_columns if sensitivity else 0))
    for i, kind in enumerate(kinds):
        runs = df[df["_group"] == kind]
        C, L = runs["compute_flops"].to_numpy(), runs[loss_column].to_numpy()
        seeds = np.random.SeedSequence([seed, i]).spawn(3)
        point, w_RN, redrawn = frontier_weights(C, L, runs["_run"], runs["_group"], n_boot,
                                                seeds[0], _budgets(runs), config_ids(runs))
        if point.sum() < len(runs):
            notes.append(f"L(C) for {kind}: fitted to the {point.sum()} rows on the compute "
                         f"frontier (chosen again inside each resample), of {len(runs)} in all")
        notes += _redrawn_note(kind, redrawn, n_boot)
        opts = {"n_boot": n_boot, "level": level}
        step(f"L(C) for {kind}")
        _store(power_laws, kind, _attempt(
            notes, f"power law L(C) for {kind}", fit_power_law, C, L, point_rows=point,
            boot_weights=w_RN, **opts))
        step(f"held-out check for {kind}")
        split = held_out_split(C, runs["_run"].to_numpy(), held_out_factor)
        if isinstance(split, str):
            status[kind] = split
        else:
            _store(held_out, kind, _attempt(
                notes, f"held-out check for {kind}", _held_out, runs, split, loss_column,
                kind=kind, seed=seeds[1], **opts))
        step(f"L(N, D) for {kind}")
        w_runs, _ = run_resample_weights(runs["_run"], runs["_group"], n_boot, seeds[2])
        _store(chinchilla, kind, _attempt(
            notes, f"Chinchilla L(N, D) for {kind}", fit_chinchilla, runs["active_params"],
            runs["tokens_seen"], runs[loss_column], boot_weights=w_runs, **opts))
        n_runs = runs["_run"].nunique()
        if kind in power_laws and n_runs < MIN_RUNS_FOR_INTERVALS:
            notes.append(f"L(C) for {kind}: only {n_runs} training runs; a bootstrap of so few "
                         "runs understates the uncertainty")
        if kind in chinchilla:
            k = flops_per_param_token(runs)
            optimal[kind] = compute_optimal(chinchilla[kind], k, kind=kind)
            notes += _collinearity_note(runs, kind)
    step("shared-exponent fit")
    shared = _shared_fit(df, kinds, loss_column, n_boot=n_boot, seed=seed, level=level,
                         notes=notes)
    step("headline L(N, D) fit")
    headline = _attempt(notes, "headline L(N, D) fit", fit_headline,
                        headline_data(df, loss_column, df["_group"]), n_boot=n_boot, seed=seed,
                        level=level, pairs=comparison_pairs(kinds),
                        compute_flops=df["compute_flops"].to_numpy())
    notes += edge_levels(df, loss_column, df["_group"])
    max_compute_flops = float(df["compute_flops"].max())
    multipliers = _multipliers(power_laws, kinds, max_compute_flops, notes)
    notes += _identification_notes(power_laws, chinchilla, shared, multipliers)
    rows = _sensitivity(df, kinds, loss_column, shared, n_boot=n_boot, seed=seed, level=level,
                        step=step) if sensitivity else ()
    result = ScalingFit(
        loss_column=loss_column, level=level, n_boot=n_boot, seed=seed, kinds=kinds,
        max_compute_flops=max_compute_flops, power_laws=power_laws, chinchilla=chinchilla,
        compute_optimal=optimal, held_out=held_out, multipliers=multipliers,
        extrapolations=_extrapolations(power_laws, extrapolate_to_flops, max_compute_flops, notes),
        notes=tuple(notes), shared=shared,
        loss_label=loss_label or default_loss_label(loss_column),
        min_compute_flops=float(df["compute_flops"].min()),
        bootstrap_unit=("run group" if "run_group" in df.columns else "training run"),
        n_training_runs={k: int(df.loc[df["_group"] == k, "_run"].nunique()) for k in kinds},
        held_out_status=status, sensitivity=rows, outliers=outliers, headline=headline,
    )
    step.done()
    return result


def _budgets(runs: pd.DataFrame):
    """The budget of each row when the table names them (see compute_frontier), else None."""
    if "budget" in runs.columns and not runs["budget"].isna().any():
        return runs["budget"].astype(str).to_numpy()
    return None


def default_loss_column(df: pd.DataFrame) -> str:
    """heldout_loss where every row has one (the quantity scaling claims should rest on),
    else smoothed_loss."""
    if "heldout_loss" in df.columns and np.isfinite(df["heldout_loss"]).all():
        return "heldout_loss"
    return "smoothed_loss"


def check_loss_column(df: pd.DataFrame, loss_column: str) -> None:
    if loss_column not in LOSS_COLUMNS:
        raise RunTableError(f"--loss-column {loss_column!r}: choose one of "
                            f"{', '.join(LOSS_COLUMNS)}")
    if loss_column not in df.columns:
        raise RunTableError(f"--loss-column {loss_column}: the run table has no such column "
                            "(sweeps record it since the held-out loss was added)")
    bad = ~np.isfinite(df[loss_column].to_numpy(float))
    if bad.any():
        names = ", ".join(df.loc[bad, "name"].astype(str).head(3))
        raise RunTableError(f"--loss-column {loss_column}: {int(bad.sum())} rows have none "
                            f"(e.g. {names}); fit another loss column or drop those rows")


def default_loss_label(loss_column: str) -> str:
    return {"heldout_loss": "held-out flow-matching loss at fixed noise (images never trained "
                            "on)",
            "smoothed_loss": "smoothed training flow-matching loss",
            "final_loss": "final-step training flow-matching loss"}[loss_column]


def _ordered_groups(df: pd.DataFrame) -> tuple[str, ...]:
    """Groups in report order: by FFN kind, then expert count."""
    order = {k: i for i, k in enumerate(FFN_KINDS)}
    groups = df["_group"].unique().tolist()
    experts = df.groupby("_group")["experts"].min() if "experts" in df.columns else {}
    return tuple(sorted(groups, key=lambda g: (order[kind_of(g)], experts.get(g, 0))))


def _redrawn_note(kind, redrawn, n_boot) -> list[str]:
    if not redrawn:
        return []
    return [f"bootstrap for {kind}: {redrawn} draws with fewer than 2 distinct training runs "
            f"were redrawn (a resample of one run has no trend in size); {n_boot} kept"]


def _held_out(runs, split, loss_column, *, kind, n_boot, seed, level) -> HeldOutResult:
    """Fit the training runs (frontier, run-level bootstrap), predict the held-out rows."""
    train_mask, test_mask = split
    train = runs[train_mask]
    C, L = train["compute_flops"].to_numpy(), train[loss_column].to_numpy()
    point, w_RN, _ = frontier_weights(C, L, train["_run"], train["_group"], n_boot, seed,
                                      _budgets(train), config_ids(train))
    fit = fit_power_law(C, L, point_rows=point, boot_weights=w_RN, n_boot=n_boot, level=level)
    out = []
    for _, row in runs[test_mask].iterrows():
        p = predict(fit, row["compute_flops"])
        actual = float(row[loss_column])
        out.append(HeldOutRun(name=str(row["name"]), compute_flops=float(row["compute_flops"]),
                              actual_loss=actual, predicted_loss=p.loss,
                              relative_error=(p.loss - actual) / actual, interval=p.interval))
    return HeldOutResult(kind=kind, n_train=int(point.sum()),
                         train_max_compute_flops=float(C.max()), runs=tuple(out))


def _without_outliers(df, kinds, loss_column) -> tuple[pd.DataFrame, list[str]]:
    """The table without the rows OUTLIER_RULE flags, and their names."""
    resid = np.full(len(df), np.nan)
    for kind in kinds:
        sel = (df["_group"] == kind).to_numpy()
        runs = df[sel]
        C, L = runs["compute_flops"].to_numpy(), runs[loss_column].to_numpy()
        point = frontier_mask(C, L, np.ones((1, len(C)), bool), runs["_group"], _budgets(runs),
                              config_ids(runs))[0]
        try:
            f = fit_power_law(C, L, point_rows=point)
        except FitError:
            continue
        resid[sel] = np.log(L) - np.log(f.law.loss(C))
    drop = outlier_rows(resid, df["_group"])
    return df[~drop].reset_index(drop=True), df.loc[drop, "name"].tolist()


def _shared_fit(df, kinds, loss_column, *, n_boot, seed, level, notes):
    """L_k(C) = E + A_k C^-alpha over the frontier of every group, run-level bootstrap."""
    C, L = df["compute_flops"].to_numpy(), df[loss_column].to_numpy()
    point, w_RN, _ = frontier_weights(C, L, df["_run"], df["_group"], n_boot,
                                      np.random.SeedSequence([seed, 99]), _budgets(df),
                                      config_ids(df))
    return _attempt(notes, "shared-exponent fit", fit_shared_power_law, C, L,
                    df["_group"].to_numpy(), point_rows=point, boot_weights=w_RN,
                    n_boot=n_boot, level=level)


def sensitivity_columns(df: pd.DataFrame) -> list[str]:
    """The loss columns every row has: the sensitivity table refits on each."""
    return [c for c in LOSS_COLUMNS if c in df.columns and np.isfinite(df[c].to_numpy(float)).all()]


def _sensitivity(df, kinds, main_column, main_fit, *, n_boot, seed, level, step
                 ) -> tuple[SensitivityRow, ...]:
    """The shared-fit multipliers of every pair, refitted on variations of the data: either
    loss column, and subsets of the budgets (by step_fraction when the table has it). The
    main fit is the row of its loss column with all budgets; the others use at most
    SENSITIVITY_BOOT resamples."""
    rows = []
    n_boot_part = min(n_boot, SENSITIVITY_BOOT)
    fractions = df["step_fraction"] if "step_fraction" in df.columns else None
    for loss_column in sensitivity_columns(df):
        for label, subset in BUDGET_SUBSETS:
            step(f"sensitivity: {loss_column}, {label}")
            if subset is not None and fractions is None:
                continue
            part = df
            if subset == "final":
                part = df[fractions == fractions.max()]
            elif subset == "drop_smallest":
                part = df[fractions > fractions.min()]
            notes: list[str] = []
            if loss_column == main_column and subset is None:
                fit = main_fit
            else:
                fit = _shared_fit(part, kinds, loss_column, n_boot=n_boot_part, seed=seed,
                                  level=level, notes=notes)
            ms = tuple(fit.multiplier(k, b) for k, b in comparison_pairs(kinds)) if fit else ()
            rows.append(SensitivityRow(label=f"{loss_column}, {label}", loss_column=loss_column,
                                       budgets=label, n_rows=len(part), multipliers=ms,
                                       note="; ".join(notes)))
    return tuple(rows)


def compute_frontier(runs: pd.DataFrame, loss_column: str = "smoothed_loss") -> pd.DataFrame:
    """The runs on the compute-efficient frontier.

    With a ``budget`` column (several model sizes per compute budget, Hoffmann et al. 2022
    Approach 1): the lowest-loss run of each budget. Without one (points read off runs of
    several sizes, Kaplan et al. 2020 Fig. 2): the lower envelope, i.e. every run that no run
    with at most its compute beats. Runs of one size alone are all on it."""
    if "budget" in runs.columns and not runs["budget"].isna().any():
        best = runs.groupby("budget", sort=False)[loss_column].idxmin()
        return runs.loc[sorted(best)]
    ordered = runs.sort_values(["compute_flops", loss_column])
    best_so_far = ordered[loss_column].cummin()
    on_frontier = ordered[loss_column] <= best_so_far
    return ordered[on_frontier.to_numpy()].sort_index()


def _attempt(notes: list[str], what: str, fit_fn: Callable[..., T], *args, **kwargs) -> T | None:
    """Run one fit; when the data cannot support it, record why in notes and return None."""
    try:
        return fit_fn(*args, **kwargs)
    except FitError as err:
        notes.append(f"skipped {what}: {err}")
        return None


def _store(results: dict, kind: str, fit) -> None:
    if fit is not None:
        results[kind] = fit


def _collinearity_note(runs: pd.DataFrame, kind: str) -> list[str]:
    r = np.corrcoef(np.log(runs["active_params"]), np.log(runs["tokens_seen"]))[0, 1]
    if abs(r) > 0.99:
        return [f"Chinchilla L(N, D) for {kind}: log N and log D are nearly collinear "
                f"(r = {r:.3f}); alpha and beta are poorly identified"]
    return []


def _multipliers(power_laws, kinds, max_compute_flops, notes) -> tuple[Multiplier, ...]:
    """Per-group fits' multiplier of every (expert-choice variant, baseline) pair."""
    out = []
    for kind, baseline in comparison_pairs(kinds):
        if kind in power_laws and baseline in power_laws:
            m = compute_multiplier(power_laws[kind], power_laws[baseline], kind=kind,
                                   baseline_kind=baseline,
                                   reference_compute_flops=max_compute_flops)
            out.append(m)
            if m.note:
                notes.append(f"multiplier {kind} over {baseline}: {m.note}")
    return tuple(out)


def _identification_notes(power_laws, chinchilla, shared, multipliers) -> list[str]:
    """One note per constant or multiplier whose interval does not pin it down (issue: a
    zero-width or 0–∞ interval printed as a result)."""
    notes = []
    for label, fits in (("L(C)", power_laws), ("Chinchilla L(N, D)", chinchilla)):
        for kind, f in fits.items():
            for name, value in f.law.to_dict().items():
                why = identification(value, f.ci.get(name))
                if why:
                    notes.append(f"{label} for {kind}: {name} {why}")
    if shared is not None:
        law = shared.law
        for name, value in [("E", law.E), ("alpha", law.alpha),
                            *((f"A:{k}", v) for k, v in law.A.items())]:
            why = identification(value, shared.ci.get(name))
            if why:
                notes.append(f"shared-exponent fit: {name} {why}")
        for kind, base in comparison_pairs(list(law.A)):
            m = shared.multiplier(kind, base)
            why = identification(m.value, m.interval)
            if why:
                notes.append(f"shared-fit multiplier {kind} over {base}: {why}")
    for m in multipliers:
        why = identification(m.value, m.interval) if m.defined else ""
        if why:
            notes.append(f"per-kind multiplier {m.kind} over {m.baseline_kind}: {why}")
    return notes


def _extrapolations(power_laws, compute_flops, max_compute_flops, notes
                    ) -> tuple[Extrapolation, ...]:
    """Absolute losses at compute_flops, only within MAX_EXTRAPOLATION of the data."""
    if compute_flops is None:
        return ()
    factor = compute_flops / max_compute_flops
    if factor > MAX_EXTRAPOLATION:
        notes.append(f"no loss predicted at {compute_flops:.3g} FLOPs: {factor:.2g}x beyond the "
                     f"largest run, past the {MAX_EXTRAPOLATION:g}x limit on extrapolating an "
                     "absolute loss")
        return ()
    return tuple(Extrapolation(kind=k, prediction=predict(f, compute_flops))
                 for k, f in power_laws.items())


def _check_options(n_boot, level, extrapolate_to_flops) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot {n_boot!r}: a number of bootstrap resamples >= 0")
    if not (isinstance(level, float) and 0 < level < 1):
        raise ValueError(f"level {level!r}: an interval level in (0, 1), e.g. 0.95")
    if extrapolate_to_flops is not None and not (
            math.isfinite(extrapolate_to_flops) and extrapolate_to_flops > 0):
        raise ValueError(f"extrapolate to {extrapolate_to_flops!r} FLOPs: compute must be a "
                         "finite number > 0, e.g. 1e21")


def _check_fittable(df: pd.DataFrame, kinds, loss_column: str) -> None:
    """One line, before any work, when no fit could come out of the table."""
    sizes = {k: len(compute_frontier(df[df["_group"] == k], loss_column)) for k in kinds}
    if max(sizes.values()) < MIN_RUNS_POWER_LAW:
        have = ", ".join(f"{k}: {n}" for k, n in sizes.items())
        raise RunTableError(
            f"run table: too few runs to fit; L(C) needs at least {MIN_RUNS_POWER_LAW} runs of one "
            f"FFN kind on its compute frontier (different compute, falling loss), the table has "
            f"{have}")
    loss = df[loss_column].to_numpy()
    if np.log(loss.max() / loss.min()) < MIN_LOG_LOSS_SPREAD:
        raise RunTableError(
            f"run table: {loss_column} is {loss[0]:.6g} in every one of the {len(df)} rows; "
            "a scaling law needs losses that change with compute")


class _Steps:
    """Calls progress(what, i, total) as each fit starts, and ("done", total, total) at the end."""

    def __init__(self, progress: Progress | None, total: int):
        self.progress, self.total, self.i = progress, total, 0

    def __call__(self, what: str) -> None:
        if self.progress is not None:
            self.progress(what, self.i, self.total)
        self.i += 1

    def done(self) -> None:
        if self.progress is not None:
            self.progress("done", self.total, self.total)
