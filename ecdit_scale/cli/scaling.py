"""`ecdit-scale sweep | fit | report`: scaling curves for dense, token and expert choice."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import ConfigError
from ..files import check_output_file, check_output_folder, finite_or_none, strict_json
from .common import app, console, err_console, need_train_extra, print_json

# scaling.table.LOSS_COLUMNS, spelled out so that `--help` loads no pandas (a test compares them)
LOSS_COLUMN_CHOICES = "<heldout_loss|smoothed_loss|final_loss>"

PROGRESS_AFTER_S = 2.0  # fits quicker than this print no progress

MAX_BOOT = 10_000  # resamples: 200 give stable 95% intervals; more only costs time


def _numbers(text: str, option: str, kind, example: str) -> tuple:
    try:
        return tuple(kind(x) for x in _csv_list(text, option))
    except ValueError:
        raise ConfigError(f"{option} {text!r}: {example}") from None


def _csv_list(text: str, option: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise ConfigError(f"{option} {text!r}: give a comma-separated list")
    return items


@app.command()
def sweep(
    sizes_: str = typer.Option("nano,micro,tiny", "--sizes",
                               help="Sizes, comma-separated: CPU-ladder names (nano, micro, tiny, "
                                    "mini, small, base), YAML card paths, or parameter targets "
                                    "like 20M,50M (a dense backbone of that size, synthesised)."),
    variants: str = typer.Option("dense,tc8,ec8", "--variants",
                                 help="dense, tc8, ec8, tc16, ec16."),
    steps: int = typer.Option(300, "--steps", help="Steps of the largest budget."),
    budgets: str = typer.Option("0.25,0.5,1", "--budgets",
                                help="Compute budgets as fractions of "
                                     "--steps (wsd: one annealed run each)."),
    seeds: str = typer.Option("0,1,2", "--seeds",
                              help="Seeds per configuration (init and data order)."),
    schedule: str = typer.Option("wsd", "--schedule", metavar="<wsd|wsd-branch|constant>",
                                 help="wsd: a run per budget, cooled down at its end; "
                                      "wsd-branch: the same runs as one launch per group, "
                                      "each smaller budget's cooldown branched off the "
                                      "largest run's stable phase (same losses, fewer steps); "
                                      "constant: budgets read off one constant-lr run."),
    cooldown: float = typer.Option(0.2, "--cooldown",
                                   help="wsd: share of each run's steps spent decaying the lr."),
    nproc: int = typer.Option(1, "--nproc", help="Ranks per run."),
    micro_batch: int = typer.Option(16, "--micro-batch"),
    dataset: str = typer.Option("shapes-stream", "--dataset",
                                metavar="<shapes-stream|shapes|emoji>",
                                help="shapes-stream (never repeats; default), "
                                     "shapes (a fixed set) or emoji."),
    data: Path | None = typer.Option(None, "--data",
                                     help="A folder written by `ecdit-scale data "
                                          "prepare`: every run trains on it (cards "
                                          "take its input shape; replaces --dataset)."),
    limit: int | None = typer.Option(None, "--limit",
                                     help="Finite datasets: use the first N samples."),
    holdout: int = typer.Option(64, "--holdout",
                                help="Held-out samples scored at fixed "
                                     "noise at the end of every run."),
    lr: float = typer.Option(1e-3, "--lr"),
    lr_search: str = typer.Option("", "--lr-search",
                                  help="Multipliers of --lr tried per size (e.g. "
                                       "0.5,1,2): dense model, shortest budget, first "
                                       "seed; the best held-out loss sets the size's lr."),
    device: str = typer.Option("auto", "--device", metavar="<auto|cpu|cuda>",
                               help="Where the runs train."),
    parallel: int = typer.Option(1, "--parallel",
                                 help="Launches at once (small models leave a GPU or "
                                      "a many-core CPU mostly idle); on GPUs each "
                                      "launch gets --nproc devices of its own."),
    hostfile: Path | None = typer.Option(None, "--hostfile",
                                         help="DeepSpeed hostfile: runs spread over its hosts "
                                              "(each run its own world of --nproc ranks on one "
                                              "host, started over ssh); every slot kept busy."),
    out: Path = typer.Option(Path("runs/sweep"), "--out", help="Folder of the runs and runs.csv."),
    json_out: bool = typer.Option(False, "--json"),
    design: str = typer.Option("grid", "--design",
                               help="grid: --sizes x --budgets; isoflop: per --flops "
                                    "level, sizes around the expected optimum, each "
                                    "trained for the steps that spend the level."),
    flops: str = typer.Option("", "--flops",
                              help="isoflop: compute levels in FLOPs, e.g. 1e13,3e13,1e14."),
    tokens_per_param: float = typer.Option(20.0, "--tokens-per-param",
                                           help="isoflop: the prior for the optimum (tokens per "
                                                "activated parameter), unless --prior-fit."),
    prior_fit: Path | None = typer.Option(None, "--prior-fit",
                                          help="isoflop: a fit whose headline "
                                               "law sets the expected optimum."),
    sizes_per_level: int = typer.Option(5, "--sizes-per-level",
                                        help="isoflop: sizes per level (>= 3)."),
    spread: float = typer.Option(4.0, "--spread",
                                 help="isoflop: sizes span optimum/spread..optimum*spread."),
    lr_grid: str = typer.Option("0.5,1,2", "--lr-grid",
                                help="isoflop: multipliers of --lr searched per "
                                     "size and variant at the middle level."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="List the runs (size, activated params, steps, "
                                      "FLOPs, variant, seed) without training."),
) -> None:
    ("Train the ladder x FFN kinds x seeds; skip finished runs, resume interrupted ones; "
     "write runs.csv.")
    if design not in ("grid", "isoflop"):
        raise ConfigError(f"--design {design!r}: grid or isoflop")
    if design == "isoflop":
        if data is not None or hostfile is not None:
            raise ConfigError(f"{'--data' if data is not None else '--hostfile'}: not yet with "
                              "--design isoflop; use --design grid")
        if not dry_run:
            need_train_extra()
        from .sweep_isoflop import isoflop_sweep

        isoflop_sweep(flops=flops, variants=_csv_list(variants, "--variants"),
                      seeds=_numbers(seeds, "--seeds", int, "integers like 0,1"),
                      tokens_per_param=tokens_per_param, prior_fit=prior_fit,
                      sizes_per_level=sizes_per_level, spread=spread,
                      lr_grid=_numbers(lr_grid, "--lr-grid", float, "multipliers like 0.5,1,2"),
                      dry_run=dry_run, json_out=json_out, micro_batch=micro_batch, nproc=nproc,
                      lr=lr, dataset=dataset, holdout=holdout, device=device, out=out,
                      parallel=parallel)
        return
    if dry_run:
        raise ConfigError("--dry-run lists the runs of --design isoflop")
    need_train_extra()
    from ..evaluation.sampled_alignment import alignment_of_run
    from ..train.sweep import SweepSpec, run_sweep

    if parallel < 1:
        raise ConfigError(f"--parallel {parallel}: an integer >= 1")
    check_output_folder(out, "--out")
    fracs = _numbers(budgets, "--budgets", float, "fractions like 0.25,0.5,1")
    seed_list = _numbers(seeds, "--seeds", int, "integers like 0,1,2")
    search = _numbers(lr_search, "--lr-search", float, "multipliers like 0.5,1,2") \
        if lr_search.strip() else ()
    spec = SweepSpec(sizes=_csv_list(sizes_, "--sizes"), variants=_csv_list(variants, "--variants"),
                     steps=steps, budgets=fracs, seeds=seed_list, schedule=schedule,
                     cooldown_fraction=cooldown, nproc=nproc, micro_batch=micro_batch,
                     dataset=dataset, data=None if data is None else str(data),
                     data_limit=limit, holdout=holdout, lr=lr,
                     lr_search=search, device=device, out=str(out),
                     hostfile=None if hostfile is None else str(hostfile))
    runs = spec.lr_runs() + spec.runs()
    with Progress(TextColumn("[bold]sweep"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  disable=json_out) as bar:
        task = bar.add_task("", total=len(runs))

        def on_event(state, run, i, n):
            verb = {"done": "skip (finished)", "resume": "resume", "new": "train",
                    "finished": "done"}[state]
            bar.update(task, completed=i,
                       description=f"{verb} {run.run_dir.name if state != 'finished' else ''}")

        result = run_sweep(spec, on_event=on_event, score_alignment=alignment_of_run,
                           parallel=parallel)
    summary = {"table": str(result.table_path), "rows": len(result.rows), "lr": result.lr_of,
               "notes": result.notes,
               "launched": result.launched, "resumed": result.resumed,
               "skipped": result.skipped, "failed": result.failed}
    if json_out:
        print_json(summary)
    else:
        console.print(f"{len(result.rows)} rows in {result.table_path}: launched "
                      f"{len(result.launched)}, resumed {len(result.resumed)}, skipped "
                      f"{len(result.skipped)}, failed {len(result.failed)}")
        for f in result.failed:
            console.print(f"failed: {f}", style="red")
        for note in result.notes:
            err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
        if spec.lr_search:
            console.print("learning rate per size (best held-out loss of the search, "
                          f"{result.table_path.parent / 'lr-search.csv'}): "
                          + ", ".join(f"{k} {v:.3g}" for k, v in result.lr_of.items()))
        console.print(f"next: ecdit-scale fit {result.table_path}")
    if result.failed:
        raise typer.Exit(1)


REPORT_BOOT = 100  # resamples when `report` fits the table itself


def _check_n_boot(n_boot: int) -> None:
    if not 0 <= n_boot <= MAX_BOOT:
        raise ConfigError(f"--n-boot {n_boot}: must be in 0..{MAX_BOOT} (200 gives stable 95% "
                          "intervals)")


@app.command()
def fit(
    table: Path = typer.Argument(..., help="Run table (CSV or Parquet) with the required columns."),
    out: Path | None = typer.Option(None, "--out",
                                    help="Where to save the fit: YAML, or JSON "
                                         "where the name ends in .json (default: "
                                         "TABLE's folder/fit.yaml)."),
    n_boot: int = typer.Option(200, "--n-boot",
                               help="Bootstrap resamples (of training runs) for the intervals."),
    seed: int = typer.Option(0, "--seed"),
    loss_column: str | None = typer.Option(None, "--loss-column", metavar=LOSS_COLUMN_CHOICES,
                                           help="Default heldout_loss where every row has it."),
    loss_label: str = typer.Option("", "--loss-label",
                                   help="What the loss is, for the report and plan (e.g. "
                                        "'smoothed training flow-matching loss (32x32 shapes)')."),
    held_out_factor: float = typer.Option(4.0, "--held-out-factor",
                                          help="Held-out rows lie at least this factor "
                                               "beyond the largest fitted compute."),
    drop_outliers: bool = typer.Option(False, "--drop-outliers",
                                       help="Drop rows whose log residual is > 3.5 "
                                            "robust SDs from their group's median, "
                                            "and refit (reported in the fit)."),
    extrapolate_to: float | None = typer.Option(None, "--extrapolate-to",
                                                help="Compute (FLOPs) at which to predict the "
                                                     "loss; refused beyond 100x the largest run."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Fit L(C) = E + A C^-alpha and L(N, D) per FFN kind or variant, with run-level bootstrap
    intervals, a held-out check and a sensitivity table."""
    from ..scaling.fit import fit_run_table
    from ..scaling.fit_file import save_fit
    from ..scaling.report import plain_answer
    from ..scaling.table import load_run_table

    _check_n_boot(n_boot)
    if not 0 <= seed < 2**32:
        raise ConfigError(f"--seed {seed}: must be an integer in 0..{2**32 - 1}")
    if out is not None and not str(out).strip() or out is not None and out.is_dir():
        raise ConfigError(f"--out {str(out)!r}: give a file path for the fit, e.g. fit.yaml")
    if out is not None:
        check_output_file(out, "--out")
    if not (math.isfinite(held_out_factor) and held_out_factor > 1):
        raise ConfigError(f"--held-out-factor {held_out_factor}: a factor > 1, e.g. 4")
    if extrapolate_to is not None and not (math.isfinite(extrapolate_to) and extrapolate_to > 0):
        raise ConfigError(f"--extrapolate-to {extrapolate_to}: a compute in FLOPs, finite and > 0 "
                          "(e.g. 1e21)")
    df = load_run_table(table)
    result = fit_run_table(df, n_boot=n_boot, seed=seed, extrapolate_to_flops=extrapolate_to,
                           loss_column=loss_column, loss_label=loss_label,
                           held_out_factor=held_out_factor, drop_outliers=drop_outliers,
                           progress=stderr_progress("fit"))
    path = save_fit(result, out or table.parent / "fit.yaml")
    if json_out:
        print_strict_json({**result.to_dict(), "saved": str(path), "answer": plain_answer(result)})
        return
    _print_fit(result)
    console.print(plain_answer(result), style="bold")
    console.print(f"saved {path}; plot it with: ecdit-scale report {table} --fit {path}")


def stderr_progress(command: str):
    """A progress callback for the scaling library: one line on stderr per step, once the work
    has taken more than PROGRESS_AFTER_S seconds (whether or not stdout is a terminal)."""
    start = time.monotonic()
    shown = False

    def show(what: str, done: int, total: int) -> None:
        nonlocal shown
        elapsed = time.monotonic() - start
        if elapsed < PROGRESS_AFTER_S:
            return
        if what == "done":
            if shown:
                print(f"{command}: done in {elapsed:.1f} s", file=sys.stderr, flush=True)
            return
        shown = True
        print(f"{command}: {what} ({done + 1}/{total}, {elapsed:.1f} s)", file=sys.stderr,
              flush=True)

    return show


def print_strict_json(data: dict) -> None:
    """JSON with NaN and infinities as null, and a note saying so when there were any."""
    if finite_or_none(data) != data:
        data = {**data, "json_note": "null stands for a number that is not finite (NaN or "
                                     "infinity), e.g. an undefined multiplier or interval bound"}
    sys.stdout.write(strict_json(data) + "\n")


def _print_fit(result) -> None:
    from ..scaling.formulas import identification, unidentified

    def cell(value, iv):
        why = unidentified(value, iv)
        if why:
            return f"not identified\n({why})"
        return f"{value!r}" + (f"\n[{iv.lo:.4g}, {iv.hi:.4g}]" if iv else "")

    def with_ci(value, iv, label="CI"):
        why = identification(value, iv)
        if why:
            return why
        return f"{value:.3g}x" + (f" ({label} {iv.lo:.3g}-{iv.hi:.3g})" if iv else "")

    console.print(f"loss: {result.loss_label or result.loss_column}; compute "
                  f"{result.min_compute_flops:.3g}-{result.max_compute_flops:.3g} FLOPs "
                  f"({result.compute_range:.3g}x); intervals: bootstrap of "
                  f"{result.bootstrap_unit}s", highlight=False)
    t = Table(title="L(C) = E + A * C^-alpha per group (constants unrounded; 95% bootstrap CI)")
    for col in ("group", "runs", "frontier rows", "E", "A", "alpha", "held-out error"):
        t.add_column(col)
    for kind, f in result.power_laws.items():
        ho = result.held_out.get(kind)
        t.add_row(kind, str(result.n_training_runs.get(kind, "?")), str(f.n_runs),
                  *(cell(getattr(f.law, n), f.ci.get(n)) for n in ("E", "A", "alpha")),
                  f"{ho.max_abs_relative_error:.2%}" if ho else "impossible (see notes)"
                  if kind in result.held_out_status else "n/a")
    console.print(t)
    _print_headline(result.headline)
    for kind, base in result.pairs():
        m = result.shared_multiplier(kind, base)
        if m is not None:
            console.print(f"[bold]compute multiplier {kind} over {base}: "
                          f"{with_ci(m.value, m.interval, '95% CI')}[/] (check: shared-exponent "
                          "L(C) on the compute frontier)")
    for m in result.multipliers:
        val = with_ci(m.value, m.interval) if m.defined else m.note
        console.print(f"per-group fits, {m.kind} over {m.baseline_kind}: {val}")
    if result.sensitivity:
        st = Table(title="Sensitivity: shared-fit multipliers on variations of the data")
        pairs = result.pairs()
        for col in ("variation", "rows", *(f"{k} / {b}" for k, b in pairs)):
            st.add_column(col)
        for r in result.sensitivity:
            by = {(m.kind, m.baseline_kind): m for m in r.multipliers}
            st.add_row(r.label, str(r.n_rows), *(with_ci(by[p].value, by[p].interval)
                                                 if p in by else "no fit" for p in pairs))
        console.print(st)
    for e in result.extrapolations:
        p = e.prediction
        iv = f" (CI {p.interval.lo:.4g}-{p.interval.hi:.4g})" if p.interval else ""
        console.print(f"extrapolated {e.kind} loss at {p.compute_flops:.3g} FLOPs: "
                      f"{p.loss:.4g}{iv} \\[estimated; "
                      f"{p.compute_flops / result.max_compute_flops:.2g}x beyond the largest run]")
    for kind, why in result.held_out_status.items():
        console.print(f"held-out check for {kind}: {why}", style="yellow", highlight=False)
    o = result.outliers or {}
    console.print("outliers: " + (("dropped " + (", ".join(o.get("dropped") or []) or "none"))
                                  if o.get("applied") else "kept (--drop-outliers off)"),
                  style="dim", highlight=False)
    for n in result.notes:
        console.print(f"note: {n}", style="dim", highlight=False)


def _print_headline(headline) -> None:
    """The headline comparisons, what the design can detect, and the constancy test."""
    if headline is None:
        return
    console.print("[bold]headline[/] (shared-exponent L(N, D) = E + A/(s_N N)^alpha + "
                  "B/(s_D D)^beta over every run; multiplier s_N*s_D; bootstrap of seeds "
                  f"within each size, {headline.n_boot} resamples):", highlight=False)
    for c in headline.comparisons:
        console.print(f"  [bold]{c.verdict()}[/]", highlight=False)
        console.print(f"  constancy: {c.constancy()}", highlight=False)
    console.print(f"  {headline.power_line()}", highlight=False)
    for n in headline.notes:
        console.print(f"  note: {n}", style="dim", highlight=False)


@app.command()
def report(
    table: Path = typer.Argument(..., help="Run table (CSV or Parquet)."),
    fit_path: Path | None = typer.Option(None, "--fit",
                                         help="A fit saved by `ecdit-scale fit` (default: TABLE's "
                                              "folder/fit.yaml if there is one, else fit now)."),
    out: Path | None = typer.Option(None, "--out",
                                    help="Report folder (default: TABLE's folder/report)."),
    title: str = typer.Option("EC-DiT scaling report", "--title"),
    n_boot: int = typer.Option(REPORT_BOOT, "--n-boot",
                               help="Bootstrap resamples when the report fits TABLE itself (no "
                                    "saved fit); `fit --out` saves one to reuse."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Markdown + self-contained HTML report with plots."""
    from ..scaling.fit import fit_run_table
    from ..scaling.fit_file import load_fit
    from ..scaling.report import check_report_folder, write_report
    from ..scaling.table import load_run_table

    _check_n_boot(n_boot)
    check_report_folder(out or table.parent / "report")  # before the (maybe slow) fit
    df = load_run_table(table)
    if fit_path is not None:
        result = load_fit(fit_path)  # one line naming the file when it is missing or not a fit
    elif (table.parent / "fit.yaml").is_file():
        result = load_fit(table.parent / "fit.yaml")
    else:
        err_console.print(f"no fit at {table.parent / 'fit.yaml'}: fitting now "
                          f"(n_boot={n_boot})", highlight=False)
        result = fit_run_table(df, n_boot=n_boot, progress=stderr_progress("report"))
    paths = write_report(df, result, out or table.parent / "report", title=title,
                         expert_load=_expert_load(df))
    if json_out:
        print_json(paths.to_dict())
        return
    console.print(f"wrote {paths.markdown} and {paths.html} ({len(paths.figures)} figures)")


def _expert_load(df):
    """Experts-per-token histograms of each MoE run's last step (from its metrics.jsonl)."""
    import numpy as np

    from ..train.records import RunDir

    if "run_dir" not in df.columns:
        return None
    load = {}
    for run_dir in sorted(set(df["run_dir"].dropna())):
        rd = RunDir(run_dir)
        try:
            metrics = rd.read_metrics()
        except (OSError, ValueError):
            continue
        hist = metrics[-1].get("experts_per_token", {}).get("hist") if metrics else None
        if hist and len(hist) > 2:
            counts = np.asarray(hist, dtype=float)
            load[Path(run_dir).name] = np.repeat(np.arange(len(counts)), counts.astype(int))
    return load or None
