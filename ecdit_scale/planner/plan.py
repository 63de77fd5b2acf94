"""A training plan, the whole ``ecdit-scale plan`` use case as one typed object: FLOPs, the best
launchable layout and the fastest tensor-parallel alternative, step time, days, GPU-hours and
cost, the inference estimate and the scaling estimate (compute multipliers measured by a sweep).

``make_plan`` computes it; ``Plan.to_dict`` is what ``plan.yaml`` holds and what ``plan --json``
prints (one object, two renderings). The files are rendered in ``plan_files``. No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import ClusterConfig, ModelConfig, TrainingConfig
from ..errors import ConfigError
from ..files import to_plain
from ..params import ParamBreakdown, count_params
from ..sizes import Resolved
from .cluster_table import SECONDS_PER_DAY, ClusterTable, cluster_table, pick_row, run_cost
from .compute import term_sources
from .deepspeed_config import deepspeed_config
from .flops import FlopsBreakdown, flops_per_image, training_flops_per_image
from .hardware import Accelerator, get_accelerator
from .inference import InferenceEstimate, estimate_inference
from .layouts import LayoutEstimate, SearchResult, search_layouts
from .placement import data_before_expert
from .public_check import clock_note

# (FFN kind, experts, compute FLOPs) -> a mapping with the ScalingEstimate fields, or None when
# the fit has nothing for the kind. The planner never imports ``scaling``; the caller passes
# this in (the CLI wraps ``ecdit_scale.scaling.predict.scaling_estimate``).
ScalingModel = Callable[[str, int, float], "Mapping[str, Any] | None"]


TRAINER_RUNS = ("bf16", "fp32")  # the precisions ecdit_scale.train launches

@dataclass(frozen=True, kw_only=True)
class FlopsPerStep:
    model: float  # forward + backward of the global batch: what MFU divides
    hardware: float  # plus the best layout's recomputation

    def to_dict(self) -> dict[str, float]:
        return {"model": self.model, "hardware": self.hardware}


@dataclass(frozen=True, kw_only=True)
class MultiplierEstimate:
    """C_baseline / C_variant at equal loss, as a sweep measured it (not extrapolated)."""

    variant: str
    baseline: str
    value: float | None  # None: the fit cannot identify or define it (see note)
    interval: tuple[float, float] | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "baseline": self.baseline, "value": self.value,
                "interval": list(self.interval) if self.interval else None, "note": self.note}


@dataclass(frozen=True, kw_only=True)
class ScalingEstimate:
    """What a scaling sweep supports saying about the plan's FFN kind: compute multipliers with
    their intervals, the compute range they were measured on and how far the plan lies beyond
    it. No absolute loss: the sweep's is a different objective, far from this compute."""

    kind: str
    source: str
    loss: str  # what loss the multipliers compare, e.g. "smoothed training flow-matching loss"
    measured_compute_flops: tuple[float, float]
    beyond_factor: float  # plan compute / the largest compute measured
    statistics: str  # how the intervals were made, e.g. "bootstrap of 3 training runs per variant"
    multipliers: tuple[MultiplierEstimate, ...]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *,
                     source: str = "the scaling model") -> ScalingEstimate:
        try:
            lo, hi = (float(x) for x in data["measured_compute_flops"])
            ms = tuple(MultiplierEstimate(
                variant=str(m["variant"]), baseline=str(m["baseline"]),
                value=None if m.get("value") is None else float(m["value"]),
                interval=(None if m.get("interval") is None
                          else (float(m["interval"][0]), float(m["interval"][1]))),
                note=str(m.get("note", ""))) for m in data["multipliers"])
            est = cls(kind=str(data["kind"]), source=str(data["source"]), loss=str(data["loss"]),
                      measured_compute_flops=(lo, hi), beyond_factor=float(data["beyond_factor"]),
                      statistics=str(data["statistics"]), multipliers=ms)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"{source}: not a scaling estimate "
                              f"({type(exc).__name__}: {exc})") from None
        numbers = [lo, hi, est.beyond_factor]
        for m in ms:
            numbers += [x for x in (m.value, *(m.interval or ())) if x is not None]
        if not all(math.isfinite(x) for x in numbers):
            raise ConfigError(f"{source}: scaling estimate has a number that is not finite")
        return est

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "loss": self.loss,
                "measured_compute_flops": list(self.measured_compute_flops),
                "beyond_factor": self.beyond_factor, "statistics": self.statistics,
                "multipliers": [m.to_dict() for m in self.multipliers], "estimated": True}


@dataclass(frozen=True, kw_only=True)
class Plan:
    config: ModelConfig
    training: TrainingConfig
    cluster: ClusterConfig
    accelerator: Accelerator
    params: ParamBreakdown
    flops_per_image: FlopsBreakdown
    flops_per_step: FlopsPerStep
    best: LayoutEstimate  # the fastest launchable layout (tp = 1 unless tp was pinned)
    top: list[LayoutEstimate]
    search: SearchResult
    step_s: float
    mfu: float
    images_per_s: float
    days: float
    gpu_hours: float
    cost_usd: float
    compute_flops: float  # model FLOPs of the whole run (flops_per_step.model x steps)
    inference: InferenceEstimate
    tp_alternative: LayoutEstimate | None = None  # fastest tp > 1 layout, when tp was not pinned
    scaling_estimate: ScalingEstimate | None = None
    resolved: Resolved | None = None  # how a --params target became this config
    estimated: list[str] = field(default_factory=list)
    cluster_table: ClusterTable | None = None  # time and cost at other cluster sizes

    @property
    def launchable(self) -> bool:
        """Whether DeepSpeed can run the plan (else: no launch.sh, hostfile or ds_config.json):
        a DeepSpeed device and a precision the trainer runs (fp16 / tf32 are priced only)."""
        return self.accelerator.runs_deepspeed and self.training.precision.value in TRAINER_RUNS

    @property
    def launch_note(self) -> str | None:
        if self.launchable:
            return None
        if self.accelerator.runs_deepspeed:
            return (f"no launch files: ecdit_scale.train runs {' or '.join(TRAINER_RUNS)}, not "
                    f"{self.training.precision.value}; this plan is for sizing only")
        return (f"no launch files: {self.accelerator.name} has no DeepSpeed accelerator "
                f"(deepspeed_accelerator: {self.accelerator.deepspeed_accelerator}); this plan "
                "is for sizing only")

    @property
    def launch_compile(self) -> str:
        """What ``launch --plan`` compiles: what the step time priced (``plan --compile``:
        each block, else nothing), so that the run is the run the plan timed."""
        setup = self.accelerator.setup
        return "block" if setup is not None and setup.compiled else "none"

    @property
    def model(self) -> str:
        return self.config.name

    @property
    def world(self) -> int:
        return self.cluster.world

    def ds_config(self) -> dict[str, Any]:
        """The DeepSpeed config of the best layout. ``ecdit_scale.train.worker`` passes its own
        torch optimizer (no "optimizer" section); the scheduler is kept for other scripts."""
        lay, tr = self.best.layout, self.training
        return deepspeed_config(micro_batch=lay.micro_batch, grad_accum=self.best.grad_accum,
                                zero_stage=lay.zero, precision=tr.precision,
                                optimizer=tr.optimizer, lr=tr.lr, warmup_steps=tr.warmup_steps,
                                world=lay.dp, client_optimizer=True,
                                moe=self.config.ffn.is_moe,
                                data_before_expert=data_before_expert(self.best.placement))

    def to_dict(self) -> dict[str, Any]:
        acc, f = self.accelerator, self.flops_per_image
        r = self.resolved
        return {
            "model": self.model,
            "model_config": self.config.to_dict(),
            "params": self.params.to_dict(),
            "flops_per_image": {"forward": f.forward, "backward": f.backward,
                                "forward_macs": f.forward_macs},
            "flops_per_step": self.flops_per_step.to_dict(),
            "training": to_plain(self.training),
            "cluster": {**to_plain(self.cluster), "world": self.world},
            "accelerator": {"name": acc.name, "peak_bf16_flops": acc.peak_bf16_flops,
                            "memory_bytes": acc.memory_bytes, "efficiency": acc.efficiency,
                            "calibrated_from": acc.calibrated_from, "source": acc.source,
                            "deepspeed_accelerator": acc.deepspeed_accelerator,
                            "precisions": list(acc.precisions),
                            **({"number_sources": acc.number_sources(),
                                "profile_provenance": acc.profile.provenance}
                               if acc.profile is not None else {})},
            "launch": {"launchable": self.launchable, "note": self.launch_note,
                       "compile": self.launch_compile},
            "best": self.best.to_dict(),
            "step_s": self.step_s,
            "mfu": self.mfu,
            "images_per_s": self.images_per_s,
            "days": self.days,
            "gpu_hours": self.gpu_hours,
            "cost_usd": self.cost_usd,
            "price_per_gpu_hour": self.cluster.price_per_gpu_hour,
            "top": [e.to_dict() for e in self.top],
            "search": {"num_evaluated": self.search.num_evaluated,
                       "num_feasible": self.search.num_feasible,
                       "rejected": dict(self.search.rejected),
                       "rejected_examples": self.search.to_dict()["rejected_examples"]},
            "estimated": list(self.estimated),
            "assumptions": list(self.search.assumptions) + list(self.best.memory.assumptions),
            "compute_flops": self.compute_flops,
            "fastest_with_tensor_parallel": (self.tp_alternative.to_dict()
                                             if self.tp_alternative is not None else None),
            "inference": self.inference.to_dict(),
            "scaling_estimate": (self.scaling_estimate.to_dict()
                                 if self.scaling_estimate else None),
            "resolved": ({"target": r.target, "active": r.active, "synthesised": r.synthesised,
                          "achieved": r.achieved} if r is not None else None),
            "cluster_table": self.cluster_table.to_dict() if self.cluster_table else None,
        }


def _tp_alternative(cfg: ModelConfig, training: TrainingConfig, cluster: ClusterConfig,
                    acc: Accelerator, pin: dict[str, Any]) -> LayoutEstimate | None:
    """The fastest layout under the other pins when it uses tensor parallelism (None when
    tp = 1 is the fastest, or nothing fits)."""
    try:
        best = search_layouts(cfg, training, cluster, acc, pin=pin or None, keep=1).best
    except ConfigError:
        return None
    return best if best.layout.tp > 1 else None


def check_precision(training: TrainingConfig, acc: Accelerator) -> None:
    """A precision the device has no throughput for is refused (one line)."""
    want = training.precision.value
    if want not in acc.precisions:
        raise ConfigError(f"--precision {want}: {acc.name} lists no {want} throughput "
                          f"(precisions: {', '.join(acc.precisions)}); choose --precision "
                          f"{' or '.join(acc.precisions)}")


def comm_label(acc: Any) -> str:
    """How the plan prices the collectives, for its notes: the catalog's NCCL model, or what a
    profile measured (``comm.Links.of``)."""
    nccl = "topology-aware NCCL collectives (bandwidth, latency, message size)"
    prof = acc.profile
    if prof is None or not prof.links:
        return nccl
    how = ("each call at the calls it timed" if any(f.timed for f in prof.links.values())
           else "latency, bandwidth and message size fitted to the calls it timed")
    return (f"the collectives the profile measured ({prof.collective_backend or 'its backend'}"
            f" on {prof.collective_nproc or '?'} ranks: {how}) within a node, {nccl} across "
            "nodes")


def make_plan(cfg: ModelConfig, training: TrainingConfig | None = None,
              cluster: ClusterConfig | None = None, acc: Accelerator | None = None, *,
              pin: dict[str, Any] | None = None, top: int = 5, sampling_steps: int = 50,
              inference_devices: int = 8, scaling_model: ScalingModel | None = None,
              resolved: Resolved | None = None, table: bool = True,
              days: float | None = None, budget: float | None = None) -> Plan:
    """Search the layouts of ``cfg`` on ``cluster``, cost the best one, and add the inference
    estimate, the scaling estimate (from ``scaling_model``), the cluster-size table (``table``) and,
    when ``tp`` is not pinned, the fastest tensor-parallel alternative.

    ``days`` / ``budget`` replace the cluster's node count with the table's cheapest size that
    finishes in ``days``, or its fastest size that costs at most ``budget`` USD.

    The plan is launchable: our trainer runs data x expert parallelism only, so tp = 1 unless
    ``pin`` sets tp. Defaults: the paper's run (TrainingConfig(): global batch 4096, 800K
    steps, RMSProp) on ClusterConfig() (64 nodes x 8 h100-sxm); ``acc`` defaults to
    ``cluster.gpu``.
    """
    training = training or TrainingConfig()
    cluster = cluster or ClusterConfig()
    acc = acc or get_accelerator(cluster.gpu)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ConfigError(f"--top {top!r}: must be an integer >= 1")
    check_precision(training, acc)
    pin = {k: v for k, v in (pin or {}).items() if v is not None}
    sizes_table = None
    if days is not None or budget is not None:
        sizes_table = pick_row(cluster_table(cfg, training, cluster, acc, pin=pin),
                               days=days, budget=budget)
        cluster = sizes_table.picked.cluster
        sizes_table = _mark_plan(sizes_table, cluster.nodes)
        if "dp" in pin and pin["dp"] * pin.get("tp", 1) != cluster.world:
            pin.pop("dp")
    search = search_layouts(cfg, training, cluster, acc, pin={"tp": 1, **pin}, keep=top)
    if table and sizes_table is None:
        sizes_table = cluster_table(cfg, training, cluster, acc, pin=pin,
                                    known={cluster.nodes: search.best})
    tp_alt = None if "tp" in pin else _tp_alternative(cfg, training, cluster, acc, pin)
    best = search.best
    if training.ema is not best.ema:  # the run keeps the EMA where the search put it
        training = replace(training, ema=best.ema)
    fwd = flops_per_image(cfg)
    tf = training_flops_per_image(cfg, best.layout.recompute)
    gb = training.global_batch
    step_s = best.step.total_s
    cost = run_cost(step_s, training, cluster)
    flops_per_step = FlopsPerStep(model=tf.model_flops * gb, hardware=tf.hardware_flops * gb)
    compute = flops_per_step.model * training.steps
    infer = estimate_inference(cfg, acc, devices=min(inference_devices, cluster.world),
                               steps=sampling_steps)
    scaling = None
    if scaling_model is not None:
        raw = scaling_model(cfg.ffn.kind.value, cfg.ffn.num_experts, compute)
        scaling = ScalingEstimate.from_mapping(raw) if raw is not None else None
    eff_label = ("calibrated from " + acc.calibrated_from) if acc.calibrated_from else "assumed"
    compute_label = f"compute at {acc.efficiency:.0%} of peak ({eff_label})"
    if acc.profile is not None:
        compute_label = ("compute by operator class from the measured profile (" + "; ".join(
            f"{k}: {v}" for k, v in term_sources(acc, training.precision).items()) + ")")
    estimated = [
        f"step_s, mfu, images_per_s, days, gpu_hours: {compute_label} plus {comm_label(acc)} "
        "with DeepSpeed's overlap per collective",
        "memory: DeepSpeed model-state accounting plus derived activations and a 10% + 1.5 GiB "
        "allowance",
        f"cost_usd: price_per_gpu_hour = ${cluster.price_per_gpu_hour:g} is an assumption; "
        "override it for your provider",
    ]
    if acc.profile is not None:  # priced by operator class, as the public rows were
        estimated.append(clock_note(acc.name, days=cost.days))
    if training.precision.value != "bf16":
        estimated.append(f"compute: {training.precision.value} math at its own datasheet peak, "
                         f"{acc.peak_flops_for(training.precision.value) / 1e12:g} TFLOP/s")
    if best.flags:
        estimated.append("best layout flagged: " + "; ".join(best.flags))
    return Plan(
        config=cfg, training=training, cluster=cluster, accelerator=acc,
        params=count_params(cfg), flops_per_image=fwd, flops_per_step=flops_per_step,
        best=best, top=search.feasible[:top], search=search, step_s=step_s,
        mfu=best.step.mfu, images_per_s=best.step.images_per_s,
        days=cost.days, gpu_hours=cost.gpu_hours, cost_usd=cost.cost_usd,
        compute_flops=compute, inference=infer, tp_alternative=tp_alt, scaling_estimate=scaling,
        resolved=resolved, estimated=estimated, cluster_table=sizes_table,
    )


def _mark_plan(table: ClusterTable, nodes: int) -> ClusterTable:
    """The table with the picked size marked as the plan's own."""
    rows = [replace(r, is_plan=r.nodes == nodes) for r in table.rows]
    picked = next(r for r in rows if r.nodes == nodes)
    return replace(table, rows=rows, picked=picked)


__all__ = ["Plan", "FlopsPerStep", "ScalingEstimate", "MultiplierEstimate", "ScalingModel",
           "make_plan", "check_precision",
           "SECONDS_PER_DAY"]
