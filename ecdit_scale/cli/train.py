"""`ecdit-scale launch`: real DeepSpeed-MoE runs of small configs (`validate` and `adaptive`,
in cli/evaluate.py, read what they leave behind).

torch and deepspeed are imported inside the commands only.
"""

from __future__ import annotations

from typing import Optional

import typer

from rich.markup import escape

from .common import app, console, err_console, fail, print_json


@app.command("launch")
def launch_cmd(
    card: str = typer.Argument(..., help="A model name (`ecdit-scale models list`) or a YAML card."),
    nproc: int = typer.Option(1, "--nproc", help="Ranks (per host with --hostfile). CPU: at most the cores."),
    steps: int = typer.Option(100, "--steps", help="Optimizer steps."),
    ep: int = typer.Option(1, "--ep", help="Expert-parallel size: divides the experts and the world."),
    zero: int = typer.Option(1, "--zero", help="ZeRO stage 0, 1 or 2 (3: dense models only)."),
    micro_batch: int = typer.Option(8, "--micro-batch", help="Images per rank per micro-step."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-steps per optimizer step."),
    dataset: str = typer.Option("emoji", "--dataset", help="emoji (OpenMoji) or shapes (GenEval-style)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N samples."),
    holdout: int = typer.Option(64, "--holdout", help="Samples kept out of training (for `adaptive`)."),
    out: Optional[str] = typer.Option(None, "--out", help="Run directory (default runs/<model>-w<world>-...)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    hostfile: Optional[str] = typer.Option(None, "--hostfile", help="DeepSpeed hostfile for several machines."),
    seed: int = typer.Option(0, "--seed"),
    lr: float = typer.Option(1e-3, "--lr"),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warm-up steps (default steps/10, at most 100)."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw or rmsprop (torch optimizers)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Save every K steps (default steps/4) and at the end."),
    tc_impl: str = typer.Option("ecdit", "--tc-impl", help="Token choice: ecdit (our TokenChoiceMoE) or deepspeed (DeepSpeed's MoE, TopKGate k=2)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    no_memory: bool = typer.Option(False, "--no-track-memory", help="CPU: skip counting live tensor bytes."),
    json_out: bool = typer.Option(False, "--json", help="No progress bar; print the result as JSON."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", hidden=True),
) -> None:
    """Train a small config for real with DeepSpeed-MoE (expert parallelism, ZeRO) and record it."""
    from ..train.launch import launch
    from ..train.request import LaunchRequest

    req = LaunchRequest(card=card, nproc=nproc, steps=steps, ep=ep, zero=zero,
                        micro_batch=micro_batch, grad_accum=grad_accum, dataset=dataset,
                        data_limit=limit, holdout=holdout, out=out, resume=resume, hostfile=hostfile, seed=seed,
                        lr=lr, warmup_steps=warmup, optimizer=optimizer,
                        checkpoint_every=checkpoint_every, tc_impl=tc_impl, device=device,
                        track_memory=not no_memory, stop_after=stop_after)
    if json_out:
        result = launch(req)
    else:
        with _ProgressBar() as bar:
            result = launch(req, on_progress=bar.update)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if json_out:
        print_json(result.to_dict())
    else:
        _print_result(result)
    if result.status == "interrupted":
        err_console.print(escape(result.message), highlight=False, soft_wrap=True)
        raise typer.Exit(result.returncode)
    if not result.ok:
        fail(result.message or f"run {result.status}; see {result.log}", code=1)


class _ProgressBar:
    """A rich progress bar fed by ``launch``'s ``on_progress``, on stderr."""

    def __enter__(self) -> "_ProgressBar":
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn)

        self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                             TimeElapsedColumn(), console=err_console, transient=False)
        self._bar.__enter__()
        self._task = None
        return self

    def update(self, p) -> None:
        if self._task is None:
            self._task = self._bar.add_task(p.label, total=p.steps, completed=p.step,
                                            info="starting ranks")
        info = {}
        if p.loss is not None and p.images_per_s is not None:
            info["info"] = f"loss {p.loss:.4f}  {p.images_per_s:.0f} img/s"
        self._bar.update(self._task, completed=p.step, **info)

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)


def _print_result(result) -> None:
    from ..train.records import RunDir

    rd = RunDir(result.run_dir)
    summary = rd.read_summary()
    if result.ok:
        console.print(
            f"[bold green]done[/] {result.steps_done} steps in {result.wall_s:.1f} s: loss "
            f"{result.first_loss:.4f} -> {result.final_loss:.4f}; "
            f"{summary.get('median_step_s', float('nan')):.3f} s/step")
        console.print(f"run directory: {result.run_dir}  (next: ecdit-scale validate "
                      f"{result.run_dir})", highlight=False)
