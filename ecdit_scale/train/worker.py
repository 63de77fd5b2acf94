"""The training loop one rank runs under the ``deepspeed`` launcher.

    deepspeed --num_gpus N --no_local_rank --module ecdit_scale.train.worker --run-dir runs/X

Everything about the run is read from the run directory that ``launch`` prepared (run.json,
card.yaml, ds_config.json); this process writes metrics.jsonl, checkpoints, per-rank parameter
checksums and summary.json there. Determinism: the model is built from ``seed`` on every rank;
batch ``step`` is a pure function of (seed, step, rank) (``data.batches``); the noise and
timesteps of step ``step`` come from a generator seeded with (seed, step, rank, micro-step). So
a run resumed from a checkpoint at step k reproduces the uninterrupted run's losses.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..files import atomic_write_text, json_default
from ..model import rectified_flow_loss
from .cadence import Checkpointing, Diverged, DivergenceGuard, HeldOutScoring, MemoryTracking
from .engine import Rank, load_run_data, lr_at, optimizer_impl, setup, step_seed
from .expert_parallel import deepspeed_topk_layers, expert_stacking
from .feed import device_feed
from .heldout import timestep_grid
from .peak_memory import MEMORY_WHAT_CPU, MEMORY_WHAT_CUDA, PeakBytes, PhasePeaks, model_state_bytes
from .records import CHECKPOINT_TAG, DIVERGED_EXIT, RunDir, append_jsonl, write_json
from .regional_compile import compile_backend
from .step_profile import StepProfiler, phase
from .step_stats import StepStats, collect_routing, param_checksums, reduce_stats  # noqa: F401 (worker.X)
from .throughput import meter_for


@contextlib.contextmanager
def marked(r, name: str):
    """One phase of a step: a profiler range (``step_profile.phase``) and, where the rank
    measures memory by phase (``r.phases``), that phase's peak."""
    peaks = getattr(r, "phases", None)
    with phase(name), (peaks.measure(name) if peaks is not None else contextlib.nullcontext()):
        yield


def train_step(r: Rank, step: int, images: torch.Tensor, text: torch.Tensor) -> StepStats:
    """One optimizer step over ``grad_accum`` micro-batches of this rank's share. Nothing in it
    reads a value back from the device (``StepStats``)."""
    s, engine = r.s, r.engine
    st = StepStats()
    ds_layers = deepspeed_topk_layers(engine.module)
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else images.dtype
    for micro in range(s.grad_accum):
        rows = slice(micro * s.micro_batch, (micro + 1) * s.micro_batch)
        # one copy-and-cast each (none when the batch is on the device already: train.feed)
        x = images[rows].to(r.device, dtype, non_blocking=True)
        c = text[rows].to(r.device, dtype, non_blocking=True)
        gen = torch.Generator(device=r.device).manual_seed(step_seed(s.seed, step, r.rank, micro))
        with marked(r, "forward"):  # named for a profiled step (train.step_profile)
            parts = rectified_flow_loss(engine, x, c, generator=gen)
            loss, aux = parts.loss, parts.aux_loss.float()
            if ds_layers:  # DeepSpeed's TopKGate keeps its balancing loss to itself
                extra = torch.stack([m.l_aux.float() for m in ds_layers]).sum()
                loss, aux = loss + extra, aux + extra.detach()
        with marked(r, "backward"):
            engine.backward(loss)
        with marked(r, "step"):  # the optimizer's only at the last micro-batch's
            engine.step()
        dropped = collect_routing(engine.module, st, r.cfg.ffn.num_experts, ds_layers)
        st.add(loss.float(), parts.flow_loss.float(), aux, dropped)
    return st


def save_checkpoint(r: Rank, step: int) -> None:
    Checkpointing.save(r, step)


@dataclasses.dataclass(frozen=True)
class StepResult:
    lr: float
    step_s: float
    stats: dict[str, Any]  # reduce_stats: losses, routing, memory (global values)
    profiled: dict[str, Any]  # step_profile: the profiled step's counts, if this was it


def step(r: Rank, n: int, it, s, *, memory: MemoryTracking | None = None,
         profiler: StepProfiler | None = None) -> StepResult:
    """Optimizer step ``n`` of the run ``s`` (its learning-rate schedule): the batch ``it``
    yields next, its micro-steps, the EMA update and the step's numbers (every rank). The
    main loop and the cooldown branches both step through here; ``memory`` and ``profiler``
    measure where the main loop asks them to."""
    lr = set_lr(r.engine, lr_at(s, n))
    tracked = memory is not None and memory.due(n)
    if r.on_gpu:
        torch.cuda.synchronize()
    r.phases.begin(active=(r.on_gpu and memory is not None) or tracked)
    if profiler is not None:
        profiler.start(n)
    t0 = time.perf_counter()
    images, text = next(it)  # this rank's share of global batch ``n - 1``
    with memory.tracker if tracked else contextlib.nullcontext():
        st = train_step(r, n, images, text)
        if r.ema is not None:  # after the optimizer step (DiT: every step)
            with marked(r, "ema"):
                r.ema.update()
    if r.on_gpu:
        torch.cuda.synchronize()
    step_s = time.perf_counter() - t0
    profiled = profiler.stop(n, step_s) if profiler is not None else {}
    peak, phase_peaks = r.phases.end()  # -1: not measured this step
    if memory is not None:
        memory.after(n, r)
    stats = reduce_stats(st, r.world, r.s.grad_accum, peak, r.device, phase_peaks)
    return StepResult(lr=lr, step_s=step_s, stats=stats, profiled=profiled)


def run(run_dir: Path, *, resume_from: str | None) -> int:
    from ..datasets.batches import batches

    rd = RunDir(run_dir)
    r = setup(rd)
    s, engine = r.s, r.engine
    if r.rank == 0:
        rd.worker_pid.write_text(f"{os.getpid()}\n")
    start = 0
    r.guard = DivergenceGuard(s.divergence_factor)
    if resume_from is not None:  # launch chose it: the newest complete checkpoint
        _, client = engine.load_checkpoint(str(rd.checkpoints), tag=resume_from)
        start = int(client["step"]) if client else int(resume_from.removeprefix("step"))
        r.guard.first_loss = (client or {}).get("first_loss")
        if r.ema is not None:
            r.ema.load(rd.checkpoints / resume_from, r.rank)
    t_data = time.perf_counter()
    data, held, data_record = load_run_data(s, r.cfg)
    if r.rank == 0 and data_record is not None:  # the prepared folder and its held-out items
        write_json(rd.data_json, data_record)
    scorer = heldout_loss_for(r, held)
    if r.rank == 0:  # before the first step, so that a run killed later still names them:
        # the engine, device and versions, and where the start-up went (the first step's
        # compile is in metrics.jsonl)
        import deepspeed

        from .. import __version__

        rd.update_summary(ecdit_scale_version=__version__, engine=r.engine_variant,
                          allocator=r.allocator,
                          expert_stacking=expert_stacking(r.engine.module),
                          device=s.device.value,
                          device_name=(torch.cuda.get_device_name(r.device) if r.on_gpu
                                       else "cpu"), torch_version=torch.__version__,
                          deepspeed_version=deepspeed.__version__,
                          startup_s={**r.startup_s, "data": time.perf_counter() - t_data})

    def batches_from(step: int):
        """This rank's share of global batches ``step`` + 1, ... (a step's batch depends on
        the step alone: a resume, or a cooldown branch, draws what an unbroken run would)."""
        if hasattr(data, "batches"):  # a stream: every position drawn fresh
            got = data.batches(s.global_batch, rank=r.dp_rank, world=r.world, start_step=step)
        else:
            got = batches(data, s.global_batch, seed=s.seed, rank=r.dp_rank, world=r.world,
                          start_step=step)
        return device_feed(got, r)  # CUDA: pinned, copied one step ahead on a side stream

    it = batches_from(start)
    branch_starts = s.branch_starts()
    memory = MemoryTracking(PeakBytes() if (s.track_memory and not r.on_gpu) else None, start)
    r.phases = PhasePeaks(memory.tracker, cuda=r.on_gpu)
    checkpoints = Checkpointing(s.checkpoint_every, s.steps, enabled=s.checkpoints)
    heldout = HeldOutScoring(scorer, s.eval_every, s.steps)
    meter = meter_for(r)  # model FLOPs per step and the device's peak, once
    profiler = StepProfiler(rd, rank=r.rank, on_gpu=r.on_gpu)  # $ECDIT_SCALE_PROFILE_STEP
    state_bytes: dict[str, int] = {}
    t_run = time.perf_counter()
    if r.rank == 0:
        print(f"[worker] world {r.world}, ep {s.ep}, zero {s.zero}, steps {start + 1}..{s.steps}, "
              f"{r.counts['model_params']} params ({r.counts['rank_params']} on rank 0)",
              flush=True)

    try:
        for n in range(start + 1, s.steps + 1):
            for b in branch_starts.get(n - 1, ()):
                if rd.read_branch(b) is None:  # (a resume may find it finished)
                    it = run_branch(r, b, n - 1, batches_from, scorer)
            done = step(r, n, it, s, memory=memory, profiler=profiler)
            if not state_bytes:
                state_bytes = model_state_bytes(engine)
            rec = done.stats
            diverged = r.guard.check(n, rec["loss"])
            if heldout.due(n) and not diverged:
                rec.update(heldout.score(engine))
            if r.rank == 0:
                append_jsonl(rd.metrics, {"step": n, "lr": done.lr, "step_s": done.step_s,
                                          "images_per_s": s.global_batch / done.step_s,
                                          **meter.record(done.step_s), **done.profiled, **rec})
            if diverged:
                raise Diverged(diverged)
            if checkpoints.due(n):
                Checkpointing.save(r, n, r.guard.first_loss)
    except Diverged as exc:
        stop_diverged(r, str(exc))
        return DIVERGED_EXIT
    finish(r, train_wall_s=time.perf_counter() - t_run, state_bytes=state_bytes,
           train_samples=len(data), meter=meter)
    return 0


def stop_diverged(r: Rank, why: str) -> None:
    """Rank 0 says in summary.json why the run stopped; nothing is saved after the divergence,
    so the newest checkpoint is from before it."""
    if r.rank != 0:
        return
    kept = r.rd.latest_checkpoint()
    last = (f"the newest checkpoint, {kept[1]}, is from before it and is kept" if kept else
            "no checkpoint was saved before it")
    r.rd.update_summary(status="diverged", message=(
        f"training diverged: {why}; stopped without saving ({last}). Train again with a "
        "lower --lr or a longer --warmup"))
    r.rd.worker_pid.unlink(missing_ok=True)


def set_lr(engine, lr: float) -> float:
    """The step's learning rate into every parameter group (the worker schedules it itself)."""
    for g in engine.optimizer.param_groups:
        g["lr"] = lr
    return lr


def run_branch(r: Rank, steps: int, at: int, batches_from, scorer):
    """The wsd run of ``steps`` steps, continued from this run's state after step ``at`` (its
    last stable step, ``RunSettings.branch_starts``): its cooldown steps at that run's
    learning rate, then the held-out loss; the records go to ``branches/b<steps>.jsonl``,
    written whole at the end. Then the state after step ``at`` comes back from the checkpoint
    saved there (and the EMA with it), and the caller's stable phase goes on from it with the
    batches this returns."""
    rd, s, engine = r.rd, r.s, r.engine
    tag = CHECKPOINT_TAG.format(step=at)
    if rd.checkpoint_problem(tag) is not None:  # none yet, or not complete
        Checkpointing.save(r, at, r.guard.first_loss)
    short = s.with_steps(steps)
    heldout = HeldOutScoring(scorer, 0, steps)
    it = batches_from(at)
    records = []
    for n in range(at + 1, steps + 1):
        done = step(r, n, it, short)
        rec = done.stats
        diverged = r.guard.check(n, rec["loss"])
        if diverged:
            raise Diverged(f"{diverged}, in the {steps}-step cooldown branch")
        if heldout.due(n):
            rec.update(heldout.score(engine))
        records.append({"step": n, "lr": done.lr, "step_s": done.step_s, "branch_of": at,
                        **rec})
    if r.rank == 0:
        rd.branches.mkdir(exist_ok=True)
        atomic_write_text(rd.branch_path(steps),
                          "".join(json.dumps(x, default=json_default) + "\n" for x in records))
    dist.barrier()
    engine.load_checkpoint(str(rd.checkpoints), tag=tag)
    if r.ema is not None:
        r.ema.load(rd.checkpoints / tag, r.rank)
    return batches_from(at)


def heldout_loss_for(r: Rank, held):
    """The run's held-out scorer (``heldout.HeldOutLoss``), or None when it keeps no samples."""
    from .heldout import HeldOutLoss

    if held is None:
        return None
    return HeldOutLoss.build(held.images, held.text, levels=r.s.eval_timesteps, rank=r.rank,
                             world=r.world, chunk=r.s.micro_batch, device=r.device)


def finish(r: Rank, *, train_wall_s: float, state_bytes: dict[str, int],
           train_samples: int, meter) -> None:
    """Per-rank parameter checksums; rank 0 writes the summary."""
    rd, s = r.rd, r.s
    rd.checksums.mkdir(parents=True, exist_ok=True)
    local = list(r.ep.local_expert_range(r.cfg.ffn.num_experts)) if r.cfg.ffn.is_moe else []
    ema = ({"mode": r.ema.mode.value, "numel": r.ema.numel(), "bytes": r.ema.nbytes(),
            "tensors": len(r.ema.shadow), "checksum": r.ema.checksum()} if r.ema else None)
    write_json(rd.checksums / f"rank{r.rank}.json",
               {"rank": r.rank, "ep_rank": r.ep.ep_rank, "dp_rank": r.dp_rank,
                "local_experts": local, "ema": ema, **param_checksums(r.engine.module)})
    ema_bytes = torch.tensor([ema["bytes"] if ema else 0], dtype=torch.float64, device=r.device)
    dist.all_reduce(ema_bytes, op=dist.ReduceOp.MAX)
    dist.barrier()
    if r.rank != 0:
        return
    recs = rd.read_metrics()
    untracked = [x for x in recs[2:] if not x.get("memory_tracked") and not x.get("profiled")]
    steady_recs = untracked or recs[2:] or recs
    steady = [x["step_s"] for x in steady_recs]
    peaks = [x["peak_bytes"] for x in recs if x.get("peak_bytes")]
    scored = [x for x in recs if "heldout_loss" in x]
    rd.update_summary(
        status="completed", steps_done=s.steps,
        first_loss=recs[0]["loss"] if recs else None,
        heldout_loss=scored[-1]["heldout_loss"] if scored else None,
        heldout_loss_by_t=scored[-1]["heldout_loss_by_t"] if scored else None,
        heldout_timesteps=timestep_grid(s.eval_timesteps).tolist() if scored else None,
        heldout_what=(f"flow-matching loss on {s.holdout} held-out samples never trained on, "
                      f"at {s.eval_timesteps} fixed noise levels with fixed noise "
                      "(train.heldout)") if scored else "not measured (--holdout 0)",
        final_loss=recs[-1]["loss"] if recs else None, train_wall_s=train_wall_s,
        mean_step_s=float(np.mean(steady)) if steady else None,
        median_step_s=float(np.median(steady)) if steady else None,
        step_time_from=("steps without memory tracking, after the first two" if untracked
                        else "all steps after the first two"),
        peak_bytes=max(peaks) if peaks else None,
        memory_measured=(MEMORY_WHAT_CUDA if r.on_gpu else
                         MEMORY_WHAT_CPU if s.track_memory else "not tracked"),
        model_state_bytes_rank0=state_bytes, params=r.counts, train_samples=train_samples,
        world=r.world, nodes=s.nodes, ep=s.ep, zero=s.zero, micro_batch=s.micro_batch,
        grad_accum=s.grad_accum, global_batch=s.global_batch, optimizer=s.optimizer.value,
        optimizer_class=type(r.engine.optimizer.optimizer).__name__
        if hasattr(r.engine.optimizer, "optimizer") else type(r.engine.optimizer).__name__,
        optimizer_impl=optimizer_impl(r.engine.optimizer), **meter.summary(steady_recs),
        compile=s.compile, compile_backend=compile_backend(s.compile),
        lr=s.lr, warmup_steps=s.warmup_steps, schedule=s.schedule.value,
        cooldown_fraction=s.cooldown_fraction, recompute=s.recompute.value,
        precision=trained_precision(r.engine), ema=s.ema.value, ema_decay=s.ema_decay,
        ema_bytes_per_rank_max=int(ema_bytes.item()), dataset=s.dataset, plan=s.plan,
        notes=list(s.notes))  # device and versions: written before the first step
    rd.worker_pid.unlink(missing_ok=True)


def trained_precision(engine) -> str:
    """What the engine trained in (its own flags, not the request): bf16 or fp32."""
    if engine.bfloat16_enabled():
        return "bf16"
    return "fp16" if engine.fp16_enabled() else "fp32"


def shutdown() -> None:
    """End a rank cleanly: gloo subgroups can abort in their destructors at interpreter exit."""
    try:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ecdit_scale.train.worker")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--resume-from", default=None, metavar="TAG",
                        help="checkpoint tag to continue from (launch picks it)")
    args = parser.parse_args(argv)
    code = 1
    try:
        code = run(args.run_dir, resume_from=args.resume_from)
    finally:
        if code in (0, DIVERGED_EXIT):  # every rank stops at the same step: end them cleanly
            shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
