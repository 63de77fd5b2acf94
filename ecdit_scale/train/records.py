"""The run directory: everything a launched run leaves behind, written atomically.

    runs/NAME/
      card.yaml          the resolved model config (``config.load_model_config`` reads it)
      run.json           launch settings (RunSettings): world, ep, ZeRO, batch, recompute,
                         optimizer, lr, warm-up, precision, EMA, data, seed, the plan followed
                         and notes on where the run departs from it
      ds_config.json     the DeepSpeed config the ranks were started with
      predictions.json   the planner's predictions for this run (params, FLOPs, memory)
      metrics.jsonl      one JSON object per optimizer step (appended whole, fsync'd)
      summary.json       the outcome: status, steps, losses, timings, measured params/memory
      data.json          a --data run: the prepared folder (manifest hash, source, encoders)
                         and the held-out items by name
      launch.log         the deepspeed launcher's stdout + stderr
      checkpoints/       DeepSpeed checkpoints, one tag per saved step (``step{n}``), with each
                         rank's fp32 EMA of the weights (ema_rank{r}.pt, ``train.ema``)
      checksums/         per-rank parameter checksums at the end (rank{r}.json)
      worker.pid         rank 0's pid while the ranks run (a resume refuses a live run)
      metrics.rejected   lines of metrics.jsonl a resume could not read (kept, with line numbers)
      branches/          wsd cooldown branches (``--cooldown-branches``): b<N>.jsonl, the
                         records of the N-step run annealed off this run's stable phase

Resume (``RunDir.resume_point``): from the newest intact checkpoint (every rank saved it:
its ``ecdit_complete.json`` lists the files with their sizes and sha256, checked before a
resume, because DeepSpeed 0.19.8 unpickles its files with ``torch.load(weights_only=False)``:
its ZeRO optimizer files hold a ``LossScaler`` object, so only bytes this run wrote may reach
it; DeepSpeed's ``checkpoints/latest`` is only a hint) whose steps all have a record in
metrics.jsonl. Records past that step are dropped (the run makes them again), lines that are
not records are moved to metrics.rejected, never deleted, and every checkpoint or line passed
over is named. The data order and the noise are functions of the step, so the loss curve
continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field, make_dataclass, replace
from pathlib import Path
from typing import Any

from ..config import ParallelLayout, TrainingConfig
from ..errors import ConfigError
from ..files import atomic_write_text, json_default, to_plain
from .jsonfiles import MetricsScan, append_jsonl, read_json, read_jsonl, scan_metrics, write_json  # noqa: F401
from .settings import Device, TCImpl, declared, field_types, recorded  # noqa: F401 (Device,

# TCImpl: their home was here)

CHECKPOINT_TAG = "step{step}"
# a run stopped by its divergence guard (``cadence.DivergenceGuard``) exits with this: not 1
# (a crash: see launch.log), not 2 (bad input: nothing ran), not 130 (interrupted)
DIVERGED_EXIT = 3
COMPLETE_MARKER = "ecdit_complete.json"  # in a checkpoint folder: every rank saved it
_TAG_RE = re.compile(r"^step(\d+)$")


# ---------------------------------------------------------------------------------------------
# Launch settings
# ---------------------------------------------------------------------------------------------


def _recorded_fields() -> list[tuple[str, Any, Any]]:
    """RunSettings' plain fields: the settings declared with ``record="run"``; those a run.json
    may lack (``optional``) default to what such a run used (``Setting.absent``)."""
    hints = field_types()
    out = []
    for f, s in declared():
        if s.record == "run":
            out.append((f.name, hints[f.name], field(default=s.absent[0]) if s.optional
                        else field()))
    return out


_RecordedSettings = make_dataclass("_RecordedSettings", _recorded_fields(), frozen=True,
                                   kw_only=True)


@dataclass(frozen=True, kw_only=True)
class RunSettings(_RecordedSettings):
    """What ``launch`` decided; the worker on every rank reads it from run.json.

    The plain settings are those ``settings.LaunchSettings`` declares with ``record="run"``;
    the layout and the training recipe are the planner's own config types (validated there),
    whose launch settings read as properties here (``s.lr``). run.json stores everything
    flat, one key per setting (``to_dict``).
    """

    card: str  # what the user passed (registry name or path)
    model_name: str
    nodes: int
    nproc_per_node: int
    layout: ParallelLayout  # dp = world, ep, ZeRO stage, micro-batch, recompute
    training: TrainingConfig  # steps, global batch, optimizer, precision, lr, warm-up, EMA
    plan: str | None = None  # the plan directory this run follows (``launch --plan``), if any
    notes: tuple[str, ...] = ()  # where the run differs from what was asked, and why

    def __post_init__(self) -> None:
        for f, s in declared():
            if s.record == "run" and s.enum is not None:
                object.__setattr__(self, f.name, s.enum(getattr(self, f.name)))
        object.__setattr__(self, "notes", tuple(self.notes))
        object.__setattr__(self, "cooldown_branches",
                           tuple(int(n) for n in self.cooldown_branches))
        if self.layout.dp != self.world:
            raise ValueError(f"layout.dp {self.layout.dp} != world {self.world}")
        if self.training.global_batch != self.micro_batch * self.grad_accum * self.world:
            raise ValueError("training.global_batch != micro_batch x grad_accum x world")

    @property
    def world(self) -> int:
        return self.nodes * self.nproc_per_node

    global_batch = property(lambda self: self.training.global_batch)

    # settings a resumed run must share with the run it continues (steps may grow)
    FIXED = ("model_name", "nodes", "nproc_per_node") + tuple(
        f.name for f, s in declared() if s.fixed and s.record)
    KEYS = ("card", "model_name", "nodes", "nproc_per_node", *recorded(), "plan", "notes",
            "world", "global_batch")
    # keys run.json may lack: derived from others, or newer than the run (their defaults hold)
    OPTIONAL = ("world", "global_batch", "plan", "notes") + tuple(
        f.name for f, s in declared() if s.record and s.optional)

    @classmethod
    def missing_keys(cls, data: dict[str, Any]) -> list[str]:
        """The settings run.json must carry that ``data`` lacks."""
        return [k for k in cls.KEYS if k not in cls.OPTIONAL and k not in data]

    def to_dict(self) -> dict[str, Any]:
        return {k: to_plain(getattr(self, k)) for k in self.KEYS}

    def with_steps(self, steps: int) -> RunSettings:
        return replace(self, training=replace(self.training, steps=steps))

    def cooldown_steps(self, steps: int | None = None) -> int:
        """wsd: the last c = ceil(cooldown_fraction x steps) steps decay (at least one) of a
        run of ``steps`` (default this run's)."""
        return max(1, math.ceil(self.cooldown_fraction * (self.steps if steps is None else steps)))

    def branch_starts(self) -> dict[int, tuple[int, ...]]:
        """Last stable step -> the cooldown branches that start after it. A branch of N steps
        is the wsd run of N steps from its last stable step on (``engine.lr_at`` of N): up to
        there that run and this one are the same run (same warm-up, lr, seeds and data order),
        so the branch continues this run's state instead of training those steps again."""
        out: dict[int, list[int]] = {}
        for n in self.cooldown_branches:
            out.setdefault(n - self.cooldown_steps(n), []).append(n)
        return {k: tuple(v) for k, v in sorted(out.items())}

    @classmethod
    def build(cls, *, nodes: int, nproc_per_node: int, micro_batch: int, grad_accum: int,
              **rest: Any) -> RunSettings:
        """From flat settings; the layout and training configs validate theirs (ConfigError).
        A run.json older than a config setting (recompute, EMA, schedule) reads as that
        config's default."""
        world = nodes * nproc_per_node
        layout = ParallelLayout(dp=world, tp=1, micro_batch=micro_batch, **{
            k: rest.pop(k) for k in recorded("layout") if k in rest})
        training = TrainingConfig(global_batch=micro_batch * grad_accum * world, **{
            k: rest.pop(k) for k in recorded("training") if k in rest})
        return cls(nodes=nodes, nproc_per_node=nproc_per_node, layout=layout, training=training,
                   grad_accum=grad_accum, **rest)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSettings:
        known = set(cls.KEYS) - {"world", "global_batch"}
        return cls.build(**{k: v for k, v in data.items() if k in known})


# the flat names run.json, the worker and the analyses use for the configs' launch settings
for _config, _names in (("layout", recorded("layout")), ("training", recorded("training"))):
    for _name in _names:
        setattr(RunSettings, _name, property(
            lambda self, _c=_config, _n=_name: getattr(getattr(self, _c), _n)))


# ---------------------------------------------------------------------------------------------
# The run directory
# ---------------------------------------------------------------------------------------------


class RunDir:
    """Paths and bookkeeping of one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    card = property(lambda self: self.path / "card.yaml")
    run_json = property(lambda self: self.path / "run.json")
    ds_config = property(lambda self: self.path / "ds_config.json")
    predictions = property(lambda self: self.path / "predictions.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary = property(lambda self: self.path / "summary.json")
    data_json = property(lambda self: self.path / "data.json")  # a --data run's folder, split
    log = property(lambda self: self.path / "launch.log")
    checkpoints = property(lambda self: self.path / "checkpoints")
    checksums = property(lambda self: self.path / "checksums")
    worker_pid = property(lambda self: self.path / "worker.pid")
    rejected = property(lambda self: self.path / "metrics.rejected")
    branches = property(lambda self: self.path / "branches")

    def branch_path(self, steps: int) -> Path:
        return self.branches / f"b{steps}.jsonl"

    def read_branch(self, steps: int) -> list[dict[str, Any]] | None:
        """A finished cooldown branch's records (steps start+1 .. ``steps``), or None where it
        has not finished (the file is written whole, once, at its end)."""
        path = self.branch_path(steps)
        if not path.is_file():
            return None
        try:
            recs = read_jsonl(path)
        except (ConfigError, ValueError, OSError):
            return None
        return recs if recs and recs[-1].get("step") == steps else None

    def exists(self) -> bool:
        return self.run_json.is_file()

    def settings(self) -> RunSettings:
        data = read_json(self.run_json)
        if not isinstance(data, dict):
            raise ConfigError(f"{self.run_json}: not one JSON object of run settings")
        missing = RunSettings.missing_keys(data)
        if missing:
            raise ConfigError(f"{self.run_json}: missing {', '.join(missing)}; not the settings "
                              "`ecdit-scale launch` writes")
        try:
            return RunSettings.from_dict(data)
        except (TypeError, ValueError) as exc:  # ConfigError is a ValueError: keep its words
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"{self.run_json}: {first}") from None

    def model_config(self):
        from ..config import load_model_config

        return load_model_config(self.card)

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics)

    def read_summary(self) -> dict[str, Any]:
        return read_json(self.summary) if self.summary.is_file() else {}

    def update_summary(self, **fields_: Any) -> dict[str, Any]:
        data = self.read_summary()
        data.update(fields_)
        write_json(self.summary, data)
        return data

    def running_pid(self) -> int | None:
        """The pid of this run's rank 0 if it is still alive (it writes worker.pid at start and
        removes it when it ends cleanly), else None."""
        try:
            pid = int(self.worker_pid.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return None
        return pid if "ecdit_scale.train.worker" in cmdline and str(self.path.name) in cmdline \
            else None

    # ----- checkpoints -----
    def checkpoint_tags(self) -> list[tuple[int, str]]:
        """(step, tag) of the checkpoint folders present, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        out = []
        for p in self.checkpoints.iterdir():
            m = _TAG_RE.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p.name))
        return sorted(out)

    def pointer(self) -> str | None:
        """The tag DeepSpeed's ``checkpoints/latest`` names, if that file is there."""
        try:
            return (self.checkpoints / "latest").read_text().strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def mark_complete(self, tag: str, step: int) -> None:
        """Record every file of a checkpoint every rank has finished saving, with its size and
        sha256 (``checkpoint_problem(verify=True)`` checks them before a resume)."""
        d = self.checkpoints / tag
        files = {f.name: {"bytes": f.stat().st_size, "sha256": sha256_of(f)}
                 for f in sorted(d.iterdir()) if f.is_file() and f.name != COMPLETE_MARKER}
        write_json(d / COMPLETE_MARKER, {"step": step, "files": files})

    def checkpoint_problem(self, tag: str, *, verify: bool = False) -> str | None:
        """Why checkpoint ``tag`` cannot be resumed from, or None if it is complete.

        Complete: its marker (written after every rank saved) lists files that are all there
        with their sizes, and with ``verify`` their sha256 (a marker older than the checksums
        has sizes only). A checkpoint without a marker (an older run) counts if ``latest``
        names it and its model states open as zip archives (torch.save's format)."""
        d = self.checkpoints / tag
        try:
            marker = json.loads((d / COMPLETE_MARKER).read_text())
            files = {name: (entry if isinstance(entry, dict) else {"bytes": entry})
                     for name, entry in dict(marker["files"]).items()}
        except FileNotFoundError:
            if self.pointer() != tag:
                return "it was never marked complete (a save cut short)"
            files = {f.name: {} for f in d.glob("*model_states.pt")}
            if "mp_rank_00_model_states.pt" not in files:
                return "mp_rank_00_model_states.pt is missing"
        except (OSError, ValueError, KeyError, TypeError):
            return f"its {COMPLETE_MARKER} is unreadable"
        for name, entry in files.items():
            f = d / name
            size = entry.get("bytes") if isinstance(entry, dict) else None
            if not f.is_file():
                return f"{name} is missing"
            if f.stat().st_size == 0:
                return f"{name} is empty"
            if size is not None and f.stat().st_size != size:
                return f"{name} has {f.stat().st_size} bytes, not the {size} saved"
            if size is None and not zipfile.is_zipfile(f):
                return f"{name} is not a whole torch file"
            if verify and entry.get("sha256") and sha256_of(f) != entry["sha256"]:
                return f"{name} differs from what was saved (sha256)"
        return None

    def latest_checkpoint(self) -> tuple[int, str] | None:
        """The newest complete checkpoint (see ``checkpoint_problem``)."""
        for step, tag in reversed(self.checkpoint_tags()):
            if self.checkpoint_problem(tag) is None:
                return step, tag
        return None

    def prune_checkpoints(self, keep: int, *, current: str | None = None) -> list[str]:
        """Delete all but the newest ``keep`` complete checkpoints. ``current`` (the one just
        saved) and ``latest``'s tag are never deleted; neither is anything newer than the
        oldest checkpoint kept."""
        complete = [(s, t) for s, t in self.checkpoint_tags()
                    if t == current or self.checkpoint_problem(t) is None]
        protected = {current, self.pointer()}
        removed = []
        for _, tag in complete[: max(0, len(complete) - keep)]:
            if tag in protected:
                continue
            shutil.rmtree(self.checkpoints / tag, ignore_errors=True)
            removed.append(tag)
        return removed

    def resume_point(self) -> ResumePoint:
        """Where ``--resume`` continues, and what it had to pass over to get there.

        The newest complete checkpoint whose steps all have a readable record in metrics.jsonl.
        A torn last line (a kill mid-write) is normal. Nothing is changed here; ``apply_resume``
        does that. Raises ConfigError (one line) when no such checkpoint is left but some
        checkpoint or metric would be lost by starting over."""
        scan = scan_metrics(self.metrics)
        notes: list[str] = []
        gap = scan.first_missing_step()
        damaged = scan.damaged
        tags = self.checkpoint_tags()
        pointer = self.pointer()
        chosen: tuple[int, str] | None = None
        for step, tag in reversed(tags):
            problem = self.checkpoint_problem(tag, verify=True)
            if problem is not None:
                notes.append(f"checkpoint {tag} is not intact ({problem}): skipped")
                continue
            if step >= gap:
                where = (f"line {damaged[0][0]} of {self.metrics} is unreadable"
                         if damaged else f"{self.metrics} has no record of step {gap}")
                notes.append(f"checkpoint {tag} is past step {gap - 1} ({where}): skipped")
                continue
            chosen = (step, tag)
            break
        if chosen is not None and (notes or pointer != chosen[1]):
            if pointer is None:
                notes.append(f"{self.checkpoints / 'latest'} is missing")
            notes.append(f"resuming from {chosen[1]}, the newest complete checkpoint")
        if chosen is None:
            if damaged:
                line, text = damaged[0]
                raise ConfigError(
                    f"--resume: {self.metrics} line {line} is not a metrics record "
                    f"({text[:40]!r}) and no complete checkpoint before it remains; nothing "
                    "was changed: repair that line, or start a new run with another --out")
            if tags:
                raise ConfigError(f"--resume: no usable checkpoint in {self.checkpoints} ("
                                  + "; ".join(notes) + "); start a new run with another --out")
        step = chosen[0] if chosen else 0
        if chosen is None and scan.records:
            notes.append("no checkpoint was saved yet: training restarts at step 1")
        return ResumePoint(step=step, tag=chosen[1] if chosen else None, notes=notes,
                           scan=scan)

    def apply_resume(self, point: ResumePoint) -> list[str]:
        """Keep the metrics of steps <= the resume step; lines that are not records are kept
        in metrics.rejected (never deleted). Returns notes on what moved."""
        scan = point.scan
        notes = []
        if scan.bad:
            with open(self.rejected, "a") as fh:
                for line, text in scan.bad:
                    fh.write(f"{self.metrics.name} line {line}: {text}\n")
            torn = " (a torn last line: a write cut short)" if scan.torn_last else ""
            notes.append(f"{len(scan.bad)} unreadable line(s) of {self.metrics}{torn} moved to "
                         f"{self.rejected}")
        kept = [r for r in scan.records if r["step"] <= point.step]
        kept = [r for i, r in enumerate(kept) if r["step"] not in
                {x["step"] for x in kept[:i]}]  # a step recorded twice: the first
        if self.metrics.exists():
            atomic_write_text(self.metrics, "".join(
                json.dumps(r, default=json_default, separators=(",", ":")) + "\n" for r in kept))
        return notes

    def truncate_metrics(self, last_step: int) -> int:
        """Keep the metrics of steps <= last_step; unreadable lines go to metrics.rejected.
        Returns how many lines were dropped from metrics.jsonl."""
        scan = scan_metrics(self.metrics)
        before = len(scan.records) + len(scan.bad)
        self.apply_resume(ResumePoint(step=last_step, tag=None, notes=[], scan=scan))
        return before - len(scan_metrics(self.metrics).records)

    def read_checksums(self) -> dict[int, dict[str, Any]]:
        """rank -> {"expert": {name: checksum}, "shared": {name: checksum}, ...}."""
        out = {}
        if self.checksums.is_dir():
            for f in sorted(self.checksums.glob("rank*.json")):
                out[int(f.stem.removeprefix("rank"))] = read_json(f)
        return out


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ResumePoint:
    step: int  # the checkpoint's step, 0 to start over
    tag: str | None
    notes: list[str]  # what was passed over, for the user
    scan: MetricsScan


def losses(records: Iterable[dict[str, Any]]) -> list[float]:
    return [float(r["loss"]) for r in records]
