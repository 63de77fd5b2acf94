"""The report's figures: PNG and SVG files drawn with matplotlib's object API (`Figure`, Agg
canvas), never pyplot's global state. Curves are drawn only over the compute the runs cover.
Titles and axis labels are wrapped to their axes, and each file is cut to everything drawn
(``bbox_inches="tight"``), so no label is clipped."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..files import atomic_output
from .fit import compute_frontier
from .laws import predict_band
from .results import ScalingFit
from .runlevel import kind_of

KIND_COLORS = {"dense": "tab:blue", "token-choice": "tab:orange", "expert-choice": "tab:green"}
_EXTRA_COLORS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
_DPI = 110
_MAX_LOAD_PANELS = 12


@dataclass(frozen=True)
class FigureBlock:
    id: str
    alt: str
    path: Path  # the PNG (embedded in the HTML); the SVG lies beside it

    @property
    def svg(self) -> Path:
        return self.path.with_suffix(".svg")


def loss_words(fit: ScalingFit) -> str:
    """What the loss is, for axis labels and text."""
    return fit.loss_label or fit.loss_column


def _color(fit: ScalingFit, group: str) -> str:
    """A kind's colour for its first group; the others of that kind get their own."""
    same = [g for g in fit.kinds if kind_of(g) == kind_of(group)]
    if group not in same or same.index(group) == 0:
        return KIND_COLORS.get(kind_of(group), "tab:gray")
    return _EXTRA_COLORS[fit.kinds.index(group) % len(_EXTRA_COLORS)]


def _wrap_labels(fig: Figure) -> None:
    """Wrap each axes' title and axis labels to the axes' own size (at ~0.6 em per character),
    so that a long label takes two lines instead of running off the figure."""
    width_in, height_in = fig.get_size_inches()
    for ax in fig.axes:
        box = ax.get_position()
        for text, inches in ((ax.title, box.width * width_in),
                             (ax.xaxis.label, box.width * width_in),
                             (ax.yaxis.label, box.height * height_in)):
            chars = max(12, int(inches * 72 / (0.6 * text.get_fontsize())))
            if len(text.get_text()) > chars:
                text.set_text(textwrap.fill(text.get_text(), chars))


def _save(fig: Figure, figures_dir: Path, name: str, alt: str) -> FigureBlock:
    FigureCanvasAgg(fig)  # a renderer for the layout to measure text with
    _wrap_labels(fig)
    fig.tight_layout()
    path = figures_dir / f"{name}.png"
    for suffix, metadata in ((".png", {"Software": None}), (".svg", {"Date": None})):
        with atomic_output(path.with_suffix(suffix)) as tmp:
            fig.savefig(tmp, format=suffix[1:], dpi=_DPI, metadata=metadata,
                        bbox_inches="tight", pad_inches=0.08)
    return FigureBlock(id=f"fig-{name.replace('_', '-')}", alt=alt, path=path)


def _compute_grid_flops(runs) -> np.ndarray:
    """The compute the runs cover, and no further: curves are not drawn beyond the data."""
    return np.logspace(np.log10(runs["compute_flops"].min()),
                       np.log10(runs["compute_flops"].max()), 100)


def figure_loss(df, fit, figures_dir) -> FigureBlock:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for kind in fit.kinds:
        color = _color(fit, kind)
        runs = df[df["_group"] == kind]
        if runs.empty:  # a saved fit can name groups this table does not have
            continue
        grid = _compute_grid_flops(runs)
        frontier = compute_frontier(runs, fit.loss_column)
        ax.scatter(runs["compute_flops"], runs[fit.loss_column], s=14, color=color, alpha=0.3)
        ax.scatter(frontier["compute_flops"], frontier[fit.loss_column], s=22, color=color,
                   label=f"{kind} runs (frontier solid)")
        if kind in fit.power_laws:
            band = predict_band(fit.power_laws[kind], grid)
            ax.plot(grid, band.loss, color=color, label=f"{kind} fit, {fit.level:.0%} band")
            ax.fill_between(grid, band.lo, band.hi, color=color, alpha=0.15, linewidth=0)
        if fit.shared is not None and kind in fit.shared.law.A:
            ax.plot(grid, fit.shared.law.loss(kind, grid), color=color, linestyle="--",
                    label=f"{kind}, shared-exponent fit")
    ax.set(xscale="log", yscale="log", xlabel="compute (FLOPs)",
           ylabel=loss_words(fit),
           title="Loss against compute over the runs' range: per-group fits with bootstrap "
                 "bands, shared fit dashed")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, figures_dir, "loss_vs_compute", "Loss against compute per group with "
                 "fitted power laws and bootstrap bands, over the range of the data")


def _point_with_interval(ax, x, y, interval, color, marker, label=None) -> None:
    """A point and its bootstrap interval as a vertical bar (a percentile interval need not
    contain the point estimate, so no symmetric error bars)."""
    if interval is not None and math.isfinite(interval.lo) and math.isfinite(interval.hi):
        ax.vlines(x, interval.lo, interval.hi, color=color, linewidth=1.5)
    ax.plot([x], [y], marker=marker, color=color, linestyle="none", label=label)


def figure_residuals(df, fit, figures_dir) -> FigureBlock:
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    for kind, f in fit.power_laws.items():
        runs = compute_frontier(df[df["_group"] == kind], fit.loss_column)
        pred = f.law.loss(runs["compute_flops"].to_numpy())
        resid = runs[fit.loss_column].to_numpy() / pred - 1
        ax.scatter(runs["compute_flops"], 100 * resid, color=_color(fit, kind), label=kind,
                   s=18)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(xscale="log", xlabel="compute (FLOPs)", ylabel="residual (% of fitted loss)",
           title="Residuals of the power-law fits")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, figures_dir, "residuals", "Residuals of the loss-against-compute fits")


def figure_held_out(fit, figures_dir) -> FigureBlock:
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    values = []
    for kind, h in fit.held_out.items():
        for i, r in enumerate(h.runs):
            _point_with_interval(ax, r.actual_loss, r.predicted_loss, r.interval,
                                 _color(fit, kind), "o", label=kind if i == 0 else None)
            values += [r.actual_loss, r.predicted_loss]
            values += [r.interval.lo, r.interval.hi] if r.interval else []
    span = [min(values), max(values)]
    ax.plot(span, span, color="black", linewidth=0.8, linestyle="--", label="predicted = actual")
    ax.set(xlabel=f"actual {loss_words(fit)}", ylabel="predicted (fit without these runs)",
           title="Held-out predictions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, figures_dir, "held_out", "Held-out runs: predicted against actual loss")


def figure_compute_optimal(df, fit, figures_dir) -> FigureBlock:
    fig = Figure(figsize=(9, 3.8))
    ax_n, ax_d = fig.subplots(1, 2)
    grid = np.logspace(math.log10(fit.min_compute_flops if math.isfinite(fit.min_compute_flops)
                                  else df["compute_flops"].min()),
                       math.log10(fit.max_compute_flops))
    for kind, o in fit.compute_optimal.items():
        color = _color(fit, kind)
        ax_n.plot(grid, o.params_opt(grid), color=color, label=f"{kind} N_opt")
        ax_d.plot(grid, o.tokens_opt(grid), color=color, label=f"{kind} D_opt")
        runs = compute_frontier(df[df["_group"] == kind], fit.loss_column)
        ax_n.scatter(runs["compute_flops"], runs["active_params"], color=color, s=14, alpha=0.6)
        ax_d.scatter(runs["compute_flops"], runs["tokens_seen"], color=color, s=14, alpha=0.6)
    ax_n.set(xscale="log", yscale="log", xlabel="compute (FLOPs)", ylabel="N_opt (active params)")
    ax_d.set(xscale="log", yscale="log", xlabel="compute (FLOPs)", ylabel="D_opt (tokens)")
    ax_n.legend(fontsize=8)
    fig.suptitle("Compute-optimal frontier from the Chinchilla fit over the runs' range "
                 "(dots: runs)")
    fig.tight_layout()
    return _save(fig, figures_dir, "compute_optimal", "Compute-optimal parameters and tokens "
                 "against compute")


def figure_expert_load(expert_load, figures_dir) -> FigureBlock:
    names = list(expert_load)[:_MAX_LOAD_PANELS]
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.6 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, name in zip(axes, names, strict=False):
        ax.hist(np.asarray(expert_load[name], dtype=float).ravel(), bins=20, color="tab:green")
        ax.set_title(str(name), fontsize=9)
        ax.set_xlabel("experts per token", fontsize=8)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, figures_dir, "expert_load", "Histograms of expert load per run")


def figure_alignment(df, figures_dir) -> FigureBlock:
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for kind in (k for k in KIND_COLORS if (df["ffn_kind"] == k).any()):
        runs = df[(df["ffn_kind"] == kind) & df["alignment"].notna()]
        ax.scatter(runs["compute_flops"], runs["alignment"], color=KIND_COLORS[kind], label=kind,
                   s=18)
    ax.set(xscale="log", xlabel="compute (FLOPs)", ylabel="alignment score (0-1)", ylim=(0, 1),
           title="GenEval-style alignment against compute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, figures_dir, "alignment", "Alignment score against compute per FFN kind")


