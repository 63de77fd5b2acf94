"""Fit a whole run table: per FFN kind L(C), the held-out check, L(N, D) and compute-optimal
allocation, then the shared-exponent fit, compute multipliers and extrapolations.

The fits themselves are in `laws` and `shared`; this module picks the runs each one sees (the
compute frontier), turns what the data cannot support into notes, and reports progress.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pandas as pd

from .formulas import DEFAULT_LEVEL, identification
from .laws import (MIN_RUNS_POWER_LAW, compute_multiplier, compute_optimal, fit_chinchilla,
                   fit_power_law, flops_per_param_token, held_out_check, predict)
from .results import Extrapolation, Multiplier, ScalingFit
from .robust import MIN_LOG_LOSS_SPREAD, FitError, Progress
from .shared import fit_shared_power_law
from .table import FFN_KINDS, RunTableError, validate_run_table

MIN_RUNS_FOR_INTERVALS = 5  # below this a resample of distinct runs is nearly the data itself

T = TypeVar("T")


def fit_run_table(df: pd.DataFrame, *, n_boot: int = 200, seed: int = 0,
                  extrapolate_to_flops: float | None = None, loss_column: str = "smoothed_loss",
                  holdout: int | float = 1, level: float = DEFAULT_LEVEL,
                  progress: Progress | None = None) -> ScalingFit:
    """Per FFN kind: L(C) power law, held-out check, Chinchilla L(N, D) and compute-optimal
    allocation; multipliers of expert-choice over dense and token-choice; extrapolations.

    progress(what, done, total) is called before each of the fits and once at the end."""
    if loss_column not in ("smoothed_loss", "final_loss"):
        raise ValueError(f"loss_column {loss_column!r}: use smoothed_loss or final_loss")
    _check_options(n_boot, level, extrapolate_to_flops)
    df = validate_run_table(df)
    kinds = tuple(k for k in FFN_KINDS if (df["ffn_kind"] == k).any())
    _check_fittable(df, kinds, loss_column)
    notes: list[str] = []
    power_laws, chinchilla, optimal, held_out = {}, {}, {}, {}
    step = _Steps(progress, 3 * len(kinds) + 1)
    for i, kind in enumerate(kinds):
        runs = df[df["ffn_kind"] == kind]
        frontier = compute_frontier(runs, loss_column)
        if len(frontier) < len(runs):
            notes.append(f"L(C) for {kind}: fitted to the {len(frontier)} runs on the compute "
                         f"frontier, of {len(runs)} in all")
        C, L = frontier["compute_flops"], frontier[loss_column]
        seeds = np.random.SeedSequence([seed, i]).spawn(3)
        opts = {"n_boot": n_boot, "level": level}
        step(f"L(C) for {kind}")
        _store(power_laws, kind, _attempt(
            notes, f"power law L(C) for {kind}", fit_power_law, C, L, seed=seeds[0], **opts))
        step(f"held-out check for {kind}")
        _store(held_out, kind, _attempt(
            notes, f"held-out check for {kind}", held_out_check, C, L, frontier["name"], kind=kind,
            holdout=holdout, seed=seeds[1], **opts))
        step(f"L(N, D) for {kind}")
        _store(chinchilla, kind, _attempt(
            notes, f"Chinchilla L(N, D) for {kind}", fit_chinchilla, runs["active_params"],
            runs["tokens_seen"], runs[loss_column], seed=seeds[2], **opts))
        if kind in power_laws and len(C) < MIN_RUNS_FOR_INTERVALS:
            notes.append(f"L(C) for {kind}: only {len(C)} runs for 3 constants; its bootstrap "
                         "intervals understate the uncertainty")
        if kind in chinchilla:
            k = flops_per_param_token(runs)
            optimal[kind] = compute_optimal(chinchilla[kind], k, kind=kind)
            notes += _collinearity_note(runs, kind)
    max_compute_flops = float(df["compute_flops"].max())
    step("shared-exponent fit")
    shared = _shared_fit(df, kinds, loss_column, n_boot=n_boot, seed=seed, level=level,
                         notes=notes)
    multipliers = _expert_choice_multipliers(power_laws, max_compute_flops, notes)
    notes += _identification_notes(power_laws, chinchilla, shared, multipliers)
    result = ScalingFit(
        loss_column=loss_column, level=level, n_boot=n_boot, seed=seed, kinds=kinds,
        max_compute_flops=max_compute_flops, power_laws=power_laws, chinchilla=chinchilla,
        compute_optimal=optimal, held_out=held_out,
        multipliers=multipliers,
        extrapolations=_extrapolations(power_laws, extrapolate_to_flops),
        notes=tuple(notes), shared=shared,
    )
    step.done()
    return result


def _shared_fit(df, kinds, loss_column, *, n_boot, seed, level, notes):
    """L_k(C) = E + A_k C^-alpha over the frontier runs of every kind (scaling.shared)."""
    frontier = pd.concat([compute_frontier(df[df["ffn_kind"] == k], loss_column) for k in kinds])
    return _attempt(notes, "shared-exponent fit", fit_shared_power_law,
                    frontier["compute_flops"], frontier[loss_column], frontier["ffn_kind"],
                    n_boot=n_boot, seed=np.random.SeedSequence([seed, 99]), level=level)


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


def _expert_choice_multipliers(power_laws, max_compute_flops, notes) -> tuple[Multiplier, ...]:
    out = []
    for baseline in ("dense", "token-choice"):
        if "expert-choice" in power_laws and baseline in power_laws:
            m = compute_multiplier(power_laws["expert-choice"], power_laws[baseline],
                                   kind="expert-choice", baseline_kind=baseline,
                                   reference_compute_flops=max_compute_flops)
            out.append(m)
            if m.note:
                notes.append(f"multiplier expert-choice over {baseline}: {m.note}")
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
        for base in ("dense", "token-choice"):
            if "expert-choice" in law.A and base in law.A:
                m = shared.multiplier("expert-choice", base)
                why = identification(m.value, m.interval)
                if why:
                    notes.append(f"shared-fit multiplier expert-choice over {base}: {why}")
    for m in multipliers:
        why = identification(m.value, m.interval) if m.defined else ""
        if why:
            notes.append(f"per-kind multiplier {m.kind} over {m.baseline_kind}: {why}")
    return notes


def _extrapolations(power_laws, compute_flops) -> tuple[Extrapolation, ...]:
    if compute_flops is None:
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
    sizes = {k: len(compute_frontier(df[df["ffn_kind"] == k], loss_column)) for k in kinds}
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
