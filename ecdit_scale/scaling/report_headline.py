"""The report's headline section: the shared-exponent L(N, D) comparison with its interval,
what the design can detect and the constancy test, and, for an IsoFLOP table (`flops_level`),
a figure of loss against activated parameters per level: the runs (seed means), the fitted
law along C = k·N·D and its bootstrap band, drawn only over the sizes trained."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .report_figures import FigureBlock, _color, _save
from .results import ScalingFit


def headline_rows(fit: ScalingFit) -> tuple[tuple[str, ...], ...]:
    rows = []
    for c in fit.headline.comparisons:
        ci = (f"{c.value:.3g} ({c.interval.lo:.3g}–{c.interval.hi:.3g})" if c.interval
              else f"{c.value:.3g}")
        rows.append((f"{c.variant} over {c.baseline}", ci, f"{c.minimum_detectable:.3g}",
                     "detected" if c.detected else "identified, not detected" if c.identified
                     else "cannot identify",
                     f"{c.gamma:+.3f} ± {c.gamma_se:.3f}"))
    return tuple(rows)


def _short_count_ticks(axis) -> None:
    """A log axis of counts labelled 1, 2 and 5 per decade as 100K, 200K, 1M: matplotlib's own
    labels for a span under two decades put every minor tick's "n x 10^k" side by side, and they
    overlap."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def short(x, _pos) -> str:
        for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if x >= scale:
                return f"{x / scale:g}{unit}"
        return f"{x:g}"

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(short))
    axis.set_minor_formatter(NullFormatter())


def figure_isoflop(df, fit: ScalingFit, figures_dir) -> FigureBlock | None:
    """Loss against activated parameters, one panel per variant, a curve per level."""
    h = fit.headline
    if h is None or "flops_level" not in df.columns:
        return None
    groups = [g for g in fit.kinds if g in h.law.s_N]
    fig = Figure(figsize=(4.2 * len(groups), 4))
    axes = np.atleast_1d(fig.subplots(1, len(groups), sharey=True))
    k = h.flops_per_param_token
    for ax, g in zip(axes, groups, strict=True):
        rows = df[df["_group"] == g]
        for i, (level, at) in enumerate(rows.groupby("flops_level")):
            means = at.groupby("active_params")[fit.loss_column].mean()
            shade = 0.35 + 0.65 * i / max(1, rows["flops_level"].nunique() - 1)
            ax.plot(means.index, means.to_numpy(), "o", color=_color(fit, g), alpha=shade)
            N = np.geomspace(means.index.min(), means.index.max(), 60)
            D = level / (k * N)
            ax.plot(N, h.law.loss(g, N, D), "-", color=_color(fit, g), alpha=shade,
                    label=f"{level:.2g} FLOPs")
            if h.bootstrap_laws:
                band = np.array([b.loss(g, N, D) for b in h.bootstrap_laws])
                lo, hi = np.percentile(band, [2.5, 97.5], axis=0)
                ax.fill_between(N, lo, hi, color=_color(fit, g), alpha=0.12 * shade)
        ax.set_xscale("log")
        _short_count_ticks(ax.xaxis)
        ax.set_yscale("log")
        ax.set_title(g)
        ax.set_xlabel("activated parameters")
        ax.legend(fontsize=7)
    axes[0].set_ylabel(fit.loss_column)
    fig.tight_layout()
    return _save(fig, figures_dir, "isoflop_levels",
                 "Loss against activated parameters per IsoFLOP level: seed means (dots), the "
                 "headline law along each level (lines) and its 95% bootstrap band")
