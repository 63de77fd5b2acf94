"""The host's cost per counted kernel of the model's own code, by FFN kind and recompute policy.

``profile``'s launch probe (``profile.measure_launch``) times a tiny residual network: a few
microseconds per kernel on a CPU. The model's own code costs more per kernel than that: its
Python modules, the routing of its MoE layers, the views and casts between its kernels, and
above all its recompute wrappers (``model.recompute``), which run in Python on the host:

- full recompute: ``torch.utils.checkpoint`` (non-reentrant) packs every tensor autograd saves
  through a Python hook in the forward, unpacks it in the backward, and reruns each block's
  forward, Python and all, from inside the backward;
- selective recompute: the selective-checkpoint context is a ``TorchDispatchMode``: every aten
  op of a checkpointed region (views included) passes through a Python policy call, in the
  forward and again in the recompute.

On a 2-core CPU (fp32, one thread) the nano-ec8 model's forward with grad at micro-batch 2 took
8.4 ms without recompute, 16.7 ms selective and 12.4 ms full; the plan priced those policies'
extra host work at the tiny network's ~4 us per kernel.

So ``profile`` times the model itself, forward + backward in plain torch (no engine), at a size
where its compute is negligible (``PROBE_SIZE``: the CPU ladder's nano cards at width 32 and 16
image tokens, one image), once per FFN kind (dense, expert choice, token choice) and recompute
policy, and subtracts what the step-time model prices separately from this same profile: the
operators' device time (``planner.compute``) and autograd's work per parameter tensor. What is
left, over the kernels ``planner.operators`` counts for that pass (forward + backward +
recompute), is the host's seconds per counted kernel the step-time model charges in place of
the launch probe's (``step_time._profiled_compute``).

It is a cost per kernel measured at one size and charged at every size: what grows with the
model (memory traffic the inventory does not count) is not in it.
"""

from __future__ import annotations

from typing import Any

from ..config import FFNKind, Precision, Recompute

# the CPU ladder's nano cards, shrunk so that the device time is negligible beside the host's
PROBE_CARDS = {FFNKind.DENSE: "nano-dense", FFNKind.EXPERT_CHOICE: "nano-ec8",
               FFNKind.TOKEN_CHOICE: "nano-tc8"}
PROBE_SIZE = {"hidden_size": 32, "input_size": 16, "text_dim": 32, "text_tokens": 8}
PROBE_IMAGES = 1
DTYPE_PRECISION = {"fp32": Precision.FP32, "bf16": Precision.BF16, "fp16": Precision.FP16}


def probe_config(kind: FFNKind) -> Any:
    """The probe's model of one FFN kind (a nano card at ``PROBE_SIZE``)."""
    from ..planner.cards import load_card_or_name

    base = load_card_or_name(PROBE_CARDS[kind])
    return base.replace(name=f"{base.name}-host-probe", **PROBE_SIZE)


def priced(cfg: Any, acc: Any, recompute: Recompute, precision: Precision,
           tensors: int) -> tuple[float, float]:
    """(seconds the step-time model prices apart from the host's per-kernel cost: device time
    and autograd per parameter tensor; the kernels it counts) for one micro-batch's passes."""
    from ..planner.compute import micro_batch_terms

    cost = micro_batch_terms(cfg, acc, images=PROBE_IMAGES, tp=1, recompute=recompute,
                             precision=precision)
    autograd = (acc.profile.engine_s_per_param_tensor or 0.0) * tensors
    return float(cost.total.device_s) + autograd, float(cost.total.kernels)


def host_seconds_per_kernel(measured_s: float, priced_s: float, kernels: float) -> float:
    """The host's seconds per counted kernel: the measured pass less what is priced apart,
    over the kernels counted (0 where the priced part already covers the measurement)."""
    if kernels <= 0:
        raise ValueError(f"kernels = {kernels}: the probe's passes count none")
    return max(0.0, measured_s - priced_s) / kernels


def measure_host(s: Any, timer: Any, acc: Any) -> dict[str, dict[str, float]]:
    """{FFN kind: {recompute policy: host seconds per counted kernel}} on the profile's device
    (``s``: its settings; ``acc``: the accelerator carrying the profile measured so far, whose
    rates price the probe's device time)."""
    torch = timer.torch
    from ..model.diffusion import rectified_flow_loss
    from ..model.dit import build_model

    precision = DTYPE_PRECISION[s.torch_dtype_name]
    dtype = getattr(torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[
        s.torch_dtype_name])
    out: dict[str, dict[str, float]] = {}
    for kind in PROBE_CARDS:
        cfg = probe_config(kind)
        out[kind.value] = {}
        for policy in (Recompute.NONE, Recompute.SELECTIVE, Recompute.FULL):
            torch.manual_seed(0)
            model = build_model(cfg, device=s.device, recompute=policy).to(dtype)
            x = torch.randn(PROBE_IMAGES, cfg.in_channels, cfg.input_size, cfg.input_size,
                            device=s.device, dtype=dtype)
            cond = torch.randn(PROBE_IMAGES, cfg.text_tokens, cfg.text_dim, device=s.device,
                               dtype=dtype)
            gen = torch.Generator(device=s.device)
            params = list(model.parameters())

            def step(model=model, x=x, cond=cond, gen=gen, params=params) -> None:
                rectified_flow_loss(model, x, cond, generator=gen.manual_seed(0)).loss.backward()
                for p in params:
                    p.grad = None

            measured = timer(step)
            priced_s, kernels = priced(cfg, acc, policy, precision, len(params))
            out[kind.value][policy.value] = host_seconds_per_kernel(measured, priced_s, kernels)
    return out
