"""The numbers of one optimizer step, gathered on the device and read once.

``StepStats`` accumulates a rank's losses and routing counts over the micro-steps of a step;
``reduce_stats`` all-reduces them into the step's record (every rank gets the global values);
``param_checksums`` sums each parameter for the end-of-run comparison across ranks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .expert_parallel import deepspeed_topk_layers, is_expert_param
from .peak_memory import PHASES

# Shape suffixes: a tensor named ept_LN has dims (L, N).
#   L MoE layers   N tokens   K experts-per-token counts (0..E)


@dataclasses.dataclass
class StepStats:
    """What one rank accumulates over the micro-steps of one optimizer step, as tensors on its
    device: the step's numbers are read once, in ``reduce_stats``; a read per micro-step or per
    MoE layer would make the host wait for the device each time."""

    sums: torch.Tensor | None = None  # (4,) float64: loss, flow loss, aux loss, dropped
    hist: torch.Tensor | None = None  # (E+1,) tokens processed by k experts, all MoE layers
    layer_sum: torch.Tensor | None = None  # (L,) experts-per-token sums per layer
    layer_tokens: torch.Tensor | None = None  # (L,) tokens per layer
    tokens_per_expert: torch.Tensor | None = None  # (L, E)

    def add(self, loss: torch.Tensor, flow: torch.Tensor, aux: torch.Tensor,
            dropped: torch.Tensor | int = 0) -> None:
        parts = [loss.detach(), flow.detach(), aux.detach(),
                 torch.as_tensor(dropped, device=loss.device)]
        row = torch.stack([t.to(torch.float64).reshape(()) for t in parts])
        self.sums = row if self.sums is None else self.sums + row


def _acc(old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    return new if old is None else old + new


def collect_routing(model: nn.Module, st: StepStats, num_experts: int,
                    ds_layers: list | None = None) -> torch.Tensor | int:
    """Add this micro-step's routing statistics to ``st`` (on the device); returns the tokens
    dropped over capacity. ``ds_layers``: the model's DeepSpeed top-k layers, if known."""
    stats = model.routing_stats() if hasattr(model, "routing_stats") else []
    ds_layers = deepspeed_topk_layers(model) if ds_layers is None else ds_layers
    if not stats and not ds_layers:
        return 0
    rows_tpe = [s.tokens_per_expert.long() for s in stats]
    device = (rows_tpe[0] if rows_tpe else ds_layers[0].l_aux).device
    rows_tpe += [layer.exp_counts.to(device).long()  # DeepSpeed's gate: tokens per expert only
                 for layer in ds_layers]
    st.tokens_per_expert = _acc(st.tokens_per_expert, torch.stack(rows_tpe))
    E1 = num_experts + 1
    if stats:  # (L, N) experts per token -> per-layer histograms without a bincount's sync
        ept_LN = torch.stack([s.experts_per_token.reshape(-1) for s in stats]).long()
        hist_LK = torch.zeros(len(stats), E1, dtype=torch.long, device=device)
        hist_LK.scatter_add_(1, ept_LN, torch.ones_like(ept_LN))
        st.hist = _acc(st.hist, hist_LK.sum(0))
        st.layer_sum = _acc(st.layer_sum, ept_LN.sum(1))
        st.layer_tokens = _acc(st.layer_tokens, torch.full((len(stats),), ept_LN.shape[1],
                                                           dtype=torch.long, device=device))
    elif st.hist is None:
        st.hist = torch.zeros(E1, dtype=torch.long, device=device)
        st.layer_sum = st.layer_tokens = torch.zeros(0, dtype=torch.long, device=device)
    return sum((s.dropped for s in stats), start=0)


def reduce_stats(st: StepStats, world: int, micro_steps: int, peak: int,
                 device: torch.device, phase_peaks: list[int] | None = None) -> dict[str, Any]:
    """All-reduce one step's numbers; every rank gets the global values. Two collectives (a
    sum and a max) and one read of the device per step."""
    parts = [st.sums.to(device)]
    routed = st.tokens_per_expert is not None
    if routed:
        parts += [st.tokens_per_expert.reshape(-1), st.hist, st.layer_sum, st.layer_tokens]
    flat = torch.cat([t.to(device, torch.float64) for t in parts])
    dist.all_reduce(flat)
    phase_peaks = phase_peaks or [-1] * len(PHASES)
    peak_t = torch.tensor([peak, *phase_peaks], dtype=torch.float64, device=device)
    dist.all_reduce(peak_t, op=dist.ReduceOp.MAX)
    peaks_v = peak_t.tolist()
    flat, peak_v = flat.cpu(), peaks_v[0]
    scalars = flat[:4].tolist()
    out: dict[str, Any] = {
        "loss": scalars[0] / (world * micro_steps),
        "flow_loss": scalars[1] / (world * micro_steps),
        "aux_loss": scalars[2] / (world * micro_steps),
        "peak_bytes": int(peak_v) if peak_v >= 0 else None,
        "memory_tracked": peak_v >= 0,
    }
    if peak_v >= 0:  # each phase's peak (max over ranks): where in the step the peak falls
        out["peak_bytes_by_phase"] = {n: int(v) for n, v in zip(PHASES, peaks_v[1:], strict=True)
                                      if v >= 0}
    if routed:
        counts = flat[4:].long()
        L, E = st.tokens_per_expert.shape
        out["tokens_per_expert"] = counts[: L * E].reshape(L, E).tolist()
        if st.layer_sum.numel():
            rest = counts[L * E:]
            hist = rest[: E + 1]
            nl = st.layer_sum.numel()
            lsum, lnum = rest[E + 1: E + 1 + nl], rest[E + 1 + nl:]
            ks = torch.arange(E + 1)
            nz = ks[hist > 0]
            out["experts_per_token"] = {
                "mean": float((hist * ks).sum() / hist.sum()),
                "min": int(nz.min()), "max": int(nz.max()),
                "hist": hist.tolist(),
                "per_layer_mean": (lsum.double() / lnum.clamp(min=1)).tolist(),
            }
        out["dropped"] = int(scalars[3])
    return out


def param_checksums(model: nn.Module) -> dict[str, Any]:
    """Per-parameter (sum, sum of squares) in float64, split into expert and shared params."""
    out: dict[str, dict[str, list[float]]] = {"expert": {}, "shared": {}}
    for name, p in model.named_parameters():
        t = p.detach().double()
        out["expert" if is_expert_param(p) else "shared"][name] = [t.sum().item(),
                                                                   (t * t).sum().item()]
    return out
