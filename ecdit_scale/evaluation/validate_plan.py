"""``ecdit-scale validate PLAN RUN``: a plan folder next to a run of it.

Two parts: every knob the plan sets, as the run recorded it (run.json and summary.json; a
difference is listed with the run's own note, e.g. a warm-up scaled to a shorter run), and the
plan's predictions (memory per device, step time) next to what the run measured. A prediction
is for the plan's accelerator: where the run used another device (a CPU test of a GPU plan)
the row says so and the ratio is not a check of the planner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import load_yaml_file

# plan.yaml place -> run.json / summary.json key
LAYOUT_KNOBS = ("ep", "zero", "micro_batch", "grad_accum", "recompute")
TRAINING_KNOBS = ("optimizer", "lr", "warmup_steps", "precision", "ema", "ema_decay",
                  "global_batch")


def is_plan_dir(path: Path) -> bool:
    return (path / "plan.yaml").is_file() and not (path / "run.json").is_file()


@dataclass(kw_only=True)
class Knob:
    name: str
    planned: Any
    run: Any
    summary: Any = None  # what summary.json says (the trained truth, e.g. precision)

    @property
    def same(self) -> bool:
        return self.planned == self.run and self.summary in (None, self.planned)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "planned": self.planned, "run": self.run,
                "summary": self.summary, "same": self.same}


@dataclass(kw_only=True)
class PlanComparison:
    plan: str
    run: str
    knobs: list[Knob]
    predictions: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    @property
    def differs(self) -> list[Knob]:
        return [k for k in self.knobs if not k.same]

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan, "run": self.run, "knobs": [k.to_dict() for k in self.knobs],
                "differs": [k.name for k in self.differs], "predictions": self.predictions,
                "notes": self.notes}


def same_device(accelerator: dict[str, Any], device: str | None) -> bool:
    """Whether a run on ``device`` ("cpu", or the name torch gives a GPU) ran on the plan's
    accelerator: a CPU run matches a plan made from a CPU profile (`ecdit-scale profile` names
    it cpu-HOST), a GPU run the catalog entry of its card. Unknown counts as the same."""
    name = str(accelerator.get("name") or "")
    if device is None or not name:
        return True
    if device == "cpu" or name.startswith("cpu"):
        return device == "cpu" and name.startswith("cpu")
    from ..planner.hardware import accelerator_for_device_name

    try:
        return accelerator_for_device_name(device).name == name
    except ConfigError:  # a card the catalog lacks: it is the plan's only if named the same
        return device == name


def _ratio(measured, predicted) -> float | None:
    if isinstance(measured, (int, float)) and isinstance(predicted, (int, float)) and predicted:
        return measured / predicted
    return None


def compare_plan_run(plan_dir: Path, run_dir: Path) -> PlanComparison:
    from ..train.records import RunDir, read_json

    plan = load_yaml_file(plan_dir / "plan.yaml", what="plan")
    rd = RunDir(run_dir)
    if not rd.exists():
        raise ConfigError(f"{run_dir}: no run.json; give a run directory of `launch`")
    try:
        lay, tr, cluster = plan["best"]["layout"], plan["training"], plan["cluster"]
    except (KeyError, TypeError):
        raise ConfigError(f"{plan_dir}/plan.yaml: not a plan (no best.layout / training); "
                          "write it with `ecdit-scale plan --out DIR`") from None
    run = read_json(rd.run_json)
    summary = rd.read_summary()
    planned_model, run_model = plan.get("model"), run.get("model_name")
    if planned_model != run_model:
        raise ConfigError(f"validate {plan_dir} {run_dir}: the models differ (the plan is for "
                          f"{planned_model}, the run trained {run_model}), so its predictions "
                          "do not apply; validate a run of this plan (bash PLAN/launch.sh "
                          "--local), or a plan of the run's model")
    knobs = [Knob(name="model", planned=plan.get("model"), run=run.get("model_name")),
             Knob(name="world", planned=cluster.get("world"), run=run.get("world"))]
    knobs += [Knob(name=k, planned=lay.get(k), run=run.get(k), summary=summary.get(k))
              for k in LAYOUT_KNOBS]
    knobs += [Knob(name=k, planned=tr.get(k), run=run.get(k), summary=summary.get(k))
              for k in TRAINING_KNOBS]
    device = summary.get("device_name") or run.get("device")
    accelerator = (plan.get("accelerator") or {}).get("name")
    elsewhere = f"the plan is for {accelerator}; the run used {device}"
    # the allocator's peak against the plan's peak without its allowance (fragmentation,
    # CUDA context), as `validate RUN` compares; a plan written before it had only the total
    mem = plan["best"].get("memory") or {}
    mem_pred = mem.get("allocated", mem.get("total"))
    predictions = [
        {"what": "memory per device (bytes)", "predicted": mem_pred,
         "predicted_as": ("the plan's peak without its allowance" if "allocated" in mem
                          else "the plan's total, allowance included"),
         "measured": summary.get("peak_bytes"), "measured_as": summary.get("memory_measured"),
         "ratio": _ratio(summary.get("peak_bytes"), mem_pred)},
        {"what": "step time (s)", "predicted": plan.get("step_s"),
         "measured": summary.get("median_step_s"),
         "ratio": _ratio(summary.get("median_step_s"), plan.get("step_s"))},
    ]
    notes = list(run.get("notes") or [])
    if mem_pred is not None:
        notes.append(f"memory: predicted = {predictions[0]['predicted_as']}")
    if not same_device(plan.get("accelerator") or {}, device):
        notes.append(f"{elsewhere}: the ratios compare devices, not the planner")
    if run.get("plan") and Path(run["plan"]).resolve() != plan_dir.resolve():
        notes.append(f"the run followed the plan at {run['plan']}, not {plan_dir}")
    return PlanComparison(plan=str(plan_dir), run=str(run_dir), knobs=knobs,
                          predictions=predictions, notes=notes)
