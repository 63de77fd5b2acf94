"""Scaling reports: report.md plus a self-contained report.html, and the PNG figures
(drawn by `report_figures`).

The report is built once as a list of blocks (headings, paragraphs, tables, figures) and
rendered twice: Markdown that links figures/*.png, and HTML that embeds every figure as a
base64 data URI, so the file can be mailed or archived alone. Figures use matplotlib's
object API (`matplotlib.figure.Figure`, Agg canvas), never pyplot's global state.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..files import MAX_CARRIED_ENTRIES, _link_or_copy, atomic_dir, check_output_folder, path_kind
from ..units import format_number
from .formulas import NO_SPREAD, Interval, unidentified
from .report_figures import (
    FigureBlock,
    figure_alignment,
    figure_compute_optimal,
    figure_expert_load,
    figure_held_out,
    figure_loss,
    figure_residuals,
    loss_words,
)
from .results import ScalingFit
from .runlevel import variant_labels

DEFAULT_TITLE = "EC-DiT scaling report"


@dataclass(frozen=True)
class ReportPaths:
    """Where write_report put things."""

    markdown: Path
    html: Path
    figures_dir: Path
    figures: tuple[Path, ...]

    def to_dict(self) -> dict:
        return {"markdown": str(self.markdown), "html": str(self.html),
                "figures_dir": str(self.figures_dir), "figures": [str(p) for p in self.figures]}

    @classmethod
    def from_dict(cls, d: dict) -> ReportPaths:
        return cls(markdown=Path(d["markdown"]), html=Path(d["html"]),
                   figures_dir=Path(d["figures_dir"]), figures=tuple(map(Path, d["figures"])))


# ---------------------------------------------------------------------------------------
# Blocks: built once, rendered to Markdown and HTML
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class _Paragraph:
    text: str
    strong: bool = False


@dataclass(frozen=True)
class _Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def write_report(df: pd.DataFrame, fit: ScalingFit, out_dir, *, title: str = DEFAULT_TITLE,
                 expert_load: Mapping[str, np.ndarray] | None = None) -> ReportPaths:
    """Write out_dir/report.md, out_dir/report.html and out_dir/figures/*.png and *.svg: the
    folder appears whole or not at all (files of the user's in an older one are kept)."""
    out_dir = Path(out_dir)
    check_report_folder(out_dir)
    theirs = _foreign_files(out_dir)
    with atomic_dir(out_dir) as tmp:  # the folder appears whole (Ctrl-C: the old one stays)
        for rel in theirs:
            _link_or_copy(out_dir / rel, tmp / rel)
        (tmp / "figures").mkdir()
        blocks = _blocks(df, fit, tmp / "figures", title, expert_load)
        (tmp / "report.md").write_text(_render_markdown(blocks, tmp))
        (tmp / "report.html").write_text(_render_html(blocks, title))
        figures = tuple(out_dir / b.path.relative_to(tmp) for b in blocks
                        if isinstance(b, FigureBlock))
    return ReportPaths(markdown=out_dir / "report.md", html=out_dir / "report.html",
                       figures_dir=out_dir / "figures", figures=figures)


def check_report_folder(out_dir: Path) -> None:
    """Before any work: ``out_dir`` can be replaced as a whole (it is a new name or a real
    folder below the current one; one line naming it otherwise)."""
    check_output_folder(out_dir, "--out")
    if path_kind(out_dir) == "other":  # a symbolic link (even to a folder) is not swapped out
        raise ConfigError(f"--out {out_dir}: is a link or not a folder; the report folder is "
                          "replaced as a whole: give a real folder or a new name")
    here = Path.cwd().resolve()
    if path_kind(out_dir) == "dir" and out_dir.resolve() in (here, *here.parents):
        raise ConfigError(f"--out {out_dir}: the report folder is replaced as a whole; the "
                          "current folder (or one above it) cannot be: give a subfolder")


def _written(rel: str) -> bool:
    """A file of the report folder that this writes (a stale one is dropped)."""
    return rel in ("report.md", "report.html") or (
        rel.startswith("figures/") and rel.count("/") == 1 and rel.endswith((".png", ".svg")))


def _foreign_files(out_dir: Path) -> list[str]:
    """The user's own files in an existing report folder: carried into the new one."""
    if path_kind(out_dir) != "dir":
        return []
    found = []
    for n, path in enumerate(sorted(out_dir.rglob("*"))):
        if n > MAX_CARRIED_ENTRIES:
            raise ConfigError(f"--out {out_dir}: holds over {MAX_CARRIED_ENTRIES:,} entries; "
                              "choose a new or empty folder")
        rel = path.relative_to(out_dir).as_posix()
        if (path.is_symlink() or not path.is_dir()) and not _written(rel):
            found.append(rel)
    return found


def plain_answer(fit: ScalingFit) -> str:
    """Does each expert-choice variant reach each baseline's loss with less compute, and by how
    much (the shared-exponent fit when there is one, else the per-group fits), and over which
    compute range that was measured."""
    pairs = fit.pairs()
    if not pairs:
        return "No fit covers expert choice and a baseline, so they cannot be compared."
    answers = []
    if fit.headline is not None:
        answers.append("Headline (one shared-exponent L(N, D) fitted to every run, a scale on N "
                       "and on D per variant): "
                       + "; ".join(c.verdict() for c in fit.headline.comparisons) + ".")
        answers.append(fit.headline.power_line().capitalize() + ".")
        answers.append("Check, from the compute frontier:")
    answers += [_answer(fit, kind, base) for kind, base in pairs]
    answers += _robustness(fit)
    if math.isfinite(fit.min_compute_flops):
        answers.append(f"Measured on {format_number(fit.min_compute_flops, 3)}–"
                       f"{format_number(fit.max_compute_flops, 3)} FLOPs "
                       f"({fit.compute_range:.3g}x), "
                       f"{loss_words(fit)}; intervals from a bootstrap of {_unit(fit)}.")
    return " ".join(answers)


def _robustness(fit: ScalingFit) -> list[str]:
    """One sentence per pair whose conclusion (interval above 1, below 1, or including 1)
    changes across the sensitivity table."""
    out = []
    for kind, base in fit.pairs():
        verdicts = []
        for row in fit.sensitivity:
            m = next((m for m in row.multipliers
                      if (m.kind, m.baseline_kind) == (kind, base)), None)
            iv = m.interval if m is not None else None
            if iv is None or unidentified(m.value, iv):
                verdicts.append("?")
            else:
                verdicts.append(">1" if iv.lo > 1 else "<1" if iv.hi < 1 else "~1")
        if len(set(verdicts)) > 1:
            n_one = sum(v not in (">1", "<1") for v in verdicts)
            out.append(f"Not robust: for {kind} over {base} the interval includes 1 (or the "
                       f"multiplier is not identified) in {n_one} of {len(verdicts)} variations "
                       "of the data (Sensitivity).")
    return out


def _unit(fit: ScalingFit) -> str:
    n = sorted(set(fit.n_training_runs.values()))
    runs = "/".join(map(str, n)) if n else "?"
    if fit.bootstrap_unit == "run group":
        return (f"run groups ({runs} per variant; a group is the budget runs of one size and "
                "seed, drawn together)")
    if fit.bootstrap_unit == "training run":
        return f"training runs ({runs} per variant, all budgets of a run drawn together)"
    return "rows"


def _answer(fit: ScalingFit, kind: str, baseline: str) -> str:
    name, who = baseline, kind
    m = fit.shared_multiplier(kind, baseline)
    where = "(shared-exponent fit: the same at every loss)"
    if m is None:
        m = fit.multiplier(kind, baseline)
        if m is None:
            return f"No fit covers both {who} and {name}, so they cannot be compared."
        where = f"at loss {m.loss:.4g}"
        if math.isfinite(m.reference_compute_flops):
            where += (f", {name}'s predicted loss at {m.reference_compute_flops:.3g} FLOPs, the "
                      "largest compute in the table")
    if not m.defined:
        return f"The compute multiplier of {who} over {name} is {m.note} ({where})."
    ci = m.interval
    why = unidentified(m.value, ci)
    if why == NO_SPREAD:
        return (f"The data cannot identify the compute multiplier of {who} over {name} "
                f"{where} (point value {m.value:.3g}): {why}.")
    if why:
        return (f"The data cannot identify the compute multiplier of {who} over {name} "
                f"{where}: they are consistent with {why}.")
    if ci is None:
        return (f"{who} reaches {name}'s loss with {m.value:.2f}× less compute {where}; no "
                "interval (no bootstrap samples).")
    level = f"{100 * ci.level:.0f}% CI"
    band = f"{level} {format_number(ci.lo, 3)}–{format_number(ci.hi, 3)}"
    if ci.lo > 1:
        return f"{who} reaches {name}'s loss with {m.value:.2f}× less compute ({band}) {where}."
    if ci.hi < 1:
        return (f"{who} needs {1 / m.value:.2f}× more compute than {name} for the same loss "
                f"(multiplier {m.value:.2f}, {band}) {where}.")
    c = fit.headline.comparison(kind, baseline) if fit.headline is not None else None
    below = f"; not detectable below {c.minimum_detectable:.3g}×" if c is not None else ""
    return (f"No detectable difference between {who} and {name}: multiplier {m.value:.2f}×, "
            f"{band} includes 1 {where}{below}.")


def _blocks(df, fit, figures_dir, title, expert_load) -> list:
    df = df.assign(_group=variant_labels(df, known=fit.kinds).to_numpy())
    blocks: list = [_Heading(title, 1), _Paragraph(_summary(df, fit)),
                    _Heading("Answer"), _Paragraph(plain_answer(fit), strong=True)]
    blocks += _headline_section(df, fit, figures_dir)
    blocks += _sensitivity_section(fit)
    blocks += _multiplier_section(fit)
    blocks += _loss_section(df, fit, figures_dir)
    blocks += _held_out_section(fit, figures_dir)
    blocks += _chinchilla_section(df, fit, figures_dir)
    if expert_load:
        blocks += _expert_load_section(expert_load, figures_dir)
    if "alignment" in df.columns and df["alignment"].notna().any():
        blocks += [_Heading("Alignment"), figure_alignment(df, figures_dir)]
    notes = list(fit.notes) + (list(fit.headline.notes) if fit.headline is not None else [])
    if notes:
        blocks += [_Heading("Notes")] + [_Paragraph(n) for n in notes]
    return blocks


def _headline_section(df, fit, figures_dir) -> list:
    from .report_headline import figure_isoflop, headline_rows

    if fit.headline is None:
        return []
    blocks: list = [_Heading("Headline: one L(N, D) for every variant"),
                    _Paragraph("L_k(N, D) = E + A/(s_N,k·N)^alpha + B/(s_D,k·D)^beta fitted to "
                               "every run; the compute multiplier is s_N·s_D. Intervals: "
                               "bootstrap of seeds within each size. " +
                               fit.headline.power_line() + "."),
                    _Table(("comparison", "multiplier (95% CI)", "minimum detectable",
                            "verdict", "size trend ± SE"), headline_rows(fit))]
    figure = figure_isoflop(df, fit, figures_dir)
    return blocks + ([figure] if figure is not None else [])


def _summary(df, fit) -> str:
    counts = ", ".join(f"{(df['_group'] == k).sum()} {k}" for k in fit.kinds)
    boot = (f"{fit.level:.0%} intervals from {fit.n_boot} bootstrap resamples of {_unit(fit)}, "
            "the compute frontier chosen inside each resample"
            if fit.n_boot else "no bootstrap intervals")
    outliers = fit.outliers or {}
    drop = ("outliers: dropped " + (", ".join(outliers.get("dropped") or []) or "none") +
            f" ({outliers.get('rule', '')})" if outliers.get("applied")
            else "outliers: none dropped (--drop-outliers off)")
    return (f"{len(df)} rows ({counts}); loss: {loss_words(fit)} (column {fit.loss_column}); "
            f"{boot}; {drop}. Fits: log-space Huber loss (delta 1e-3) minimised by L-BFGS from "
            "a grid of starts (Hoffmann et al. 2022, Approach 3; Besiroglu et al. 2024). "
            "Curves are drawn only over the compute the runs cover; no absolute loss is "
            "extrapolated more than 100x beyond it.")


def _sensitivity_section(fit) -> list:
    if not fit.sensitivity:
        return []
    pairs = fit.pairs()
    header = ("variation", "rows", *(f"{k} over {b}" for k, b in pairs))
    rows = []
    for r in fit.sensitivity:
        by_pair = {(m.kind, m.baseline_kind): m for m in r.multipliers}
        cells = [_ci(by_pair[p].value, by_pair[p].interval) if p in by_pair else "no fit"
                 for p in pairs]
        rows.append((r.label, str(r.n_rows), *cells))
    return [_Heading("Sensitivity"),
            _Paragraph("The shared-fit compute multiplier of each expert-choice variant over each "
                       "baseline, refitted with the other loss column and with subsets of the "
                       "budgets (run-level bootstrap; variations other than the main fit use at "
                       "most 100 resamples). A conclusion that changes across these rows is not "
                       "supported by the data."),
            _Table(header, tuple(rows))]


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------


def _loss_section(df, fit, figures_dir) -> list:
    blocks: list = [_Heading("Loss against compute"),
                    _Paragraph("L(C) = E + A·C^(-alpha), C in FLOPs; intervals are bootstrap "
                               "percentiles.")]
    if not fit.power_laws:
        return blocks + [_Paragraph("No kind has enough runs for a power-law fit.")]
    rows = [(k, str(fit.n_training_runs.get(k, "?")), str(f.n_runs), _ci(f.law.E, f.ci.get("E")),
             _ci(f.law.A, f.ci.get("A")), _ci(f.law.alpha, f.ci.get("alpha")))
            for k, f in fit.power_laws.items()]
    blocks.append(_Table(("group", "training runs", "frontier rows", "E", "A", "alpha"),
                         tuple(rows)))
    if fit.extrapolations:
        rows = [(e.kind, format_number(e.prediction.compute_flops, 3),
                 f"{e.prediction.compute_flops / fit.max_compute_flops:.3g}x",
                 _ci(e.prediction.loss, e.prediction.interval)) for e in fit.extrapolations]
        blocks += [_Paragraph("Extrapolated loss [estimated] (at most 100x beyond the data):"),
                   _Table(("group", "compute_flops", "beyond the largest run", "predicted loss"),
                          tuple(rows))]
    return blocks + [figure_loss(df, fit, figures_dir), figure_residuals(df, fit, figures_dir)]


def _held_out_section(fit, figures_dir) -> list:
    blocks: list = [_Heading("Held-out extrapolation error")]
    blocks += [_Paragraph(f"{kind}: {why}") for kind, why in fit.held_out_status.items()]
    if not fit.held_out:
        if not fit.held_out_status:
            blocks.append(_Paragraph("No group has enough runs to hold any out."))
        return blocks
    rows = []
    for kind, h in fit.held_out.items():
        for r in h.runs:
            rows.append((kind, r.name, format_number(r.compute_flops, 3),
                         format_number(r.actual_loss), _ci(r.predicted_loss, r.interval),
                         f"{100 * r.relative_error:+.2f}%"))
    text = ("Each group is refitted without every training run that comes within 4x of its "
            "largest compute; the rows at least 4x beyond the largest fitted compute are then "
            "predicted; held-out extrapolation error = (predicted - actual) / actual.")
    header = ("group", "row", "compute_flops", "actual loss", "predicted loss", "relative error")
    return blocks + [_Paragraph(text), _Table(header, tuple(rows)),
                     figure_held_out(fit, figures_dir)]


def _multiplier_section(fit) -> list:
    blocks: list = [_Heading("Effective compute multipliers"),
                    _Paragraph("C_baseline(L) / C_kind(L) at equal loss L; above 1 the kind "
                               "needs less compute. The shared-exponent fit L_k(C) = E + "
                               "A_k C^-alpha (one E and alpha for all kinds) gives one multiplier "
                               "(A_b/A_k)^(1/alpha) at every loss; the per-kind fits invert two "
                               "separate laws at one loss.")]
    rows = []
    for kind, base in fit.pairs():
        m = fit.shared_multiplier(kind, base)
        if m is not None:
            rows.append((f"{kind} over {base}", "shared fit", "any",
                         _ci(m.value, m.interval), m.note))
    rows += [(f"{m.kind} over {m.baseline_kind}", "per-kind fits", format_number(m.loss),
              _ci(m.value, m.interval), m.note or "-") for m in fit.multipliers]
    if not rows:
        return blocks + [_Paragraph("None: needs fits for expert-choice and a baseline.")]
    if fit.shared is not None:
        law = fit.shared.law
        consts = ", ".join([f"E = {law.E!r}", f"alpha = {law.alpha!r}"] +
                           [f"A[{k}] = {v!r}" for k, v in law.A.items()])
        blocks.append(_Paragraph(f"Shared fit: {consts}."))
    return blocks + [_Table(("comparison", "fit", "at loss", "multiplier", "note"), tuple(rows))]


def _chinchilla_section(df, fit, figures_dir) -> list:
    if not fit.chinchilla:
        return []
    rows = [(k, str(f.n_runs), *(_ci(getattr(f.law, c), f.ci.get(c))
                                 for c in ("E", "A", "B", "alpha", "beta")))
            for k, f in fit.chinchilla.items()]
    c_max = fit.max_compute_flops
    opt_rows = [(k, format_number(o.flops_per_param_token),
                 _ci(o.params_exponent, o.ci.get("params_exponent")),
                 _ci(o.tokens_exponent, o.ci.get("tokens_exponent")),
                 format_number(float(o.params_opt(c_max)), 3),
                 format_number(float(o.tokens_opt(c_max)), 3))
                for k, o in fit.compute_optimal.items()]
    return [
        _Heading("Chinchilla fit and compute-optimal allocation"),
        _Paragraph("L(N, D) = E + A/N^alpha + B/D^beta with N = active parameters and D = tokens "
                   "seen (Hoffmann et al. 2022, eq. 2). With C = k·N·D: N_opt = G·(C/k)^a, "
                   "D_opt = (C/k)/N_opt, a = beta/(alpha+beta), b = alpha/(alpha+beta) (eq. 4)."),
        _Table(("kind", "runs", "E", "A", "B", "alpha", "beta"), tuple(rows)),
        _Table(("kind", "k (FLOPs per param·token)", "a (N exponent)", "b (D exponent)",
                f"N_opt at {c_max:.3g} FLOPs", f"D_opt at {c_max:.3g} FLOPs"), tuple(opt_rows)),
        figure_compute_optimal(df, fit, figures_dir),
    ]


def _expert_load_section(expert_load, figures_dir) -> list:
    rows = []
    for name, counts in expert_load.items():
        x = np.asarray(counts, dtype=float).ravel()
        mean = x.mean() if x.size else math.nan
        rows.append((str(name), str(x.size), format_number(mean),
                     format_number(x.max() / mean if mean else math.nan),
                     format_number(x.std() / mean if mean else math.nan), f"{np.mean(x == 0):.1%}"))
    return [_Heading("Expert load"),
            _Paragraph("Per run: the distribution of tokens per expert (or experts per token); "
                       "max/mean and the coefficient of variation (CV) measure imbalance."),
            _Table(("run", "entries", "mean", "max/mean", "CV", "zeros"), tuple(rows)),
            figure_expert_load(expert_load, figures_dir)]


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------


def _render_markdown(blocks, out_dir: Path) -> str:
    lines = []
    for b in blocks:
        if isinstance(b, _Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, _Paragraph):
            lines += [f"**{b.text}**" if b.strong else b.text, ""]
        elif isinstance(b, _Table):
            lines += ["| " + " | ".join(b.header) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                      for row in b.rows]
            lines.append("")
        elif isinstance(b, FigureBlock):
            png, svg = (p.relative_to(out_dir).as_posix() for p in (b.path, b.svg))
            lines += [f"![{b.alt}]({png})", f"([SVG]({svg}))", ""]
    return "\n".join(lines)


_HTML_STYLE = """
body { font-family: sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; }
img { max-width: 100%; }
figure { margin: 1rem 0; }
"""

# Counts images that decoded, so a headless browser test can check every plot renders.
_HTML_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.filter(function (img) {
    return img.complete && img.naturalWidth > 0;
  }).length;
});
"""


def _render_html(blocks, title: str) -> str:
    body = []
    for b in blocks:
        if isinstance(b, _Heading):
            body.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, _Paragraph):
            text = html.escape(b.text)
            body.append(f"<p><strong>{text}</strong></p>" if b.strong else f"<p>{text}</p>")
        elif isinstance(b, _Table):
            body.append(_html_table(b))
        elif isinstance(b, FigureBlock):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            body.append(f'<figure><img id="{b.id}" alt="{html.escape(b.alt)}" '
                        f'src="data:image/png;base64,{data}"></figure>')
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_HTML_STYLE}</style>\n</head>\n"
            "<body>\n" + "\n".join(body) + f"\n<script>{_HTML_SCRIPT}</script>\n</body>\n</html>\n")


def _html_table(t: _Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in t.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _ci(value: float, interval: Interval | None) -> str:
    if interval is None:
        return format_number(value)
    why = unidentified(value, interval)
    if why:
        return f"not identified ({why})"
    return f"{format_number(value)} ({format_number(interval.lo)}–{format_number(interval.hi)})"
