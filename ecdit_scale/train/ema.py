"""An exponential moving average of the weights, as DiT keeps (Peebles & Xie 2023: decay
0.9999, updated after every optimizer step), in fp32 whatever the training precision.

    ema <- decay * ema + (1 - decay) * weight

Where it lives (plan.yaml ``training.ema``; ``planner.memory`` counts its bytes):

- ``replicated``: every rank keeps the EMA of all the parameters it holds (the shared ones and
  its local experts): a full copy per rank.
- ``sharded``: each rank keeps the EMA of a 1/N share of those parameters, N being the group
  the parameter is data-parallel over (the data-parallel group for shared parameters, the
  expert-data-parallel group for expert parameters, as ZeRO partitions optimizer state). The
  share is by parameter index (parameter i belongs to rank i mod N), not by DeepSpeed's flat
  ZeRO partition, whose boundaries cut through parameters: the bytes per rank are the same
  1/N up to one parameter's size, and each share is a whole tensor, simple to save and load.

Each rank saves its EMA next to DeepSpeed's checkpoint files (``ema_rank{r}.pt`` in the
checkpoint folder) and loads it on resume, so a resumed run's EMA is the uninterrupted one's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import EMA

EMA_FILE = "ema_rank{rank}.pt"


@dataclass(frozen=True)
class Share:
    """Which parameters this rank averages: ``size`` ranks split each kind of parameter."""

    shared_rank: int
    shared_size: int
    expert_rank: int
    expert_size: int

    def keeps(self, index: int, is_expert: bool) -> bool:
        rank, size = ((self.expert_rank, self.expert_size) if is_expert
                      else (self.shared_rank, self.shared_size))
        return index % size == rank


class WeightEMA:
    """The fp32 EMA of the parameters of ``model`` this rank keeps (``mode``, ``share``)."""

    def __init__(self, model: nn.Module, *, mode: EMA, decay: float, share: Share,
                 is_expert) -> None:
        self.mode, self.decay = EMA(mode), float(decay)
        self.params: dict[str, nn.Parameter] = {}
        counters = {True: 0, False: 0}
        for name, p in model.named_parameters():
            expert = bool(is_expert(p))
            index = counters[expert]
            counters[expert] += 1
            if self.mode is EMA.REPLICATED or share.keeps(index, expert):
                self.params[name] = p
        self.shadow = {n: p.detach().float().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.params.items():
            self.shadow[name].mul_(self.decay).add_(p.detach().float(), alpha=1.0 - self.decay)

    def numel(self) -> int:
        return sum(t.numel() for t in self.shadow.values())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.shadow.values())

    def checksum(self) -> list[float]:
        """(sum, sum of squares) over this rank's EMA, in float64."""
        total = sq = 0.0
        for t in self.shadow.values():
            d = t.double()
            total += d.sum().item()
            sq += (d * d).sum().item()
        return [total, sq]

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode.value, "decay": self.decay,
                "shadow": {n: t.cpu() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any], *, source: str) -> None:
        shadow = state.get("shadow", {})
        if state.get("mode") != self.mode.value or set(shadow) != set(self.shadow):
            raise ValueError(f"{source}: the EMA there ({state.get('mode')}, {len(shadow)} "
                             f"tensors) is not this run's ({self.mode.value}, "
                             f"{len(self.shadow)} tensors)")
        for name, t in shadow.items():
            self.shadow[name].copy_(t)

    def save(self, folder: Path, rank: int) -> Path:
        """Write atomically (a temporary file renamed), so a kill leaves no torn file."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / EMA_FILE.format(rank=rank)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        return path

    def load(self, folder: Path, rank: int) -> None:
        path = folder / EMA_FILE.format(rank=rank)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: this run keeps an EMA, but the checkpoint has "
                                    "none for this rank")
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data
        self.load_state_dict(state, source=str(path))


def make_ema(model: nn.Module, *, mode: EMA, decay: float, dp_rank: int, dp_size: int,
             expert_dp_rank: int, expert_dp_size: int, is_expert) -> WeightEMA | None:
    if EMA(mode) is EMA.NONE:
        return None
    share = Share(shared_rank=dp_rank, shared_size=dp_size, expert_rank=expert_dp_rank,
                  expert_size=expert_dp_size)
    return WeightEMA(model, mode=mode, decay=decay, share=share, is_expert=is_expert)
