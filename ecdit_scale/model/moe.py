"""The three FFN kinds: dense, GShard top-k token choice, and expert choice.

Routing, dispatch, expert compute and combine are separate steps (megablocks style). Between
dispatch and combine, tokens are laid out expert-major as x_ECD (experts, slots, d); that is
the one place an all-to-all goes for expert parallelism: ``exchange`` (identity by default)
sends each expert's slots to the rank that owns it, and brings the results back.
"""

from __future__ import annotations

# Shape suffixes (torchtitan's convention): a tensor named x_BSD has dims (B, S, D).
#   B images in the batch   S image tokens per image   T text tokens per caption
#   D model width           F FFN hidden width         H attention heads   K head dim
#   E experts               C tokens an expert picks per routing group ((S·f_c)/E)
#   G routing groups        N tokens (flattened)        P pixels of a patch (p·p·channels)
import abc
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FFNKind, ModelConfig
from .layers import Mlp
from .recompute import EXPERT_OPS, checkpoint_keeping


@dataclass(frozen=True)
class RoutingStats:
    """What one MoE layer did in its last forward pass."""

    experts_per_token: torch.Tensor  # (B, S) int: experts that processed each image token
    tokens_per_expert: torch.Tensor  # (E,) int: tokens each expert processed (all groups)
    # token-choice assignments dropped over capacity (0 for expert choice); a tensor on the
    # layer's device, so that routing never waits for the device to read it
    dropped: torch.Tensor | int
    aux_loss: torch.Tensor  # load-balancing loss (zero for expert choice)


def one_hot(index: torch.Tensor, classes: int) -> torch.Tensor:
    """``F.one_hot`` without its range check, which reads the index's min and max back from
    the device (two syncs per call on CUDA); the indices here come from topk/argmax over
    ``classes`` and are in range by construction."""
    return (index.unsqueeze(-1) == torch.arange(classes, device=index.device)).long()


class LocalExchange(nn.Module):
    """No expert parallelism: every expert is local."""

    def dispatch(self, x_ECD: torch.Tensor) -> torch.Tensor:
        return x_ECD

    def combine(self, y_ECD: torch.Tensor) -> torch.Tensor:
        return y_ECD


class Experts(nn.Module):
    """E full-size FFN experts evaluated as batched matmuls: (E, N, d) -> (E, N, d)."""

    def __init__(self, num_experts: int, d: int, hidden: int):
        super().__init__()
        self.w_in_EDF = nn.Parameter(torch.empty(num_experts, d, hidden))
        self.b_in_EF = nn.Parameter(torch.zeros(num_experts, hidden))
        self.w_out_EFD = nn.Parameter(torch.empty(num_experts, hidden, d))
        self.b_out_ED = nn.Parameter(torch.zeros(num_experts, d))
        for w in (self.w_in_EDF, self.w_out_EFD):  # per-expert xavier, like a dense FFN
            bound = math.sqrt(6.0 / (w.shape[1] + w.shape[2]))
            nn.init.uniform_(w, -bound, bound)

    def forward(self, x_END: torch.Tensor) -> torch.Tensor:
        return expert_ffn(x_END, self.w_in_EDF, self.b_in_EF, self.w_out_EFD, self.b_out_ED)


def expert_ffn(x_END: torch.Tensor, w_in_EDF: torch.Tensor, b_in_EF: torch.Tensor,
               w_out_EFD: torch.Tensor, b_out_ED: torch.Tensor) -> torch.Tensor:
    """E GELU FFNs at once: two batched matmuls with their biases, whatever E is."""
    h = torch.baddbmm(b_in_EF.unsqueeze(1), x_END, w_in_EDF)
    return torch.baddbmm(b_out_ED.unsqueeze(1), F.gelu(h, approximate="tanh"), w_out_EFD)


class MoELayer(nn.Module, abc.ABC):
    """Shared by both routing kinds: router, dispatch (gather), experts, combine (scatter-add)."""

    def __init__(self, cfg: ModelConfig, *, num_local_experts: int | None = None):
        super().__init__()
        d, self.num_experts = cfg.hidden_size, cfg.ffn.num_experts
        self.group_tokens = cfg.routing_group_tokens
        self.capacity = cfg.expert_capacity
        self.router = nn.Linear(d, self.num_experts, bias=False)
        self.experts = Experts(num_local_experts or self.num_experts, d, cfg.mlp_hidden)
        self.exchange: nn.Module = LocalExchange()
        self.last_stats: RoutingStats | None = None
        # selective recompute: GELU of the experts is rerun in backward (set_recompute)
        self.recompute_experts = False
        nn.init.normal_(self.router.weight, std=0.02)

    @abc.abstractmethod
    def route(self, probs_GSE: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                     torch.Tensor | int]:
        """Return (token index, gate, slot-valid mask), each (G, E, C), and the dropped count."""

    def aux_loss(self, probs_GSE: torch.Tensor, idx_GEC: torch.Tensor) -> torch.Tensor:
        return probs_GSE.new_zeros(())

    def run_experts(self, x_ECD: torch.Tensor) -> torch.Tensor:
        """The experts on their slots, after the dispatch: with selective recompute their GELU
        is rerun in backward from the kept matmul outputs; no communication in that region."""
        if self.recompute_experts:
            return checkpoint_keeping(self.experts, x_ECD, keep=EXPERT_OPS)
        return self.experts(x_ECD)

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        B, S, D = x_BSD.shape
        n = B * S
        if n % self.group_tokens:
            raise ValueError(f"{n} tokens do not split into routing groups of {self.group_tokens}")
        x_GSD = x_BSD.reshape(n // self.group_tokens, self.group_tokens, D)
        G = x_GSD.shape[0]
        probs_GSE = torch.softmax(self.router(x_GSD).float(), dim=-1)  # affinities over experts
        idx_GEC, gate_GEC, valid_GEC, dropped = self.route(probs_GSE)
        E, C = idx_GEC.shape[1], idx_GEC.shape[2]
        # dispatch: gather each expert's tokens, expert-major (E, G*C, D)
        gathered = torch.gather(x_GSD, 1, idx_GEC.reshape(G, E * C, 1).expand(-1, -1, D))
        x_ECD = gathered.reshape(G, E, C, D).transpose(0, 1).reshape(E, G * C, D)
        y_ECD = self.exchange.combine(self.run_experts(self.exchange.dispatch(x_ECD)))
        # combine: weight by the affinity and scatter-add back to the tokens
        y_GECD = y_ECD.reshape(E, G, C, D).transpose(0, 1)
        w_GEC = (gate_GEC * valid_GEC).to(y_GECD.dtype)
        # experts may run in a lower precision (autocast): combine in theirs, return in x's
        y_GSD = torch.zeros_like(x_GSD, dtype=y_GECD.dtype).scatter_add_(
            1, idx_GEC.reshape(G, E * C, 1).expand(-1, -1, D),
            (y_GECD * w_GEC.unsqueeze(-1)).reshape(G, E * C, D))
        counts_GS = torch.zeros(G, self.group_tokens, dtype=torch.long, device=x_BSD.device)
        counts_GS.scatter_add_(1, idx_GEC.reshape(G, E * C), valid_GEC.reshape(G, E * C).long())
        self.last_stats = RoutingStats(
            experts_per_token=counts_GS.detach().reshape(B, S),
            tokens_per_expert=valid_GEC.sum(dim=(0, 2)).detach(),
            dropped=dropped,
            aux_loss=self.aux_loss(probs_GSE, idx_GEC),
        )
        return y_GSD.reshape(B, S, D).to(x_BSD.dtype)


class ExpertChoiceMoE(MoELayer):
    """Each expert takes its top-C tokens of the group along the token axis (Zhou et al. 2022).

    C = S * f_c / E; every expert is loaded with exactly C tokens, so no balancing loss is
    needed; a token gets anywhere from 0 to E experts.
    """

    def route(self, probs_GSE):
        gate_GEC, idx_GEC = torch.topk(probs_GSE.transpose(1, 2), k=self.capacity, dim=-1)
        return idx_GEC, gate_GEC, torch.ones_like(gate_GEC, dtype=torch.bool), 0


class TokenChoiceMoE(MoELayer):
    """GShard top-k: each token picks k experts; an expert keeps at most C of them, first
    choices before second choices; the rest are dropped. Gates of the k picks sum to one."""

    def __init__(self, cfg: ModelConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.top_k, self.aux_coef = cfg.ffn.top_k, cfg.ffn.aux_loss_coef
        if not cfg.ffn.drop_tokens:  # room for every token: no drops, padded compute
            self.capacity = self.group_tokens

    def route(self, probs_GSE):
        G, S, E = probs_GSE.shape
        k, C = self.top_k, self.capacity
        top_p, top_e = torch.topk(probs_GSE, k=k, dim=-1)  # (G, S, k)
        top_p = top_p / top_p.sum(dim=-1, keepdim=True)
        # priority order: all first choices, then all second choices (GShard)
        choice_e = top_e.transpose(1, 2).reshape(G, k * S)
        choice_p = top_p.transpose(1, 2).reshape(G, k * S)
        token = torch.arange(S, device=probs_GSE.device).repeat(k).expand(G, -1)
        onehot = one_hot(choice_e, E)  # (G, kS, E)
        slot = ((torch.cumsum(onehot, dim=1) - 1) * onehot).sum(-1)  # position in its expert
        keep = slot < C
        # each kept assignment goes to its slot; the dropped ones all go to a spare slot C,
        # cut off after the scatter: no boolean indexing, so no device-to-host sync (its
        # nonzero) and no graph break under torch.compile
        dev = probs_GSE.device
        slot_kept = torch.where(keep, slot, torch.full_like(slot, C))
        g = torch.arange(G, device=dev)[:, None]
        flat = ((g * E + choice_e) * (C + 1) + slot_kept).reshape(-1)

        def place(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
            out = torch.zeros(G * E * (C + 1), dtype=dtype, device=dev)
            out.scatter_(0, flat, values.reshape(-1).to(dtype))
            return out.view(G, E, C + 1)[..., :C].contiguous()

        idx_GEC = place(token, torch.long)
        gate_GEC = place(choice_p, probs_GSE.dtype)
        valid_GEC = place(keep, torch.bool)
        return idx_GEC, gate_GEC, valid_GEC, (~keep).sum()

    def aux_loss(self, probs_GSE, idx_GEC):
        """Switch/GShard balancing loss: E * sum_e (share of first choices) * (mean affinity)."""
        E = probs_GSE.shape[-1]
        first = one_hot(probs_GSE.argmax(-1), E).float().mean(dim=(0, 1))
        return self.aux_coef * E * (first * probs_GSE.mean(dim=(0, 1))).sum()


def make_ffn(cfg: ModelConfig, *, moe: bool, num_local_experts: int | None = None) -> nn.Module:
    if not moe or cfg.ffn.kind is FFNKind.DENSE:
        return Mlp(cfg.hidden_size, cfg.mlp_hidden)
    layer = ExpertChoiceMoE if cfg.ffn.kind is FFNKind.EXPERT_CHOICE else TokenChoiceMoE
    return layer(cfg, num_local_experts=num_local_experts)
