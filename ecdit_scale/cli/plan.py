"""`ecdit-scale plan`: the main job. Pure planner code: torch is never imported here."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from .. import __version__
from ..config import EMA, FFNKind, Optimizer, Precision, Recompute
from ..errors import ConfigError
from ..files import check_output_folder
from ..planner.placement import Placement
from ..units import format_amount, format_count, format_duration, format_gib
from .common import app, choices, console, err_console, print_json


def _scaling_model(fit: Path | None):
    """The planner's scaling model: the scaling fit at ``fit`` (default: the reference
    sweep's). Any way a fit file can be broken becomes one line naming it."""
    import yaml

    from ..files import MAX_YAML_BYTES, read_text_file
    from ..scaling.predict import scaling_estimate

    def predict(kind: str, experts: int, compute_flops: float):
        if fit is not None and fit.exists():  # binary, huge, unreadable: named here
            read_text_file(fit, what="scaling fit", max_bytes=MAX_YAML_BYTES)
        try:
            return scaling_estimate(fit, kind, experts, compute_flops)
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError,
                RecursionError, yaml.YAMLError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:100]
            raise ConfigError(f"--fit {fit}: not a readable scaling fit "
                              f"({type(exc).__name__}: {first}); write one with "
                              "`ecdit-scale fit TABLE --out FILE`") from None
    return predict


@app.command()
def plan(
    params: str | None = typer.Option(None, "--params",
                                      help="Parameter target, e.g. 97B (default when no --model)."),
    model: str | None = typer.Option(None, "--model",
                                     help="A model name or YAML card instead of --params."),
    override: str | None = typer.Option(None, "--override",
                                        help="Change fields of --model, e.g. "
                                             "depth=4,ffn.num_experts=8 (a "
                                             "paper size cut down to one GPU)."),
    active: bool = typer.Option(False, "--active", help="--params counts activated parameters."),
    routing: str | None = typer.Option(None, "--routing", metavar=choices(FFNKind),
                                       help="FFN kind of the model (default: the "
                                            "named or synthesised config's)."),
    gpu: str = typer.Option("h100-sxm", "--gpu",
                            help="Accelerator name from the catalog, or a YAML "
                                 "profile (e.g. one saved by `validate`)."),
    gpus: int | None = typer.Option(None, "--gpus", help="Total devices (default 64 nodes x 8)."),
    nodes: int | None = typer.Option(None, "--nodes", help="Nodes (default 64)."),
    gpus_per_node: int | None = typer.Option(None, "--gpus-per-node",
                                             help="Devices per node (default: the accelerator's)."),
    global_batch: int = typer.Option(4096, "--global-batch", help="Images per optimizer step."),
    steps: int = typer.Option(800_000, "--steps", help="Optimizer steps of the run."),
    optimizer: str = typer.Option("rmsprop", "--optimizer", metavar=choices(Optimizer),
                                  help="rmsprop is the paper's."),
    precision: str | None = typer.Option(None, "--precision", metavar=choices(Precision),
                                         help="Each at the device's own rate: fp16 is AMP, "
                                              "tf32 fp32 storage with TF32 GEMMs (default "
                                              "bf16, or fp32 on a device that lists no "
                                              "bf16 throughput, e.g. a CPU profile; a "
                                              "precision the device lacks is refused)."),
    attention: str = typer.Option("flash", "--attention", metavar="flash|mem-efficient|math",
                                  help="Attention kernel (math: scores "
                                       "materialised, as timm's Attention)."),
    vae_in_loop: bool = typer.Option(False, "--vae-in-loop/--latents",
                                     help="Encode images with the SD VAE inside the "
                                          "loop, or train on pre-extracted latents."),
    text_encoder: str = typer.Option("none", "--text-encoder", metavar="none|t5-xxl",
                                     help="Frozen text encoder run inside the loop: none "
                                          "(pre-extracted) or t5-xxl (PixArt's, 120 tokens)."),
    compiled: bool = typer.Option(False, "--compile/--eager",
                                  help="torch.compile (fused elementwise "
                                       "chains; an assumed factor) or eager."),
    ema: str | None = typer.Option(None, "--ema", metavar=choices(EMA),
                                   help="EMA of the weights (DiT, decay 0.9999, fp32): none, "
                                        "or pin a replica or one sharded with the optimizer "
                                        "state (default: kept, and the search picks sharded, "
                                        "or a replica where it costs nothing)."),
    days: float | None = typer.Option(None, "--days",
                                      help="Pick the cheapest cluster size "
                                           "that finishes within D days."),
    budget: float | None = typer.Option(None, "--budget",
                                        help="Pick the fastest cluster size that "
                                             "costs at most this many USD."),
    sizes_table: bool = typer.Option(True, "--table/--no-table",
                                     help="Time and cost at other cluster sizes (1-128 nodes)."),
    zero: int | None = typer.Option(None, "--zero", metavar="<0|1|2|3>",
                                    help="Pin the ZeRO stage."),
    dp: int | None = typer.Option(None, "--dp", help="Pin data-parallel size."),
    ep: int | None = typer.Option(None, "--ep", help="Pin expert-parallel size."),
    tp: int | None = typer.Option(None, "--tp",
                                  help="Pin tensor-parallel size (default 1: "
                                       "ecdit_scale.train has no tensor parallelism; "
                                       "pass --tp N for Megatron-style layouts)."),
    micro_batch: int | None = typer.Option(None, "--micro-batch", help="Pin the micro-batch."),
    recompute: str | None = typer.Option(None, "--recompute", metavar=choices(Recompute),
                                         help="Pin activation recomputation."),
    placement: str | None = typer.Option(None, "--placement", metavar=choices(Placement),
                                         help="Pin the MoE rank order: expert-before-data is "
                                              "DeepSpeed's default (default: the search picks)."),
    price: float = typer.Option(2.5, "--price",
                                help="USD per GPU-hour (an assumption; set yours)."),
    top: int = typer.Option(5, "--top", help="How many layouts to list."),
    sampling_steps: int = typer.Option(50, "--sampling-steps",
                                       help="Inference estimate: sampling steps."),
    inference_devices: int = typer.Option(8, "--inference-devices",
                                          help="Inference estimate: devices (the paper: 8 H100)."),
    fit: Path | None = typer.Option(None, "--fit",
                                    help="Scaling fit for the compute multipliers "
                                         "(default: the reference sweep's)."),
    flops: float | None = typer.Option(None, "--flops",
                                       help="With --fit: spend this compute (FLOPs) as "
                                            "the fit's headline law says (activated "
                                            "parameters and steps at --global-batch)."),
    gpu_hours: float | None = typer.Option(None, "--gpu-hours",
                                           help="With --fit: as --flops, for GPU-hours of --gpu at "
                                                "the planner's sustained FLOP/s (an estimate)."),
    out: str | None = typer.Option(None, "--out",
                                   help="Write the plan folder here: plan.yaml, "
                                        "ds_config.json, launch.sh, hostfile, card.yaml (it "
                                        "appears whole). Without --out nothing is written."),
    no_write: bool = typer.Option(False, "--no-write", hidden=True,
                                  help="Kept for old scripts: without "
                                       "--out, plan writes nothing anyway."),
    json_out: bool = typer.Option(False, "--json",
                                  help="Print the plan as JSON (the same object as "
                                       "plan.yaml); writes nothing unless --out is given."),
) -> None:
    """Plan a training run: FLOPs, memory, layouts, step time, days, cost, DeepSpeed config.

    Prints the plan; writes files only into the folder named by --out."""
    from ..planner.hardware import get_accelerator
    from ..planner.plan import make_plan
    from ..planner.plan_files import write_plan_files
    from ..planner.request import (
        check_plan_options,
        cluster_for_plan,
        model_for_plan,
        pins_for_plan,
        target_for_plan,
        training_for_plan,
    )

    if out is not None and not out.strip():
        raise ConfigError("--out '': give a folder name")
    if no_write and out is not None:
        raise ConfigError(f"--out {out} with --no-write: give one of them (without --out "
                          "nothing is written)")
    if out is not None:
        check_output_folder(out, "--out")
    check_plan_options(top=top, sampling_steps=sampling_steps,
                       inference_devices=inference_devices)
    # the run keeps an EMA unless told not to; naming its kind pins it, else the search picks
    kept_ema = EMA.REPLICATED.value if ema is None else ema
    training = training_for_plan(global_batch=global_batch, steps=steps, optimizer=optimizer,
                                 precision=precision or "bf16", ema=kept_ema)
    target = target_for_plan(days=days, budget=budget, gpus=gpus, nodes=nodes)
    pin = pins_for_plan(dp=dp, ep=ep, tp=tp, zero=zero, micro_batch=micro_batch,
                        recompute=recompute)
    if placement is not None:
        pin["placement"] = placement  # checked by the search (one line naming the choices)
    if ema is not None and ema != EMA.NONE.value:
        pin["ema"] = ema
    acc = get_accelerator(gpu)
    from ..planner.run_setup import RunSetup

    setup = RunSetup(attention=attention, vae_in_loop=vae_in_loop, text_encoder=text_encoder,
                     compiled=compiled)
    if not setup.is_default:
        import dataclasses

        acc = dataclasses.replace(acc, setup=setup)
    spend = None
    if flops is not None or gpu_hours is not None:  # compute-optimal plan (scaling.budget)
        from ..scaling.budget import budget_request

        spend, params, active, steps = budget_request(
            fit, flops=flops, gpu_hours=gpu_hours, routing=routing, global_batch=global_batch,
            model=model, sustained_flops=acc.sustained_flops)
        training = training_for_plan(global_batch=global_batch, steps=steps,
                                     optimizer=optimizer, precision=precision or "bf16",
                                     ema=kept_ema)
        (err_console if json_out else console).print("\n".join(spend.lines()), markup=False,
                                                      highlight=False, soft_wrap=True)
    cfg, resolved = model_for_plan(model=model, params=params, active=active, routing=routing,
                                   override=override)
    if precision is None and "bf16" not in acc.precisions:
        import dataclasses

        training = dataclasses.replace(training, precision=acc.precisions[0])
        err_console.print(f"[yellow]note:[/] precision {acc.precisions[0]}: {acc.name} lists no "
                          "bf16 throughput", highlight=False, soft_wrap=True)
    cluster = cluster_for_plan(gpu, acc, gpus=gpus, nodes=nodes, gpus_per_node=gpus_per_node,
                               price=price)
    the_plan = make_plan(cfg, training, cluster, acc, pin=pin, top=top,
                         sampling_steps=sampling_steps, inference_devices=inference_devices,
                         scaling_model=_scaling_model(fit), resolved=resolved, table=sizes_table,
                         **target)
    files = write_plan_files(the_plan, out) if out is not None else {}
    if json_out:
        print_json({"ecdit_scale_version": __version__, **the_plan.to_dict()})
        if the_plan.launch_note:
            err_console.print(the_plan.launch_note, highlight=False, soft_wrap=True)
        if files:
            err_console.print(f"wrote {Path(out)}/: "
                              + ", ".join(files), highlight=False, soft_wrap=True)
        return
    _print_plan(the_plan, files)
    if the_plan.launch_note:
        err_console.print(the_plan.launch_note, highlight=False, soft_wrap=True)


def _print_plan(p, files) -> None:
    from ..planner.deepspeed_config import warmup_floor_note

    cfg, b = p.config, p.params
    infer, scaling, tp_alt, resolved = p.inference, p.scaling_estimate, p.tp_alternative, p.resolved
    how = ""
    if resolved:
        how = (f" — {'synthesised' if resolved.synthesised else 'named config'} for "
               f"{format_count(resolved.target)} {'activated' if resolved.active else 'total'}")
    console.rule(f"[bold]plan: {cfg.name}{how}")
    console.print(f"model: d={cfg.hidden_size}, {cfg.depth} blocks, {cfg.num_heads} heads "
                  f"({cfg.num_kv_heads} KV), FFN {cfg.ffn.kind.value}"
                  + (f", {cfg.ffn.num_experts} experts in {cfg.num_moe_layers} MoE layers, "
                     f"C={cfg.expert_capacity} tokens/expert/group" if cfg.ffn.is_moe else "")
                  + f"; {cfg.image_size}x{cfg.image_size} images, {cfg.tokens_per_image} tokens")
    console.print(f"params: total {b.total_params:,} ({format_count(b.total_params)}), "
                  f"activated {b.active_params:,} ({format_count(b.active_params)}) \\[exact]")
    f = p.flops_per_image
    console.print(f"FLOPs per image: forward {f.forward:.4g}, backward {f.backward:.4g} "
                  f"(forward MACs {f.forward_macs:.4g}); per step: model "
                  f"{p.flops_per_step.model:.4g}, hardware {p.flops_per_step.hardware:.4g} "
                  "\\[exact]")
    tr = p.training
    console.print(f"run: {tr.steps:,} steps x {tr.global_batch} images on "
                  f"{p.cluster.nodes} x {p.cluster.gpus_per_node} {escape(p.accelerator.name)} "
                  f"({p.world} devices), optimizer {tr.optimizer.value} (lr {tr.lr:g}, warm-up "
                  f"{tr.warmup_steps:,} step{'' if tr.warmup_steps == 1 else 's'}), "
                  f"{tr.precision.value}, EMA {tr.ema.value}"
                  + (f" (decay {tr.ema_decay:g})" if tr.ema.value != "none" else ""))
    why = warmup_floor_note(tr.optimizer, tr.warmup_steps, tr.steps)
    if why:
        console.print(f"note: {why}")

    mem = p.best.memory.to_dict()
    mt = Table(title=f"memory per device, best layout ({p.best.describe()}) \\[estimated]")
    mt.add_column("part")
    mt.add_column("bytes", justify="right")
    for key in ("params", "grads", "fp32_grads", "optimizer_states", "master_weights", "ema",
                "activations", "moe_buffers", "zero3_gather_buffer", "zero_buckets", "grad_buffers",
                "optimizer_temps", "overhead"):
        if mem[key]:
            mt.add_row(key, format_gib(mem[key]))
    phase = {"forward": ("end of the forward (activations; gradients held from the earlier "
                         "micro-batch)") if mem["grad_accum"] > 1 else
             "end of the forward (activations, no gradients yet)",
             "backward": "end of the backward (gradients and their flat copy, no activations)",
             "step": "optimizer step (gradients, fp32 copy, temporaries; no activations)"}[
        mem["peak_phase"]]
    mt.add_row("peak: " + phase, format_gib(mem["allocated"]))
    mt.add_row("total (peak + overhead)",
               f"{format_gib(mem['total'])} of {format_gib(p.accelerator.memory_bytes)}",
               style="bold")
    console.print(mt)

    lt = Table(title=f"top layouts of {p.search.num_feasible:,} that fit "
                     f"({p.search.num_evaluated:,} evaluated) \\[estimated]")
    for col in ("dp", "ep", "tp", "ZeRO", "micro", "accum", "recompute", "memory", "step s",
                "a2a s", "MFU", "images/s"):
        lt.add_column(col, justify="right")
    for e in p.top:
        L, s = e.layout, e.step
        lt.add_row(str(L.dp), str(L.ep), str(L.tp), str(L.zero), str(L.micro_batch),
                   str(e.grad_accum), L.recompute.value, format_gib(e.memory.total),
                   f"{s.total_s:.3g}", f"{s.a2a_s:.3g}", f"{s.mfu:.1%}", f"{s.images_per_s:,.0f}")
    console.print(lt)
    if p.search.rejected:
        reasons = "; ".join(f"{n:,} {r}" for r, n in list(p.search.rejected.items())[:4])
        console.print(f"rejected: {reasons}", style="dim")
    st = p.best.step
    names = {"a2a": "all-to-all", "tp": "tensor-parallel", "grad_reduce": "gradient reduce",
             "param_allgather": "parameter all-gather", "zero3_gather": "ZeRO-3 gathers"}
    comm = ", ".join(f"{names[t]} {x:.3f}" + (f" of {raw:.3f}" if raw > x else "")
                     for t, raw, x in st.terms() if t in names and raw > 0)
    console.print(f"step time: compute {st.compute_s:.3f} s + exposed comm "
                  f"{st.exposed_comm_s:.3f} s ({comm or 'none'}) + optimizer {st.optimizer_s:.3f} s"
                  + (f" + launch/engine {st.launch_s + st.engine_s:.3f} s"
                     if st.launch_s + st.engine_s > 0 else "")
                  + (f" + waiting for the last rank {st.sync_s:.3f} s" if st.sync_s else "")
                  + "; "
                  f"{st.grad_hidden_fraction:.0%} of gradient traffic hidden behind the backward")
    console.print(f"[bold]best:[/] step {p.step_s:.3g} s, MFU {p.mfu:.1%}, "
                  f"{p.images_per_s:,.0f} images/s -> [bold]{format_duration(p.days)}[/], "
                  f"{format_amount(p.gpu_hours)} GPU-hours, ${format_amount(p.cost_usd)} at "
                  f"${p.cluster.price_per_gpu_hour:g}/GPU-hour \\[estimated]")
    if p.cluster_table is not None:
        _print_cluster_table(p)
    if tp_alt is not None:
        s2 = tp_alt.step
        console.print(f"with tensor parallelism ({tp_alt.describe()}): step {s2.total_s:.3f} s, "
                      f"MFU {s2.mfu:.1%}, {p.training.steps * s2.total_s / 86400:,.1f} days — "
                      "needs a Megatron-style model; rerun with --tp to plan it", style="dim")
    console.print(f"inference: {infer.steps} sampling steps with CFG on {infer.devices} "
                  f"{escape(p.accelerator.name)} (ep={infer.ep}, tp={infer.tp}): "
                  f"{infer.latency_s:.2f} s per batch of {infer.batch}, {infer.bound}-bound, "
                  f"{format_gib(infer.memory_bytes_per_device)} per device \\[estimated]")
    if scaling:
        lo, hi = scaling.measured_compute_flops
        for m in scaling.multipliers:
            value = (f"{m.value:.2f}x" + (f" (95% CI {m.interval[0]:.2f}-{m.interval[1]:.2f})"
                                          if m.interval else "")) if m.value is not None else m.note
            console.print(f"compute multiplier {escape(m.variant)} over {escape(m.baseline)}: "
                          f"{escape(value)} \\[estimated]")
            if m.value is not None and m.note:
                console.print(f"  {escape(m.note)}", style="dim")
        console.print(f"  measured on {lo:.3g}-{hi:.3g} FLOPs ({escape(scaling.loss)}; "
                      f"{escape(scaling.statistics)}) from {escape(scaling.source)}; this run "
                      f"lies {scaling.beyond_factor:.2g}x beyond that range; no loss is predicted",
                      style="dim")
    if p.step_s / max(p.best.grad_accum, 1) < 0.01:
        console.print("warning: under 10 ms per micro-step the GPU is mostly waiting on kernel "
                      "launches, which this model does not count (small-dense measured 26x its "
                      "compute-only estimate on an H200: bench/results/); calibrate with "
                      "`ecdit-scale validate --save-profile` and pass it as --gpu", style="yellow")
    for line in p.estimated:
        console.print(f"estimated: {line}", style="dim")
    if files:
        console.print("wrote: " + escape(", ".join(str(v) for v in files.values())))
    if files and p.launchable:
        script = escape(str(files["launch.sh"]))
        if p.cluster.nodes > 1:
            console.print(f"launch: bash {script}  (from the first host, once the hostfile's "
                          "placeholder hosts are real; or NODE_RANK=i MASTER_ADDR=HOST on each)")
        else:
            console.print(f"launch: bash {script}")
        console.print(f"a short trial on this machine's devices: bash {script} --local --steps N",
                      style="dim")
    elif not files:
        console.print("nothing written; add --out DIR for plan.yaml, ds_config.json, launch.sh, "
                      "hostfile and card.yaml", style="dim")


def _print_cluster_table(p) -> None:
    t = p.cluster_table
    tt = Table(title=f"cluster size: the best layout at each size, {p.training.steps:,} steps at "
                     f"${p.cluster.price_per_gpu_hour:g}/GPU-hour \\[estimated]")
    for col in ("nodes", "GPUs", "time", "GPU-hours", "cost $", "step s", "MFU", "layout", ""):
        # the marks' column keeps its longest word ("cheapest,") whole at 80 columns
        tt.add_column(col, justify="left" if col in ("layout", "") else "right",
                      min_width=9 if col == "" else None)
    for r in t.rows:
        lay = r.best.layout
        tt.add_row(str(r.nodes), f"{r.devices:,}", format_duration(r.cost.days),
                   format_amount(r.cost.gpu_hours), format_amount(r.cost.cost_usd),
                   f"{r.best.step.total_s:.3g}", f"{r.best.step.mfu:.1%}",
                   f"ep={lay.ep} z{lay.zero} mb={lay.micro_batch}x{r.best.grad_accum} "
                   f"{lay.recompute.value}", ", ".join(r.marks),
                   style="bold" if r.is_plan else None)
    console.print(tt)
    if t.skipped:
        last = max(t.skipped)
        console.print(f"no row at {', '.join(map(str, t.skipped))} node(s); at {last}: "
                      f"{escape(t.skipped[last])}", style="dim")
    if t.picked_by:
        console.print(f"[bold]picked:[/] {t.picked.nodes} nodes by {escape(t.picked_by)}")


plans_app = typer.Typer(help="The example plans checked in under plans/.", no_args_is_help=True)
app.add_typer(plans_app, name="plans")


@plans_app.command("export")
def export_plans(
    out: str = typer.Option("plans", "--out",
                            help="Folder for the example plans (it appears "
                                 "whole; files you put there stay)."),
    check: bool = typer.Option(False, "--check", help="Only report stale files."),
    json_out: bool = typer.Option(False, "--json",
                                  help="Print the files written (or stale) as JSON."),
) -> None:
    ("Regenerate the example plans (M-64E on the default cluster, XL-32E on H200, a small "
     "one-node run).")
    from ..planner.examples import EXAMPLES, export_examples

    changed = export_examples(out, check=check, scaling_model=_scaling_model(None))
    if check and changed:
        raise ConfigError(f"{len(changed)} stale plan file(s), e.g. {changed[0]}; run "
                          "`ecdit-scale plans export`")
    if json_out:
        print_json({"out": out, "examples": [ex.name for ex in EXAMPLES],
                    ("stale" if check else "written"): changed})
        return
    verb = "stale" if check else "written"
    console.print(f"{len(EXAMPLES)} example plans in {escape(out)}: {len(changed)} file(s) {verb}")
