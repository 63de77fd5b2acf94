"""Sampling latency and memory on a few devices (the paper measured EC-DiT on 8x H100 with
model parallelism).

Per sampling step (one forward of the batch; two with classifier-free guidance, run as one
forward of a doubled batch, as ``ecdit_scale.model.diffusion.sample`` does):
- compute: FLOPs on each device / (peak x efficiency); attention/FFN matrices are split over
  tp devices, experts over ep devices (expert choice loads every expert equally);
- weights: each device reads its bf16 weights once per forward / HBM bandwidth. At batch 1 a
  97B MoE is memory-bound; step = max(compute, weight reading) (a roofline);
- communication, not overlapped: expert all-to-all (dispatch + combine per MoE layer) over the
  ep group and tp all-reduces (attention, cross-attention, FFN per block), priced by
  ``comm.py`` (NCCL latency per call, message-size efficiency: small messages are slow).
Not counted: the text encoder (runs once per prompt), the VAE decoder, host overheads.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..config import ModelConfig, Recompute
from ..integers import divisors
from ..params import count_params
from .activations import activation_bytes_per_sample
from .comm import Links, all_to_all_seconds, ring_seconds
from .dtypes import BF16_BYTES
from .flops import expert_slots_per_image, flops_per_image, inference_flops_per_image


@dataclass(frozen=True, kw_only=True)
class InferenceEstimate:
    model: str
    accelerator: str
    devices: int
    ep: int
    tp: int
    steps: int
    cfg_guidance: bool
    batch: int
    flops_per_step: float  # whole batch, both CFG branches
    flops_total: float
    compute_s_per_step: float
    weight_read_s_per_step: float
    comm_s_per_step: float
    step_s: float
    bound: str  # "compute" or "memory"
    latency_s: float  # the batch, all sampling steps
    images_per_s: float
    weights_bytes_per_device: float
    activations_bytes_per_device: float
    memory_bytes_per_device: float
    fits: bool
    assumptions: tuple[str, ...] = ()

    @property
    def latency_per_image_s(self) -> float:
        return self.latency_s / self.batch

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["assumptions"] = list(self.assumptions)
        out["latency_per_image_s"] = self.latency_per_image_s
        return out


def inference_layout(cfg: ModelConfig, devices: int) -> tuple[int, int]:
    """(ep, tp): experts over as many devices as divide both; tp the largest divisor of the
    devices that also divides the query and KV heads."""
    ep = max(e for e in divisors(devices) if cfg.ffn.num_experts % e == 0) if cfg.ffn.is_moe else 1
    tp = max(t for t in divisors(devices)
             if cfg.num_heads % t == 0 and cfg.num_kv_heads % t == 0)
    return ep, tp


def estimate_inference(cfg: ModelConfig, acc, *, devices: int = 8, steps: int = 50,
                       cfg_guidance: bool = True, batch: int = 1) -> InferenceEstimate:
    for name, value in (("devices", devices), ("steps", steps), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} = {value!r}: must be an integer >= 1")
    ep, tp = inference_layout(cfg, devices)
    b = count_params(cfg)
    fwd = flops_per_image(cfg)
    rows = batch * (2 if cfg_guidance else 1)  # images per forward
    expert_flops = fwd.experts
    flops_per_step = inference_flops_per_image(cfg, steps=1, cfg_guidance=cfg_guidance) * batch
    flops_device = rows * ((fwd.forward - expert_flops) / tp + expert_flops / ep)
    compute_s = flops_device / acc.sustained_flops
    weights = BF16_BYTES * ((b.model_params - b.experts) / tp + b.experts / ep)
    weight_s = weights / acc.memory_bw_bytes_per_s

    links = Links.of(acc)
    d, S = cfg.hidden_size, cfg.tokens_per_image
    n_a2a = 2 * cfg.num_moe_layers if ep > 1 else 0
    a2a_bytes = BF16_BYTES * expert_slots_per_image(cfg) * d * rows if cfg.ffn.is_moe else 0.0
    a2a_s = float(all_to_all_seconds(n_a2a * a2a_bytes, ep, tp, links, calls=n_a2a))
    n_ar = cfg.depth * (2 + (1 if cfg.has_cross_attention else 0)) if tp > 1 else 0
    ar_s = float(ring_seconds(n_ar * BF16_BYTES * S * d * rows, tp, 1, links, factor=2.0,
                              calls=n_ar))
    comm_s = a2a_s + ar_s
    step_s = max(compute_s, weight_s) + comm_s
    latency = steps * step_s
    # no activations are kept for backward: one block's working set of the whole batch
    acts = rows * activation_bytes_per_sample(cfg, Recompute.FULL, tp=tp).working_block
    mem = weights + acts
    return InferenceEstimate(
        model=cfg.name, accelerator=acc.name, devices=devices, ep=ep, tp=tp, steps=steps,
        cfg_guidance=cfg_guidance, batch=batch, flops_per_step=flops_per_step,
        flops_total=flops_per_step * steps, compute_s_per_step=compute_s,
        weight_read_s_per_step=weight_s, comm_s_per_step=comm_s, step_s=step_s,
        bound="compute" if compute_s >= weight_s else "memory", latency_s=latency,
        images_per_s=batch / latency, weights_bytes_per_device=weights,
        activations_bytes_per_device=acts, memory_bytes_per_device=mem,
        fits=mem <= acc.memory_bytes,
        assumptions=(
            f"efficiency {acc.efficiency:.2f} of peak "
            f"({'calibrated' if acc.calibrated_from else 'assumed'})",
            f"experts over ep={ep} devices, attention/FFN matrices over tp={tp} (other devices "
            "hold replicas)",
            "collectives priced by planner.comm (NCCL latency, message-size efficiency); "
            "no overlap",
            "text encoder and VAE decoder not counted",
        ),
    )
