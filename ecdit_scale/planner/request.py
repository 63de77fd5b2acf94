"""From what a user asks ``ecdit-scale plan`` for (a card or a parameter target, a cluster by
GPUs or by nodes, pins) to the configs ``make_plan`` takes. Every option is checked here, at the
boundary, with a one-line error that names the option and what would be valid.
"""

from __future__ import annotations

from typing import Any

from .. import sizes
from ..checks import check_int, check_number
from ..config import (
    EMA,
    ClusterConfig,
    FFNConfig,
    FFNKind,
    ModelConfig,
    Optimizer,
    Precision,
    Recompute,
    TrainingConfig,
)
from ..errors import ConfigError
from ..zero import check_zero_stage
from .cards import load_card_or_name, override_config
from .deepspeed_config import warmup_floor
from .hardware import Accelerator

DEFAULT_TARGET = "97B"
MAX_NODES = 2**17
MAX_PRICE = 1e6  # USD per GPU-hour
PLAN_EMA = EMA.REPLICATED.value  # DiT keeps an fp32 EMA of the weights on every rank
MAX_DAYS = 1e6
MAX_BUDGET = 1e15  # USD


def choice(value: str | None, enum_cls: Any, option: str) -> Any:
    """``value`` as a member of ``enum_cls`` (None stays None)."""
    if value is None:
        return None
    valid = [m.value for m in enum_cls]
    if value not in valid:
        raise ConfigError(f"{option} {value!r}: choose one of {', '.join(valid)}")
    return enum_cls(value)


def with_routing(cfg: ModelConfig, routing: FFNKind) -> ModelConfig:
    """The same model with another FFN kind: dense, or the EC / TC twin at equal compute."""
    if cfg.ffn.kind is routing:
        return cfg
    if routing is FFNKind.DENSE:
        return cfg.replace(name=f"{cfg.name}-as-dense", ffn=FFNConfig())
    experts = cfg.ffn.num_experts if cfg.ffn.is_moe else sizes.experts_for_target(1e9)
    make = sizes.expert_choice if routing is FFNKind.EXPERT_CHOICE else sizes.token_choice
    suffix = "ec" if routing is FFNKind.EXPERT_CHOICE else "tc"
    return cfg.replace(name=f"{cfg.name}-as-{suffix}", ffn=make(experts))


def model_for_plan(*, model: str | None, params: str | None, active: bool,
                   routing: str | None, override: str | None = None,
                   ) -> tuple[ModelConfig, sizes.Resolved | None]:
    """A registry name or card (``model``), or the config for a parameter target (``params``,
    default 97B); with ``routing``, the same model with that FFN kind; with ``override``
    ("depth=4,ffn.num_experts=8"), that model cut down (``cards.override_config``)."""
    if model is not None and params is not None:
        raise ConfigError("give --model or --params, not both")
    if override is not None and model is None:
        raise ConfigError("--override changes a named model: give --model too "
                          "(e.g. --model ecdit-xl-8e --override depth=4)")
    kind = choice(routing, FFNKind, "--routing")
    if model is not None:
        cfg = load_card_or_name(model)
        cfg = with_routing(cfg, kind) if kind is not None else cfg
        return (override_config(cfg, override) if override is not None else cfg), None
    if params is not None and not params.strip():
        raise ConfigError("--params '': give a parameter count such as 97B, 6e9 or 450M")
    resolved = sizes.resolve(params or DEFAULT_TARGET, active=active,
                             kind=kind or FFNKind.EXPERT_CHOICE)
    return resolved.config, resolved


def cluster_for_plan(gpu: str, acc: Accelerator, *, gpus: int | None, nodes: int | None,
                     gpus_per_node: int | None, price: float) -> ClusterConfig:
    """The cluster: ``--gpus`` total (one node if it fits, else whole nodes) or ``--nodes`` x
    ``--gpus-per-node`` (default: 64 nodes of the accelerator's devices per node)."""
    price = check_number("--price", price, inclusive=True, maximum=MAX_PRICE)
    if nodes is not None:
        check_int("--nodes", nodes, maximum=MAX_NODES)
    if gpus_per_node is not None:
        check_int("--gpus-per-node", gpus_per_node, maximum=1024)
    per_node = gpus_per_node or acc.devices_per_node
    if gpus is not None:
        check_int("--gpus", gpus, maximum=MAX_NODES * per_node)
        if gpus <= per_node:
            if nodes not in (None, 1):
                raise ConfigError(f"--gpus {gpus} contradicts --nodes {nodes} x {per_node} "
                                  "per node")
            return ClusterConfig(gpu=gpu, nodes=1, gpus_per_node=gpus, price_per_gpu_hour=price)
        if gpus % per_node:
            raise ConfigError(f"--gpus {gpus} is not a multiple of {per_node} GPUs per node; "
                              f"use {gpus // per_node * per_node or per_node} or "
                              f"{(gpus // per_node + 1) * per_node}")
        if nodes is not None and nodes * per_node != gpus:
            raise ConfigError(f"--gpus {gpus} contradicts --nodes {nodes} x {per_node} per node")
        nodes = gpus // per_node
    return ClusterConfig(gpu=gpu, nodes=nodes or ClusterConfig().nodes, gpus_per_node=per_node,
                         price_per_gpu_hour=price)


def training_for_plan(*, global_batch: int, steps: int, optimizer: str,
                      precision: str = Precision.BF16.value,
                      ema: str = PLAN_EMA) -> TrainingConfig:
    """The run to plan. The paper warms up for 20,000 of 800,000 steps (2.5%); a run no longer
    than that warm-up would be all warm-up, so its warm-up is 2.5% of its steps instead, but
    never shorter than the optimizer's floor (``warmup_floor``: 1,000 steps for RMSProp, even
    where that is longer than the run)."""
    check_int("--global-batch", global_batch, maximum=2**26)
    check_int("--steps", steps, maximum=10**12)
    opt = choice(optimizer, Optimizer, "--optimizer")
    paper = TrainingConfig()
    warmup = paper.warmup_steps
    if steps <= warmup:
        warmup = max(1, round(steps * paper.warmup_steps / paper.steps), warmup_floor(opt))
    return TrainingConfig(global_batch=global_batch, steps=steps, warmup_steps=warmup,
                          optimizer=opt,
                          precision=choice(precision, Precision, "--precision"),
                          ema=choice(ema, EMA, "--ema"))


def target_for_plan(*, days: float | None, budget: float | None, gpus: int | None,
                    nodes: int | None) -> dict[str, float]:
    """``--days`` / ``--budget`` (at most one): they choose the node count, so they exclude
    ``--gpus`` and ``--nodes``."""
    if days is not None and budget is not None:
        raise ConfigError("give --days or --budget, not both")
    if days is None and budget is None:
        return {}
    option = "--days" if days is not None else "--budget"
    if gpus is not None or nodes is not None:
        raise ConfigError(f"{option} chooses the node count; drop --{'gpus' if gpus else 'nodes'}"
                          " (the table shows every size)")
    if days is not None:
        return {"days": check_number("--days", days, maximum=MAX_DAYS)}
    return {"budget": check_number("--budget", budget, maximum=MAX_BUDGET)}


def pins_for_plan(*, dp: int | None, ep: int | None, tp: int | None, zero: int | None,
                  micro_batch: int | None, recompute: str | None) -> dict[str, Any]:
    """The pinned layout fields (only those given), each checked."""
    pin: dict[str, Any] = {}
    for option, key, value in (("--dp", "dp", dp), ("--ep", "ep", ep), ("--tp", "tp", tp),
                               ("--micro-batch", "micro_batch", micro_batch)):
        if value is not None:
            check_int(option, value, maximum=2**30)
            pin[key] = value
    if zero is not None:
        pin["zero"] = check_zero_stage(zero, name="--zero")
    if recompute is not None:
        pin["recompute"] = choice(recompute, Recompute, "--recompute")
    return pin


def check_plan_options(*, top: int, sampling_steps: int, inference_devices: int) -> None:
    check_int("--top", top, maximum=10_000)
    check_int("--sampling-steps", sampling_steps, maximum=100_000)
    check_int("--inference-devices", inference_devices, maximum=1024)
