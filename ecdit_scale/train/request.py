"""What a launch asks for, checked before anything starts.

``LaunchRequest`` holds the user's options as given. ``check_request`` turns them into the
run's ``RunSettings``, whose layout and training recipe are the planner's ``ParallelLayout``
and ``TrainingConfig``: those validate their own fields, and only what is particular to a
launch (the card must train in pixel space, ranks per machine, the hostfile, expert counts,
the run directory) is checked here. A bad request costs a second and one line of error
(ConfigError).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..config import (
    EMA,
    FFNKind,
    ModelConfig,
    Optimizer,
    Precision,
    Recompute,
    Schedule,
    load_model_config,
)
from ..errors import ConfigError
from ..files import check_output_folder, read_text_file
from ..integers import divisors
from ..planner.cards import override_config
from ..planner.deepspeed_config import warmup_floor_note
from ..zero import zero_supports_moe
from .records import ResumePoint, RunDir, RunSettings
from .regional_compile import Compile
from .settings import (
    DEFAULT_LR,
    Device,
    LaunchSettings,
    TCImpl,
    check_bounds,
    check_choices,
    cli_args,
    default_warmup,
    option_of,
    recorded,
)

OPTIMIZERS = tuple(Optimizer)  # the worker builds each as a torch optimizer (engine.py)
# config fields that no one setting sets -> what sets them (to name it in an error)
DERIVED_OPTIONS = {"dp": "--nproc", "global_batch": "--micro-batch x --grad-accum"}


@dataclass(frozen=True, kw_only=True)
class LaunchRequest(LaunchSettings):
    """What the user asked for (the CLI's options, unvalidated): the declared launch settings
    (``settings.LaunchSettings``) and what the card and plan bring."""

    card: str
    plan: str | None = None  # the plan folder this request was read from (``plan_run``)
    notes: tuple[str, ...] = ()  # where the run departs from the plan, and why
    # where a sweep places this launch (``sweep_slots``; not settings: the run is the same run
    # wherever it trains): CUDA device ids on the host ("2,3"), and the host of a one-host
    # --hostfile reached through ssh (DeepSpeed --include HOST[:ids] --force_multi)
    devices: str | None = None
    host: str | None = None


@dataclass(frozen=True)
class CheckedRequest:
    cfg: ModelConfig
    settings: RunSettings
    rd: RunDir
    resume: ResumePoint | None  # where a --resume continues (None: a new run)


def resolve_card(card: str) -> ModelConfig:
    """A registry name (``sizes.get``) or a YAML card path (``config.load_model_config``)."""
    from .. import sizes

    if is_card_file(card):
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
    for i, line in enumerate(read_text_file(p, what="hostfile").splitlines(), 1):
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


def local_rank_limit(device: Device) -> tuple[int, str]:
    """The most ranks one machine can run, and why: GPUs on CUDA, CPU cores on CPU."""
    if device is Device.CUDA:
        import torch

        return torch.cuda.device_count(), "CUDA devices"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return cores, "CPU cores (one rank per core)"


def _torch_is_cpu_only() -> bool:
    """The installed torch is a CPU-only build (its version says ``+cpu``, as the CPU wheels'
    do): no CUDA device can be visible, and importing torch (1-2 s) would only confirm it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch").endswith("+cpu")
    except PackageNotFoundError:
        return False


def pick_device(device: str) -> Device:
    try:
        wanted = Device(device)
    except ValueError:
        raise ConfigError(f"--device {device!r} is not valid; choose one of "
                          f"{', '.join(d.value for d in Device)}") from None
    if wanted is Device.CPU:
        return wanted  # no need to start torch to know that
    if wanted is Device.AUTO and _torch_is_cpu_only():
        return Device.CPU
    import torch

    if wanted is Device.CUDA and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu")
    if wanted is Device.AUTO:
        return Device.CUDA if torch.cuda.is_available() else Device.CPU
    return wanted


def _choice(enum_cls, value: str, option: str, allowed=None):
    allowed = tuple(allowed or enum_cls)
    try:
        member = enum_cls(value)
    except ValueError:
        member = None
    if member not in allowed:
        raise ConfigError(f"{option} {value!r}: choose one of "
                          f"{', '.join(m.value for m in allowed)}")
    return member


def _check_card(cfg: ModelConfig, dataset: str) -> None:
    """The dataset must feed the card (pixels or latents: the dataset's own rule), through the
    text path every dataset has."""
    from ..datasets.kinds import check_dataset_fits

    check_dataset_fits(dataset, cfg)
    if cfg.conditioning.value != "text":
        raise ConfigError(f"{cfg.name}: launch trains text-conditioned cards (captions through "
                          f"the MiniLM encoder); this one is {cfg.conditioning.value}-conditioned")


PREPARED_DATASET = "prepared"  # run.json's dataset of a --data run (the folder: its data)


def is_card_file(card: str) -> bool:
    """Whether ``card`` names a YAML file (else a registry name): ``resolve_card``'s rule."""
    return card.endswith((".yaml", ".yml")) or os.sep in card or Path(card).is_file()


def data_card(req: LaunchRequest, cfg: ModelConfig) -> tuple[ModelConfig, LaunchRequest]:
    """A --data run: the card shaped by the prepared folder (a registry card takes its
    channels, size and text width; a YAML card the user wrote must match them, else one line:
    ``datasets.prepared.card_for_data``), and the request with the folder as an absolute path
    and dataset ``prepared`` (what run.json records)."""
    import dataclasses

    from ..datasets.prepared import card_for_data, open_prepared

    data = open_prepared(req.data)
    cfg = card_for_data(cfg, data, strict=is_card_file(req.card) or req.plan is not None)
    if req.data_limit is not None and req.data_limit > data.items:
        raise ConfigError(f"--limit {req.data_limit}: --data {req.data} holds {data.items} "
                          f"items; use --limit <= {data.items} or leave it out")
    return cfg, dataclasses.replace(req, data=str(data.root.resolve()),
                                    dataset=PREPARED_DATASET)


def _check_moe(cfg: ModelConfig, req: LaunchRequest, tc_impl: TCImpl) -> None:
    """What depends on the model's experts (the layout's own rules are ParallelLayout's)."""
    if tc_impl is TCImpl.DEEPSPEED and cfg.ffn.kind is not FFNKind.TOKEN_CHOICE:
        raise ConfigError(f"--tc-impl deepspeed applies to token-choice cards; {cfg.name} is "
                          f"{cfg.ffn.kind.value}")
    if not cfg.ffn.is_moe:
        if req.ep != 1:
            raise ConfigError(f"--ep {req.ep}: {cfg.name} is dense (no experts); use --ep 1")
        return
    if not zero_supports_moe(req.zero):
        raise ConfigError(f"--zero {req.zero} with MoE model {cfg.name}: DeepSpeed-MoE does not "
                          "support ZeRO-3 (it partitions parameters over the data-parallel group, "
                          "experts need the expert-data-parallel group); use --zero 0, 1 or 2")
    e = cfg.ffn.num_experts
    if isinstance(req.ep, int) and req.ep >= 1 and e % req.ep:
        raise ConfigError(f"--ep {req.ep} does not divide the {e} experts of {cfg.name}; "
                          f"choose among {', '.join(str(d) for d in divisors(e))}")
    tokens = req.micro_batch * cfg.tokens_per_image
    if isinstance(req.micro_batch, int) and tokens % cfg.routing_group_tokens:
        raise ConfigError(f"--micro-batch {req.micro_batch}: {tokens} image tokens do not split "
                          f"into routing groups of {cfg.routing_group_tokens}")


def _world(req: LaunchRequest, device: Device) -> int:
    """Machines x ranks per machine, checked against the hostfile or this machine."""
    if not req.hostfile:
        limit, what = local_rank_limit(device)
        if req.nproc > limit:
            raise ConfigError(f"--nproc {req.nproc} exceeds this machine's {limit} {what}; "
                              f"use --nproc <= {limit}, or --hostfile for several machines")
        return 1
    hosts = parse_hostfile(req.hostfile)
    fewest = min(hosts.values())
    if req.nproc > fewest:
        raise ConfigError(f"--nproc {req.nproc}: the hostfile gives as few as {fewest} slots "
                          "on a host; with --hostfile, --nproc is ranks per host")
    return len(hosts)


def _settings(req: LaunchRequest, cfg: ModelConfig, device: Device, nodes: int,
              old: RunSettings | None) -> RunSettings:
    # defaults scale with --steps; a resume (perhaps with more steps) keeps the run's own
    optimizer = _choice(Optimizer, req.optimizer, "--optimizer", OPTIMIZERS)
    warmup = (req.warmup_steps if req.warmup_steps is not None else
              old.warmup_steps if old else default_warmup(optimizer, req.steps))
    every = (req.checkpoint_every if req.checkpoint_every is not None else
             old.checkpoint_every if old else max(1, req.steps // 4))
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"--checkpoint-every {every!r}: must be an integer >= 1")
    precision, notes = run_precision(req, device)
    compile_ = run_compile(req, device, old)
    track_memory, more = run_track_memory(req, device, compile_)
    notes += more
    flat = {name: getattr(req, name) for name in recorded()}  # as asked, then as decided:
    if req.warmup_steps is None and old is None and isinstance(req.steps, int):
        why = warmup_floor_note(optimizer, warmup, req.steps)
        notes += (why,) if why else ()
    flat.update(lr=DEFAULT_LR[optimizer] if req.lr is None else req.lr,
                ep=req.ep if cfg.ffn.is_moe else 1, warmup_steps=warmup, precision=precision,
                device=device, checkpoint_every=every, track_memory=track_memory,
                compile=compile_.value, cooldown_branches=tuple(sorted(req.cooldown_branches)))
    try:
        return RunSettings.build(card=req.card, model_name=cfg.name, nodes=nodes,
                                 nproc_per_node=req.nproc, plan=req.plan,
                                 notes=tuple(req.notes) + notes, **flat)
    except ConfigError as exc:  # name the launch option, not the config field
        field_ = str(exc).split(" ", 1)[0]
        if field_ in recorded(("layout", "training")) or field_ in DERIVED_OPTIONS:
            raise ConfigError(f"{DERIVED_OPTIONS.get(field_) or option_of(field_)}: {exc}") \
                from None
        raise


def run_precision(req: LaunchRequest, device: Device) -> tuple[Precision, tuple[str, ...]]:
    """The precision the run trains in, and a note where it is not the one asked for: CPU
    ranks train in fp32 (a bf16 plan runs in fp32 there, and the record says fp32)."""
    if req.precision is None:
        return (Precision.BF16 if device is Device.CUDA else Precision.FP32), ()
    asked = _choice(Precision, req.precision, "--precision")
    if device is Device.CPU and asked is Precision.BF16:
        return Precision.FP32, ("precision: bf16 asked, fp32 used: CPU ranks train in fp32",)
    return asked, ()


def run_compile(req: LaunchRequest, device: Device, old: RunSettings | None) -> Compile:
    """--compile as given; else what the resumed run used; else block on CUDA (the compiled
    blocks launch a fraction of the kernels) and none on CPU (inductor takes most of a minute
    there to compile even a tiny model, longer than such runs train)."""
    if req.compile is not None:
        return _choice(Compile, req.compile, "--compile")
    if old is not None:
        return _choice(Compile, old.compile, "run.json's compile")
    return Compile.BLOCK if device is Device.CUDA else Compile.NONE


def run_track_memory(req: LaunchRequest, device: Device,
                     compile_: Compile) -> tuple[bool, tuple[str, ...]]:
    """CPU memory tracking, unless the blocks are compiled: its dispatch mode would make
    torch.compile run them eagerly for good (``regional_compile``); a note says so."""
    if req.track_memory and device is Device.CPU and compile_ is not Compile.NONE:
        return False, ("memory not tracked: CPU memory tracking (a dispatch mode) and "
                       "--compile block exclude each other; compile wins",)
    return req.track_memory, ()


def recompute_supported() -> bool:
    """Whether this build's model takes a recompute policy (``build_model(cfg, recompute=)``)."""
    import inspect

    from ..model import build_model

    return "recompute" in inspect.signature(build_model).parameters


def _check_recompute(req: LaunchRequest) -> None:
    policy = _choice(Recompute, req.recompute, "--recompute")
    if policy is not Recompute.NONE and not recompute_supported():
        raise ConfigError(f"--recompute {policy.value}: not implemented in this build (the model "
                          "has no activation checkpointing); use --recompute none")


def _check_multinode(req: LaunchRequest) -> None:
    if req.node_rank is None:
        return
    if not req.hostfile:
        raise ConfigError(f"--node-rank {req.node_rank}: needs a hostfile of several nodes "
                          "(--hostfile, or a plan of several nodes)")
    hosts = parse_hostfile(req.hostfile)
    if isinstance(req.node_rank, bool) or not 0 <= req.node_rank < len(hosts):
        raise ConfigError(f"--node-rank {req.node_rank}: the hostfile {req.hostfile} has "
                          f"{len(hosts)} nodes; choose 0..{len(hosts) - 1}")
    if not req.master_addr:
        raise ConfigError("--node-rank needs --master-addr (MASTER_ADDR): the address of node "
                          "0, the same on every node")
    if req.node_rank > 0 and req.resume:
        raise ConfigError("--resume is decided on node 0; start other nodes without --resume")


ENGINE_ENV = "ECDIT_SCALE_ENGINE"  # "deepspeed-defaults": the engine before the cuts (A/B)


def engine_baseline() -> bool:
    """Whether this run asks (``$ECDIT_SCALE_ENGINE=deepspeed-defaults``, benchmarks only) for
    DeepSpeed's defaults: its bf16 overflow check, contiguous gradients and overlap at one rank,
    and its per-tensor clipping norm (``train.engine.setup``). Unset or "lean": the trainer's."""
    value = os.environ.get(ENGINE_ENV, "lean")
    if value not in ("lean", "deepspeed-defaults"):
        raise ConfigError(f"${ENGINE_ENV} = {value!r}: use lean (the default) or "
                          "deepspeed-defaults")
    return value == "deepspeed-defaults"


def check_request(req: LaunchRequest) -> CheckedRequest:
    """Validate everything a launch needs; raise ConfigError with one actionable line."""
    engine_baseline()  # a bad $ECDIT_SCALE_ENGINE is one line here, not a rank's traceback
    cfg = resolve_card(req.card)
    if req.override is not None:
        cfg = override_config(cfg, req.override)
    from ..datasets.kinds import DATASETS

    if req.data is not None:  # a prepared folder: the card takes the data's input shape
        cfg, req = data_card(req, cfg)
    elif req.dataset not in DATASETS:
        raise ConfigError(f"--dataset {req.dataset!r} is not valid; choose one of "
                          f"{', '.join(DATASETS)}")
    else:
        _check_card(cfg, req.dataset)
    check_bounds(req)  # integers only a launch has (the layout and training configs check theirs)
    _choice(Optimizer, req.optimizer, "--optimizer", OPTIMIZERS)
    _choice(EMA, req.ema, "--ema")
    _choice(Schedule, req.schedule, "--schedule")
    check_choices(req)  # any other choice setting
    _check_branches(req)
    _check_recompute(req)
    _check_multinode(req)
    tc_impl = _choice(TCImpl, req.tc_impl, "--tc-impl")
    if req.compile is not None:
        _choice(Compile, req.compile, "--compile")
    _check_moe(cfg, req, tc_impl)
    device = pick_device(req.device)
    nodes = _world(req, device)
    from ..datasets.kinds import STREAMS

    if req.data_limit is not None and req.dataset in STREAMS and req.data is None:
        raise ConfigError(f"--limit {req.data_limit}: dataset {req.dataset!r} is drawn fresh for "
                          "every position and has no size; leave --limit out")
    if req.data_limit is not None and req.data_limit < 2 * req.holdout + 1:
        raise ConfigError(f"--limit {req.data_limit}: keep more than twice the {req.holdout} "
                          "held-out samples")

    if req.out:
        check_output_folder(req.out, "--out")
    given = RunDir(req.out) if req.out else None
    old = given.settings() if req.resume and given and given.exists() else None
    settings = _settings(req, cfg, device, nodes, old)
    rd = given or RunDir(default_run_dir(settings))
    if not req.resume:
        if rd.exists() or rd.metrics.exists():
            raise ConfigError(f"{rd.path} already holds a run; pass --resume to continue it or "
                              "choose another --out")
        return CheckedRequest(cfg, settings, rd, None)
    if not rd.exists():
        raise ConfigError(f"--resume: {rd.path} holds no run to resume (no run.json)")
    pid = rd.running_pid()
    if pid is not None:
        raise ConfigError(f"--resume: {rd.path} is still running (rank 0 is pid {pid}); "
                          "stop it first")
    old_flat, new_flat = rd.settings().to_dict(), settings.to_dict()
    for name in sorted(RunSettings.FIXED, key=lambda n: n != "data"):  # --data first: it
        if old_flat[name] != new_flat[name]:  # decides the dataset and the card's shape
            raise ConfigError(f"--resume: {name} was {old_flat[name]!r} in {rd.path}, now "
                              f"{new_flat[name]!r}; resume with the original settings")
    point = rd.resume_point()
    if settings.schedule is Schedule.WSD and old_flat["steps"] != settings.steps:
        raise ConfigError(f"--resume --steps {settings.steps}: {rd.path} is a wsd run of "
                          f"{old_flat['steps']} steps, whose cooldown is placed by its length; "
                          f"resume with --steps {old_flat['steps']}")
    if point.step >= settings.steps:
        raise ConfigError(f"--resume: {rd.path} already finished {point.step} steps; "
                          f"raise --steps above {point.step} to train further")
    return CheckedRequest(cfg, settings, rd, point)


def _check_branches(req: LaunchRequest) -> None:
    """--cooldown-branches: distinct run lengths, each shorter than --steps, on a wsd run."""
    b = req.cooldown_branches
    if not b:
        return
    shown = ",".join(map(str, b))
    if req.schedule != Schedule.WSD.value:
        raise ConfigError(f"--cooldown-branches {shown}: branches anneal off a wsd run's stable "
                          f"phase; add --schedule wsd (the schedule is {req.schedule!r})")
    if any(isinstance(n, bool) or not isinstance(n, int) for n in b) or len(set(b)) != len(b):
        raise ConfigError(f"--cooldown-branches {shown}: distinct whole numbers of steps")
    bad = [n for n in b if not 2 <= n < req.steps]
    if bad:
        raise ConfigError(f"--cooldown-branches {shown}: {bad[0]} is not in 2..{req.steps - 1} "
                          f"(each branch is a shorter run than the --steps {req.steps} one)")


def default_run_dir(s: RunSettings) -> Path:
    return Path("runs") / f"{s.model_name}-w{s.world}-ep{s.ep}-z{s.zero}-{s.dataset}-s{s.seed}"


def resume_command(req: LaunchRequest, run_dir: str | os.PathLike) -> str:
    """The exact command that continues this launch: its options, --out and --resume."""
    if req.plan is not None:  # the plan decides the rest
        args = ["bash", str(Path(req.plan) / "launch.sh"), "--steps", str(req.steps)]
        if any(n.startswith("--local") for n in req.notes):
            args.append("--local")
        return shlex.join(args + ["--out", str(run_dir), "--resume"])
    args = ["ecdit-scale", "launch", req.card, "--nproc", str(req.nproc), "--steps",
            str(req.steps)]  # always; the other settings a resume repeats where not default
    args += cli_args(req, only=lambda s: s.repeat and s.option not in ("--nproc", "--steps"))
    return shlex.join(args + ["--out", str(run_dir), "--resume"])
