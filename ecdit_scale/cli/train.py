"""`ecdit-scale launch`: real DeepSpeed-MoE runs of small configs (`validate` and `adaptive`,
in cli/evaluate.py, read what they leave behind).

torch and deepspeed are imported inside the commands only.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Optional

import typer
from rich.markup import escape

from .common import app, console, err_console, fail, print_json

# typer reads these signatures at run time, where it takes Optional[X] and not X | None
OPTIONAL_STR = Optional[str]  # noqa: UP045



def launch_cmd(ctx: typer.Context, card: str | None, plan: str | None, local: bool,
               json_out: bool, **asked: Any) -> None:
    """Train a small config for real with DeepSpeed-MoE (expert parallelism, ZeRO) and record it."""
    from ..errors import ConfigError
    from ..train.launch import launch
    from ..train.request import LaunchRequest
    from ..train.settings import declared

    decl = {f.name: s for f, s in declared()}
    asked = {n: decl[n].parse(v) if decl[n].parse else v for n, v in asked.items()
             if v is not None or not decl[n].parse}
    if plan is not None:
        from ..train.plan_run import request_from_plan

        # the plan decides these; a user who names one on the command line is told so
        decided = [s.option for n, s in decl.items() if s.plan and _given(ctx, n)]
        if card is not None or decided:
            raise ConfigError(f"--plan {plan}: {', '.join(([card] if card else []) + decided)} "
                              "is decided by the plan; edit the plan (or plan again) instead")
        rest = {n: v for n, v in asked.items() if not decl[n].plan and
                (n not in ("steps", "dataset") or _given(ctx, n))}
        req = request_from_plan(plan, local=local, **rest)
    else:
        if card is None:
            raise ConfigError("launch needs a CARD (a model name or YAML card) or --plan DIR")
        if local:
            raise ConfigError("--local applies to --plan runs; without --plan, leave out "
                              "--hostfile to run on this machine")
        req = LaunchRequest(card=card, **asked)
    try:
        if json_out:
            result = launch(req)
        else:
            with _ProgressBar() as bar:
                result = launch(req, on_progress=bar.update)
    except KeyboardInterrupt:  # (once the ranks run, launch returns an interrupted result)
        err_console.print("interrupted before any rank started: nothing was trained",
                          highlight=False)
        raise SystemExit(130) from None
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if json_out:
        print_json(result.to_dict())
    else:
        _print_result(result)
    if result.status == "interrupted":
        err_console.print(escape(result.message), highlight=False, soft_wrap=True)
        # SystemExit, not typer.Exit: the entry point would add a second, vaguer line for 130
        raise SystemExit(result.returncode)
    if not result.ok:
        # 3: the run diverged (train.records.DIVERGED_EXIT); 1: it failed (see launch.log)
        fail(result.message or f"run {result.status}; see {result.log}",
             code=result.returncode if result.status == "diverged" else 1)


def setting_options(cls: type) -> list[inspect.Parameter]:
    """One typer option per setting ``cls`` declares (``train.settings``): its option name,
    help and default; choices listed as the metavar, booleans as flags (``--x/--no-x`` where
    on by default), text parsed by the setting (``Setting.parse``)."""
    from ..train.settings import declared, field_types

    hints, out = field_types(cls), []
    for f, s in declared(cls):
        if not s.cli:
            continue
        kind = OPTIONAL_STR if s.parse else hints[f.name]
        if type(None) in typing.get_args(kind):  # typer takes Optional[X], not X | None
            kind = Optional[next(a for a in typing.get_args(kind) if a is not type(None))]  # noqa: UP045, E501
        names = s.option
        if isinstance(f.default, bool) and f.default:
            names = f"{s.option}/--no-{s.option.removeprefix('--')}"
        metavar = (f"[{'|'.join(s.choices)}]" if s.choices else
                   "" if kind is bool else None)  # a flag takes no value: show none
        option = typer.Option(None if s.parse else f.default, names, help=s.help,
                              metavar=metavar,
                              show_default=not s.parse and f.default is not None)
        out.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                     annotation=kind))
    return out


def _launch_signature() -> inspect.Signature:
    """``launch``'s parameters: the card, the plan folder and the output form, then every
    launch setting as its declaration says."""
    from ..train.settings import LaunchSettings  # (not request.py: keep `--help` quick)

    kw = inspect.Parameter.KEYWORD_ONLY
    own = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          annotation=typer.Context),
        inspect.Parameter("card", kw, annotation=OPTIONAL_STR, default=typer.Argument(
            None, help="A model name (`ecdit-scale models list`) or a YAML card (not with "
            "--plan).")),
        inspect.Parameter("plan", kw, annotation=OPTIONAL_STR, default=typer.Option(
            None, "--plan", help="A plan folder (`ecdit-scale plan --out DIR`): run exactly "
            "its settings; its launch.sh calls this.")),
        inspect.Parameter("local", kw, annotation=bool, default=typer.Option(
            False, "--local", metavar="", help="With --plan: the plan's ranks on this machine, "
            "not the hostfile's nodes.")),
        inspect.Parameter("json_out", kw, annotation=bool, default=typer.Option(
            False, "--json", metavar="", help="No progress bar; print the result as JSON.")),
    ]
    return inspect.Signature(own + setting_options(LaunchSettings))


launch_cmd.__signature__ = _launch_signature()  # type: ignore[attr-defined]
launch_cmd.__annotations__ = {p.name: p.annotation for p in
                              launch_cmd.__signature__.parameters.values()}
app.command("launch")(launch_cmd)


def _given(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


class _ProgressBar:
    """A rich progress bar fed by ``launch``'s ``on_progress``, on stderr. It appears with the
    first report, so a request refused before any rank starts prints its one line only."""

    def __enter__(self) -> _ProgressBar:
        self._bar = None
        return self

    def update(self, p) -> None:
        if self._bar is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), console=err_console, transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task(p.label, total=p.steps, completed=p.step,
                                            info="starting ranks")
        info = {}
        if p.loss is not None and p.images_per_s is not None:
            info["info"] = f"loss {p.loss:.4f}  {p.images_per_s:.0f} img/s"
            info["info"] += _speed(p.step_s, p.model_flops_per_s_per_device, p.pct_of_peak)
        self._bar.update(self._task, completed=p.step, **info)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _speed(step_s, flops_per_s, pct_of_peak) -> str:
    """"  0.052 s/step  1.2 TFLOP/s/device  12.3% of peak" (or "peak n/a" on CPU)."""
    from ..train.throughput import format_flops_per_s

    out = f"  {step_s:.3f} s/step" if step_s else ""
    if flops_per_s:
        out += f"  {format_flops_per_s(flops_per_s)}/device"
        out += f"  {pct_of_peak:.1f}% of peak" if pct_of_peak is not None else "  peak n/a"
    return out


def _mean_rate(summary: dict) -> str:
    """", 1.2 TFLOP/s per device (12.3% of peak)": the run's mean achieved model FLOP/s."""
    from ..train.throughput import format_flops_per_s

    rate, pct = summary.get("mean_model_flops_per_s_per_device"), summary.get("mean_pct_of_peak")
    if not isinstance(rate, (int, float)) or rate <= 0:
        return ""
    share = f"{pct:.1f}% of peak" if isinstance(pct, (int, float)) else "peak n/a on CPU"
    return f", {format_flops_per_s(rate)} per device ({share})"


def _print_result(result) -> None:
    from ..train.records import RunDir

    rd = RunDir(result.run_dir)
    summary = rd.read_summary()
    if result.ok:
        console.print(
            f"[bold green]done[/] {result.steps_done} steps in {result.wall_s:.1f} s: loss "
            f"{result.first_loss:.4f} -> {result.final_loss:.4f}; "
            f"{summary.get('median_step_s', float('nan')):.3f} s/step"
            + _mean_rate(summary), highlight=False)
        if summary.get("heldout_loss") is not None:
            console.print(f"held-out loss {summary['heldout_loss']:.4f} "
                          f"({summary['heldout_what']})", highlight=False)
        console.print(f"run directory: {result.run_dir}  (next: ecdit-scale validate "
                      f"{result.run_dir})", highlight=False)
