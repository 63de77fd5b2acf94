"""``ecdit-scale launch``: check the request, prepare the run directory, start the
``deepspeed`` launcher, follow the run's metrics, and return a RunResult.

Every check runs before anything starts, so a bad request costs a second and one line of
error (ConfigError). Then:

1. the run directory gets card.yaml, run.json, ds_config.json (the planner's
   ``deepspeed_config``), predictions.json (the planner's parameter, FLOP and memory numbers);
2. the dataset cache is filled once here, so the ranks do not all render and encode it;
3. ``deepspeed --num_gpus N --no_local_rank --master_port P --module ecdit_scale.train.worker``
   starts the ranks (``--num_gpus`` is needed on CPU too: DeepSpeed otherwise counts NUMA nodes);
   with ``--hostfile`` it starts ``--nproc`` ranks on every host of the file;
4. a progress bar follows metrics.jsonl until the launcher exits.

Resume: ``resume=True`` continues from the last complete checkpoint (``records.RunDir``); the
metrics past it are dropped first, so the loss curve is continuous.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import FFNKind, ModelConfig, load_model_config, save_model_config
from ..errors import ConfigError
from .records import RunDir, RunSettings, read_jsonl, write_json

DATASETS = ("emoji", "shapes")
ZERO_STAGES = (0, 1, 2, 3)
TC_IMPLS = ("ecdit", "deepspeed")
OPTIMIZERS = ("adamw", "rmsprop")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, kw_only=True)
class LaunchRequest:
    """What the user asked for (the CLI's options, unvalidated)."""

    card: str
    nproc: int
    steps: int
    ep: int = 1
    zero: int = 1
    micro_batch: int = 8
    grad_accum: int = 1
    dataset: str = "emoji"
    data_limit: int | None = None
    holdout: int = 64
    out: str | None = None
    resume: bool = False
    hostfile: str | None = None
    seed: int = 0
    lr: float = 1e-3
    warmup_steps: int | None = None  # None: steps // 10, at most 100
    optimizer: str = "adamw"
    checkpoint_every: int | None = None  # None: steps // 4 (and always the last step)
    keep_checkpoints: int = 2
    track_memory: bool = True
    device: str = "auto"  # auto | cpu | cuda
    tc_impl: str = "ecdit"
    stop_after: int | None = None  # test hook: every rank exits after this step


@dataclass(frozen=True, kw_only=True)
class RunResult:
    run_dir: str
    status: str  # completed | failed | stopped | interrupted
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

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# ---------------------------------------------------------------------------------------------
# Checks (no side effects)
# ---------------------------------------------------------------------------------------------


def resolve_card(card: str) -> ModelConfig:
    """A registry name (``sizes.get``) or a YAML card path (``config.load_model_config``)."""
    from .. import sizes

    looks_like_file = card.endswith((".yaml", ".yml")) or os.sep in card or Path(card).is_file()
    if looks_like_file:
        if not Path(card).is_file():
            raise ConfigError(f"card {card!r}: no such file; give a model name "
                              "(`ecdit-scale models list`) or the path of a YAML card")
        return load_model_config(card)
    return sizes.get(card)


def parse_hostfile(path: str) -> dict[str, int]:
    """DeepSpeed hostfile lines ``host slots=N`` -> {host: N}."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--hostfile {path}: no such file")
    hosts: dict[str, int] = {}
    for i, line in enumerate(p.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        slots = [x for x in parts[1:] if x.startswith("slots=")]
        try:
            hosts[parts[0]] = int(slots[0].split("=", 1)[1]) if slots else 1
        except ValueError:
            raise ConfigError(f"--hostfile {path} line {i}: expected 'HOST slots=N'") from None
    if not hosts:
        raise ConfigError(f"--hostfile {path}: no hosts in it")
    return hosts


def local_rank_limit(device: str) -> tuple[int, str]:
    """The most ranks one machine can run, and why: GPUs on CUDA, CPU cores on CPU."""
    if device == "cuda":
        import torch

        return torch.cuda.device_count(), "CUDA devices"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return cores, "CPU cores (one rank per core)"


def pick_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device!r} is not valid; choose one of auto, cpu, cuda")
    if device != "auto":
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu")
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_request(req: LaunchRequest) -> tuple[ModelConfig, RunSettings, RunDir]:
    """Validate everything a launch needs; raise ConfigError with one actionable line."""
    cfg = resolve_card(req.card)
    if cfg.vae_downsample != 1 or cfg.in_channels != 3:
        raise ConfigError(
            f"{cfg.name}: launch trains in pixel space (RGB, no VAE); this card has "
            f"{cfg.in_channels} input channels and vae_downsample {cfg.vae_downsample}. "
            "Use a card of the cpu family, e.g. nano-ec8")
    if cfg.conditioning.value != "text" or cfg.text_dim != 384:
        raise ConfigError(f"{cfg.name}: launch needs text conditioning with 384-d tokens "
                          "(all-MiniLM-L6-v2); use a card of the cpu family")
    if req.dataset not in DATASETS:
        raise ConfigError(f"--dataset {req.dataset!r} is not valid; choose one of "
                          f"{', '.join(DATASETS)}")
    for name in ("nproc", "steps", "micro_batch", "grad_accum", "ep", "keep_checkpoints"):
        v = getattr(req, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"--{name.replace('_', '-')} = {v!r}: must be an integer >= 1")
    if req.zero not in ZERO_STAGES:
        raise ConfigError(f"--zero {req.zero}: ZeRO stage must be 0, 1, 2 or 3")
    if req.optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer {req.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    if not req.lr > 0:
        raise ConfigError(f"--lr {req.lr}: must be > 0")
    if req.tc_impl not in TC_IMPLS:
        raise ConfigError(f"--tc-impl {req.tc_impl!r}: choose one of {', '.join(TC_IMPLS)}")
    if req.tc_impl == "deepspeed" and cfg.ffn.kind is not FFNKind.TOKEN_CHOICE:
        raise ConfigError(f"--tc-impl deepspeed applies to token-choice cards; {cfg.name} is "
                          f"{cfg.ffn.kind.value}")
    moe = cfg.ffn.is_moe
    if req.zero == 3 and moe:
        raise ConfigError(f"--zero 3 with MoE model {cfg.name}: DeepSpeed-MoE does not support "
                          "ZeRO-3 (it partitions parameters over the data-parallel group, experts "
                          "need the expert-data-parallel group); use --zero 0, 1 or 2")

    device = pick_device(req.device)
    nodes = 1
    if req.hostfile:
        hosts = parse_hostfile(req.hostfile)
        nodes = len(hosts)
        fewest = min(hosts.values())
        if req.nproc > fewest:
            raise ConfigError(f"--nproc {req.nproc}: the hostfile gives as few as {fewest} slots "
                              "on a host; with --hostfile, --nproc is ranks per host")
    else:
        limit, what = local_rank_limit(device)
        if req.nproc > limit:
            raise ConfigError(f"--nproc {req.nproc} exceeds this machine's {limit} {what}; "
                              f"use --nproc <= {limit}, or --hostfile for several machines")
    world = nodes * req.nproc
    if moe:
        e = cfg.ffn.num_experts
        if e % req.ep:
            raise ConfigError(f"--ep {req.ep} does not divide the {e} experts of {cfg.name}; "
                              f"choose among {', '.join(str(d) for d in _divisors(e))}")
        if world % req.ep:
            raise ConfigError(f"--ep {req.ep} does not divide the world size {world}: expert "
                              "parallelism runs inside the data-parallel group")
    elif req.ep != 1:
        raise ConfigError(f"--ep {req.ep}: {cfg.name} is dense (no experts); use --ep 1")
    tokens = req.micro_batch * cfg.tokens_per_image
    if moe and tokens % cfg.routing_group_tokens:
        raise ConfigError(f"--micro-batch {req.micro_batch}: {tokens} image tokens do not split "
                          f"into routing groups of {cfg.routing_group_tokens}")
    if req.data_limit is not None and req.data_limit < 2 * req.holdout + 1:
        raise ConfigError(f"--limit {req.data_limit}: keep more than twice the {req.holdout} "
                          "held-out samples")
    if req.stop_after is not None and not 1 <= req.stop_after:
        raise ConfigError("--stop-after must be >= 1")

    rd = RunDir(req.out or "")
    old = rd.settings() if req.resume and req.out and rd.exists() else None
    # defaults scale with --steps; a resume (perhaps with more steps) keeps the run's own
    warmup = (req.warmup_steps if req.warmup_steps is not None else
              old.warmup_steps if old else min(100, req.steps // 10))
    every = (req.checkpoint_every if req.checkpoint_every is not None else
             old.checkpoint_every if old else max(1, req.steps // 4))
    if every < 1 or warmup < 0:
        raise ConfigError("--checkpoint-every must be >= 1 and --warmup >= 0")
    settings = RunSettings(
        card=req.card, model_name=cfg.name, steps=req.steps, nodes=nodes,
        nproc_per_node=req.nproc, ep=req.ep if moe else 1, zero=req.zero,
        micro_batch=req.micro_batch, grad_accum=req.grad_accum, dataset=req.dataset,
        data_limit=req.data_limit, holdout=req.holdout, seed=req.seed, lr=req.lr,
        warmup_steps=warmup, optimizer=req.optimizer,
        precision="bf16" if device == "cuda" else "fp32", device=device,
        checkpoint_every=every, keep_checkpoints=req.keep_checkpoints,
        track_memory=req.track_memory, tc_impl=req.tc_impl)

    rd = RunDir(req.out or default_run_dir(settings))
    if req.resume:
        if not rd.exists():
            raise ConfigError(f"--resume: {rd.path} holds no run to resume (no run.json)")
        pid = rd.running_pid()
        if pid is not None:
            raise ConfigError(f"--resume: {rd.path} is still running (rank 0 is pid {pid}); "
                              "stop it first")
        old = rd.settings()
        for name in RunSettings.FIXED:
            if getattr(old, name) != getattr(settings, name):
                raise ConfigError(
                    f"--resume: {name} was {getattr(old, name)!r} in {rd.path}, now "
                    f"{getattr(settings, name)!r}; resume with the original settings")
        done = rd.latest_checkpoint()
        if done is not None and done[0] >= settings.steps:
            raise ConfigError(f"--resume: {rd.path} already finished {done[0]} steps; "
                              f"raise --steps above {done[0]} to train further")
    elif rd.exists() or rd.metrics.exists():
        raise ConfigError(f"{rd.path} already holds a run; pass --resume to continue it or "
                          "choose another --out")
    return cfg, settings, rd


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def default_run_dir(s: RunSettings) -> Path:
    return Path("runs") / f"{s.model_name}-w{s.world}-ep{s.ep}-z{s.zero}-{s.dataset}-s{s.seed}"


# ---------------------------------------------------------------------------------------------
# Run directory contents
# ---------------------------------------------------------------------------------------------


def make_ds_config(s: RunSettings) -> dict[str, Any]:
    """The planner's DeepSpeed config for this run, adapted to how the worker trains.

    The worker passes a plain torch optimizer (no JIT-compiled DeepSpeed op) and sets the
    learning rate itself each step (a function of the step, so resume is exact): no
    ``optimizer`` or ``scheduler`` section.
    """
    from ..planner.deepspeed_config import deepspeed_config

    cfg = dict(deepspeed_config(micro_batch=s.micro_batch, grad_accum=s.grad_accum,
                                zero_stage=s.zero, precision=s.precision, optimizer=s.optimizer,
                                lr=s.lr, warmup_steps=s.warmup_steps, world=s.world,
                                client_optimizer=True, scheduler=False))
    cfg["train_micro_batch_size_per_gpu"] = s.micro_batch
    cfg["gradient_accumulation_steps"] = s.grad_accum
    cfg["train_batch_size"] = s.global_batch
    cfg["steps_per_print"] = 10**9  # the worker writes its own metrics
    cfg["wall_clock_breakdown"] = False
    if s.precision == "fp32":
        cfg.pop("bf16", None)
        cfg.pop("fp16", None)
    return cfg


def predictions(cfg: ModelConfig, s: RunSettings) -> dict[str, Any]:
    """What the planner says about this run, before it runs."""
    from ..config import ParallelLayout, Recompute, TrainingConfig
    from ..params import count_params
    from ..planner.flops import flops_per_image, training_flops_per_image

    fwd = flops_per_image(cfg)
    train = training_flops_per_image(cfg, Recompute.NONE)
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
            "source": "planner.flops.training_flops_per_image(cfg, recompute=none) x global batch",
        },
    }
    try:
        from ..planner.memory import memory_breakdown

        layout = ParallelLayout(dp=s.world, ep=s.ep, tp=1, zero=s.zero, micro_batch=s.micro_batch,
                                recompute=Recompute.NONE)
        training = TrainingConfig(global_batch=s.global_batch, steps=s.steps,
                                  optimizer=s.optimizer, precision=s.precision, lr=s.lr,
                                  warmup_steps=s.warmup_steps)
        mem = memory_breakdown(cfg, layout, training)
        out["memory"] = {**mem.to_dict(), "per": "device (rank)",
                         "source": "planner.memory.memory_breakdown"}
    except Exception as exc:  # the planner may not model this layout: say so, do not fail
        out["memory"] = {"total": None, "note": f"n/a: {type(exc).__name__}: {exc}"}
    return out


def prepare(req: LaunchRequest) -> tuple[ModelConfig, RunSettings, RunDir, int | None]:
    """Checks, then the run directory. Returns the checkpoint step a resume starts from."""
    cfg, s, rd = check_request(req)
    ds_config = make_ds_config(s)
    resumed_from = None
    rd.path.mkdir(parents=True, exist_ok=True)
    if req.resume:
        latest = rd.latest_checkpoint()
        resumed_from = latest[0] if latest else 0
        rd.truncate_metrics(resumed_from)
        write_json(rd.run_json, {**rd.settings().to_dict(), "steps": s.steps})
        rd.update_summary(status="running", resumed_from=resumed_from)
    else:
        save_model_config(cfg, rd.card)
        write_json(rd.run_json, s.to_dict())
        write_json(rd.ds_config, ds_config)
        write_json(rd.predictions, predictions(cfg, s))
        write_json(rd.summary, {"status": "running", "model": cfg.name})
    return cfg, s, rd, resumed_from


def warm_data_cache(cfg: ModelConfig, s: RunSettings) -> None:
    """Render and encode the dataset once here; the ranks then read the cache."""
    from ..datasets.batches import build_dataset

    build_dataset(s.dataset, image_size=cfg.image_size, text_tokens=cfg.text_tokens,
                  limit=s.data_limit, seed=s.seed)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_command(s: RunSettings, rd: RunDir, *, hostfile: str | None, resume: bool,
                     stop_after: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(s.nproc_per_node),
           "--master_port", str(free_port()), "--no_local_rank"]
    if hostfile:
        cmd += ["--hostfile", str(Path(hostfile).resolve())]
    cmd += ["--module", "ecdit_scale.train.worker", "--run-dir", str(rd.path.resolve())]
    if resume:
        cmd.append("--resume")
    if stop_after is not None:
        cmd += ["--stop-after", str(stop_after)]
    return cmd


def launcher_env(s: RunSettings) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGE_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # one thread per rank: ranks share the cores
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    if s.device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    return env


# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------


def launch(req: LaunchRequest, *, show_progress: bool = True, console=None) -> RunResult:
    cfg, s, rd, resumed_from = prepare(req)
    warm_data_cache(cfg, s)
    cmd = launcher_command(s, rd, hostfile=req.hostfile, resume=req.resume,
                           stop_after=req.stop_after)
    shown = ["deepspeed"] + cmd[3:]
    rd.update_summary(command=" ".join(shown))
    t0 = time.perf_counter()
    status = "failed"
    with open(rd.log, "a") as log:
        log.write(f"$ {' '.join(shown)}\n")
        log.flush()
        # same process group as this process: killing the job (Ctrl-C, kill -- -PGID) stops
        # the launcher and every rank with it
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=launcher_env(s),
                                cwd=os.getcwd())
        try:
            follow(proc, rd, s, resumed_from or 0, show_progress=show_progress, console=console)
            rc = proc.wait()
        except KeyboardInterrupt:
            stop(proc)
            rc = 130
            status = "interrupted"
    wall = time.perf_counter() - t0
    records = read_jsonl(rd.metrics)
    done = records[-1]["step"] if records else 0
    message = ""
    if rc == 0 and done >= s.steps:
        status = "completed"
    elif status != "interrupted":
        status = "stopped" if req.stop_after is not None and done >= req.stop_after else "failed"
        message = last_error(rd.log) if status == "failed" else (
            f"stopped after step {done} (--stop-after); continue with --resume")
    rd.update_summary(status=status, returncode=rc, launch_wall_s=wall, steps=s.steps,
                      steps_done=done)
    return RunResult(run_dir=str(rd.path), status=status, returncode=rc, steps_done=done,
                     steps=s.steps, first_loss=records[0]["loss"] if records else None,
                     final_loss=records[-1]["loss"] if records else None, wall_s=wall,
                     resumed_from=resumed_from, log=str(rd.log), command=shown, message=message)


def follow(proc: subprocess.Popen, rd: RunDir, s: RunSettings, start: int, *,
           show_progress: bool, console=None, poll_s: float = 0.5) -> None:
    """Wait for the launcher, drawing a rich progress bar from metrics.jsonl."""
    if not show_progress:
        while proc.poll() is None:
            time.sleep(poll_s)
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"{s.model_name} x{s.world}", total=s.steps, completed=start,
                            info="starting ranks")
        while proc.poll() is None:
            time.sleep(poll_s)
            recs = read_jsonl(rd.metrics)
            if recs:
                r = recs[-1]
                bar.update(task, completed=r["step"],
                           info=f"loss {r['loss']:.4f}  {r['images_per_s']:.0f} img/s")
        recs = read_jsonl(rd.metrics)
        if recs:
            bar.update(task, completed=recs[-1]["step"])


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop the launcher: SIGTERM (DeepSpeed's runner passes it on and its launch script kills
    the ranks), then SIGKILL to whatever of the process tree is left."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
        return
    except subprocess.TimeoutExpired:
        pass
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.kill()
    proc.wait()


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


def summarize(result: RunResult) -> dict[str, Any]:
    return json.loads(json.dumps(result.to_dict()))
