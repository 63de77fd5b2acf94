"""Every launch setting, declared once: its CLI option, help, default, choices or bounds, and
what it is to a run (recorded in run.json, fixed across a resume, decided by a plan).

``LaunchSettings`` is the one declaration. From it come: the typer options of ``launch``
(``cli.train``), the option an error names (``option_of``), the flat keys of run.json and the
settings a resume must keep (``records.RunSettings``), the command that resumes a run
(``request.resume_command``) and what a ``--plan`` run refuses on the command line. Adding a
setting is one ``setting(...)`` field here plus the code that uses it.

What a setting is to the run (``record``):

- ``"run"``: stored in run.json under its own name, a field of ``RunSettings``;
- ``"layout"`` / ``"training"``: a field of the planner's ``ParallelLayout`` /
  ``TrainingConfig`` (which validate it); run.json stores it flat under its own name;
- ``None``: a property of this launch only (where to write, which node this is).
"""

from __future__ import annotations

import enum
import math
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from ..config import DIT_EMA_DECAY, EMA, Optimizer, Precision, Recompute, Schedule
from ..planner.deepspeed_config import warmup_floor
from .regional_compile import Compile


class Device(str, enum.Enum):
    AUTO = "auto"  # cuda when a CUDA device is visible, else cpu (resolved before a run starts)
    CPU = "cpu"
    CUDA = "cuda"


class TCImpl(str, enum.Enum):
    """Token choice in a launched run: our ``TokenChoiceMoE``, or DeepSpeed's own ``MoE``
    layer with its ``TopKGate`` (``expert_parallel.parallelize``)."""

    ECDIT = "ecdit"
    DEEPSPEED = "deepspeed"


@dataclass(frozen=True)
class Setting:
    """What ``setting()`` attaches to a field (``dataclasses.field(metadata=...)``)."""

    option: str  # the CLI option ("--warmup"); booleans get "--x/--no-x" where on by default
    help: str
    choices: tuple[str, ...] = ()  # allowed values (listed in --help, checked by the request)
    lo: int | None = None  # integer bounds, checked by ``check_bounds`` (None: none)
    hi: int | None = None
    record: str | None = None  # "run" | "layout" | "training" | None (see the module doc)
    fixed: bool = False  # a resume must keep it (``RunSettings.FIXED``)
    repeat: bool = False  # the resume command repeats it (where not the default)
    plan: bool = False  # a --plan run takes it from the plan (refused on the command line)
    optional: bool = False  # run.json may lack it (newer than the first runs)
    absent: tuple = ()  # (value,): what a run.json without it ran with (default: the default)
    enum: type[enum.Enum] | None = None  # RunSettings holds the value as this enum
    parse: Callable[[str], Any] | None = None  # CLI text -> value (the option then takes text)
    show: Callable[[Any], str] = str  # value -> CLI text (the resume command)
    cli: bool = True  # an option of ``launch`` (False: set by code, e.g. the plan's runs)


def setting(default: Any, option: str, help: str, *, choices: Any = (), **meta: Any) -> Field:
    """A dataclass field carrying its ``Setting``; ``choices`` may be an enum class."""
    if isinstance(choices, type) and issubclass(choices, enum.Enum):
        choices = tuple(m.value for m in choices)
    meta.setdefault("repeat", meta.get("fixed", False))
    meta.setdefault("absent", (default,))
    s = Setting(option=option, help=help, choices=tuple(choices), **meta)
    return field(default=default, metadata={"setting": s})


def _branch_lengths(text: str) -> tuple[int, ...]:
    """--cooldown-branches 80,160 -> (80, 160); one line naming the bad part otherwise."""
    from ..errors import ConfigError

    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise ConfigError(f"--cooldown-branches {text!r}: comma-separated step counts, e.g. 80,160")
    return tuple(int(p) for p in parts)


def _joined(value: Any) -> str:
    return ",".join(map(str, value))


# What depends on the optimizer, declared once. The peak learning rate where --lr is not
# given: RMSProp's is the paper's (EC-DiT: RMSProp with momentum, lr 1e-4); AdamW's and SGD's
# are this tool's small-model defaults. The warm-up floor is the planner's (RMSProp is not
# bias-corrected: ``planner.deepspeed_config.warmup_floor``), which plans apply too.
DEFAULT_LR = {Optimizer.ADAMW: 1e-3, Optimizer.RMSPROP: 1e-4, Optimizer.SGD: 1e-3}
WARMUP_FLOOR = {o: warmup_floor(o) for o in Optimizer}


def _per_optimizer(table: dict) -> str:
    return ", ".join(f"{o.value} {v:g}" for o, v in table.items())


def default_warmup(optimizer: Optimizer | str, steps: int) -> int:
    """steps/10, at most 100, and no shorter than the optimizer's floor (a short RMSProp run
    then ends before the peak lr, as a plan's short trial does)."""
    return max(min(100, steps // 10), WARMUP_FLOOR[Optimizer(optimizer)])


# A loss 10x the run's first is a diverged run: an initialised EC-DiT (adaLN-zero) predicts a
# velocity near 0, whose flow loss E|eps - x|^2 is the most a model that learned nothing pays;
# healthy runs in bench/results stay within 1.21x of their first loss, and the diverged ones
# there (RMSProp without its warm-up floor, H200 plan runs) pass 10x by their 6th step.
DIVERGENCE_FACTOR = 10.0
INT_MAX = 2**31 - 1
MAX_EVAL_TIMESTEPS = 64


@dataclass(frozen=True, kw_only=True)
class LaunchSettings:
    """The settings of one launch, as the user gives them (``request.check_request`` decides
    the rest: defaults that depend on the device or the resumed run, and their checks)."""

    # ----- layout and batch -----
    nproc: int = setting(1, "--nproc", "Ranks (per host with --hostfile). CPU: at most the "
                         "cores.", lo=1, fixed=True, plan=True)
    ep: int = setting(1, "--ep", "Expert-parallel size: divides the experts and the world.",
                      record="layout", fixed=True, plan=True)
    zero: int = setting(1, "--zero", "ZeRO stage 0, 1 or 2 (3: dense models only).",
                        record="layout", fixed=True, plan=True)
    micro_batch: int = setting(8, "--micro-batch", "Images per rank per micro-step.",
                               record="layout", fixed=True, plan=True)
    grad_accum: int = setting(1, "--grad-accum", "Micro-steps per optimizer step.", lo=1,
                              record="run", fixed=True, plan=True)
    recompute: str = setting("none", "--recompute", "Activation recompute.", choices=Recompute,
                             record="layout", fixed=True, plan=True, optional=True)
    hostfile: str | None = setting(None, "--hostfile", "DeepSpeed hostfile for several "
                                   "machines.", repeat=True, plan=True)
    override: str | None = setting(None, "--override", "Cut the card down, e.g. depth=4,"
                                   "ffn.num_experts=8 (the paper's cards on one GPU).",
                                   repeat=True, plan=True)
    # ----- the training recipe -----
    steps: int = setting(100, "--steps", "Optimizer steps (with --plan the plan's by default, "
                         "its warm-up scaled to fewer).", record="training", repeat=True)
    lr: float | None = setting(None, "--lr", "Peak learning rate (default per --optimizer: "
                               f"{_per_optimizer(DEFAULT_LR)}).", record="training",
                               fixed=True, plan=True)
    warmup_steps: int | None = setting(None, "--warmup", "Warm-up steps (default steps/10, at "
                                       "most 100, and at least the optimizer's floor: "
                                       f"{_per_optimizer(WARMUP_FLOOR)}).", record="training",
                                       fixed=True, plan=True)
    optimizer: str = setting("adamw", "--optimizer", "Torch optimizer; rmsprop is with "
                             "momentum (the paper).", choices=Optimizer, record="training",
                             fixed=True, plan=True)
    precision: str | None = setting(None, "--precision", "Default bf16 on CUDA; CPU trains in "
                                    "fp32.", choices=Precision, record="training", fixed=True,
                                    plan=True)
    schedule: str = setting("constant", "--schedule", "Learning rate after warm-up: constant "
                            "(the paper's) or wsd (stable, then linear decay to 0).",
                            choices=Schedule, record="training", fixed=True, plan=True,
                            optional=True)
    cooldown_fraction: float = setting(0.2, "--cooldown", "wsd: the share of --steps spent "
                                       "decaying.", record="training", fixed=True, plan=True,
                                       optional=True)
    cooldown_branches: tuple[int, ...] = setting(
        (), "--cooldown-branches", "wsd: also the runs of these lengths (steps, e.g. 80,160), "
        "each annealed off this run's stable phase and scored on held-out data "
        "(branches/b<N>.jsonl).", record="run", fixed=True, optional=True,
        parse=_branch_lengths, show=_joined)
    ema: str = setting("none", "--ema", "EMA of the weights (fp32).", choices=EMA,
                       record="training", fixed=True, plan=True, optional=True)
    ema_decay: float = setting(DIT_EMA_DECAY, "--ema-decay", "EMA decay per step (DiT's "
                               "0.9999).", record="training", fixed=True, plan=True,
                               optional=True)
    divergence_factor: float = setting(
        DIVERGENCE_FACTOR, "--divergence-factor", "Stop the run (exit 3, the last checkpoint "
        "kept) when a step's loss is not finite or above this many times the run's first "
        "loss (0: only a non-finite loss).", lo=0, record="run", repeat=True, optional=True)
    seed: int = setting(0, "--seed", "Seed of the weights, the data order and the noise.",
                        lo=0, hi=INT_MAX, record="run", fixed=True)
    # ----- data and held-out scoring -----
    dataset: str = setting("emoji", "--dataset", "emoji (OpenMoji), shapes (GenEval-style, a "
                           "fixed set), shapes-stream (fresh scenes, never repeated) or latents "
                           "(the paper's latent cards).", record="run", fixed=True)
    data: str | None = setting(None, "--data", "A folder written by `ecdit-scale data "
                               "prepare`: train on it (the card's input channels and size "
                               "follow the data; a YAML card must match them). Replaces "
                               "--dataset.", record="run", fixed=True, optional=True)
    data_limit: int | None = setting(None, "--limit", "Use only the first N samples.",
                                     record="run", fixed=True)
    holdout: int = setting(64, "--holdout", "Samples kept out of training (held-out loss, "
                           "`adaptive`).", lo=0, hi=INT_MAX, record="run", fixed=True)
    eval_every: int = setting(0, "--eval-every", "Held-out flow loss at fixed noise every K "
                              "steps (0: at the last step only).", lo=0, hi=INT_MAX,
                              record="run", repeat=True, optional=True)
    eval_timesteps: int = setting(8, "--eval-timesteps", "Noise levels of the held-out loss: "
                                  "t = (i + 0.5) / N.", lo=1, hi=MAX_EVAL_TIMESTEPS,
                                  record="run", fixed=True, optional=True)
    # ----- checkpoints and measurement -----
    checkpoint_every: int | None = setting(None, "--checkpoint-every", "Save every K steps "
                                           "(default steps/4) and at the end.", record="run",
                                           repeat=True)
    checkpoints: bool = setting(True, "--checkpoints", "Save checkpoints (--no-checkpoints: "
                                "none, e.g. a benchmark; nothing to resume from).",
                                record="run", repeat=True, optional=True)
    keep_checkpoints: int = setting(2, "--keep-checkpoints", "Complete checkpoints kept (the "
                                    "newest).", lo=1, record="run")
    track_memory: bool = setting(True, "--track-memory", "CPU: count live tensor bytes "
                                 "(--no-track-memory: skip it).", record="run", repeat=True)
    # ----- where and how it runs -----
    device: str = setting("auto", "--device", "Where the ranks train.", choices=Device,
                          enum=Device, record="run", fixed=True)
    tc_impl: str = setting("ecdit", "--tc-impl", "Token choice: ecdit (our TokenChoiceMoE) or "
                           "deepspeed (DeepSpeed's MoE, TopKGate k=2).", choices=TCImpl,
                           enum=TCImpl, record="run", fixed=True, optional=True)
    compile: str | None = setting(None, "--compile", "torch.compile each transformer block "
                                  "(default block on CUDA, none on CPU).", choices=Compile,
                                  record="run", repeat=True, optional=True,
                                  absent=("none",))
    out: str | None = setting(None, "--out", "Run directory (default runs/<model>-w<world>-"
                              "...).")
    resume: bool = setting(False, "--resume", "Continue the run in --out from its last "
                           "checkpoint.")
    node_rank: int | None = setting(None, "--node-rank", "Multi-node without ssh: this node's "
                                    "rank in the hostfile (DeepSpeed --no_ssh).")
    master_addr: str | None = setting(None, "--master-addr", "Multi-node without ssh: node 0's "
                                      "address.")
    master_port: int | None = setting(None, "--master-port", "Rendezvous port (default: free "
                                      "port; 29500 with --node-rank).")


def declared(cls: type = LaunchSettings) -> Iterator[tuple[Field, Setting]]:
    """(field, its Setting) of every declared setting of ``cls``, in declaration order."""
    for f in fields(cls):
        if "setting" in f.metadata:
            yield f, f.metadata["setting"]


def setting_of(name: str) -> Setting:
    return next(s for f, s in declared() if f.name == name)


def option_of(name: str) -> str:
    """The CLI option of setting ``name`` (a field of LaunchSettings or of the configs)."""
    return {f.name: s.option for f, s in declared()}.get(name, f"--{name.replace('_', '-')}")


def recorded(where: str | tuple[str, ...] = ("run", "layout", "training")) -> tuple[str, ...]:
    """The settings stored in run.json (``where``: which records)."""
    where = (where,) if isinstance(where, str) else where
    return tuple(f.name for f, s in declared() if s.record in where)


def field_types(cls: type = LaunchSettings) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def default_of(f: Field) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


def check_bounds(values: Any) -> None:
    """Integer settings within their declared bounds (ConfigError naming the option)."""
    from ..errors import ConfigError

    for f, s in declared():
        if s.lo is None and s.hi is None:
            continue
        v = getattr(values, f.name)
        number = isinstance(default_of(f), float)  # a float setting takes any finite number
        kinds = (int, float) if number else int
        ok = not isinstance(v, bool) and isinstance(v, kinds) and math.isfinite(v) \
            and (s.lo is None or v >= s.lo) and (s.hi is None or v <= s.hi)
        if not ok:
            want = f">= {s.lo}" if s.hi is None else f"in {s.lo}..{s.hi}"
            what = "a number" if number else "an integer"
            raise ConfigError(f"{s.option} = {v!r}: must be {what} {want}")


def check_choices(values: Any) -> None:
    """Choice settings among their declared values (ConfigError naming the option and them)."""
    from ..errors import ConfigError

    for f, s in declared():
        v = getattr(values, f.name)
        if s.choices and v is not None and getattr(v, "value", v) not in s.choices:
            raise ConfigError(f"{s.option} {v!r}: choose one of {', '.join(s.choices)}")


def cli_args(values: Any, *, only: Callable[[Setting], bool]) -> list[str]:
    """The options that give ``values``' settings (those ``only`` accepts) where they differ
    from the declared default: ["--lr", "0.002", "--no-track-memory", ...]."""
    out: list[str] = []
    for f, s in declared(type(values)):
        v = getattr(values, f.name)
        if not only(s) or v == default_of(f):
            continue
        if isinstance(v, bool):
            out.append(s.option if v else f"--no-{s.option.removeprefix('--')}")
        else:
            out += [s.option, s.show(v)]
    return out
