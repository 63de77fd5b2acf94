"""`sweep --design isoflop --flops 1e11,3e11,...`: a sweep designed in FLOPs (Hoffmann et al.
2022, Approach 2). For each compute level C, sizes spread around the expected compute-optimal
size, each trained for the steps that spend C; so every level has its best size inside its
sizes (`scaling.levels` flags a level where it does not).

The expected optimum comes from a stated tokens-per-parameter prior (C = k·N·D, D = r·N, so
N = sqrt(C/(k·r)), k measured on the ladder as model FLOPs per activated parameter per token)
or from a prior fit's headline law (`scaling.allocation`). Sizes are the CPU ladder's cards
nearest each target, or, where no card lies within SIZE_MATCH of a target, a config
synthesised for it (`sizes.resolve`, activated parameters), written as a YAML card.

Learning rate per size and variant: a grid of multipliers of the base rate, at the level
nearest the middle of the design (a representative budget), with the first LR_SEEDS seeds;
the best mean held-out loss sets that (size, variant)'s rate for all its runs, and a best rate
on an edge of the grid is reported (widen the grid).

This module only designs (no torch): `dry_run` lists every run; `sweep` trains them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .. import sizes
from ..config import FFNKind, ModelConfig, Recompute
from ..errors import ConfigError
from ..params import count_params
from ..planner.flops import training_flops_per_image

SIZE_MATCH = 1.25  # a ladder card within this factor of a target is used as is
DEFAULT_TOKENS_PER_PARAM = 20.0  # Hoffmann et al. 2022's compute-optimal ratio, as a prior
MIN_SIZES_PER_LEVEL = 3
LR_SEEDS = 2
KIND_OF_VARIANT = {"dense": FFNKind.DENSE, "tc": FFNKind.TOKEN_CHOICE, "ec": FFNKind.EXPERT_CHOICE}


@dataclass(frozen=True)
class DesignedRun:
    purpose: str  # "sweep" or "lr-search"
    level_flops: float
    card: str  # a registry name or, for a synthesised size, its config name
    variant: str
    active_params: int
    flops_per_image: float
    steps: int
    global_batch: int
    seed: int
    lr_multiplier: float = 1.0
    synthesised: bool = False
    target_params: int = 0  # synthesised: the activated-parameter target it was built for

    @property
    def flops(self) -> float:
        return self.steps * self.global_batch * self.flops_per_image

    def to_dict(self) -> dict:
        return {**asdict(self), "flops": self.flops,
                "images": self.steps * self.global_batch}


@dataclass(frozen=True)
class Design:
    runs: tuple[DesignedRun, ...]
    notes: tuple[str, ...]
    prior: str  # how the expected optimum was set

    def to_dict(self) -> dict:
        return {"prior": self.prior, "notes": list(self.notes),
                "runs": [r.to_dict() for r in self.runs]}


def _variant_kind(variant: str) -> tuple[FFNKind, int]:
    if variant == "dense":
        return FFNKind.DENSE, 1
    return KIND_OF_VARIANT[variant[:2]], int(variant[2:])


@dataclass(frozen=True)
class _Candidate:
    card: str
    cfg: ModelConfig
    active_params: int
    flops_per_image: float
    synthesised: bool
    target: int = 0


def _candidate(card: str, cfg: ModelConfig, synthesised: bool, target: int = 0) -> _Candidate:
    return _Candidate(card=card, cfg=cfg, active_params=count_params(cfg).active_params,
                      flops_per_image=training_flops_per_image(cfg, Recompute.NONE).model_flops,
                      synthesised=synthesised, target=target)


def ladder(variant: str) -> list[_Candidate]:
    """The CPU ladder's cards of one variant, smallest first."""
    return [_candidate(f"{s}-{variant}", sizes.get(f"{s}-{variant}"), False)
            for s in sizes.CPU_SIZES]


def flops_per_param_token(c: _Candidate) -> float:
    return c.flops_per_image / (c.active_params * c.cfg.tokens_per_image)


def pick_sizes(targets, variant: str, cards: list[_Candidate]) -> list[_Candidate]:
    """Per target the nearest ladder card, or a config synthesised for it when none lies within
    SIZE_MATCH (and the synthesis rules reach it); distinct sizes, smallest first."""
    kind, experts = _variant_kind(variant)
    chosen: dict[str, _Candidate] = {}
    for t in targets:
        best = min(cards, key=lambda c: abs(math.log(c.active_params / t)))
        if abs(math.log(best.active_params / t)) > math.log(SIZE_MATCH):
            try:
                r = sizes.resolve(int(round(t)), active=True, kind=kind)
                if not kind == FFNKind.DENSE and r.config.ffn.num_experts != experts:
                    raise ConfigError("expert count differs")
                best = _candidate(r.config.name, r.config, r.synthesised, int(round(t)))
            except ConfigError:
                pass  # outside what the rules build: keep the nearest card
        chosen.setdefault(best.card, best)
    return sorted(chosen.values(), key=lambda c: c.active_params)


def design_isoflop(levels, *, variants, seeds, global_batch: int, sizes_per_level: int = 5,
                   spread: float = 4.0, tokens_per_param: float = DEFAULT_TOKENS_PER_PARAM,
                   optimum=None, lr_grid=(0.5, 1.0, 2.0)) -> Design:
    """The runs of an IsoFLOP design. optimum(variant, C, k) -> N overrides the prior (e.g.
    a fit's allocation)."""
    levels = sorted(float(c) for c in levels)
    if not levels or any(not (math.isfinite(c) and c > 0) for c in levels):
        raise ConfigError(f"--flops {levels}: compute levels in FLOPs, > 0, e.g. 1e11,3e11,1e12")
    if sizes_per_level < MIN_SIZES_PER_LEVEL:
        raise ConfigError(f"--sizes-per-level {sizes_per_level}: at least "
                          f"{MIN_SIZES_PER_LEVEL} (a minimum needs sizes on both sides)")
    if not (math.isfinite(tokens_per_param) and tokens_per_param > 0):
        raise ConfigError(f"--tokens-per-param {tokens_per_param}: a ratio > 0, e.g. 20")
    runs, notes = [], []
    middle = levels[len(levels) // 2]
    for variant in variants:
        cards = ladder(variant)
        k = float(np.median([flops_per_param_token(c) for c in cards]))
        for C in levels:
            n_opt = (optimum(variant, C, k) if optimum is not None
                     else math.sqrt(C / (k * tokens_per_param)))
            picked = pick_sizes(n_opt * np.geomspace(1 / spread, spread, sizes_per_level),
                                variant, cards)
            if len(picked) < MIN_SIZES_PER_LEVEL:
                smallest = cards[0].active_params
                notes.append(f"{variant} at {C:.3g} FLOPs: only {len(picked)} distinct sizes "
                             f"around the expected optimum {n_opt:.3g} activated parameters"
                             + (f", below the smallest size built here ({smallest:,}); levels "
                                f"from {k * tokens_per_param * (smallest * spread) ** 2:.3g} "
                                "FLOPs centre the sizes on the ladder" if n_opt < smallest else
                                " (the ladder and the synthesis rules give no more)"))
            for c in picked:
                steps = max(1, round(C / (c.flops_per_image * global_batch)))
                if steps < 10:
                    notes.append(f"{c.card} at {C:.3g} FLOPs: {steps} steps; below 10 a run "
                                 "is mostly warm-up (drop this level or the size)")
                for seed in seeds:
                    runs.append(DesignedRun("sweep", C, c.card, variant, c.active_params,
                                            c.flops_per_image, steps, global_batch, seed,
                                            synthesised=c.synthesised, target_params=c.target))
                if C == middle:
                    for m in lr_grid:
                        for seed in seeds[:LR_SEEDS]:
                            runs.append(DesignedRun("lr-search", C, c.card, variant,
                                                    c.active_params, c.flops_per_image, steps,
                                                    global_batch, seed, lr_multiplier=m,
                                                    synthesised=c.synthesised,
                                                    target_params=c.target))
    if len(seeds) < LR_SEEDS:
        notes.append(f"{len(seeds)} seed: the learning-rate search wants {LR_SEEDS}")
    prior = ("a prior fit's compute-optimal allocation" if optimum is not None else
             f"a prior of {tokens_per_param:g} tokens per activated parameter")
    return Design(runs=tuple(runs), notes=tuple(notes), prior=prior)
