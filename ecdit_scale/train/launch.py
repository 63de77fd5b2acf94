"""``ecdit-scale launch``: check the request, prepare the run directory, start the
ranks, follow the run's metrics, and return a RunResult.

Every check runs before anything starts (``request.check_request``), so a bad request costs a
second and one line of error (ConfigError). Then:

1. the run directory gets card.yaml, run.json, ds_config.json (the planner's
   ``deepspeed_config``), predictions.json (the planner's parameter, FLOP and memory numbers);
2. the dataset cache is filled once here, so the ranks do not all render and encode it;
3. the ranks start: on one node, ``local_ranks`` gives each rank the environment DeepSpeed's
   per-node launcher would (a one-rank run starts the worker itself: ``single_rank_command``);
   over several nodes (``--hostfile``, ``--node-rank``) ``deepspeed --num_gpus N
   --no_local_rank --master_port P --module ecdit_scale.train.worker`` starts ``--nproc``
   ranks on every host (``--num_gpus`` is needed on CPU too: DeepSpeed otherwise counts NUMA
   nodes); the launcher (or worker) and the ranks form one process group (``process``), which
   SIGINT/SIGTERM reach as a whole;
4. ``on_progress`` (the CLI draws a bar with it) follows metrics.jsonl until the launcher exits.

Resume: ``resume=True`` continues from the newest complete checkpoint
(``records.RunDir.resume_point``), saying what it passed over; the metrics past it are dropped
first, so the loss curve is continuous.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ModelConfig, Precision, save_model_config
from ..errors import ConfigError
from ..planner.deepspeed_config import WORKER_MODULE, deepspeed_launch_command
from .local_ranks import rank_env
from .process import ADDRESS_IN_USE, ForwardSignals, end_group, free_port, start_group
from .records import DIVERGED_EXIT, Device, RunDir, RunSettings, read_jsonl, write_json
from .regional_compile import Compile
from .request import LaunchRequest, check_request, resume_command

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, kw_only=True)
class RunResult:
    run_dir: str
    status: str  # completed | failed | diverged (exit 3) | interrupted
    returncode: int
    steps_done: int
    steps: int
    first_loss: float | None
    final_loss: float | None
    wall_s: float
    resumed_from: int | None
    log: str
    command: list[str] = field(default_factory=list)
    message: str = ""
    notes: list[str] = field(default_factory=list)  # what a resume passed over, and why

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Progress:
    """What ``on_progress`` gets while a run trains (about twice a second)."""

    label: str  # model x world
    steps: int
    step: int  # last step with a record
    loss: float | None = None
    images_per_s: float | None = None
    step_s: float | None = None
    model_flops_per_s_per_device: float | None = None
    pct_of_peak: float | None = None  # of the device's dense bf16 peak; None: n/a (CPU)


# ---------------------------------------------------------------------------------------------
# Run directory contents
# ---------------------------------------------------------------------------------------------


def make_ds_config(s: RunSettings, cfg: ModelConfig) -> dict[str, Any]:
    """The planner's DeepSpeed config for this run, adapted to how the worker trains.

    The worker passes a plain torch optimizer (no JIT-compiled DeepSpeed op) and sets the
    learning rate itself each step (a function of the step, so resume is exact): no
    ``optimizer`` or ``scheduler`` section.
    """
    from ..planner.deepspeed_config import deepspeed_config

    ds = dict(deepspeed_config(micro_batch=s.micro_batch, grad_accum=s.grad_accum,
                               zero_stage=s.zero, precision=s.precision, optimizer=s.optimizer,
                               lr=s.lr, warmup_steps=s.warmup_steps, world=s.world,
                               client_optimizer=True, scheduler=False, moe=cfg.ffn.is_moe))
    ds["train_micro_batch_size_per_gpu"] = s.micro_batch
    ds["gradient_accumulation_steps"] = s.grad_accum
    ds["train_batch_size"] = s.global_batch
    ds["steps_per_print"] = 10**9  # the worker writes its own metrics
    ds["wall_clock_breakdown"] = False
    if s.precision is Precision.FP32:
        ds.pop("bf16", None)
        ds.pop("fp16", None)
    return ds


def planned_memory(cfg: ModelConfig, s: RunSettings):
    """The planner's memory for a run's layout, with the trainer's kernels on its device:
    CUDA updates with fused optimizers, a CPU with foreach ones."""
    from ..planner.memory import memory_breakdown

    return memory_breakdown(cfg, s.layout, s.training, fused=s.device is Device.CUDA)


def predictions(cfg: ModelConfig, s: RunSettings) -> dict[str, Any]:
    """What the planner says about this run, before it runs."""
    from ..params import count_params
    from ..planner.flops import flops_per_image, training_flops_per_image

    fwd = flops_per_image(cfg)
    train = training_flops_per_image(cfg, s.recompute)
    out: dict[str, Any] = {
        "params": count_params(cfg).to_dict(),
        "flops": {
            "forward_per_image": fwd.forward, "backward_per_image": fwd.backward,
            "forward_macs_per_image": fwd.forward_macs,
            "model_flops_per_image": train.model_flops,
            "hardware_flops_per_image": train.hardware_flops,
            "global_batch": s.global_batch,
            "model_flops_per_step": train.model_flops * s.global_batch,
            "hardware_flops_per_step": train.hardware_flops * s.global_batch,
            "source": f"planner.flops.training_flops_per_image(cfg, recompute={s.recompute.value})"
                      " x global batch",
        },
    }
    try:
        mem = planned_memory(cfg, s)
        out["memory"] = {**mem.to_dict(), "per": "device (rank)",
                         "source": "planner.memory.memory_breakdown"}
    except Exception as exc:  # the planner may not model this layout: say so, do not fail
        out["memory"] = {"total": None, "note": f"n/a: {type(exc).__name__}: {exc}"}
    return out


def prepare(req: LaunchRequest) -> tuple[ModelConfig, RunSettings, RunDir, int | None,
                                         str | None, list[str]]:
    """Checks, then the run directory. Returns (cfg, settings, run dir, the step a resume
    starts from, its checkpoint tag, notes on what the resume passed over)."""
    checked = check_request(req)
    cfg, s, rd, point = checked.cfg, checked.settings, checked.rd, checked.resume
    rd.path.mkdir(parents=True, exist_ok=True)
    if point is not None:
        notes = point.notes + rd.apply_resume(point)
        write_json(rd.run_json, rd.settings().with_steps(s.steps).to_dict())
        rd.update_summary(status="running", resumed_from=point.step, resume_notes=notes)
        return cfg, s, rd, point.step, point.tag, notes
    save_model_config(cfg, rd.card)
    write_json(rd.run_json, s.to_dict())
    write_json(rd.ds_config, make_ds_config(s, cfg))
    write_json(rd.predictions, predictions(cfg, s))
    write_json(rd.summary, {"status": "running", "model": cfg.name, "plan": s.plan,
                            "notes": list(s.notes)})
    return cfg, s, rd, None, None, []


def warm_data_cache(cfg: ModelConfig, s: RunSettings) -> None:
    """Render and encode the dataset once here; the ranks then read the cache. (Arrays, not
    tensors: this process never loads torch when the cache is there.)"""
    from ..datasets.arrays import dataset_arrays_for
    from ..datasets.kinds import STREAMS

    if s.data is not None:  # a prepared folder holds its arrays already
        return
    if s.dataset in STREAMS:  # images are drawn by the ranks; the captions are encoded here
        from ..datasets.stream import stream_captions
        from ..datasets.text_encoder import TextEncoder

        TextEncoder().encode(stream_captions(s.seed, s.steps * s.global_batch, s.holdout,
                                             text_tokens=cfg.text_tokens), cfg.text_tokens)
        return
    dataset_arrays_for(s.dataset, cfg, limit=s.data_limit, seed=s.seed)


LOCAL_RANKS_MODULE = "ecdit_scale.train.local_ranks"
MULTI_NODE_PORT = 29500  # DeepSpeed's default: every node of a run must use the same port
JOIN_WAIT_S = 600  # how long a node other than node 0 waits for node 0's run.json


def launcher_command(s: RunSettings, rd: RunDir, *, hostfile: str | None,
                     resume_from: str | None, node_rank: int | None = None,
                     master_addr: str | None = None, master_port: int | None = None,
                     include: str | None = None, force_multi: bool = False) -> list[str]:
    """The ``deepspeed`` launcher command that starts the worker on every rank: the planner's
    builder, run with this Python. With ``node_rank``: DeepSpeed's multi-node path without ssh
    (each node runs this with its own rank; see ``deepspeed_launch_command``)."""
    worker_args: list[str] = []
    if resume_from is not None:
        worker_args += ["--resume-from", resume_from]
    return deepspeed_launch_command(
        num_gpus=s.nproc_per_node, run_dir=str(rd.path.resolve()),
        hostfile=str(Path(hostfile).resolve()) if hostfile else None,
        num_nodes=s.nodes if hostfile else None,
        master_port=master_port or (MULTI_NODE_PORT if node_rank is not None else free_port()),
        master_addr=master_addr, node_rank=node_rank, include=include, force_multi=force_multi,
        launcher=(sys.executable, "-m", "deepspeed.launcher.runner"), worker_args=worker_args)


def worker_command(rd: RunDir, resume_from: str | None) -> list[str]:
    """One rank's command: the worker on the run directory (from a checkpoint tag, or fresh)."""
    cmd = [sys.executable, "-u", "-m", WORKER_MODULE, "--run-dir", str(rd.path.resolve())]
    return cmd + (["--resume-from", resume_from] if resume_from is not None else [])


def single_rank_command(s: RunSettings, rd: RunDir, *,
                        resume_from: str | None) -> tuple[list[str], dict[str, str]]:
    """A one-rank local run: the worker itself, with the environment DeepSpeed's launcher
    would give its only rank (``local_ranks.rank_env``). The worker's training is the same
    DeepSpeed engine either way; several ranks on one node start through ``local_ranks``,
    several nodes through DeepSpeed's runner."""
    env = rank_env(launcher_env(s), rank=0, nproc=1, master_addr="127.0.0.1",
                   master_port=free_port(), devices=None)
    return worker_command(rd, resume_from), env


def local_ranks_command(s: RunSettings, rd: RunDir, *, resume_from: str | None,
                        devices: str | None, master_port: int) -> list[str]:
    """The ranks of a one-node run, started by ``local_ranks`` (DeepSpeed's per-node launcher's
    job without DeepSpeed's two launcher interpreters; see that module)."""
    cmd = [sys.executable, "-m", LOCAL_RANKS_MODULE, "--nproc", str(s.nproc_per_node),
           "--master-port", str(master_port)]
    if devices:
        cmd += ["--devices", devices]
    return cmd + ["--", *worker_command(rd, resume_from)]


def launcher_env(s: RunSettings) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGE_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # one thread per rank: ranks share the cores
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    if s.device is Device.CPU:  # even where CUDA is visible: the user asked for CPU
        env["DS_ACCELERATOR"] = "cpu"
    if Compile(s.compile) is Compile.NONE:
        # nothing is compiled: with dynamo off, the torch.compile decorators libraries apply
        # at import (DeepSpeed's Muon kernels, loaded by its ZeRO optimizer check) do not load
        # inductor; 1.5 s of CPU at each rank's start, the same losses bit for bit
        env.setdefault("TORCHDYNAMO_DISABLE", "1")
    return env


# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------


def launch(req: LaunchRequest, *,
           on_progress: Callable[[Progress], None] | None = None) -> RunResult:
    if req.node_rank:  # a node other than node 0 joins the run node 0 prepared
        return join(req, on_progress=on_progress)
    cfg, s, rd, resumed_from, resume_tag, notes = prepare(req)
    try:
        warm_data_cache(cfg, s)
    except KeyboardInterrupt:  # no rank started: nothing trained, the run directory stays
        rd.update_summary(status="interrupted")
        return RunResult(run_dir=str(rd.path), status="interrupted", returncode=130,
                         steps_done=resumed_from or 0, steps=s.steps, first_loss=None,
                         final_loss=None, wall_s=0.0, resumed_from=resumed_from,
                         log=str(rd.log), notes=notes, message=(
                             "interrupted while preparing the data, before any rank started "
                             f"(nothing trained); continue with: {resume_command(req, rd.path)}"))
    notes = list(s.notes) + notes
    t0 = time.perf_counter()
    for attempt in range(1, PORT_ATTEMPTS + 1):
        rc, signals, taken, shown = run_once(req, s, rd, resume_tag, resumed_from,
                                             on_progress=on_progress)
        if not taken or attempt == PORT_ATTEMPTS:
            break
        notes.append(f"the rendezvous port was taken before rank 0 listened on it "
                     f"(attempt {attempt}); started again on another port")
    wall = time.perf_counter() - t0
    records = read_jsonl(rd.metrics)
    done = records[-1]["step"] if records else 0
    message = ""
    if signals.received is not None and not (rc == 0 and done >= s.steps):
        status, rc = "interrupted", signals.exit_code
        message = interrupted_message(req, s, rd, done)
    elif rc == 0 and done >= s.steps:
        status = "completed"
    elif rd.read_summary().get("status") == "diverged":
        status, rc = "diverged", DIVERGED_EXIT
        message = rd.read_summary()["message"]
    else:
        status = "failed"
        message = last_error(rd.log)
        if req.master_port is not None and ADDRESS_IN_USE in message:
            message = (f"--master-port {req.master_port} is in use on this machine; name another "
                       f"or leave it out (a free one is picked) (see {rd.log})")
    rd.update_summary(status=status, returncode=rc, launch_wall_s=wall, steps=s.steps,
                      steps_done=done)
    return RunResult(run_dir=str(rd.path), status=status, returncode=rc, steps_done=done,
                     steps=s.steps, first_loss=records[0]["loss"] if records else None,
                     final_loss=records[-1]["loss"] if records else None, wall_s=wall,
                     resumed_from=resumed_from, log=str(rd.log), command=shown, message=message,
                     notes=notes)


PORT_ATTEMPTS = 3  # a port this process picked can be taken before rank 0 binds it


def run_once(req: LaunchRequest, s: RunSettings, rd: RunDir, resume_tag: str | None,
             resumed_from: int | None, *, on_progress: Callable[[Progress], None] | None,
             ) -> tuple[int, ForwardSignals, bool, list[str]]:
    """Start the ranks once and wait for them: (return code, the signals received, whether it
    failed only because the rendezvous port this process picked was taken, with no step done:
    then starting again on another port loses nothing; the command as shown)."""
    one_node = not req.hostfile and req.node_rank is None and req.host is None
    if s.world == 1 and one_node:
        cmd, env = single_rank_command(s, rd, resume_from=resume_tag)
        if req.devices:  # the one device a sweep gave this run (``sweep --parallel``)
            env["CUDA_VISIBLE_DEVICES"] = req.devices
        shown = ["python"] + cmd[1:]
    elif one_node and s.nodes == 1:
        cmd = local_ranks_command(s, rd, resume_from=resume_tag, devices=req.devices,
                                  master_port=req.master_port or free_port())
        env, shown = launcher_env(s), ["python"] + cmd[1:]
    else:
        host = req.host or ("localhost" if req.devices else None)
        cmd = launcher_command(s, rd, hostfile=req.hostfile, resume_from=resume_tag,
                               node_rank=req.node_rank,
                               master_addr=req.master_addr, master_port=req.master_port,
                               include=f"{host}:{req.devices}" if req.devices else req.host,
                               force_multi=req.host is not None)
        env, shown = launcher_env(s), ["deepspeed"] + cmd[3:]
    rd.update_summary(command=" ".join(shown))
    done_before = len(read_jsonl(rd.metrics))
    with open(rd.log, "a") as log:
        log.write(f"$ {' '.join(shown)}\n")
        log.flush()
        start = log.tell()
        # the launcher and its ranks in a group of their own; signals to us go to all of it
        with ForwardSignals() as signals:
            proc = start_group(cmd, log=log, env=env, cwd=os.getcwd())
            signals.attach(proc.pid)
            follow(proc, rd, s, resumed_from or 0, on_progress=on_progress)
            rc = proc.wait()
            end_group(proc)
    if rd.running_pid() is None:  # a rank that died before its end left its pid file
        rd.worker_pid.unlink(missing_ok=True)
    taken = (rc != 0 and signals.received is None and req.master_port is None
             and len(read_jsonl(rd.metrics)) == done_before
             and ADDRESS_IN_USE in log_since(rd.log, start))
    return rc, signals, taken, shown


def log_since(path: str | os.PathLike, offset: int) -> str:
    with open(path, errors="replace") as f:
        f.seek(offset)
        return f.read()


def interrupted_message(req: LaunchRequest, s: RunSettings, rd: RunDir, done: int) -> str:
    """What an interrupted launch left, and what rerunning it does (``RunDir.resume_point``
    picks the same checkpoint)."""
    kept = rd.latest_checkpoint()
    cmd = resume_command(req, rd.path)
    if kept is not None:
        return (f"interrupted after step {done}; the newest complete checkpoint is {kept[1]} "
                f"(training goes on from step {kept[0] + 1}); continue with: {cmd}")
    why = "this run saves none (--no-checkpoints)" if not s.checkpoints else "none was saved yet"
    return (f"interrupted after step {done}, with no checkpoint to continue from ({why}); "
            f"this starts it again at step 1: {cmd}")


def join(req: LaunchRequest, *,
           on_progress: Callable[[Progress], None] | None = None) -> RunResult:
    """Node ``req.node_rank`` > 0 of a run without ssh: wait for node 0's run.json (the run
    directory is on storage every node sees, as DeepSpeed's checkpoints need), then start this
    node's ranks with the same settings. Node 0 writes the records."""
    from .request import _check_multinode

    _check_multinode(req)
    if not req.out:
        raise ConfigError("--node-rank > 0 needs --out: the run directory node 0 writes")
    rd = RunDir(req.out)
    deadline = time.monotonic() + JOIN_WAIT_S
    while not rd.exists():
        if time.monotonic() > deadline:
            raise ConfigError(f"--node-rank {req.node_rank}: {rd.run_json} did not appear in "
                              f"{JOIN_WAIT_S} s; start node 0 with the same --out first")
        time.sleep(0.2)
    s = rd.settings()
    cmd = launcher_command(s, rd, hostfile=req.hostfile, resume_from=None,
                           node_rank=req.node_rank,
                           master_addr=req.master_addr, master_port=req.master_port)
    log_path = rd.path / f"launch.node{req.node_rank}.log"
    t0 = time.perf_counter()
    with open(log_path, "a") as log, ForwardSignals() as signals:
        proc = start_group(cmd, log=log, env=launcher_env(s), cwd=os.getcwd())
        signals.attach(proc.pid)
        follow(proc, rd, s, 0, on_progress=on_progress)
        rc = proc.wait()
        end_group(proc)
    records = read_jsonl(rd.metrics)
    done = records[-1]["step"] if records else 0
    status = "completed" if rc == 0 else "failed"
    return RunResult(run_dir=str(rd.path), status=status, returncode=rc, steps_done=done,
                     steps=s.steps, first_loss=records[0]["loss"] if records else None,
                     final_loss=records[-1]["loss"] if records else None,
                     wall_s=time.perf_counter() - t0, resumed_from=None, log=str(log_path),
                     command=["deepspeed"] + cmd[3:],
                     message="" if rc == 0 else last_error(log_path))


def follow(proc, rd: RunDir, s: RunSettings, start: int, *,
           on_progress: Callable[[Progress], None] | None, poll_s: float = 0.5) -> None:
    """Wait for the launcher, reporting the last record of metrics.jsonl to ``on_progress``."""
    label = f"{s.model_name} x{s.world}"
    if on_progress:
        on_progress(Progress(label=label, steps=s.steps, step=start))
    while proc.poll() is None:
        try:  # back as soon as the launcher ends
            proc.wait(timeout=poll_s)
        except subprocess.TimeoutExpired:
            pass
        if on_progress:
            recs = read_jsonl(rd.metrics)
            if recs:
                r = recs[-1]
                on_progress(Progress(label=label, steps=s.steps, step=r["step"],
                                     loss=r.get("loss"), images_per_s=r.get("images_per_s"),
                                     step_s=r.get("step_s"),
                                     model_flops_per_s_per_device=r.get(
                                         "model_flops_per_s_per_device"),
                                     pct_of_peak=r.get("pct_of_peak")))
    if on_progress:
        recs = read_jsonl(rd.metrics)
        if recs:
            on_progress(Progress(label=label, steps=s.steps, step=recs[-1]["step"]))


def last_error(log_path: str | os.PathLike) -> str:
    """The most telling line of a failed run's log."""
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return "the launcher failed; no log"
    for line in reversed(lines):
        s = line.strip()
        if s and ("Error" in s or "error:" in s) and not s.startswith("File "):
            return f"{s[:300]} (see {log_path})"
    return f"the launcher exited with an error; see {log_path}"
