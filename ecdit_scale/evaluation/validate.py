"""``ecdit-scale validate``: the planner's predictions next to what real runs measured.

For each run directory (or GPU measurement file from ``bench/gpu_measure.py``) one or more
``rows.Row`` (parameters, FLOPs, memory, step time), step times predicted by ``calibrate``,
and the table as CSV. Rendering is the CLI's (``cli/evaluate.py``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import atomic_write_text
from .calibrate import Calibration, calibrate, save_profile_yaml
from .rows import Row, row_from_run, rows_from_gpu_file

CSV_FIELDS = ("name", "kind", "device", "model", "world", "ep", "zero", "micro_batch",
              "global_batch", "params_predicted", "params_measured", "params_error",
              "flops_predicted", "flops_measured", "flops_error", "flops_note", "memory_predicted",
              "memory_measured", "memory_error", "memory_note", "states_predicted",
              "states_measured", "states_error", "step_s_predicted",
              "step_s_measured", "step_s_error", "achieved_flops_per_s", "peak_flops_per_s",
              "efficiency", "calibrated_on", "source")


@dataclass(kw_only=True)
class Report:
    rows: list[Row]
    calibrations: list[Calibration]
    csv_path: str | None = None
    profile_path: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [r.to_dict() for r in self.rows],
                "calibrations": [dataclasses.asdict(c) for c in self.calibrations],
                "csv": self.csv_path, "profile": self.profile_path, "notes": self.notes}


def _check_output(option: str, value: str | None) -> None:
    """Before the slow part: an output path must be a file in an existing folder."""
    if value is None:
        return
    if not value.strip() or Path(value).is_dir():
        raise ConfigError(f"{option} {value!r}: must be a file path (not empty, not a folder)")
    parent = Path(value).parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {value}: folder {parent} does not exist")


def validate(inputs: list[Path], *, calibrate_on: str | None = None,
             csv_path: str | None = None, save_profile: str | None = None) -> Report:
    if not inputs:
        raise ConfigError("give at least one run directory or GPU result file")
    _check_output("--csv", csv_path)
    _check_output("--save-profile", save_profile)
    flops_cache: dict = {}
    rows: list[Row] = []
    for p in inputs:
        if p.is_dir():
            rows.append(row_from_run(p, flops_cache))
        elif p.is_file() and p.suffix == ".json":
            rows.extend(rows_from_gpu_file(p, flops_cache))
        else:
            raise ConfigError(f"{p}: not a run directory or a .json GPU result file")
    if not rows:
        raise ConfigError("no measurements in the given inputs")

    report = Report(rows=rows, calibrations=calibrate(rows, calibrate_on), notes=[
        "errors are measured / predicted - 1",
        "step time: compute only (hardware FLOPs / world / calibrated FLOP/s), no "
        "communication term; the calibration run predicts itself exactly",
    ])
    first = inputs[0]
    out_csv = Path(csv_path) if csv_path else \
        (first if first.is_dir() else first.parent) / "validation.csv"
    write_csv(report, out_csv)
    report.csv_path = str(out_csv)
    if save_profile:
        report.profile_path = str(save_profile_yaml(report.calibrations, Path(save_profile)))
    return report


def write_csv(report: Report, path: Path) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in report.rows:
        w.writerow(r.to_dict())
    return atomic_write_text(path, buf.getvalue())
