"""``ecdit-scale validate``: the planner's predictions next to what real runs measured.

For each run directory (or GPU measurement file from ``bench/gpu_measure.py``) one or more
``rows.Row`` (parameters, FLOPs, memory, step time) and the table as CSV. Step time is
predicted twice, never from the run itself (``predict``): from a device profile alone (the
headline; ``--profile PROFILE.yaml``, else a quick profile of this CPU for CPU runs, else the
catalog's datasheet entry for a GPU), and leave-one-out from the other runs' efficiency.
Rendering is the CLI's (``cli/evaluate.py``).
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
from ..planner.hardware import Accelerator, get_accelerator
from .calibrate import Calibration, calibrate, find_run, gpu_accelerator, save_profile_yaml
from .predict import leave_one_out, profile_prediction
from .rows import Row, row_from_run, rows_from_gpu_file
from .terms import TERMS, measured_terms, predicted_terms

CSV_FIELDS = ("name", "kind", "device", "model", "world", "ep", "zero", "micro_batch",
              "global_batch", "params_predicted", "params_measured", "params_error",
              "flops_predicted", "flops_measured", "flops_error", "flops_note", "memory_predicted",
              "memory_measured", "memory_error", "memory_note", "states_predicted",
              "states_measured", "states_error", "step_s_predicted",
              "step_s_measured", "step_s_error", "step_s_source", "step_s_loo",
              "step_s_loo_error", "achieved_flops_per_s", "peak_flops_per_s",
              "efficiency", "calibrated_on", "source",
              *(f"{t}_s_{w}" for t in TERMS for w in ("predicted", "measured")),
              "kernels_predicted", "kernels_measured")


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


def _is_cpu(device: str) -> bool:
    return device.startswith("cpu")


class Profiles:
    """The accelerator each device kind's headline prediction uses (measured once)."""

    def __init__(self, path: str | None, rows: list[Row]):
        self.given = get_accelerator(path) if path else None
        self.rows = rows
        self.cache: dict[str, Accelerator | None] = {}

    def for_row(self, row: Row) -> tuple[Accelerator | None, str]:
        cpu = _is_cpu(row.device)
        g = self.given
        if g is not None and (g.deepspeed_accelerator == "cpu") == cpu:
            return g, f"profile {g.name} ({_when(g)})"
        key = "cpu" if cpu else row.device
        if key not in self.cache:
            self.cache[key] = self._default(row, cpu)
        acc = self.cache[key]
        if acc is None:
            return None, f"{row.device}: not in the catalog and no --profile"
        if acc.profile is not None:
            return acc, f"quick profile of this CPU ({_when(acc)})"
        return acc, f"datasheet: catalog {acc.name} (no profile of this card)"

    def _default(self, row: Row, cpu: bool) -> Accelerator | None:
        if cpu:
            import os

            from .profile import quick_cpu_profile

            multi = any(_is_cpu(r.device) and r.world > 1 for r in self.rows)
            return quick_cpu_profile(2 if multi and (os.cpu_count() or 1) >= 2 else 1)
        try:
            return gpu_accelerator(row.device)
        except ConfigError:
            return None


def _when(acc: Accelerator) -> str:
    p = acc.profile.provenance if acc.profile is not None else {}
    return f"measured {p.get('date', '?')} on {p.get('device', '?')}"


def predict_step_times(rows: list[Row], profile: str | None,
                       calibrate_on: str | None) -> list[str]:
    """Headline (profile) and leave-one-out predictions for every row; returns notes."""
    profiles = Profiles(profile, rows)
    notes = []
    for r in rows:
        if r.card is None:
            continue
        acc, label = profiles.for_row(r)
        r.step_s_source = label
        if acc is None:
            continue
        try:
            st = profile_prediction(r, acc)
        except ConfigError as exc:
            r.step_s_source = f"{label}; no prediction: {exc}"
            continue
        r.step_s_predicted = st.total_s
        if r.breakdown is not None and r.step_s_measured:
            serial = acc.profile is not None and acc.profile.launch_mode == "serial"
            r.terms_predicted = predicted_terms(st, serial=serial)
            r.terms_measured = measured_terms(r.breakdown, r.step_s_measured)
    notes += leave_one_out(rows, find_run(rows, calibrate_on))
    return notes


def validate(inputs: list[Path], *, calibrate_on: str | None = None,
             csv_path: str | None = None, save_profile: str | None = None,
             profile: str | None = None) -> Report:
    if not inputs:
        raise ConfigError("give at least one run directory or GPU result file")
    _check_output("--csv", csv_path)
    _check_output("--save-profile", save_profile)
    rows: list[Row] = []
    for p in inputs:
        if p.is_dir():
            rows.append(row_from_run(p))
        elif p.is_file() and p.suffix == ".json":
            rows.extend(rows_from_gpu_file(p))
        else:
            raise ConfigError(f"{p}: not a run directory or a .json GPU result file")
    if not rows:
        raise ConfigError("no measurements in the given inputs")

    calibrations = calibrate(rows, calibrate_on)
    report = Report(rows=rows, calibrations=calibrations, notes=[
        "errors are measured / predicted - 1",
        "step time (headline): the planner's step-time model for the run's layout, priced from "
        "a device profile alone (no run calibrates it); its source is named per run",
        "step time (LOO): compute only, hardware FLOPs / world / (peak x efficiency), the "
        "efficiency calibrated on the other runs of the device (never the run itself)",
        *predict_step_times(rows, profile, calibrate_on),
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
