"""What a scaling fit learned, as typed results, and how a fit is saved and read back.

Every result is a frozen dataclass with to_dict/from_dict; `save_fit` writes a ScalingFit as
YAML (or JSON) atomically and `load_fit` reads it back, naming the file and the field when it
is not a fit (a ConfigError, one line). The laws themselves are in `formulas`; how they are
fitted is in `robust` (the engine), `laws` (per kind) and `shared` (one exponent for every
kind).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .evidence import HeadlineFit
from .formulas import (
    DEFAULT_LEVEL,
    ChinchillaLaw,
    Interval,
    PowerLaw,
    SharedPowerLaw,
    percentile_interval,
)
from .runlevel import kind_of

FIT_FORMAT = "ecdit-scale/scaling-fit/v1"


@dataclass(frozen=True)
class PowerLawFit:
    """A fitted L(C) with bootstrap intervals (ci keys: E, A, alpha) and the bootstrap laws."""

    law: PowerLaw
    n_runs: int
    huber_objective: float
    ci: dict[str, Interval] = field(default_factory=dict)
    bootstrap_laws: tuple[PowerLaw, ...] = ()
    level: float = DEFAULT_LEVEL

    def to_dict(self) -> dict:
        return _fit_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PowerLawFit:
        return _fit_from_dict(cls, PowerLaw, d)


@dataclass(frozen=True)
class ChinchillaFit:
    """A fitted L(N, D) with bootstrap intervals (ci keys: E, A, B, alpha, beta)."""

    law: ChinchillaLaw
    n_runs: int
    huber_objective: float
    ci: dict[str, Interval] = field(default_factory=dict)
    bootstrap_laws: tuple[ChinchillaLaw, ...] = ()
    level: float = DEFAULT_LEVEL

    def to_dict(self) -> dict:
        return _fit_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ChinchillaFit:
        return _fit_from_dict(cls, ChinchillaLaw, d)


@dataclass(frozen=True)
class Prediction:
    """Predicted loss at one compute, with the bootstrap interval when there are samples."""

    compute_flops: float
    loss: float
    interval: Interval | None = None

    def to_dict(self) -> dict:
        return {"compute_flops": float(self.compute_flops), "loss": float(self.loss),
                "interval": _opt_to_dict(self.interval)}

    @classmethod
    def from_dict(cls, d: dict) -> Prediction:
        return cls(compute_flops=float(d["compute_flops"]), loss=float(d["loss"]),
                   interval=_opt_interval(d.get("interval")))


@dataclass(frozen=True)
class PredictionBand:
    """Predicted loss over a grid of compute, with lower/upper bootstrap curves (for plots)."""

    compute_flops: tuple[float, ...]
    loss: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    level: float = DEFAULT_LEVEL

    def to_dict(self) -> dict:
        return {"compute_flops": list(self.compute_flops), "loss": list(self.loss),
                "lo": list(self.lo), "hi": list(self.hi), "level": self.level}

    @classmethod
    def from_dict(cls, d: dict) -> PredictionBand:
        return cls(**{k: tuple(map(float, d[k])) for k in ("compute_flops", "loss", "lo", "hi")},
                   level=float(d["level"]))


@dataclass(frozen=True)
class HeldOutRun:
    """One held-out run: actual loss, loss predicted by a fit that never saw it."""

    name: str
    compute_flops: float
    actual_loss: float
    predicted_loss: float
    relative_error: float  # (predicted - actual) / actual
    interval: Interval | None = None

    def to_dict(self) -> dict:
        d = {k: float(getattr(self, k)) for k in
             ("compute_flops", "actual_loss", "predicted_loss", "relative_error")}
        return {"name": self.name, **d, "interval": _opt_to_dict(self.interval)}

    @classmethod
    def from_dict(cls, d: dict) -> HeldOutRun:
        return cls(name=str(d["name"]), compute_flops=float(d["compute_flops"]),
                   actual_loss=float(d["actual_loss"]), predicted_loss=float(d["predicted_loss"]),
                   relative_error=float(d["relative_error"]),
                   interval=_opt_interval(d.get("interval")))


@dataclass(frozen=True)
class HeldOutResult:
    """Extrapolation check: fit on the smaller-compute runs, predict the largest ones."""

    kind: str
    n_train: int
    train_max_compute_flops: float
    runs: tuple[HeldOutRun, ...]

    @property
    def max_abs_relative_error(self) -> float:
        return max(abs(r.relative_error) for r in self.runs)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "n_train": int(self.n_train),
                "train_max_compute_flops": float(self.train_max_compute_flops),
                "runs": [r.to_dict() for r in self.runs]}

    @classmethod
    def from_dict(cls, d: dict) -> HeldOutResult:
        return cls(kind=str(d["kind"]), n_train=int(d["n_train"]),
                   train_max_compute_flops=float(d["train_max_compute_flops"]),
                   runs=tuple(HeldOutRun.from_dict(r) for r in d["runs"]))


@dataclass(frozen=True)
class ComputeOptimal:
    """Compute-optimal N and D from a Chinchilla fit, with C = k·N·D (Hoffmann et al. 2022, eq. 4).

    N_opt(C) = G·(C/k)^a, D_opt(C) = (C/k)/N_opt(C),
    G = (alpha·A/(beta·B))^(1/(alpha+beta)), a = beta/(alpha+beta), b = alpha/(alpha+beta).
    """

    kind: str
    flops_per_param_token: float  # k
    G: float
    params_exponent: float  # a
    tokens_exponent: float  # b
    ci: dict[str, Interval] = field(default_factory=dict)  # G, params_exponent, tokens_exponent

    def params_opt(self, compute_flops):
        return self.G * np.power(np.asarray(compute_flops, float) / self.flops_per_param_token,
                                 self.params_exponent)

    def tokens_opt(self, compute_flops):
        params_tokens = np.asarray(compute_flops, float) / self.flops_per_param_token
        return params_tokens / self.params_opt(compute_flops)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "flops_per_param_token": float(self.flops_per_param_token),
                "G": float(self.G), "params_exponent": float(self.params_exponent),
                "tokens_exponent": float(self.tokens_exponent), "ci": _ci_to_dict(self.ci)}

    @classmethod
    def from_dict(cls, d: dict) -> ComputeOptimal:
        return cls(kind=str(d["kind"]), flops_per_param_token=float(d["flops_per_param_token"]),
                   G=float(d["G"]), params_exponent=float(d["params_exponent"]),
                   tokens_exponent=float(d["tokens_exponent"]), ci=_ci_from_dict(d["ci"]))


@dataclass(frozen=True)
class Multiplier:
    """Effective compute multiplier of `kind` over `baseline_kind` at equal loss:
    C_baseline(L) / C_kind(L); 2.0 means `kind` reaches L with half the compute."""

    kind: str
    baseline_kind: str
    loss: float
    reference_compute_flops: float  # where the baseline's fit predicts `loss` (nan if given)
    value: float  # nan when undefined (L at or below an irreducible loss E)
    interval: Interval | None
    n_boot_used: int
    note: str = ""

    @property
    def defined(self) -> bool:
        return math.isfinite(self.value)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "baseline_kind": self.baseline_kind, "loss": float(self.loss),
                "reference_compute_flops": float(self.reference_compute_flops),
                "value": float(self.value), "interval": _opt_to_dict(self.interval),
                "n_boot_used": int(self.n_boot_used), "note": self.note}

    @classmethod
    def from_dict(cls, d: dict) -> Multiplier:
        return cls(kind=str(d["kind"]), baseline_kind=str(d["baseline_kind"]),
                   loss=float(d["loss"]),
                   reference_compute_flops=float(d["reference_compute_flops"]),
                   value=float(d["value"]), interval=_opt_interval(d.get("interval")),
                   n_boot_used=int(d["n_boot_used"]), note=str(d.get("note", "")))


@dataclass(frozen=True)
class Extrapolation:
    """Predicted loss of one FFN kind at a compute beyond (or inside) the table."""

    kind: str
    prediction: Prediction

    def to_dict(self) -> dict:
        return {"kind": self.kind, "prediction": self.prediction.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> Extrapolation:
        return cls(kind=str(d["kind"]), prediction=Prediction.from_dict(d["prediction"]))


def comparison_pairs(groups) -> tuple[tuple[str, str], ...]:
    """(kind, baseline) pairs to compare: every expert-choice group over every dense and every
    token-choice group (one multiplier per variant; no best-of across variants)."""
    ec = [g for g in groups if kind_of(g) == "expert-choice"]
    bases = [g for g in groups if kind_of(g) == "dense"] + \
        [g for g in groups if kind_of(g) == "token-choice"]
    return tuple((k, b) for b in bases for k in ec)


@dataclass(frozen=True)
class SensitivityRow:
    """The shared-fit multipliers on one variation of the data (loss column, budgets)."""

    label: str
    loss_column: str
    budgets: str
    n_rows: int
    multipliers: tuple[Multiplier, ...] = ()
    note: str = ""

    def to_dict(self) -> dict:
        return {"label": self.label, "loss_column": self.loss_column, "budgets": self.budgets,
                "n_rows": int(self.n_rows), "multipliers": [m.to_dict() for m in self.multipliers],
                "note": self.note}

    @classmethod
    def from_dict(cls, d: dict) -> SensitivityRow:
        return cls(label=str(d["label"]), loss_column=str(d["loss_column"]),
                   budgets=str(d["budgets"]), n_rows=int(d["n_rows"]),
                   multipliers=tuple(Multiplier.from_dict(m) for m in d["multipliers"]),
                   note=str(d.get("note", "")))


@dataclass(frozen=True)
class ScalingFit:
    """Everything `fit_run_table` learned from one run table, per FFN kind."""

    loss_column: str
    level: float
    n_boot: int
    seed: int
    kinds: tuple[str, ...]
    max_compute_flops: float
    power_laws: dict[str, PowerLawFit] = field(default_factory=dict)
    chinchilla: dict[str, ChinchillaFit] = field(default_factory=dict)
    compute_optimal: dict[str, ComputeOptimal] = field(default_factory=dict)
    held_out: dict[str, HeldOutResult] = field(default_factory=dict)
    multipliers: tuple[Multiplier, ...] = ()
    extrapolations: tuple[Extrapolation, ...] = ()
    notes: tuple[str, ...] = ()
    shared: SharedFit | None = None  # one E and alpha for every kind
    loss_label: str = ""  # what the loss is, e.g. "smoothed training flow-matching loss"
    min_compute_flops: float = math.nan
    bootstrap_unit: str = "row"  # "training run" / "run group": all budgets of one drawn together
    n_training_runs: dict[str, int] = field(default_factory=dict)  # per group
    held_out_status: dict[str, str] = field(default_factory=dict)  # why a check is impossible
    sensitivity: tuple[SensitivityRow, ...] = ()
    outliers: dict = field(default_factory=dict)  # {"rule", "applied", "dropped"}
    headline: HeadlineFit | None = None  # shared-exponent L(N, D), a scale per variant

    @property
    def compute_range(self) -> float:
        """Largest over smallest compute in the table."""
        return self.max_compute_flops / self.min_compute_flops

    def pairs(self) -> tuple[tuple[str, str], ...]:
        return comparison_pairs(self.kinds)

    def multiplier(self, kind: str, baseline_kind: str) -> Multiplier | None:
        """The per-kind fits' multiplier (at the largest compute's loss)."""
        return next((m for m in self.multipliers
                     if m.kind == kind and m.baseline_kind == baseline_kind), None)

    def shared_multiplier(self, kind: str, baseline_kind: str) -> Multiplier | None:
        """The shared-exponent fit's multiplier (the same at every loss)."""
        if (self.shared is None or kind not in self.shared.law.A
                or baseline_kind not in self.shared.law.A):
            return None
        return self.shared.multiplier(kind, baseline_kind)

    def to_dict(self) -> dict:
        return {
            "format": FIT_FORMAT,
            "loss_column": self.loss_column, "level": float(self.level),
            "n_boot": int(self.n_boot), "seed": int(self.seed), "kinds": list(self.kinds),
            "max_compute_flops": float(self.max_compute_flops),
            "power_laws": {k: v.to_dict() for k, v in self.power_laws.items()},
            "chinchilla": {k: v.to_dict() for k, v in self.chinchilla.items()},
            "compute_optimal": {k: v.to_dict() for k, v in self.compute_optimal.items()},
            "held_out": {k: v.to_dict() for k, v in self.held_out.items()},
            "multipliers": [m.to_dict() for m in self.multipliers],
            "extrapolations": [e.to_dict() for e in self.extrapolations],
            "notes": list(self.notes),
            "shared": self.shared.to_dict() if self.shared is not None else None,
            "shared_multipliers": [m.to_dict() for m in (
                self.shared_multiplier(k, b) for k, b in self.pairs()) if m is not None],
            "loss_label": self.loss_label,
            "min_compute_flops": float(self.min_compute_flops),
            "compute_range": float(self.compute_range),
            "bootstrap_unit": self.bootstrap_unit,
            "n_training_runs": dict(self.n_training_runs),
            "held_out_status": dict(self.held_out_status),
            "sensitivity": [r.to_dict() for r in self.sensitivity],
            "outliers": dict(self.outliers),
            "headline": self.headline.to_dict() if self.headline is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ScalingFit:
        """Raises FitFileError naming the first missing or malformed field."""
        if not isinstance(d, dict):
            raise FitFileError(f"a YAML {type(d).__name__}, not a mapping of fields")
        if d.get("format") != FIT_FORMAT:
            raise FitFileError(f"field format is {d.get('format')!r}, expected {FIT_FORMAT!r}")

        def get(name, parse):
            if name not in d:
                raise FitFileError(f"missing field {name!r}")
            return _parsed(name, parse, d[name])

        def per_kind(name, parse):
            return get(name, lambda m: {str(k): _parsed(f"{name}.{k}", parse, v)
                                        for k, v in m.items()})

        def listed(name, parse):
            return get(name, lambda xs: tuple(_parsed(f"{name}[{i}]", parse, x)
                                              for i, x in enumerate(xs)))

        return cls(
            loss_column=get("loss_column", str), level=get("level", float),
            n_boot=get("n_boot", int), seed=get("seed", int), kinds=listed("kinds", str),
            max_compute_flops=get("max_compute_flops", float),
            power_laws=per_kind("power_laws", PowerLawFit.from_dict),
            chinchilla=per_kind("chinchilla", ChinchillaFit.from_dict),
            compute_optimal=per_kind("compute_optimal", ComputeOptimal.from_dict),
            held_out=per_kind("held_out", HeldOutResult.from_dict),
            multipliers=listed("multipliers", Multiplier.from_dict),
            extrapolations=listed("extrapolations", Extrapolation.from_dict),
            notes=listed("notes", str),
            shared=_parsed("shared", SharedFit.from_dict, d["shared"]) if d.get("shared") else None,
            loss_label=str(d.get("loss_label", "")),
            min_compute_flops=_parsed("min_compute_flops", float,
                                      d.get("min_compute_flops", math.nan)),
            bootstrap_unit=str(d.get("bootstrap_unit", "row")),
            n_training_runs=_parsed("n_training_runs",
                                    lambda m: {str(k): int(v) for k, v in m.items()},
                                    d.get("n_training_runs") or {}),
            held_out_status=_parsed("held_out_status",
                                    lambda m: {str(k): str(v) for k, v in m.items()},
                                    d.get("held_out_status") or {}),
            sensitivity=_parsed("sensitivity",
                                lambda xs: tuple(SensitivityRow.from_dict(x) for x in xs),
                                d.get("sensitivity") or []),
            outliers=_parsed("outliers", dict, d.get("outliers") or {}),
            headline=(_parsed("headline", HeadlineFit.from_dict, d["headline"])
                      if d.get("headline") else None),
        )


class FitFileError(ValueError):
    """A saved fit that cannot be read: the message names the field."""


def _parsed(name: str, parse, value):
    """parse(value), with a failure named by the field it came from."""
    try:
        return parse(value)
    except FitFileError:
        raise
    except KeyError as exc:
        raise FitFileError(f"field {name}: missing {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise FitFileError(f"field {name}: {exc}") from None


@dataclass(frozen=True)
class SharedFit:
    law: SharedPowerLaw
    n_runs: dict[str, int]
    huber_objective: float
    ci: dict[str, Interval]  # E, alpha, A[kind] as "A:kind"
    bootstrap_laws: tuple[SharedPowerLaw, ...]
    level: float

    def multiplier(self, kind: str, baseline: str) -> Multiplier:
        samples = [b.multiplier(kind, baseline) for b in self.bootstrap_laws]
        return Multiplier(
            kind=kind, baseline_kind=baseline, loss=math.nan, reference_compute_flops=math.nan,
            value=self.law.multiplier(kind, baseline),
            interval=percentile_interval(samples, self.level), n_boot_used=len(samples),
            note="shared E and alpha: the same at every loss")

    def to_dict(self) -> dict:
        return {"law": self.law.to_dict(), "n_runs": dict(self.n_runs),
                "huber_objective": float(self.huber_objective),
                "ci": {k: v.to_dict() for k, v in self.ci.items()},
                "bootstrap_laws": [b.to_dict() for b in self.bootstrap_laws],
                "level": float(self.level)}

    @classmethod
    def from_dict(cls, d: dict) -> SharedFit:
        return cls(law=SharedPowerLaw.from_dict(d["law"]), n_runs=dict(d["n_runs"]),
                   huber_objective=float(d["huber_objective"]),
                   ci={k: Interval.from_dict(v) for k, v in d["ci"].items()},
                   bootstrap_laws=tuple(SharedPowerLaw.from_dict(b) for b in d["bootstrap_laws"]),
                   level=float(d["level"]))


def _fit_to_dict(fit) -> dict:
    names = list(fit.law.to_dict())
    return {
        "law": fit.law.to_dict(), "n_runs": int(fit.n_runs),
        "huber_objective": float(fit.huber_objective), "level": float(fit.level),
        "ci": _ci_to_dict(fit.ci),
        "bootstrap_laws": {k: [float(getattr(b, k)) for b in fit.bootstrap_laws] for k in names},
    }


def _fit_from_dict(cls, law_cls, d: dict):
    columns = d.get("bootstrap_laws") or {}
    n_boot = len(next(iter(columns.values()), []))
    laws = tuple(law_cls.from_dict({k: v[i] for k, v in columns.items()}) for i in range(n_boot))
    return cls(law=law_cls.from_dict(d["law"]), n_runs=int(d["n_runs"]),
               huber_objective=float(d["huber_objective"]), ci=_ci_from_dict(d["ci"]),
               bootstrap_laws=laws, level=float(d["level"]))


def _ci_to_dict(ci: dict[str, Interval | None]) -> dict:
    return {k: _opt_to_dict(v) for k, v in ci.items()}


def _ci_from_dict(d: dict) -> dict[str, Interval]:
    return {k: _opt_interval(v) for k, v in (d or {}).items()}


def _opt_to_dict(interval: Interval | None) -> dict | None:
    return None if interval is None else interval.to_dict()


def _opt_interval(d: dict | None) -> Interval | None:
    return None if d is None else Interval.from_dict(d)
