"""`ecdit-scale sweep`: a ladder of small configs x FFN kinds, trained through the launcher,
turned into one run table for `ecdit-scale fit`.

Compute budgets are points along each run: the learning rate is constant after warm-up (the
paper's schedule), so the loss after k steps of a run to K steps is the loss of a run to k
steps (Kaplan et al. 2020 read budgets off one run the same way). Each (size, variant) trains
once to its largest budget; every budget is one row of the table, with images seen, tokens
seen and compute = steps x the planner's training FLOPs per step.

Finished runs are skipped, interrupted ones resumed from their last complete checkpoint, and
the table is rewritten atomically after every run, so an interrupted sweep loses nothing; a
run whose records are damaged beyond a resume is renamed aside and trained again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import sizes
from ..config import Recompute
from ..errors import ConfigError
from ..params import count_params
from ..planner.flops import training_flops_per_image
from .launch import launch
from .request import LaunchRequest
from .records import RunDir

# (run, samples=, sampling_steps=, seed=) -> GenEval-style score in [0, 1]; the sweep trains,
# evaluation scores (ecdit_scale.evaluation.sampled_alignment.alignment_of_run)
ScoreAlignment = Callable[..., float]

VARIANTS = ("dense", "tc8", "ec8", "tc16", "ec16")
DEFAULT_SIZES = ("nano", "micro", "tiny")
DEFAULT_VARIANTS = ("dense", "tc8", "ec8", "ec16")
DEFAULT_BUDGETS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
SMOOTH_FRACTION = 0.1  # smoothed loss: mean flow loss over the last 10% of steps (>= 5 steps)


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    sizes: tuple[str, ...] = DEFAULT_SIZES
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    steps: int = 300  # steps of the largest budget
    budgets: tuple[float, ...] = DEFAULT_BUDGETS  # fractions of ``steps``, past warm-up
    nproc: int = 1
    micro_batch: int = 16
    dataset: str = "shapes"
    data_limit: int | None = 2048
    lr: float = 1e-3
    seed: int = 0
    alignment_samples: int = 64  # shapes only: sampled images scored for the final budget
    sampling_steps: int = 16
    out: str = "runs/sweep"

    def __post_init__(self) -> None:
        for s in self.sizes:
            if s not in sizes.CPU_SIZES:
                raise ConfigError(f"--sizes {s!r}: valid sizes are {', '.join(sizes.CPU_SIZES)}")
        for v in self.variants:
            if v not in VARIANTS:
                raise ConfigError(f"--variants {v!r}: valid variants are {', '.join(VARIANTS)}")
        if not self.budgets or any(not 0 < b <= 1 for b in self.budgets):
            raise ConfigError(f"--budgets {self.budgets}: fractions of --steps in (0, 1]")
        if self.steps < 10:
            raise ConfigError(f"--steps {self.steps}: a sweep run needs at least 10 steps")

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.nproc

    def runs(self) -> list["SweepRun"]:
        return [SweepRun(card=f"{s}-{v}", run_dir=Path(self.out) / f"{s}-{v}")
                for s in self.sizes for v in self.variants]


@dataclass(frozen=True)
class SweepRun:
    card: str
    run_dir: Path


@dataclass
class SweepResult:
    table_path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # runs set aside, checkpoints passed over


def run_state(spec: "SweepSpec", run: SweepRun) -> str:
    """done | resume | damaged | new.

    done: finished, and every step the table reads has a record. damaged: finished, but a
    step the table reads has no readable record (nothing can resume a finished run)."""
    rd = RunDir(run.run_dir)
    if not rd.exists():
        return "new"
    if rd.read_summary().get("steps_done", 0) < spec.steps:
        return "resume"  # from its newest complete checkpoint, or from step 1 if none
    have = {int(m["step"]) for m in rd.read_metrics()}
    return "done" if set(needed_steps(spec)) <= have else "damaged"


def set_aside(path: Path) -> Path:
    """Rename a run directory out of the sweep's way (``NAME.damaged``, ``.damaged2`` ...)."""
    n, target = 1, path.with_name(f"{path.name}.damaged")
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged{n}")
    path.rename(target)
    return target


def run_sweep(spec: SweepSpec, *, on_event: Callable[[str, SweepRun, int, int], None] | None = None,
              score_alignment: ScoreAlignment | None = None) -> SweepResult:
    """Train every run of the spec (skip / resume / launch) and write the run table.

    A run whose records cannot be completed (a finished run missing a step the table reads,
    or one a resume refuses, e.g. an unreadable metrics line with no checkpoint before it) is
    renamed aside, never deleted, and trained again; ``notes`` says so."""
    import pandas as pd

    from ..scaling.table import save_run_table

    result = SweepResult(table_path=Path(spec.out) / "runs.csv")
    runs = spec.runs()
    for i, run in enumerate(runs):
        state = run_state(spec, run)
        if state == "damaged":
            moved = set_aside(run.run_dir)
            result.notes.append(f"{run.run_dir}: a step the table needs has no readable record "
                                f"in metrics.jsonl; moved to {moved} and trained again")
            state = "new"
        if on_event:
            on_event(state, run, i, len(runs))
        if state == "done":
            result.skipped.append(run.card)
        else:
            try:
                res = launch(launch_request(spec, run, resume=state == "resume"))
            except ConfigError as exc:
                if state != "resume":
                    raise
                moved = set_aside(run.run_dir)
                result.notes.append(f"{exc} -> moved {run.run_dir} to {moved}, trained again")
                state = "new"
                res = launch(launch_request(spec, run, resume=False))
            if res.status == "interrupted":  # the signal was for the whole sweep
                raise KeyboardInterrupt
            result.notes += [f"{run.card}: {n}" for n in res.notes]
            (result.resumed if state == "resume" else result.launched).append(run.card)
            if not res.ok:
                result.failed.append(f"{run.card}: {res.message or res.status}")
                continue
        result.rows.extend(table_rows(spec, run, score_alignment))
        save_run_table(pd.DataFrame(result.rows), result.table_path)
    if on_event:
        on_event("finished", runs[-1], len(runs), len(runs))
    return result


def launch_request(spec: SweepSpec, run: SweepRun, *, resume: bool) -> LaunchRequest:
    return LaunchRequest(card=run.card, nproc=spec.nproc, steps=spec.steps, ep=1, zero=1,
                         micro_batch=spec.micro_batch, dataset=spec.dataset,
                         data_limit=spec.data_limit, out=str(run.run_dir), lr=spec.lr,
                         seed=spec.seed, resume=resume)


def budget_step(spec: SweepSpec, frac: float) -> int:
    return max(1, round(frac * spec.steps))


def smoothing_window(step: int) -> range:
    """The steps whose flow loss is averaged into the smoothed loss at ``step``."""
    return range(step - max(5, math.ceil(SMOOTH_FRACTION * step)) + 1, step + 1)


def needed_steps(spec: SweepSpec) -> list[int]:
    """Every step the table reads: each budget's step and its smoothing window."""
    return sorted({s for frac in spec.budgets for s in smoothing_window(budget_step(spec, frac))
                   if s >= 1})


def table_rows(spec: SweepSpec, run: SweepRun, score_alignment: "ScoreAlignment | None" = None,
               ) -> list[dict[str, Any]]:
    """One row per budget of a finished run; the last carries the alignment score of images
    sampled from the run when a scorer is given (``evaluation.sampled_alignment``)."""
    rd = RunDir(run.run_dir)
    cfg = rd.model_config()
    settings = rd.settings()
    metrics = {int(m["step"]): m for m in rd.read_metrics()}
    b = count_params(cfg)
    flops_per_image = training_flops_per_image(cfg, Recompute.NONE).model_flops
    gb = settings.global_batch
    rows = []
    for frac in spec.budgets:
        step = budget_step(spec, frac)
        window = [metrics[s]["flow_loss"] for s in smoothing_window(step) if s in metrics]
        if step not in metrics or not window:
            raise ConfigError(f"{rd.path}: metrics.jsonl has no step {step}; rerun the sweep to resume it")
        images = step * gb
        rows.append({
            "name": f"{run.card}-b{frac:g}", "card": run.card, "ffn_kind": cfg.ffn.kind.value,
            "experts": cfg.ffn.num_experts, "params": b.total_params,
            "active_params": b.active_params, "images_seen": images,
            "tokens_seen": images * cfg.tokens_per_image,
            "compute_flops": images * flops_per_image, "steps": step, "step_fraction": frac,
            "final_loss": float(metrics[step]["flow_loss"]),
            "smoothed_loss": float(np.mean(window)), "run_dir": str(rd.path),
        })
    if score_alignment is not None and spec.dataset == "shapes" and spec.alignment_samples:
        rows[-1]["alignment"] = score_alignment(rd, samples=spec.alignment_samples,
                                                sampling_steps=spec.sampling_steps, seed=spec.seed)
    return rows
