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
    ctx: typer.Context,
    card: Optional[str] = typer.Argument(None, help="A model name (`ecdit-scale models list`) or a YAML card (not with --plan)."),
    plan: Optional[str] = typer.Option(None, "--plan", help="A plan folder (`ecdit-scale plan --out DIR`): run exactly its settings; its launch.sh calls this."),
    local: bool = typer.Option(False, "--local", help="With --plan: the plan's ranks on this machine, not the hostfile's nodes."),
    node_rank: Optional[int] = typer.Option(None, "--node-rank", help="Multi-node without ssh: this node's rank in the hostfile (DeepSpeed --no_ssh)."),
    master_addr: Optional[str] = typer.Option(None, "--master-addr", help="Multi-node without ssh: node 0's address."),
    master_port: Optional[int] = typer.Option(None, "--master-port", help="Rendezvous port (default: free port; 29500 with --node-rank)."),
    nproc: int = typer.Option(1, "--nproc", help="Ranks (per host with --hostfile). CPU: at most the cores."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (default 100; with --plan the plan's, its warm-up scaled to fewer)."),
    ep: int = typer.Option(1, "--ep", help="Expert-parallel size: divides the experts and the world."),
    zero: int = typer.Option(1, "--zero", help="ZeRO stage 0, 1 or 2 (3: dense models only)."),
    micro_batch: int = typer.Option(8, "--micro-batch", help="Images per rank per micro-step."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-steps per optimizer step."),
    dataset: str = typer.Option("emoji", "--dataset", help="emoji (OpenMoji), shapes (GenEval-style, a fixed set), shapes-stream (fresh scenes, never repeated) or latents (the paper's latent cards)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N samples."),
    holdout: int = typer.Option(64, "--holdout", help="Samples kept out of training (for `adaptive`)."),
    out: Optional[str] = typer.Option(None, "--out", help="Run directory (default runs/<model>-w<world>-...)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    hostfile: Optional[str] = typer.Option(None, "--hostfile", help="DeepSpeed hostfile for several machines."),
    seed: int = typer.Option(0, "--seed"),
    lr: float = typer.Option(1e-3, "--lr"),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warm-up steps (default steps/10, at most 100)."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, rmsprop (with momentum, the paper) or sgd (torch optimizers)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="bf16 or fp32 (default bf16 on CUDA; CPU trains in fp32)."),
    recompute: str = typer.Option("none", "--recompute", help="Activation recompute: none, selective or full."),
    ema: str = typer.Option("none", "--ema", help="EMA of the weights (fp32): none, replicated or sharded."),
    ema_decay: float = typer.Option(0.9999, "--ema-decay"),
    schedule: str = typer.Option("constant", "--schedule", help="Learning rate after warm-up: constant (the paper's) or wsd (stable, then linear decay to 0)."),
    cooldown: float = typer.Option(0.2, "--cooldown", help="wsd: the share of --steps spent decaying."),
    cooldown_branches: Optional[str] = typer.Option(None, "--cooldown-branches", help="wsd: also the runs of these lengths (steps, e.g. 80,160), each annealed off this run's stable phase and scored on held-out data (branches/b<N>.jsonl)."),
    eval_every: int = typer.Option(0, "--eval-every", help="Held-out flow loss at fixed noise every K steps (0: at the last step only)."),
    eval_timesteps: int = typer.Option(8, "--eval-timesteps", help="Noise levels of the held-out loss: t = (i + 0.5) / N."),
    override: Optional[str] = typer.Option(None, "--override", help="Cut the card down, e.g. depth=4,ffn.num_experts=8 (the paper's cards on one GPU)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Save every K steps (default steps/4) and at the end."),
    tc_impl: str = typer.Option("ecdit", "--tc-impl", help="Token choice: ecdit (our TokenChoiceMoE) or deepspeed (DeepSpeed's MoE, TopKGate k=2)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    compile_: Optional[str] = typer.Option(None, "--compile", help="torch.compile each transformer block: block or none (default block on CUDA, none on CPU)."),
    no_memory: bool = typer.Option(False, "--no-track-memory", help="CPU: skip counting live tensor bytes."),
    json_out: bool = typer.Option(False, "--json", help="No progress bar; print the result as JSON."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", hidden=True),
) -> None:
    """Train a small config for real with DeepSpeed-MoE (expert parallelism, ZeRO) and record it."""
    from ..errors import ConfigError
    from ..train.launch import launch
    from ..train.request import LaunchRequest

    common = dict(data_limit=limit, holdout=holdout, out=out, resume=resume, seed=seed,
                  checkpoint_every=checkpoint_every, tc_impl=tc_impl, device=device,
                  track_memory=not no_memory, stop_after=stop_after, node_rank=node_rank,
                  master_addr=master_addr, master_port=master_port, eval_every=eval_every,
                  eval_timesteps=eval_timesteps, compile=compile_)
    if plan is not None:
        from ..train.plan_run import request_from_plan

        # the plan decides these; a user who names one on the command line is told so
        decided = [f"--{n.replace('_', '-')}" for n in PLAN_DECIDES if _given(ctx, n)]
        if card is not None or decided:
            raise ConfigError(f"--plan {plan}: {', '.join(([card] if card else []) + decided)} "
                              "is decided by the plan; edit the plan (or plan again) instead")
        req = request_from_plan(plan, steps=steps, local=local, dataset=dataset if _given(ctx, "dataset") else None, **common)
    else:
        if card is None:
            raise ConfigError("launch needs a CARD (a model name or YAML card) or --plan DIR")
        if local:
            raise ConfigError("--local applies to --plan runs; without --plan, leave out "
                              "--hostfile to run on this machine")
        req = LaunchRequest(card=card, nproc=nproc, steps=100 if steps is None else steps,
                            ep=ep, zero=zero, micro_batch=micro_batch, grad_accum=grad_accum,
                            dataset=dataset, hostfile=hostfile, lr=lr, warmup_steps=warmup,
                            optimizer=optimizer, precision=precision, recompute=recompute,
                            ema=ema, ema_decay=ema_decay, override=override, schedule=schedule,
                            cooldown_fraction=cooldown,
                            cooldown_branches=_branch_lengths(cooldown_branches), **common)
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
        # SystemExit, not typer.Exit: the entry point would add a second, vaguer line for 130
        raise SystemExit(result.returncode)
    if not result.ok:
        fail(result.message or f"run {result.status}; see {result.log}", code=1)


# launch options a plan decides (a --plan run refuses them on the command line)
PLAN_DECIDES = ("nproc", "ep", "zero", "micro_batch", "grad_accum", "hostfile", "lr", "warmup",
                "optimizer", "precision", "recompute", "ema", "ema_decay", "override", "schedule",
                "cooldown")


def _branch_lengths(text: str | None) -> tuple[int, ...]:
    """--cooldown-branches 80,160 -> (80, 160); one line naming the bad part otherwise."""
    from ..errors import ConfigError

    if text is None:
        return ()
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise ConfigError(f"--cooldown-branches {text!r}: comma-separated step counts, e.g. 80,160")
    return tuple(int(p) for p in parts)


def _given(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


class _ProgressBar:
    """A rich progress bar fed by ``launch``'s ``on_progress``, on stderr. It appears with the
    first report, so a request refused before any rank starts prints its one line only."""

    def __enter__(self) -> "_ProgressBar":
        self._bar = None
        return self

    def update(self, p) -> None:
        if self._bar is None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn)

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
            console.print(f"held-out loss {summary['heldout_loss']:.4f} ({summary['heldout_what']})",
                          highlight=False)
        console.print(f"run directory: {result.run_dir}  (next: ecdit-scale validate "
                      f"{result.run_dir})", highlight=False)
