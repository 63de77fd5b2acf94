"""A plan directory as a launch request: ``ecdit-scale launch --plan DIR`` (which the plan's
launch.sh runs) reads plan.yaml, card.yaml and hostfile and asks for exactly the plan's run.

Every setting comes from the plan: the card, the optimizer, learning rate, warm-up, precision,
EMA, ZeRO stage, ep, micro-batch, gradient accumulation and recompute. What a launch may
change is stated in the run's record (``RunSettings.notes``):

- ``--steps`` fewer than the plan's: the warm-up shrinks in proportion (the schedule keeps its
  shape: warm-up over the same fraction of the run, then flat), but not below the optimizer's
  floor (RMSProp: 1,000 steps, so a short trial ends before the peak lr rather than diverging);
- on CPU a bf16 plan runs in fp32 (the CPU path trains in fp32; the record says fp32);
- ``--local``: the plan's world as ranks of this machine instead of the hostfile's nodes; a
  one-host hostfile is run on this machine too (its host name is a placeholder);
- ``--compile``: the plan compiles what it priced (plan.yaml's ``launch.compile``: ``none``
  unless planned with ``--compile``); a launch may ask otherwise, and its record says so. A plan
  written before 2026-12-06 has no such key and runs the launch default (block on CUDA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import load_yaml_file
from ..planner.deepspeed_config import warmup_floor, warmup_floor_note
from .request import LaunchRequest
from .settings import declared

DEFAULT = {f.name: f.default for f, _ in declared()}  # a plan older than a setting: its default

PLAN_NEEDS = ("plan.yaml", "card.yaml")


@dataclass(frozen=True)
class PlanSpec:
    """What a plan directory prescribes for a run (plan.yaml's training, cluster and best
    layout), with the files a launch uses."""

    path: Path
    card: Path
    hostfile: Path | None
    nodes: int
    gpus_per_node: int
    training: dict[str, Any]
    layout: dict[str, Any]
    predictions: dict[str, Any]  # step_s, memory of the best layout (for ``validate``)
    compile: str | None = None  # what the plan priced ("none" / "block"); None: not recorded

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


def read_plan(plan_dir: str | Path) -> PlanSpec:
    """plan.yaml and card.yaml of a plan folder (``ecdit-scale plan --out DIR``)."""
    d = Path(plan_dir)
    if not d.is_dir():
        raise ConfigError(f"--plan {plan_dir}: no such folder; write one with "
                          "`ecdit-scale plan ... --out DIR`")
    for name in PLAN_NEEDS:
        if not (d / name).is_file():
            raise ConfigError(f"--plan {plan_dir}: {name} is missing; a plan folder holds "
                              f"{', '.join(PLAN_NEEDS)} (`ecdit-scale plan ... --out DIR`)")
    data = load_yaml_file(d / "plan.yaml", what="plan")
    try:
        training, cluster, best = data["training"], data["cluster"], data["best"]
        layout = dict(best["layout"])
        for key in ("ep", "zero", "micro_batch", "grad_accum", "recompute", "dp", "tp"):
            layout[key]  # noqa: B018 (present)
        for key in ("steps", "optimizer", "lr", "warmup_steps", "precision"):
            training[key]  # noqa: B018
        nodes, per_node = int(cluster["nodes"]), int(cluster["gpus_per_node"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"--plan {plan_dir}: plan.yaml lacks {exc} (not written by "
                          "`ecdit-scale plan`?); write the plan again") from None
    if not data.get("launch", {}).get("launchable", True):
        raise ConfigError(f"--plan {plan_dir}: {data['launch'].get('note') or 'not launchable'}")
    if layout["tp"] != 1:
        raise ConfigError(f"--plan {plan_dir}: tp = {layout['tp']}; the trainer has no tensor "
                          "parallelism; plan again with --tp 1")
    hostfile = d / "hostfile"
    return PlanSpec(path=d, card=d / "card.yaml",
                    hostfile=hostfile if hostfile.is_file() else None, nodes=nodes,
                    gpus_per_node=per_node, training=dict(training), layout=layout,
                    predictions={"step_s": data.get("step_s"),
                                 "memory": best.get("memory"), "step": best.get("step")},
                    compile=data.get("launch", {}).get("compile"))


def scaled_warmup(plan_warmup: int, plan_steps: int, steps: int, floor: int = 0) -> int:
    """The plan's warm-up over the same fraction of a shorter run (at least one step when the
    plan warms up at all, and no shorter than ``floor`` where the plan's own warm-up is not:
    ``warmup_floor`` of its optimizer); a run as long as the plan's or longer keeps the plan's
    warm-up. A warm-up may be longer than the run: the run then ends before the peak lr."""
    if steps >= plan_steps or plan_warmup == 0:
        return plan_warmup
    scaled = max(1, math.floor(plan_warmup * steps / plan_steps + 0.5))
    return max(scaled, min(floor, plan_warmup))


def default_dataset(card: Path) -> str:
    from ..config import load_model_config
    from ..datasets.kinds import default_dataset_for

    return default_dataset_for(load_model_config(card))


def request_from_plan(plan_dir: str | Path, *, steps: int | None = None, local: bool = False,
                      device: str = "auto", **rest: Any) -> LaunchRequest:
    """The launch the plan prescribes; ``rest`` holds what a plan does not decide (the run
    directory, resume, seed, data limit, checkpoints, multi-node rank and address)."""
    spec = read_plan(plan_dir)
    tr, lay = spec.training, spec.layout
    plan_steps = int(tr["steps"])
    run_steps = plan_steps if steps is None else steps
    notes: list[str] = []
    warmup = int(tr["warmup_steps"])
    if isinstance(run_steps, int) and not isinstance(run_steps, bool) and run_steps >= 1:
        scaled = scaled_warmup(warmup, plan_steps, run_steps, warmup_floor(tr["optimizer"]))
        if scaled != warmup:
            notes.append(f"warm-up scaled to the run: {scaled} of {run_steps} steps (the plan: "
                         f"{warmup} of {plan_steps})")
        why = warmup_floor_note(tr["optimizer"], scaled, run_steps)
        if why and scaled != warmup:
            notes.append(why)
        warmup = scaled
    if rest.get("compile") is None:
        rest["compile"] = spec.compile  # what the step time priced (None: the launch default)
    elif spec.compile is not None and rest["compile"] != spec.compile:
        notes.append(f"--compile {rest['compile']}: the plan priced compile {spec.compile}; its "
                     "step time is not this run's")
    one_host = spec.nodes == 1
    if local or one_host or spec.hostfile is None:
        nproc, hostfile = spec.world, None
        if not local and spec.nodes > 1:
            raise ConfigError(f"--plan {plan_dir}: hostfile is missing for {spec.nodes} nodes; "
                              "run with --local or write the plan again")
        if local and spec.nodes > 1:
            notes.append(f"--local: the plan's {spec.nodes} x {spec.gpus_per_node} ranks run "
                         "on this machine")
    else:
        nproc, hostfile = spec.gpus_per_node, str(spec.hostfile)
    return LaunchRequest(
        card=str(spec.card), nproc=nproc, steps=run_steps, ep=int(lay["ep"]),
        zero=int(lay["zero"]), micro_batch=int(lay["micro_batch"]),
        grad_accum=int(lay["grad_accum"]), recompute=str(lay["recompute"]),
        lr=float(tr["lr"]), warmup_steps=warmup, optimizer=str(tr["optimizer"]),
        precision=str(tr["precision"]), ema=str(tr.get("ema", "none")),
        ema_decay=float(tr.get("ema_decay", DEFAULT["ema_decay"])),
        schedule=str(tr.get("schedule", DEFAULT["schedule"])),
        cooldown_fraction=float(tr.get("cooldown_fraction", DEFAULT["cooldown_fraction"])),
        hostfile=hostfile,
        dataset=rest.pop("dataset", None) or default_dataset(spec.card),
        plan=str(spec.path.resolve()), notes=tuple(notes), device=device, **rest)
