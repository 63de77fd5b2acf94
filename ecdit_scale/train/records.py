"""The run directory: everything a launched run leaves behind, written atomically.

    runs/NAME/
      card.yaml          the resolved model config (``config.load_model_config`` reads it)
      run.json           launch settings (RunSettings): world, ep, ZeRO, batch, data, seed ...
      ds_config.json     the DeepSpeed config the ranks were started with
      predictions.json   the planner's predictions for this run (params, FLOPs, memory)
      metrics.jsonl      one JSON object per optimizer step (appended whole, fsync'd)
      summary.json       the outcome: status, steps, losses, timings, measured params/memory
      launch.log         the deepspeed launcher's stdout + stderr
      checkpoints/       DeepSpeed checkpoints, one tag per saved step (``step{n}``)
      checksums/         per-rank parameter checksums at the end (rank{r}.json)
      worker.pid         rank 0's pid while the ranks run (a resume refuses a live run)

Resume: the last complete checkpoint is the one DeepSpeed's ``checkpoints/latest`` names (it
is written after every rank has saved). Lines of metrics.jsonl past that step are dropped,
then the run continues; the data order and the noise are functions of the step, so the loss
curve continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError
from ..files import atomic_write_text, json_default

CHECKPOINT_TAG = "step{step}"
_TAG_RE = re.compile(r"^step(\d+)$")


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: malformed JSON at line {exc.lineno}") from None


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one whole line and fsync: a crash leaves complete lines, or one torn last line
    that ``read_jsonl`` ignores and ``truncate_metrics`` removes."""
    line = json.dumps(record, default=json_default, separators=(",", ":")) + "\n"
    with open(path, "a") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line of a killed run
    return out


# ---------------------------------------------------------------------------------------------
# Launch settings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """What ``launch`` decided; the worker on every rank reads it from run.json."""

    card: str  # what the user passed (registry name or path)
    model_name: str
    steps: int
    nodes: int
    nproc_per_node: int
    ep: int
    zero: int
    micro_batch: int
    grad_accum: int
    dataset: str
    data_limit: int | None
    holdout: int  # samples kept out of training (adaptive-compute analysis)
    seed: int
    lr: float
    warmup_steps: int
    optimizer: str  # adamw | rmsprop
    precision: str  # fp32 (CPU) | bf16 (GPU)
    device: str  # cpu | cuda
    checkpoint_every: int
    keep_checkpoints: int
    track_memory: bool  # CPU: count live tensor bytes every step (see worker.PeakBytes)
    tc_impl: str = "ecdit"  # token choice: our TokenChoiceMoE (see worker.build_moe_model)

    @property
    def world(self) -> int:
        return self.nodes * self.nproc_per_node

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world

    # settings a resumed run must share with the run it continues (steps may grow)
    FIXED = ("model_name", "nodes", "nproc_per_node", "ep", "zero", "micro_batch", "grad_accum",
             "dataset", "data_limit", "holdout", "seed", "lr", "warmup_steps", "optimizer",
             "precision", "device", "tc_impl")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(world=self.world, global_batch=self.global_batch)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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
    log = property(lambda self: self.path / "launch.log")
    checkpoints = property(lambda self: self.path / "checkpoints")
    checksums = property(lambda self: self.path / "checksums")
    worker_pid = property(lambda self: self.path / "worker.pid")

    def exists(self) -> bool:
        return self.run_json.is_file()

    def settings(self) -> RunSettings:
        return RunSettings.from_dict(read_json(self.run_json))

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

    def latest_checkpoint(self) -> tuple[int, str] | None:
        """The last complete checkpoint: the tag DeepSpeed wrote to ``latest`` after saving."""
        latest = self.checkpoints / "latest"
        if not latest.is_file():
            return None
        tag = latest.read_text().strip()
        m = _TAG_RE.match(tag)
        if not m or not (self.checkpoints / tag).is_dir():
            return None
        return int(m.group(1)), tag

    def prune_checkpoints(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` checkpoints (never the one ``latest`` names)."""
        latest = self.latest_checkpoint()
        tags = self.checkpoint_tags()
        removed = []
        for step, tag in tags[: max(0, len(tags) - keep)]:
            if latest is not None and tag == latest[1]:
                continue
            shutil.rmtree(self.checkpoints / tag, ignore_errors=True)
            removed.append(tag)
        return removed

    def truncate_metrics(self, last_step: int) -> int:
        """Keep the metrics of steps <= last_step (the checkpoint resumed from); returns how
        many lines were dropped. A torn last line goes too."""
        if not self.metrics.exists():
            return 0
        lines = self.metrics.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            if rec.get("step", 0) <= last_step:
                kept.append(line)
        atomic_write_text(self.metrics, "".join(f"{line}\n" for line in kept))
        return len(lines) - len(kept)

    def read_checksums(self) -> dict[int, dict[str, Any]]:
        """rank -> {"expert": {name: checksum}, "shared": {name: checksum}, ...}."""
        out = {}
        if self.checksums.is_dir():
            for f in sorted(self.checksums.glob("rank*.json")):
                out[int(f.stem.removeprefix("rank"))] = read_json(f)
        return out


def losses(records: Iterable[dict[str, Any]]) -> list[float]:
    return [float(r["loss"]) for r in records]
