"""What a rank sets up before its first step: process groups, the expert-parallel model, the
torch optimizer, the DeepSpeed engine, and its share of the data.

The model is built from ``seed`` on every rank, so every rank starts from the same weights;
``expert_parallel.parallelize`` then makes it expert-parallel.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..config import ModelConfig, Optimizer, Recompute, Schedule
from ..model import build_model
from ..planner.deepspeed_config import ADAM_BETAS, MOMENTUM, RMSPROP_ALPHA, deepspeed_defaults
from ..planner.placement import DS_CONFIG_KEY, Placement
from .cpu_allocator import keep_large_allocations
from .ema import make_ema
from .expert_parallel import (
    create_groups,
    is_expert_param,
    parallelize,
    param_counts,
    single_process,
)
from .grad_norm import use_foreach_grad_norm
from .records import Device, RunDir, RunSettings, write_json
from .regional_compile import compile_blocks
from .request import engine_baseline
from .run_data import load_run_data  # noqa: F401 (the worker's; no DeepSpeed in it)


def step_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


def lr_at(s: RunSettings, step: int) -> float:
    """Linear warm-up over ``warmup_steps`` updates, then constant (the paper's schedule); or,
    with ``schedule: wsd``, constant until the last c = ``ceil(cooldown_fraction x steps)``
    updates, which decay linearly towards 0 (lr x c/(c+1), ..., lr x 1/(c+1)): a run of K steps
    ends annealed, so its final loss is the loss of a budget of K steps (Hagele et al. 2024,
    "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations")."""
    factor = 1.0 if s.warmup_steps <= 0 else min(1.0, step / s.warmup_steps)
    if s.schedule is Schedule.WSD:
        cooldown = s.cooldown_steps()
        factor = min(factor, (s.steps - step + 1) / (cooldown + 1))
    return s.lr * max(0.0, factor)


OPTIMIZER_CLASSES = {Optimizer.ADAMW: torch.optim.AdamW, Optimizer.RMSPROP: torch.optim.RMSprop,
                     Optimizer.SGD: torch.optim.SGD}


def optimizer_kernels(cls: type, device: Device) -> dict[str, bool]:
    """How a torch optimizer updates its tensors, without a JIT build: ``fused`` (one CUDA
    kernel for all of them) where the class has it and the run is on CUDA, else ``foreach``
    (a few multi-tensor kernels instead of several per tensor). Under ZeRO the optimizer sees
    DeepSpeed's few flat partitions, elsewhere every parameter: one kernel per tensor per
    update term costs launches, not FLOPs."""
    import inspect

    accepted = inspect.signature(cls).parameters
    if device is Device.CUDA and "fused" in accepted:
        return {"fused": True}
    return {"foreach": True} if "foreach" in accepted else {}


def optimizer_impl(optimizer: torch.optim.Optimizer) -> str:
    """fused | foreach | for-loop: how ``optimizer`` (or the torch optimizer DeepSpeed wraps)
    runs its update, as the run records it."""
    inner = getattr(optimizer, "optimizer", optimizer)
    defaults = getattr(inner, "defaults", {})
    return "fused" if defaults.get("fused") else "foreach" if defaults.get("foreach") \
        else "for-loop"


def build_optimizer(model: nn.Module, s: RunSettings) -> torch.optim.Optimizer:
    """A plain torch optimizer (no JIT-compiled DeepSpeed op) over DeepSpeed-MoE param groups:
    expert params get their own group per expert group name, which DeepSpeed's ZeRO optimizer
    partitions over the expert-data-parallel group. Fused on CUDA, foreach elsewhere
    (``optimizer_kernels``)."""
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

    groups = split_params_into_different_moe_groups_for_optimizer(
        {"params": [p for p in model.parameters() if p.requires_grad], "name": "shared",
         "lr": s.lr, "weight_decay": 0.0})
    groups = [g for g in groups if g["params"]]
    return torch_optimizer(groups, s.optimizer, lr=s.lr, device=s.device)


def torch_optimizer(params: Any, optimizer: Optimizer, *, lr: float,
                    device: Device) -> torch.optim.Optimizer:
    """The torch optimizer the trainer steps with: its class, hyperparameters and kernels
    (``optimizer_kernels``); ``profile`` times the same object."""
    cls = OPTIMIZER_CLASSES[Optimizer(optimizer)]
    kernels = optimizer_kernels(cls, device)
    if optimizer is Optimizer.RMSPROP:  # the paper: RMSProp with momentum
        return cls(params, lr=lr, alpha=RMSPROP_ALPHA, eps=1e-8, momentum=MOMENTUM, **kernels)
    if optimizer is Optimizer.SGD:
        return cls(params, lr=lr, momentum=MOMENTUM, **kernels)
    return cls(params, lr=lr, betas=ADAM_BETAS, eps=1e-8, weight_decay=0.0, **kernels)


def build_parallel_model(cfg: ModelConfig, s: RunSettings, ep,
                         device: torch.device | None = None) -> nn.Module:
    """The single-device model, identical on every rank (same seed), made expert-parallel,
    its blocks compiled where the run asks (``regional_compile``). Built on ``device``: a
    GPU initialises a billion parameters in well under a second, one CPU thread per rank
    takes ~10 s (and the host memory) before DeepSpeed would move them.
    A recompute policy other than none goes to the model (``build_model(cfg, recompute=)``);
    ``request.check_request`` refuses it where this build's model has none."""
    torch.manual_seed(s.seed)
    extra = {} if s.recompute is Recompute.NONE else {"recompute": s.recompute}
    with torch.device(device or "cpu"):
        model = parallelize(build_model(cfg, device=device or "cpu", **extra), cfg, ep,
                            tc_impl=s.tc_impl)
    compile_blocks(model, s.compile)  # regional torch.compile, if the run asks for it
    return model


@dataclasses.dataclass
class Rank:
    """This process's part of the run: the DeepSpeed engine and where it sits."""

    rd: RunDir
    s: RunSettings
    cfg: ModelConfig
    engine: Any
    ep: Any  # expert_parallel.ExpertParallel
    counts: dict[str, int]
    device: torch.device
    rank: int
    world: int
    dp_rank: int
    ema: Any = None  # ema.WeightEMA, or None (training.ema: none)
    startup_s: dict[str, float] = dataclasses.field(default_factory=dict)  # setup, by phase
    phases: Any = None  # peak_memory.PhasePeaks: memory by phase of the step (the worker's)
    engine_variant: str = "lean"  # or "deepspeed-defaults" ($ECDIT_SCALE_ENGINE, A/B only)
    allocator: str = "device's"  # CPU: what cpu_allocator set for host tensors

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


class PhaseClock:
    """Seconds per start-up phase (``mark(name)`` ends the phase begun at the last mark), and
    the interpreter's start until the clock was made (imports: torch, DeepSpeed, the project)."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        try:
            import psutil  # a DeepSpeed requirement

            self.phases["python_start"] = max(0.0, time.time()
                                              - psutil.Process(os.getpid()).create_time())
        except (ImportError, OSError):
            pass
        self._t = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = now - self._t
        self._t = now


def setup(rd: RunDir) -> Rank:
    """Process group, expert-parallel groups, model, optimizer, DeepSpeed engine."""
    import deepspeed
    import deepspeed.ops
    from deepspeed.utils import groups

    clock = PhaseClock()
    s, cfg = rd.settings(), rd.model_config()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    allocator = "CUDA caching allocator"
    if s.device is Device.CUDA:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        allocator = keep_large_allocations()  # before the first large tensor
        # DeepSpeed would JIT-compile its shared-memory all-reduce (minutes); gloo does it
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if s.device is Device.CUDA else "gloo")
    # the rank order the plan chose, as ds_config.json tells DeepSpeed's engine
    placement = (Placement.DATA_BEFORE_EXPERT
                 if json.loads(rd.ds_config.read_text()).get(DS_CONFIG_KEY)
                 else Placement.EXPERT_BEFORE_DATA)
    ep = create_groups(s.ep, placement) if cfg.ffn.is_moe else single_process()
    clock.mark("process_groups")
    model = build_parallel_model(cfg, s, ep, device=device)
    counts = param_counts(model, ep)
    clock.mark("model")
    ds_config, baseline = json.loads(rd.ds_config.read_text()), engine_baseline()
    if baseline:  # a benchmark's A/B point: the engine as it was, DeepSpeed's defaults
        ds_config = deepspeed_defaults(ds_config)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, s),
                                           config=ds_config)
    if not baseline:
        use_foreach_grad_norm(engine.optimizer)  # ZeRO-1/2: the clipping norm in few kernels
    elif dist.get_rank() == 0:  # the run records the config it ran (validate prices buckets)
        write_json(rd.ds_config, ds_config)
    clock.mark("deepspeed_engine")
    dp_rank = groups._get_data_parallel_rank()
    ema = make_ema(engine.module, mode=s.ema, decay=s.ema_decay, dp_rank=dp_rank,
                   dp_size=groups._get_data_parallel_world_size(),
                   expert_dp_rank=(groups._get_expert_data_parallel_rank(ep.group_name)
                                   if cfg.ffn.is_moe else 0),
                   expert_dp_size=ep.expert_dp_size if cfg.ffn.is_moe else 1,
                   is_expert=is_expert_param)
    clock.mark("ema")
    return Rank(rd=rd, s=s, cfg=cfg, engine=engine, ep=ep, counts=counts, device=device,
                rank=dist.get_rank(), world=dist.get_world_size(), dp_rank=dp_rank, ema=ema,
                startup_s=clock.phases,
                engine_variant="deepspeed-defaults" if baseline else "lean", allocator=allocator)
