"""The held-out loss: flow-matching loss on samples the run never trains on, at a fixed grid of
noise levels with fixed noise, so that two checkpoints (or two runs) are scored on exactly
the same problems.

Training loss is a poor scaling quantity: it is noisy (random t and noise every step), it is
measured on images the model has seen, and a model with more total parameters (MoE) can
memorise more of a small set. Here every (sample i, level j) pair is one fixed problem:

    t_j = (j + 0.5) / T,   eps_ij ~ N(0, I) from a generator seeded by (EVAL_NOISE_SEED, i, j),
    x_t = (1 - t_j) x0_i + t_j eps_ij,   loss_ij = mean((v(x_t, t_j, c_i) - (eps_ij - x0_i))^2)

(the same rectified-flow target as ``model.rectified_flow_loss``). The noise depends on the
sample's position in the held-out set and the level only: not on the run's seed, model or step.

With expert parallelism every rank holds only its own experts, so the evaluation is collective:
the pairs are split evenly over the ranks, every rank runs the same number of forwards of
``micro_batch`` rows (the shape training uses, so expert-choice capacity and routing groups are
as in training), and the per-level sums are all-reduced. When the pairs do not fill a whole
number of chunks per rank, the grid is cut to whole chunks (or, if smaller than one chunk per
rank, wrapped around); ``pairs`` records how many problems were scored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

EVAL_NOISE_SEED = 20_240_917  # the held-out noise stream, shared by every run


def timestep_grid(levels: int) -> np.ndarray:
    """t_j = (j + 0.5) / levels: the midpoints of ``levels`` equal bins of (0, 1)."""
    return (np.arange(levels) + 0.5) / levels


def pair_noise(shape: tuple[int, ...], sample: int, level: int) -> torch.Tensor:
    """The fixed noise of problem (sample, level), on the CPU in float32 (device-independent)."""
    gen = torch.Generator().manual_seed(
        int(np.random.SeedSequence([EVAL_NOISE_SEED, sample, level]).generate_state(1)[0]))
    return torch.randn(shape, generator=gen)


def rank_pairs(n_pairs: int, *, rank: int, world: int, chunk: int) -> np.ndarray:
    """This rank's problem indices: an equal, whole number of ``chunk``-row forwards per rank."""
    per_rank = max(chunk, (n_pairs // (world * chunk)) * chunk)
    start = rank * per_rank
    return np.arange(start, start + per_rank) % n_pairs


@dataclass
class HeldOutLoss:
    """Scores a model on the held-out problems; ``__call__`` is collective over all ranks."""

    x0: torch.Tensor  # (P_r, C, H, W) this rank's clean samples, one row per problem
    eps: torch.Tensor  # (P_r, C, H, W) their fixed noise
    t: torch.Tensor  # (P_r,) float32 levels
    level: torch.Tensor  # (P_r,) int64 level index of each problem
    text: torch.Tensor  # (P_r, T, D)
    levels: int
    chunk: int
    pairs: int  # problems scored over all ranks
    samples: int  # distinct held-out samples

    @classmethod
    def build(cls, images: torch.Tensor, text: torch.Tensor, *, levels: int, rank: int,
              world: int, chunk: int, device: torch.device) -> HeldOutLoss:
        n = images.shape[0]
        if n < 1:
            raise ValueError("no held-out samples to score")
        idx = rank_pairs(n * levels, rank=rank, world=world, chunk=chunk)
        sample, level = idx // levels, idx % levels
        grid = torch.tensor(timestep_grid(levels), dtype=torch.float32)
        shape = tuple(images.shape[1:])
        eps = torch.stack([pair_noise(shape, int(i), int(j))
                           for i, j in zip(sample, level, strict=True)])
        rows = torch.from_numpy(sample)
        return cls(x0=images[rows].to(device), eps=eps.to(device),
                   t=grid[torch.from_numpy(level)].to(device),
                   level=torch.from_numpy(level).to(device), text=text[rows].to(device),
                   levels=levels, chunk=chunk, pairs=len(idx) * world, samples=n)

    @torch.no_grad()
    def __call__(self, model: nn.Module, *, bf16: bool = False) -> dict[str, Any]:
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()  # no condition dropout; routing is the same code in both modes
        channels = self.x0.shape[1]
        sums = torch.zeros(self.levels, dtype=torch.float64, device=self.x0.device)
        counts = torch.zeros(self.levels, dtype=torch.float64, device=self.x0.device)
        try:
            for lo in range(0, self.x0.shape[0], self.chunk):
                rows = slice(lo, lo + self.chunk)
                x0, eps, t = self.x0[rows], self.eps[rows], self.t[rows]
                x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
                c = self.text[rows]
                if bf16:
                    x_t, c = x_t.bfloat16(), c.bfloat16()
                pred = model(x_t, t, c, None)[:, :channels].float()
                per_row = ((pred - (eps - x0).float()) ** 2).flatten(1).mean(1).double()
                sums.index_add_(0, self.level[rows], per_row)
                counts.index_add_(0, self.level[rows], torch.ones_like(per_row))
        finally:
            model.train(was_training)
        both = torch.cat([sums, counts])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(both)
        by_level = (both[: self.levels] / both[self.levels:].clamp(min=1)).cpu().tolist()
        return {"heldout_loss": float(np.mean(by_level)), "heldout_loss_by_t": by_level,
                "heldout_s": time.perf_counter() - t0}
