"""The run directory's JSON files: whole-file JSON written atomically, and JSON-lines records
appended whole (``metrics.jsonl``) and read back with the lines that are not records named
(``scan_metrics``). ``records`` re-exports these for the run directory's users."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import atomic_write_text, json_default, read_text_file


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = read_text_file(path, what="JSON file")  # names the file if binary or unreadable
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: malformed JSON at line {exc.lineno}") from None


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one whole line and fsync: a crash leaves complete lines, or one torn last line
    that ``read_jsonl`` skips and a resume moves to metrics.rejected."""
    line = json.dumps(record, default=json_default, separators=(",", ":")) + "\n"
    with open(path, "a") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file, skipping any line that is not one (a torn last line of
    a killed run, or damage): for progress and summaries. ``scan_metrics`` reports them."""
    return scan_metrics(path).records


@dataclass
class MetricsScan:
    """metrics.jsonl as read: the records in order, and the lines that are not records."""

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line number, text)
    torn_last: bool = False  # the last line is not a record: a write cut short by a kill

    @property
    def damaged(self) -> list[tuple[int, str]]:
        """Unreadable lines other than a torn last one."""
        return self.bad[:-1] if self.torn_last else self.bad

    def first_missing_step(self) -> int:
        """The first step 1, 2, ... without a readable record."""
        steps = {r.get("step") for r in self.records}
        k = 1
        while k in steps:
            k += 1
        return k


def scan_metrics(path: str | os.PathLike) -> MetricsScan:
    path = Path(path)
    scan = MetricsScan(path=path)
    if not path.is_file():
        return scan
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    for i, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                raise ValueError
        except ValueError:  # JSONDecodeError is one
            scan.bad.append((i, line))
            continue
        scan.records.append(rec)
    scan.torn_last = bool(scan.bad) and scan.bad[-1][0] == len(lines)
    return scan
