"""`ecdit-scale sweep`: a ladder of small configs x FFN kinds x seeds, trained through the
launcher, turned into one run table for `ecdit-scale fit`.

Two ways to get a compute budget (``schedule``):

- ``wsd`` (the default): every budget is its own run, warm-up, stable and a linear cooldown
  to 0 over its last ``cooldown_fraction`` of steps, so the loss of a budget is the loss of a run
  trained for that budget (Hoffmann et al. 2022 fit separate runs; Hagele et al. 2024 show
  WSD cooldowns match a cosine run of that length). All budgets of one (size, variant, seed)
  share warm-up, learning rate, seed and data order, so they are one run group for the
  statistics (``run_group``). The loss is the held-out loss at the run's last step
  (``train.heldout``) on a set never trained on, scored at fixed noise.
- ``wsd-branch``: the same runs, trained as one launch per (size, variant, seed): the largest
  budget's run, with each smaller budget's cooldown branched off its stable phase
  (``launch --cooldown-branches``). Up to its last stable step a smaller budget's run *is*
  the larger one (same warm-up, lr, seeds and data order), so its losses are those of the
  separate run, bit for bit (``tests/test_sweep.py``), for one launch instead of one per budget
  and (with budgets 1/8..1, cooldown 0.2) 0.63x the steps (752 instead of 1,200 at 640).
- ``constant``: one run per (size, variant, seed) at a constant learning rate, its budgets read
  off the training curve (Kaplan et al. 2020). Cheaper, but a within-run slope mixes the
  schedule into the data exponent; kept for quick looks.

Data: ``shapes-stream`` by default, drawn fresh for every position, so no run sees an image
twice; or a folder written by ``data prepare`` (``data``: every run ``launch --data``). Sizes:
ladder names, YAML cards or parameter targets (``sweep_cards``); where the launches run at
once, one per GPU or host slot: ``sweep_slots``. Learning rate: ``lr`` for every size, or with
``lr_search`` (multipliers, e.g. 0.5, 1, 2) a small search per size: the size's dense model at
the smallest budget, seed 0, one run per multiplier; the best held-out loss picks that size's
learning rate for every run of the size.

Finished runs are skipped, interrupted ones resumed from their last complete checkpoint, and
the table is rewritten atomically after every run, so an interrupted sweep loses nothing; a
run whose records are damaged beyond a resume is renamed aside and trained again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Recompute
from ..errors import ConfigError
from ..params import count_params
from ..planner.flops import training_flops_per_image
from .launch import launch
from .records import RunDir
from .request import LaunchRequest
from .sweep_lr import chosen_lrs, lr_search_notes, lr_search_row

# (run, samples=, sampling_steps=, seed=) -> GenEval-style score in [0, 1]; the sweep trains,
# evaluation scores (ecdit_scale.evaluation.sampled_alignment.alignment_of_run)
ScoreAlignment = Callable[..., float]

VARIANTS = ("dense", "tc8", "ec8", "tc16", "ec16")
SCHEDULES = ("wsd", "wsd-branch", "constant")
DEFAULT_SIZES = ("nano", "micro", "tiny")
DEFAULT_VARIANTS = ("dense", "tc8", "ec8")
DEFAULT_BUDGETS = (0.25, 0.5, 1.0)
DEFAULT_SEEDS = (0, 1, 2)
SMOOTH_FRACTION = 0.1  # smoothed loss: mean flow loss over the last 10% of steps (>= 5 steps)
LR_SEARCH_VARIANT = "dense"


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    sizes: tuple[str, ...] = DEFAULT_SIZES
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    steps: int = 300  # steps of the largest budget
    budgets: tuple[float, ...] = DEFAULT_BUDGETS  # fractions of ``steps``
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    schedule: str = "wsd"  # wsd: one annealed run per budget | constant: budgets off one run
    cooldown_fraction: float = 0.2
    nproc: int = 1
    micro_batch: int = 16
    dataset: str = "shapes-stream"
    data: str | None = None  # a prepared folder (``data prepare``): replaces ``dataset``
    data_limit: int | None = None  # finite datasets only
    hostfile: str | None = None  # runs spread over its hosts, each its own world (sweep_slots)
    lr: float = 1e-3
    lr_search: tuple[float, ...] = ()  # multipliers of lr tried per size (empty: lr for all)
    holdout: int = 64  # held-out samples scored at the end of every run
    alignment_samples: int = 64  # shapes only: sampled images scored for the final budget
    sampling_steps: int = 16
    device: str = "auto"
    # sweep models are small and their runs short: compiling every block of every run would
    # cost more than it saves (a launch's own default compiles on CUDA)
    compile: str = "none"
    out: str = "runs/sweep"

    def __post_init__(self) -> None:
        from ..datasets.kinds import DATASETS, STREAMS
        from .sweep_cards import resolve_size

        resolved = tuple(resolve_size(s) for s in self.sizes)
        labels = [r.label for r in resolved]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"--sizes {','.join(self.sizes)}: a size is named twice")
        object.__setattr__(self, "_resolved", resolved)
        for v in self.variants:
            if v not in VARIANTS:
                raise ConfigError(f"--variants {v!r}: valid variants are {', '.join(VARIANTS)}")
        if not self.budgets or any(not 0 < b <= 1 for b in self.budgets):
            raise ConfigError(f"--budgets {self.budgets}: fractions of --steps in (0, 1]")
        if self.steps < 10:
            raise ConfigError(f"--steps {self.steps}: a sweep run needs at least 10 steps")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(
                isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < 2**31
                for x in self.seeds):
            raise ConfigError(f"--seeds {self.seeds}: distinct integers in 0..{2**31 - 1}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if not 0 < self.cooldown_fraction <= 1:
            raise ConfigError(f"--cooldown {self.cooldown_fraction}: a fraction in (0, 1]")
        if any(not (math.isfinite(m) and m > 0) for m in self.lr_search):
            raise ConfigError(f"--lr-search {self.lr_search}: positive multipliers, e.g. 0.5,1,2")
        if self.hostfile is not None:
            from .request import parse_hostfile

            parse_hostfile(self.hostfile)  # one line now, before the first launch
        if self.data is not None:
            from ..datasets.prepared import open_prepared

            open_prepared(self.data)  # one line now if it is not a prepared folder
        elif self.dataset not in DATASETS:
            raise ConfigError(f"--dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}")
        if self.dataset in STREAMS and self.data_limit is not None and self.data is None:
            raise ConfigError(f"--limit {self.data_limit}: {self.dataset} never repeats and has "
                              "no size")
        short = min(budget_steps(self, b) for b in self.budgets)
        if self.schedule != "constant" and short < 5:
            raise ConfigError(f"--budgets {min(self.budgets):g} x --steps {self.steps} = {short} "
                              "steps: a wsd budget run needs at least 5")

    @property
    def resolved_sizes(self) -> tuple:
        """The sizes as ``sweep_cards.SweepSize`` (label, and the backbone unless a ladder
        name), in the order given."""
        return self._resolved  # set in __post_init__

    def card(self, size, variant: str) -> tuple[str, str]:
        """(the run's card label, what its launch is given: registry name or card path)."""
        from .sweep_cards import card_arg

        return f"{size.label}-{variant}", card_arg(size, variant, self.out)

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.nproc

    @property
    def warmup_steps(self) -> int:
        """One warm-up for every run of the sweep (the budget runs of a group share their
        first steps): a quarter of the shortest run, at most 100."""
        shortest = min(budget_steps(self, b) for b in self.budgets)
        return max(1, min(100, shortest // 4))

    def runs(self, lr_of: dict[str, float] | None = None) -> list[SweepRun]:
        """Every training run, smallest first; ``lr_of`` (size -> lr) from the search."""
        out, runs = Path(self.out), []
        for size in self.resolved_sizes:
            lr = (lr_of or {}).get(size.label, self.lr)
            for v in self.variants:
                for seed in self.seeds:
                    card, path = self.card(size, v)
                    if self.schedule == "constant":
                        runs.append(SweepRun(card=card, run_dir=out / f"{card}-s{seed}",
                                             card_path=path, steps=self.steps, seed=seed, lr=lr,
                                             budgets=tuple(sorted(self.budgets))))
                        continue
                    if self.schedule == "wsd-branch":
                        top = max(self.budgets)
                        runs.append(SweepRun(
                            card=card, run_dir=out / f"{card}-s{seed}-b{top:g}-branched",
                            card_path=path,
                            steps=budget_steps(self, top), seed=seed, lr=lr, budgets=(1.0,),
                            budget=top, branches=tuple(sorted(
                                (b, budget_steps(self, b)) for b in self.budgets if b < top))))
                        continue
                    for b in sorted(self.budgets):
                        runs.append(SweepRun(card=card, run_dir=out / f"{card}-s{seed}-b{b:g}",
                                             card_path=path,
                                             steps=budget_steps(self, b), seed=seed, lr=lr,
                                             budgets=(1.0,), budget=b))
        return runs

    def lr_runs(self) -> list[SweepRun]:
        """The learning-rate search: each size's dense model, shortest budget, seed 0."""
        b = min(self.budgets)
        wsd = self.schedule != "constant"
        steps = budget_steps(self, b) if wsd else self.steps
        return [SweepRun(card=self.card(size, LR_SEARCH_VARIANT)[0],
                         card_path=self.card(size, LR_SEARCH_VARIANT)[1], steps=steps,
                         seed=self.seeds[0], lr=self.lr * m, budgets=(1.0,),
                         budget=b if wsd else 1.0, run_dir=Path(self.out) / "lr-search"
                         / f"{size.label}-{LR_SEARCH_VARIANT}-x{m:g}")
                for size in self.resolved_sizes for m in self.lr_search]


@dataclass(frozen=True)
class SweepRun:
    card: str
    run_dir: Path
    steps: int = 0
    seed: int = 0
    lr: float = 1e-3
    budgets: tuple[float, ...] = (1.0,)  # fractions of ``steps`` the table reads off this run
    budget: float = 1.0  # wsd: the run's budget as a fraction of the sweep's --steps
    branches: tuple[tuple[float, int], ...] = ()  # wsd-branch: (budget, steps) branched off
    card_path: str | None = None  # what the launch is given (None: ``card``, a registry name)

    @property
    def branch_steps(self) -> tuple[int, ...]:
        return tuple(n for _, n in self.branches)

    @property
    def size(self) -> str:
        return self.card.split("-", 1)[0]

    def step_of(self, frac: float) -> int:
        """The step the table reads for budget ``frac`` of this run's steps."""
        return max(1, round(frac * self.steps))


@dataclass
class SweepResult:
    table_path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # runs set aside, checkpoints passed over
    lr_of: dict[str, float] = field(default_factory=dict)  # size -> the lr its runs used
    lr_search: list[dict[str, Any]] = field(default_factory=list)  # one row per search run
    not_started: list[str] = field(default_factory=list)  # past the deadline (stop_at)
    stop_at: float | None = None


def budget_steps(spec: SweepSpec, frac: float) -> int:
    return max(1, round(frac * spec.steps))


def run_state(spec: SweepSpec, run: SweepRun) -> str:
    """done | resume | damaged | new.

    done: finished, and every step the table reads has a record. damaged: finished, but a
    step the table reads has no readable record (nothing can resume a finished run)."""
    rd = RunDir(run.run_dir)
    if not rd.exists():
        return "new"
    if rd.read_summary().get("steps_done", 0) < run.steps:
        return "resume"  # from its newest complete checkpoint, or from step 1 if none
    have = {int(m["step"]) for m in rd.read_metrics()}
    if any(rd.read_branch(n) is None for n in run.branch_steps):
        return "damaged"  # finished without a branch: nothing resumes a finished run
    return "done" if set(needed_steps(run)) <= have else "damaged"


def set_aside(path: Path) -> Path:
    """Rename a run directory out of the sweep's way (``NAME.damaged``, ``.damaged2`` ...)."""
    n, target = 1, path.with_name(f"{path.name}.damaged")
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged{n}")
    path.rename(target)
    return target


Event = Callable[[str, SweepRun, int, int], None]


def run_sweep(spec: SweepSpec, *, on_event: Event | None = None,
              score_alignment: ScoreAlignment | None = None, parallel: int = 1,
              stop_at: float | None = None) -> SweepResult:
    """The learning-rate search (when asked for), then every run of the spec (skip / resume /
    launch), writing the run table after each. ``parallel`` > 1 keeps that many launches
    going at once (small models leave a GPU, or a many-core CPU, mostly idle); the table
    keeps the spec's order whatever order the runs finish in. Past ``stop_at`` (a
    ``time.monotonic()`` deadline) no new launch starts; those runs are listed in ``not_started``.

    A run whose records cannot be completed (a finished run missing a step the table reads,
    or one a resume refuses, e.g. an unreadable metrics line with no checkpoint before it) is
    renamed aside, never deleted, and trained again; ``notes`` says so."""
    import pandas as pd

    from ..scaling.table import save_run_table

    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(f"--parallel {parallel!r}: an integer >= 1")
    result = SweepResult(table_path=Path(spec.out) / "runs.csv", stop_at=stop_at)
    from .sweep_cards import write_cards

    write_cards(spec.resolved_sizes, spec.variants, spec.out, spec.data)
    from .sweep_slots import sweep_slots

    slots = sweep_slots(parallel=parallel, nproc=spec.nproc, device=spec.device,
                        hostfile=spec.hostfile, out=spec.out)
    search = spec.lr_runs()
    runs = search + spec.runs()  # the main runs' lr is known once the search is done
    n = len(runs)
    found: dict[int, dict[str, Any]] = {}
    _train_all(spec, search, result, on_event, 0, n, slots,
               lambda i, run: found.__setitem__(i, lr_search_row(run)))
    result.lr_search = [found[i] for i in sorted(found)]
    result.lr_of = chosen_lrs(spec, result.lr_search)
    result.notes += lr_search_notes(spec, result.lr_of)
    if search:
        save_run_table(pd.DataFrame(result.lr_search), Path(spec.out) / "lr-search.csv")
    rows: dict[int, list[dict[str, Any]]] = {}

    def add_rows(i: int, run: SweepRun) -> None:
        rows[i] = table_rows(spec, run, score_alignment)
        result.rows = [r for k in sorted(rows) for r in rows[k]]
        save_run_table(pd.DataFrame(result.rows), result.table_path)

    _train_all(spec, spec.runs(result.lr_of), result, on_event, len(search), n, slots,
               add_rows)
    if on_event and runs:
        on_event("finished", runs[-1], n, n)
    return result


def _train_all(spec: SweepSpec, runs: list[SweepRun], result: SweepResult,
               on_event: Event | None, offset: int, n: int, slots: list,
               then: Callable[[int, SweepRun], None]) -> None:
    """``_train`` each run, one per slot at a time (``sweep_slots``: each launch on devices of
    its own); ``then(i, run)`` (in this thread) after each that succeeded. Ctrl-C reaches only
    this thread: it is passed to every running launch, which stops at a resumable point, and
    then raised."""
    if len(slots) == 1:
        for i, run in enumerate(runs):
            if _train(spec, run, result, on_event, offset + i, n, slots[0]):
                then(i, run)
        return
    import queue
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from .process import interrupt_all

    free: queue.Queue = queue.Queue()
    for slot in slots:
        free.put(slot)

    def in_a_slot(run: SweepRun, i: int) -> bool:
        slot = free.get()
        try:
            return _train(spec, run, result, on_event, offset + i, n, slot)
        finally:
            free.put(slot)

    pool = ThreadPoolExecutor(max_workers=len(slots))
    futures = {pool.submit(in_a_slot, run, i): i for i, run in enumerate(runs)}
    try:
        for fut in as_completed(futures):
            if fut.result():
                then(futures[fut], runs[futures[fut]])
    except BaseException:
        for fut in futures:
            fut.cancel()
        interrupt_all()
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)


def _train(spec: SweepSpec, run: SweepRun, result: SweepResult, on_event: Event | None,
           i: int, n: int, slot=None) -> bool:
    """Skip, resume or launch one run; False if it failed (recorded in ``result``)."""
    state = run_state(spec, run)
    if state == "damaged":
        moved = set_aside(run.run_dir)
        result.notes.append(f"{run.run_dir}: a step the table needs has no readable record "
                            f"in metrics.jsonl; moved to {moved} and trained again")
        state = "new"
    if on_event:
        on_event(state, run, i, n)
    name = run.run_dir.name
    if state == "done":
        result.skipped.append(name)
        return True
    if result.stop_at is not None and time.monotonic() > result.stop_at:
        result.not_started.append(name)
        return False
    try:
        res = launch(launch_request(spec, run, resume=state == "resume", slot=slot))
    except ConfigError as exc:
        if state != "resume":
            raise
        moved = set_aside(run.run_dir)
        result.notes.append(f"{exc} -> moved {run.run_dir} to {moved}, trained again")
        state = "new"
        res = launch(launch_request(spec, run, resume=False, slot=slot))
    if res.status == "interrupted":  # the signal was for the whole sweep
        raise KeyboardInterrupt
    result.notes += [f"{name}: {n}" for n in res.notes]
    (result.resumed if state == "resume" else result.launched).append(name)
    if not res.ok:
        result.failed.append(f"{name}: {res.message or res.status}")
        return False
    return True


def launch_request(spec: SweepSpec, run: SweepRun, *, resume: bool, slot=None) -> LaunchRequest:
    """The launch of one run; ``slot`` (``sweep_slots.Slot``): the devices and host it runs on."""
    return LaunchRequest(devices=slot and slot.devices, host=slot and slot.host,
                         hostfile=slot and slot.hostfile, card=run.card_path or run.card,
                         nproc=spec.nproc, steps=run.steps, ep=1,
                         # one rank: nothing for ZeRO to partition (and its optimizer wrapper
                         # costs a second at every start); several: the optimizer state
                         zero=0 if spec.nproc == 1 else 1,
                         micro_batch=spec.micro_batch, dataset=spec.dataset,
                         data=spec.data,
                         data_limit=spec.data_limit, holdout=spec.holdout,
                         out=str(run.run_dir), lr=run.lr, seed=run.seed,
                         warmup_steps=spec.warmup_steps,
                         schedule="constant" if spec.schedule == "constant" else "wsd",
                         cooldown_branches=run.branch_steps,
                         cooldown_fraction=spec.cooldown_fraction, device=spec.device,
                         compile=spec.compile,
                         checkpoint_every=max(1, run.steps // 2), eval_every=eval_every(run),
                         resume=resume)


def eval_every(run: SweepRun) -> int:
    """Held-out loss at every budget the table reads off the run (their common divisor; 0:
    the last step only)."""
    steps = [run.step_of(f) for f in run.budgets]
    return 0 if steps == [run.steps] else math.gcd(*steps)


def smoothing_window(step: int) -> range:
    """The steps whose flow loss is averaged into the smoothed loss at ``step``."""
    return range(step - max(5, math.ceil(SMOOTH_FRACTION * step)) + 1, step + 1)


def needed_steps(run: SweepRun) -> list[int]:
    """Every step the table reads: each budget's step and its smoothing window."""
    return sorted({s for frac in run.budgets
                   for s in smoothing_window(run.step_of(frac)) if s >= 1})


def table_rows(spec: SweepSpec, run: SweepRun, score_alignment: ScoreAlignment | None = None,
               ) -> list[dict[str, Any]]:
    """One row per budget read off a finished run (wsd: its last step, with the held-out
    loss); the last row carries the alignment score of images sampled from the run when a
    scorer is given (``evaluation.sampled_alignment``)."""
    rd = RunDir(run.run_dir)
    cfg = rd.model_config()
    settings = rd.settings()
    summary = rd.read_summary()
    metrics = {int(m["step"]): m for m in rd.read_metrics()}
    b = count_params(cfg)
    flops_per_image = training_flops_per_image(cfg, Recompute.NONE).model_flops
    gb = settings.global_batch
    rows = []
    # (budget, the step read, the records): a branch's own steps over the stable run's before
    reads = [(b, n, {**metrics, **{int(m["step"]): m for m in rd.read_branch(n) or []}})
             for b, n in run.branches]
    reads += [(run.budget if spec.schedule != "constant" else frac, run.step_of(frac), metrics)
              for frac in run.budgets]
    for budget, step, recs in reads:
        window = [recs[s]["flow_loss"] for s in smoothing_window(step) if s in recs]
        if step not in recs or not window:
            raise ConfigError(f"{rd.path}: metrics.jsonl has no step {step}; "
                              "rerun the sweep to resume it")
        images = step * gb
        heldout = recs[step].get("heldout_loss")
        rows.append({
            "name": f"{run.card}-s{run.seed}-b{budget:g}", "card": run.card,
            "ffn_kind": cfg.ffn.kind.value, "experts": cfg.ffn.num_experts,
            "params": b.total_params, "active_params": b.active_params, "images_seen": images,
            "tokens_seen": images * cfg.tokens_per_image,
            "compute_flops": images * flops_per_image, "steps": step, "step_fraction": budget,
            "seed": run.seed, "lr": run.lr, "schedule": spec.schedule,
            "final_loss": float(recs[step]["flow_loss"]),
            "smoothed_loss": float(np.mean(window)),
            "heldout_loss": float(heldout) if heldout is not None else float("nan"),
            "dataset": settings.dataset, "train_samples": summary.get("train_samples"),
            "run_group": f"{run.card}-s{run.seed}", "run_dir": str(rd.path),
        })
    if score_alignment is not None and spec.data is None \
            and spec.dataset in ("shapes", "shapes-stream") \
            and spec.alignment_samples and run.budget == max(spec.budgets):
        rows[-1]["alignment"] = score_alignment(rd, samples=spec.alignment_samples,
                                                sampling_steps=spec.sampling_steps, seed=run.seed)
    return rows
