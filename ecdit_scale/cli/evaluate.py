"""`ecdit-scale validate | adaptive`: what launched runs say about the planner's predictions
and about how expert choice spends its compute.

torch is imported inside the commands only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import ConfigError
from ..units import format_bytes, format_count
from .common import app, console, print_json


@app.command("validate")
def validate_cmd(
    runs: list[str] = typer.Argument(...,
                                     help="Run directories (from `launch`) or GPU "
                                          "result files (bench/results/*.json)."),
    calibrate_on: str | None = typer.Option(None, "--calibrate-on",
                                            help="Run whose measured efficiency calibrates the "
                                                 "step-time predictions (default: the first)."),
    csv: str | None = typer.Option(None, "--csv",
                                   help="CSV path (default: validation.csv "
                                        "in the first run directory)."),
    save_profile: str | None = typer.Option(None, "--save-profile",
                                            help="Save the calibrated accelerator "
                                                 "profile (YAML) for `plan --gpu`."),
    profile: str | None = typer.Option(None, "--profile",
                                       help="Device profile (`ecdit-scale profile`) for the "
                                            "headline prediction (default: a quick profile of "
                                            "this CPU for CPU runs, the catalog for GPUs)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Planner predictions next to measurements: parameters, FLOPs, memory, step time.
    `validate PLAN RUN`: a plan folder's settings and predictions next to a run of it."""
    from ..evaluation.validate import validate
    from ..evaluation.validate_plan import compare_plan_run, is_plan_dir

    if runs and is_plan_dir(Path(runs[0])):
        if len(runs) < 2:
            raise ConfigError(f"validate {runs[0]}: a plan folder needs a run of it: "
                              "validate PLAN RUN")
        found = [compare_plan_run(Path(runs[0]), Path(r)) for r in runs[1:]]
        if json_out:
            print_json([c.to_dict() for c in found])
        else:
            for c in found:
                render_plan_comparison(c)
        return

    report = validate([Path(r) for r in runs], calibrate_on=calibrate_on,
                      csv_path=csv, save_profile=save_profile, profile=profile)
    if json_out:
        print_json(report.to_dict())
        return
    render_validation(report)


@app.command("adaptive")
def adaptive_cmd(
    run: str = typer.Argument(..., help="A run directory (from `launch`) of an MoE model."),
    out: str | None = typer.Option(None, "--out", help="Output folder (default RUN/adaptive)."),
    samples: int = typer.Option(32, "--samples", help="Held-out samples to analyse (1-1024)."),
    timesteps: int = typer.Option(8, "--timesteps",
                                  help="Points on the timestep grid in (0, 1) (1-64)."),
    json_out: bool = typer.Option(False, "--json", help="Print the JSON summary."),
) -> None:
    """Adaptive compute of expert choice: experts per token by layer, timestep, caption length."""
    from ..evaluation.adaptive import analyse

    result = analyse(Path(run), out=Path(out) if out else None, samples=samples,
                     timesteps=timesteps)
    if json_out:
        print_json(result)
        return
    render_adaptive(result)


# ---------------------------------------------------------------------------------------------
# Display
# ---------------------------------------------------------------------------------------------


def render_plan_comparison(c) -> None:
    t = Table(title=f"plan {c.plan} vs run {c.run}")
    for col in ("setting", "plan", "run", "trained"):
        t.add_column(col)
    for k in c.knobs:
        style = "" if k.same else "yellow"
        t.add_row(k.name, str(k.planned), str(k.run), "" if k.summary is None else str(k.summary),
                  style=style)
    console.print(t)
    p = Table(title="predictions")
    for col in ("what", "predicted", "measured", "measured / predicted"):
        p.add_column(col)
    for row in c.predictions:
        ratio = row["ratio"]
        p.add_row(row["what"], str(row["predicted"]), str(row["measured"]),
                  "n/a" if ratio is None else f"{ratio:.3g}")
    console.print(p)
    for note in c.notes:
        console.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2%}"


def render_validation(report) -> None:
    """The comparison table, the calibrations and the notes (report: validate.Report)."""

    def pair(pred, meas, err, fmt) -> str:
        p = "n/a" if pred is None else fmt(pred)
        m = "n/a" if meas is None else fmt(meas)
        return f"{p} -> {m} ({_pct(err)})"

    t = Table(title="Predicted -> measured (error = measured / predicted - 1)")
    t.add_column("run", overflow="fold", min_width=10)
    for col in ("params", "FLOPs / step", "peak memory / rank", "states held between steps / rank",
                "step time (profile)", "step time (LOO)"):
        t.add_column(col, justify="right")
    for r in report.rows:
        t.add_row(
            escape(r.name),
            pair(r.params_predicted, r.params_measured, r.params_error, format_count),
            pair(r.flops_predicted, r.flops_measured, r.flops_error, lambda x: f"{x:.4g}"),
            pair(r.memory_predicted, r.memory_measured, r.memory_error, format_bytes),
            pair(r.states_predicted, r.states_measured, r.states_error, format_bytes),
            pair(r.step_s_predicted, r.step_s_measured, r.step_s_error, lambda x: f"{x:.4g} s"),
            pair(r.step_s_loo, r.step_s_measured, r.step_s_loo_error, lambda x: f"{x:.4g} s"))
    console.print(t)
    render_terms(report.rows, pair)
    for c in report.calibrations:
        console.print(f"calibration ({c.device}): efficiency {100 * c.efficiency:.3g}% of "
                      f"{c.peak_flops_per_s / 1e9:.4g} GFLOP/s ({c.peak_source}); from {c.run}",
                      highlight=False, markup=False)
    notes: dict[str, list[str]] = {}
    for r in report.rows:
        for note in filter(None, r.memory_note.split("; ")):
            notes.setdefault(note, []).append(r.name)
    for note, names in notes.items():
        who = "all runs" if len(names) == len(report.rows) else ", ".join(names)
        console.print(f"memory ({who}): {note}", style="dim", highlight=False, markup=False)
    for source in dict.fromkeys(r.step_s_source for r in report.rows if r.step_s_source):
        who = [r.name for r in report.rows if r.step_s_source == source]
        who_text = "all runs" if len(who) == len(report.rows) else ", ".join(who)
        console.print(f"step time ({who_text}): {source}", style="dim", highlight=False,
                      markup=False)
    for r in report.rows:
        if r.flops_note:
            console.print(f"FLOPs ({r.name}): {r.flops_note}", style="dim", highlight=False,
                          markup=False)
    for n in report.notes:
        console.print(n, style="dim", highlight=False, markup=False)
    console.print(f"CSV: {report.csv_path}" + (f"; profile: {report.profile_path}"
                                                if report.profile_path else ""),
                  highlight=False, markup=False)


def render_terms(rows, pair) -> None:
    """Step time term by term where a run has a profiled step (``evaluation.terms``)."""
    from ..evaluation.terms import TERM_LABELS, TERMS

    for r in rows:  # a damaged profile file is passed over, and said so
        if "passed over" in r.breakdown_note:
            console.print(f"step terms ({r.name}): {r.breakdown_note}", style="dim",
                          highlight=False, markup=False)
    with_terms = [r for r in rows if r.terms_measured and r.terms_predicted]
    if not with_terms:
        return
    t = Table(title="Step time by term, profile prediction -> profiled step (error = "
                    "measured / predicted - 1)")
    t.add_column("run", overflow="fold", min_width=10)
    for term in TERMS:
        t.add_column(TERM_LABELS[term], justify="right")
    t.add_column("model kernels", justify="right")
    ms = lambda x: f"{1e3 * x:.3g} ms"  # noqa: E731
    for r in with_terms:
        p, m = r.terms_predicted, r.terms_measured
        t.add_row(escape(r.name), *(pair(p[term], m[term], r.term_error(term), ms)
                                    for term in TERMS),
                  pair(p["kernels"], m["kernels"], r.term_error("kernels"), lambda x: f"{x:,.0f}"))
    console.print(t)
    for basis in dict.fromkeys(str(r.breakdown.get("basis", "")) for r in with_terms):
        who = [r.name for r in with_terms if str(r.breakdown.get("basis", "")) == basis]
        console.print(f"terms measured ({', '.join(who)}): {basis}; rest = the median step less "
                      "the other four", style="dim", highlight=False, markup=False)


def render_adaptive(result: dict[str, Any]) -> None:
    """Experts per token by layer and by timestep, then the correlations (adaptive.analyse)."""
    t = Table(title=f"Experts per token: {result['model']} (step {result['checkpoint_step']}, "
                    f"{result['samples']} held-out samples)")
    for col in ("", "mean", "std", "no expert", "max", "max share of experts"):
        t.add_column(col, justify="left" if not col else "right")
    for row in result["by_layer"]:
        t.add_row(f"block {row['block']}", f"{row['mean']:.2f}", f"{row['std']:.2f}",
                  f"{row['zero_share']:.1%}", str(row["max"]), f"{row['max_expert_share']:.0%}")
    for row in result["by_timestep"]:
        t.add_row(f"t = {row['t']:.2f}", f"{row['mean']:.2f}", f"{row['std']:.2f}",
                  f"{row['zero_share']:.1%}", str(row["max"]), f"{row['max_expert_share']:.0%}")
    console.print(t)
    c, tok = result["caption_length"], result["tokens"]

    def f(x):
        return "n/a" if x is None else f"{x:+.3f}"

    console.print(f"caption length vs spread of allocation: pearson {f(c['pearson_std'])}, "
                  f"spearman {f(c['spearman_std'])}; vs share of skipped tokens "
                  f"{f(c['pearson_zero_share'])}", highlight=False)
    console.print(f"per token: experts vs patch detail pearson {f(tok['pearson_detail'])}, "
                  f"vs foreground {f(tok['pearson_foreground'])}", highlight=False)
    console.print(f"plots and summary.json in {result['out']}", highlight=False, markup=False)
