"""The DeepSpeed JSON config of a layout, from plain arguments (the launcher uses it too).

Key names are those of DeepSpeed 0.19.8 (``deepspeed/runtime/constants.py``,
``deepspeed/runtime/zero/config.py``, ``deepspeed/runtime/lr_schedules.py``); the tests parse
the result with ``deepspeed.runtime.config.DeepSpeedConfig``. No torch, no deepspeed import.

- ``train_batch_size`` = micro_batch x gradient_accumulation_steps x data-parallel size:
  DeepSpeed checks exactly this product (its world size is the data-parallel size).
- ``optimizer``: omitted when the caller builds a torch optimizer itself (``client_optimizer``:
  avoids DeepSpeed's JIT-compiled fused optimizers on CPU); otherwise a torch optimizer by
  name (DeepSpeed falls back to ``getattr(torch.optim, type)`` for names it does not own:
  "RMSprop", "SGD"), and "AdamW" with ``torch_adam`` so that no fused op is compiled.
- ZeRO with an optimizer DeepSpeed has not tested (RMSprop, SGD, or any client optimizer)
  needs ``zero_allow_untested_optimizer``.
- ``scheduler``: WarmupLR, linear warm-up from 0 to ``lr`` over ``warmup_steps``, then flat
  (omitted with ``scheduler=False`` when the caller sets the learning rate each step).
  ``warmup_num_steps`` is the warm-up as given: ``ecdit_scale.train`` scales a plan's warm-up
  to a shorter run, but not below ``warmup_floor`` (RMSProp: 1,000 steps, even where the run
  is shorter and so ends before the peak lr).
- Per-gradient work (``bench/engine_ops.py`` counts it op by op): DeepSpeed's ZeRO-1/2
  optimizer by default runs ~17 ops per parameter tensor per step outside the model in bf16
  (ecdit-xl: 631 tensors, ~10,000 kernel launches at ~21 us each on an H200). Two settings
  remove most of them without changing what is computed:
  ``bf16.check_grad_overflow: false`` drops ``has_overflow_partitioned_grads_serial`` (13 ops
  per gradient: amax, amin, two isfinite, ...); bf16 has fp32's exponent range and no loss
  scale, and the fp32 path never ran the check (a non-finite gradient now reaches the
  weights, as in fp32, instead of skipping the step). With one data-parallel rank no gradient
  is communicated: ``overlap_comm`` off, and ``contiguous_gradients`` off for dense models
  (``zero_section``).
"""

from __future__ import annotations

from typing import Any

from ..config import Optimizer, Precision
from ..errors import ConfigError
from ..zero import check_zero_stage
from .buckets import ZERO_BUCKET_ELEMENTS
from .placement import DS_CONFIG_KEY

RMSPROP_ALPHA = 0.999  # smoothing of the squared-gradient average (as ecdit_scale.train.worker)
MOMENTUM = 0.9  # RMSProp / SGD momentum (the paper: "RMSProp with momentum")
ADAM_BETAS = (0.9, 0.999)


def warmup_floor(optimizer: Optimizer | str) -> int:
    """The shortest linear warm-up that keeps an optimizer's first steps no larger than its
    later ones. torch's RMSprop does not bias-correct its squared-gradient average (started at
    0, v_t = (1 - a) sum a^(t-i) g_i^2), so step t divides by sqrt(1 - a^t) too little: 31.6x
    too large a step at t = 1 with a = 0.999. A warm-up over W >= 1/(1 - a) steps keeps
    lr_t / sqrt(1 - a^t) <= 1.26 lr (its maximum, at t = W); the paper's 20,000 steps do. A
    20-step trial of a plan warmed up over 1 step diverged on an H200 (loss 2.0 -> 1,631,
    bench/results/h200-2026-11-26/plans). AdamW corrects its moments and SGD keeps none: 0."""
    if Optimizer(optimizer) is Optimizer.RMSPROP:
        return round(1 / (1 - RMSPROP_ALPHA))
    return 0


def warmup_floor_note(optimizer: Optimizer | str, warmup_steps: int, steps: int) -> str | None:
    """Why a warm-up stands at the floor (None when it does not)."""
    floor = warmup_floor(optimizer)
    if not floor or warmup_steps != floor:
        return None
    tail = (f"; this {steps:,}-step run ends at {steps / floor:.0%} of the peak lr"
            if steps < floor else "")
    return (f"warm-up {floor:,} steps, no shorter: RMSProp's squared-gradient average "
            f"(alpha {RMSPROP_ALPHA}) is not bias-corrected, and a shorter warm-up makes its "
            f"first steps up to {1 / (1 - RMSPROP_ALPHA) ** 0.5:.1f}x too large{tail}")


def optimizer_section(optimizer: Optimizer | str, *, lr: float, weight_decay: float = 0.0,
                      eps: float = 1e-8) -> dict[str, Any]:
    optimizer = Optimizer(optimizer)
    if optimizer is Optimizer.ADAMW:
        return {"type": "AdamW", "params": {"lr": lr, "betas": list(ADAM_BETAS), "eps": eps,
                                            "weight_decay": weight_decay, "torch_adam": True}}
    if optimizer is Optimizer.RMSPROP:
        return {"type": "RMSprop", "params": {"lr": lr, "alpha": RMSPROP_ALPHA, "eps": eps,
                                              "momentum": MOMENTUM,
                                              "weight_decay": weight_decay}}
    return {"type": "SGD", "params": {"lr": lr, "momentum": MOMENTUM,
                                      "weight_decay": weight_decay}}


def zero_section(stage: int, *, bucket_elements: int = ZERO_BUCKET_ELEMENTS,
                 world: int | None = None, moe: bool = False) -> dict[str, Any]:
    """``world``: the data-parallel size. At ZeRO-1/2 with one rank there is nothing to
    overlap, and ``contiguous_gradients`` copies every gradient twice (into a reduce bucket,
    then into the partition buffer, ``stage_1_and_2.py``: ``reduce_independent_p_g_buckets_
    and_remove_grads``, ``copy_grads_in_partition``) into buckets allocated up front; without
    it each gradient is copied once (``allreduce_and_copy``) through one transient flat bucket.
    ``moe``: DeepSpeed 0.19.8 asserts contiguous gradients for MoE at ZeRO-2 and calls ZeRO-1
    without them experimental (``_configure_moe_settings``): an MoE model keeps them."""
    check_zero_stage(stage, name="zero stage")
    section: dict[str, Any] = {"stage": stage}
    if stage in (1, 2):
        alone = world == 1
        section.update(overlap_comm=not alone, contiguous_gradients=not alone or moe,
                       reduce_scatter=True, reduce_bucket_size=bucket_elements,
                       allgather_bucket_size=bucket_elements)
    elif stage == 3:
        section.update(overlap_comm=True, contiguous_gradients=True,
                       reduce_bucket_size=bucket_elements,
                       stage3_prefetch_bucket_size=bucket_elements // 4,
                       stage3_param_persistence_threshold=100_000)
    return section


def deepspeed_config(*, micro_batch: int, grad_accum: int, zero_stage: int,
                     precision: Precision | str, optimizer: Optimizer | str, lr: float,
                     warmup_steps: int, world: int, gradient_clipping: float = 1.0,
                     client_optimizer: bool = False, scheduler: bool = True,
                     weight_decay: float = 0.0,
                     steps_per_print: int = 100,
                     bucket_elements: int = ZERO_BUCKET_ELEMENTS,
                     moe: bool = False, data_before_expert: bool = False) -> dict[str, Any]:
    """A DeepSpeed config dict. ``world`` is the data-parallel size (ranks that see different
    samples: dp; equal to the number of processes without tensor parallelism).
    ``client_optimizer``: the caller passes a torch optimizer to ``deepspeed.initialize`` (no
    "optimizer" section); ``scheduler=False`` leaves the learning rate to the caller.
    ``moe``: the model has expert layers (``zero_section``); ``data_before_expert``: their
    groups in DeepSpeed's data-before-expert rank order (``placement.py``)."""
    for name, value in (("micro_batch", micro_batch), ("grad_accum", grad_accum),
                        ("world", world)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} = {value!r}: must be an integer >= 1")
    if warmup_steps < 0 or not lr > 0:
        raise ConfigError(f"lr = {lr!r}, warmup_steps = {warmup_steps!r}: need lr > 0 and "
                          "warmup_steps >= 0")
    optimizer, precision = Optimizer(optimizer), Precision(precision)
    config: dict[str, Any] = {
        "train_batch_size": micro_batch * grad_accum * world,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": gradient_clipping,
        "steps_per_print": steps_per_print,
        "wall_clock_breakdown": False,
        "bf16": ({"enabled": True, "check_grad_overflow": False}
                 if precision is Precision.BF16 else {"enabled": False}),
        "zero_optimization": zero_section(zero_stage, bucket_elements=bucket_elements,
                                          world=world, moe=moe),
    }
    if moe and data_before_expert:
        config[DS_CONFIG_KEY] = True
    if scheduler:
        config["scheduler"] = {"type": "WarmupLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": lr, "warmup_num_steps": warmup_steps,
            "warmup_type": "linear"}}
    if not client_optimizer:
        config["optimizer"] = optimizer_section(optimizer, lr=lr, weight_decay=weight_decay)
    if zero_stage > 0 and (client_optimizer or optimizer is not Optimizer.ADAMW):
        config["zero_allow_untested_optimizer"] = True
    return config


WORKER_MODULE = "ecdit_scale.train.worker"


def deepspeed_launch_command(*, num_gpus: int, run_dir: str, num_nodes: int | None = None,
                             hostfile: str | None = None, master_port: int | None = None,
                             master_addr: str | None = None, node_rank: int | None = None,
                             launcher: tuple[str, ...] | list[str] = ("deepspeed",),
                             worker_args: tuple[str, ...] | list[str] = (),
                             include: str | None = None, force_multi: bool = False) -> list[str]:
    """The DeepSpeed launcher command that starts ``ecdit_scale.train.worker`` on every device.

    ``num_gpus`` ranks per node (``--num_gpus`` is needed on CPU too: DeepSpeed otherwise counts
    NUMA nodes); ``--no_local_rank``: the worker reads LOCAL_RANK from the environment. The
    worker reads its settings from ``run_dir`` (card.yaml, ds_config.json, run.json); anything in
    ``worker_args`` (e.g. ``--resume``) follows it. ``launcher``: ``("deepspeed",)`` for a
    script, or ``(sys.executable, "-m", "deepspeed.launcher.runner")`` to use this Python.
    ``node_rank``: DeepSpeed's multi-node path without ssh (``--no_ssh --node_rank``): the same
    command runs on every node of the hostfile, each with its own rank, all with one
    ``master_addr`` and ``master_port``; without it, DeepSpeed reaches the hosts by ssh (pdsh).
    ``include`` (``localhost:2,3``, ``host1:0``): only those devices, instead of ``--num_gpus``
    (DeepSpeed takes one or the other); ``force_multi``: through ssh even for one host (a host
    of the hostfile that is not this machine: ``sweep --hostfile`` gives each run one host).
    """
    cmd = list(launcher)
    if hostfile:
        cmd += ["--hostfile", str(hostfile)]
    if include:  # DeepSpeed refuses --num_nodes / --num_gpus next to --include
        cmd += ["--include", include]
    else:
        cmd += (["--num_nodes", str(num_nodes)] if num_nodes is not None else []) + [
            "--num_gpus", str(num_gpus)]
    if force_multi:
        cmd.append("--force_multi")
    if master_port is not None:
        cmd += ["--master_port", str(master_port)]
    if master_addr is not None:
        cmd += ["--master_addr", str(master_addr)]
    if node_rank is not None:
        cmd += ["--no_ssh", "--node_rank", str(node_rank)]
    cmd += ["--no_local_rank", "--module", WORKER_MODULE, "--run-dir", str(run_dir),
            *worker_args]
    return cmd


def deepspeed_defaults(ds_config: dict[str, Any]) -> dict[str, Any]:
    """``ds_config`` as launch wrote it before the per-gradient work was cut (for A/B
    measurements): DeepSpeed's bf16 overflow check, contiguous gradients and overlap at one
    rank too."""
    import copy

    cfg = copy.deepcopy(ds_config)
    if cfg.get("bf16", {}).get("enabled"):
        cfg["bf16"] = {"enabled": True}
    if cfg["zero_optimization"].get("stage") in (1, 2):
        cfg["zero_optimization"].update(contiguous_gradients=True, overlap_comm=True)
    return cfg
