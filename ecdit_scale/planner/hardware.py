"""Accelerators and interconnects as data (``ecdit_scale/data/hardware.yaml``), every number
with its source. Users add their own machines with a YAML file of the same fields; a calibrated
profile (measured efficiency) is saved the same way.

Units: FLOP/s, bytes, bytes/s; bandwidths per device and per direction.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..checks import short, string_keys
from ..errors import ConfigError
from ..files import atomic_write_text, dump_yaml, load_yaml_file, parse_yaml
from .bounds import check_accelerator
from .derived_profile import TEMPLATE_DATASHEET_BW_BYTES_PER_S, TEMPLATE_NAME, derive_profile
from .device_profile import ENGINE_SETTINGS, DeviceProfile

# An ASSUMPTION, not a vendor number: the fraction of dense peak that large bf16 transformer
# training sustains (model FLOPs utilisation of well-tuned runs is typically 35-55%).
DEFAULT_EFFICIENCY = 0.45
MAX_DEVICES_PER_NODE = 1024
# DeepSpeed's accelerators (deepspeed/accelerator/real_accelerator.py, SUPPORTED_ACCELERATOR_LIST)
# and "none" for a device DeepSpeed cannot drive (a TPU): such a device gets a plan, no launch.
DEEPSPEED_ACCELERATORS = ("cuda", "cpu", "xpu", "xpu.external", "npu", "mps", "hpu", "mlu",
                          "sdaa")
NO_DEEPSPEED = "none"
TRAINING_PRECISIONS = ("bf16", "fp16", "tf32", "fp32")  # ecdit_scale.config.Precision
HALF = ("bf16", "fp16")
FP32_GEMM_UNITS = ("vector", "matrix")  # Accelerator.fp32_gemm
DEFAULT_PRECISIONS = ("bf16", "fp32")  # a YAML that lists none (written before fp16/tf32)
NUMBER_FIELDS = ("peak_bf16_flops", "memory_bytes", "memory_bw_bytes_per_s",
                 "intra_node_bw_bytes_per_s", "inter_node_bw_bytes_per_s")


@dataclass(frozen=True, kw_only=True)
class Accelerator:
    name: str
    peak_bf16_flops: float  # dense, no structured sparsity
    memory_bytes: float  # usable HBM per device
    memory_bw_bytes_per_s: float
    intra_node_bw_bytes_per_s: float  # scale-up fabric, per device, one direction
    inter_node_bw_bytes_per_s: float  # scale-out network, per device, one direction
    devices_per_node: int
    source: str
    notes: str = ""
    efficiency: float = DEFAULT_EFFICIENCY  # assumed sustained fraction of peak
    calibrated_from: str | None = None  # the measurement a calibrated efficiency came from
    deepspeed_accelerator: str = "cuda"  # which DeepSpeed accelerator drives it, or "none"
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS  # training precisions it has throughput for
    # the numeric fields above that were measured on the device (``ecdit-scale profile``);
    # every other number comes from the datasheet named in ``source``
    measured: tuple[str, ...] = ()
    profile: DeviceProfile | None = None  # operator-level measurements (device_profile.py)
    # dense peak FLOP/s by training precision (datasheet: bf16, fp16, tf32, fp32 tensor/vector
    # math); bf16 defaults to peak_bf16_flops. Stored as sorted (precision, flops) pairs.
    peak_flops: Any = ()
    # the run's stack on this device (planner.run_setup.RunSetup: attention kernel, frozen
    # encoders, compile); set by `plan` / bench, never read from YAML
    setup: Any = None
    # where each datasheet number (notably each peak) comes from, beyond ``source``
    citations: str = ""
    # what fp32's peak counts: "vector" (CUDA cores: an fp32 GEMM runs at the published SGEMM
    # curve's fraction of it, planner.vector_gemm) or "matrix" (matrix units, priced like the
    # tensor-core maths: the profile's measured fraction of peak)
    fp32_gemm: str = "matrix"

    def __post_init__(self) -> None:
        where = f"accelerator {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"accelerator name = {self.name!r}: must be a non-empty string")
        for f in ("peak_bf16_flops", "memory_bytes", "memory_bw_bytes_per_s",
                  "intra_node_bw_bytes_per_s", "inter_node_bw_bytes_per_s"):
            object.__setattr__(self, f, _positive_number(where, f, getattr(self, f)))
        n = self.devices_per_node
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_DEVICES_PER_NODE:
            raise ConfigError(f"{where}: devices_per_node = {short(n)}: must be an integer in "
                              f"1..{MAX_DEVICES_PER_NODE}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ConfigError(f"{where}: source must name the datasheet the numbers come from")
        if not isinstance(self.notes, str):
            raise ConfigError(f"{where}: notes must be a string")
        eff = _positive_number(where, "efficiency", self.efficiency)
        if eff > 1:
            raise ConfigError(f"{where}: efficiency = {eff}: must be a fraction in (0, 1]")
        object.__setattr__(self, "efficiency", eff)
        if self.calibrated_from is not None and not isinstance(self.calibrated_from, str):
            raise ConfigError(f"{where}: calibrated_from must be a string or null")
        valid = DEEPSPEED_ACCELERATORS + (NO_DEEPSPEED,)
        if self.deepspeed_accelerator not in valid:
            raise ConfigError(f"{where}: deepspeed_accelerator = "
                              f"{short(self.deepspeed_accelerator)}"
                              f": choose one of {', '.join(valid)}")
        p = self.precisions
        if (isinstance(p, str) or not isinstance(p, (list, tuple)) or not p
                or not all(isinstance(x, str) and x in TRAINING_PRECISIONS for x in p)):
            raise ConfigError(f"{where}: precisions = {short(p)}: must be a non-empty list of "
                              f"{', '.join(TRAINING_PRECISIONS)}")
        object.__setattr__(self, "precisions", tuple(dict.fromkeys(p)))
        m = self.measured
        if isinstance(m, str) or not isinstance(m, (list, tuple)) or not all(
                isinstance(x, str) and x in NUMBER_FIELDS for x in m):
            raise ConfigError(f"{where}: measured = {short(m)}: must be a list of "
                              f"{', '.join(NUMBER_FIELDS)}")
        object.__setattr__(self, "measured", tuple(dict.fromkeys(m)))
        self._check_peaks(where)
        if self.fp32_gemm not in FP32_GEMM_UNITS:
            raise ConfigError(f"{where}: fp32_gemm = {short(self.fp32_gemm)}: choose "
                              f"{' or '.join(FP32_GEMM_UNITS)}")
        if self.setup is not None and not hasattr(self.setup, "describe"):
            raise ConfigError(f"{where}: setup must be a planner.run_setup.RunSetup")
        if self.profile is not None and not isinstance(self.profile, DeviceProfile):
            object.__setattr__(self, "profile",
                               DeviceProfile.from_dict(self.profile, where=f"{where}: profile"))
        check_accelerator(self)  # physical bounds (bounds.py): no near-zero or absurd numbers

    def _check_peaks(self, where: str) -> None:
        raw = self.peak_flops
        items = raw.items() if isinstance(raw, dict) else raw
        try:
            pairs = {str(k): v for k, v in items}
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: peak_flops = {short(raw)}: must map precisions "
                              f"({', '.join(TRAINING_PRECISIONS)}) to FLOP/s") from None
        for k in pairs:
            if k not in TRAINING_PRECISIONS:
                raise ConfigError(f"{where}: peak_flops has {k!r}; valid precisions: "
                                  f"{', '.join(TRAINING_PRECISIONS)}")
            pairs[k] = _positive_number(where, f"peak_flops.{k}", pairs[k])
        pairs.setdefault("bf16", self.peak_bf16_flops)
        object.__setattr__(self, "peak_flops", tuple(sorted(pairs.items())))

    def peak_flops_for(self, precision: Any) -> float:
        """Dense peak FLOP/s of ``precision``'s math (fp16 at bf16's where not listed; a
        precision with no listed peak falls back to bf16's, which ``precisions`` refuses)."""
        p = getattr(precision, "value", precision)
        peaks = dict(self.peak_flops)
        if p in peaks:
            return peaks[p]
        return peaks["fp16" if p == "bf16" else "bf16"] if p in HALF else peaks["bf16"]

    def precision_scale(self, precision: Any, measured_dtype: str = "bf16") -> float:
        """Rate of ``precision``'s math relative to the dtype a profile was measured in."""
        return self.peak_flops_for(precision) / self.peak_flops_for(measured_dtype)

    @property
    def runs_deepspeed(self) -> bool:
        """Whether DeepSpeed has an accelerator for this device (else: plan only, no launch)."""
        return self.deepspeed_accelerator != NO_DEEPSPEED

    @property
    def sustained_flops(self) -> float:
        """peak_bf16_flops x efficiency: the FLOP/s the planner expects per device."""
        return self.peak_bf16_flops * self.efficiency

    def number_sources(self) -> dict[str, str]:
        """Each number of the entry: "measured" (on the device) or "datasheet"."""
        out = {f: "measured" if f in self.measured else "datasheet" for f in NUMBER_FIELDS}
        out["efficiency"] = ("calibrated" if self.calibrated_from else "assumed")
        if self.profile is not None:
            got = "derived" if "derived_from" in self.profile.provenance else "measured"
            # an unmeasured part falls back to the datasheet, but for the batched GEMMs,
            # which fall back to the GEMM grid at all their rows, and the model's host cost
            # per kernel, to the launch probe's, and the trainer's own steps, not charged
            unmeasured = {"batched_gemm": "not measured: one GEMM of all the rows",
                          "host": "not measured: the launch probe's cost per kernel",
                          "sync": "not measured: no wait for a late rank priced",
                          "trainer": "not measured: nothing charged over the other probes",
                          **{f"deepspeed_engine_{setting}": "not measured: the dense "
                             "one-rank engine's" for setting in ENGINE_SETTINGS}}
            out.update({f"profile.{k}": got if v else unmeasured.get(k, "datasheet fallback")
                        for k, v in self.profile.measured().items()})
        return out

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["precisions"] = list(self.precisions)
        out["measured"] = list(self.measured)
        out["peak_flops"] = dict(self.peak_flops)
        del out["setup"]  # the run's, not the device's
        if not self.citations:
            del out["citations"]
        if self.fp32_gemm == "matrix":  # the default: files written before it read the same
            del out["fp32_gemm"]
        if not self.measured:
            del out["measured"]
        if self.profile is None or "derived_from" in self.profile.provenance:
            del out["profile"]  # a derived profile is derived again on reading
        else:
            out["profile"] = self.profile.to_dict()
        return out


def _positive_number(where: str, field: str, value: Any) -> float:
    if isinstance(value, str):  # YAML 1.1 reads "989.4e12" as a string; accept it
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise ConfigError(f"{where}: {field} = {value!r}: must be a positive number")
    return float(value)


# ---------------------------------------------------------------------------------------------
# Reading and writing
# ---------------------------------------------------------------------------------------------

_FIELDS = {f.name for f in fields(Accelerator)} - {"setup"}
_REQUIRED = {f.name for f in fields(Accelerator) if f.default is dataclasses.MISSING}


def accelerator_from_dict(data: Any, *, name: str | None = None,
                          source: str = "hardware") -> Accelerator:
    """One accelerator from a mapping of fields; ``name`` defaults to the mapping key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: accelerator {name!r} must be a mapping of fields, "
                          f"got {type(data).__name__}")
    string_keys(data, f"{source}: accelerator {name!r}" if name is not None else source)
    data = dict(data)
    if name is not None:
        data.setdefault("name", name)
    label = f"{source}: accelerator {data.get('name', name)!r}"
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ConfigError(f"{label}: unknown field(s) {', '.join(map(str, unknown))}; "
                          f"valid fields: {', '.join(sorted(_FIELDS))}")
    missing = sorted(_REQUIRED - set(data))
    if missing:
        raise ConfigError(f"{label}: missing required field(s) {', '.join(missing)}")
    try:
        return Accelerator(**data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _parse(data: Any, *, source: str, derive: bool = True) -> dict[str, Accelerator]:
    """A single accelerator mapping (its keys are field names) or a mapping name -> fields."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source}: expected a mapping of accelerator fields, or of names to "
                          "such mappings")
    if set(data) & _FIELDS:
        acc = accelerator_from_dict(data, source=source)
        entries = {acc.name: acc}
    else:
        entries = {str(key): accelerator_from_dict(value, name=str(key), source=source)
                   for key, value in data.items()}
    return with_derived_profiles(entries) if derive else entries


def load_accelerators(path: str | os.PathLike) -> dict[str, Accelerator]:
    """A user YAML: one accelerator's fields, or a mapping name -> fields."""
    return _parse(load_yaml_file(path), source=str(path))


def save_accelerator(acc: Accelerator, path: str | os.PathLike) -> Path:
    """Write one accelerator (e.g. a calibrated profile) atomically; ``load_accelerators`` and
    ``get_accelerator(path)`` read it back."""
    return atomic_write_text(path, dump_yaml(acc.to_dict()))


@functools.lru_cache(maxsize=1)
def _measured_catalog() -> dict[str, Accelerator]:
    """The catalog as written: datasheet entries, the template with its measured profile."""
    text = importlib.resources.files("ecdit_scale").joinpath("data/hardware.yaml").read_text()
    source = "ecdit_scale/data/hardware.yaml"
    return _parse(parse_yaml(text, source=source), source=source, derive=False)


@functools.lru_cache(maxsize=1)
def _catalog() -> dict[str, Accelerator]:
    return with_derived_profiles(_measured_catalog())


@functools.lru_cache(maxsize=64)
def _derived(peak_bf16_flops: float, bw_bytes_per_s: float) -> DeviceProfile | None:
    """One derived profile per (peak, bandwidth), so that an accelerator read back from YAML
    compares equal to the one written (profiles compare by identity)."""
    template = _measured_catalog().get(TEMPLATE_NAME)
    if template is None or template.profile is None:
        return None
    return derive_profile(template.profile, template_peak_bf16_flops=template.peak_bf16_flops,
                          template_bw_bytes_per_s=TEMPLATE_DATASHEET_BW_BYTES_PER_S,
                          peak_bf16_flops=peak_bf16_flops, bw_bytes_per_s=bw_bytes_per_s)


def with_derived_profiles(entries: dict[str, Accelerator]) -> dict[str, Accelerator]:
    """Every accelerator without a measured profile (but a CPU, which ``profile`` measures)
    gets one derived from the template's measured profile (``derived_profile.py``): no device
    is priced at a flat efficiency. The derived profile is not written back to YAML."""
    out = {}
    for key, acc in entries.items():
        if acc.profile is None and acc.deepspeed_accelerator != "cpu":
            prof = _derived(acc.peak_bf16_flops, acc.memory_bw_bytes_per_s)
            if prof is not None:
                acc = dataclasses.replace(acc, profile=prof)
        out[key] = acc
    return out


def catalog() -> dict[str, Accelerator]:
    """The built-in catalog, keyed by name (a fresh dict; the entries are immutable)."""
    return dict(_catalog())


# ---------------------------------------------------------------------------------------------
# Lookup by name or file
# ---------------------------------------------------------------------------------------------

# Common spellings -> catalog keys (compared after lower-casing and dropping non-alphanumerics).
ALIASES = {
    "h100": "h100-sxm", "h100sxm5": "h100-sxm", "h10080gb": "h100-sxm",
    "h200sxm": "h200", "a100": "a100-80gb", "a100sxm": "a100-80gb", "a10080g": "a100-80gb",
    "b200sxm": "b200", "mi300": "mi300x", "v5p": "tpu-v5p",
}


def _canonical(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _looks_like_path(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or os.sep in text or Path(text).is_file()


def get_accelerator(name_or_path: str | os.PathLike) -> Accelerator:
    """A catalog entry (case-insensitive; "H100", "v5p" ... work) or a user YAML file.

    A file holding several accelerators is read as ``path:name``.
    """
    text = os.fspath(name_or_path)
    if _looks_like_path(text) or (":" in text and Path(text.rsplit(":", 1)[0]).is_file()):
        return _from_file(text)
    entries = _catalog()
    wanted = _canonical(text)
    by_key = {_canonical(k): k for k in entries}
    key = by_key.get(wanted) or by_key.get(_canonical(ALIASES.get(wanted, "")))
    if key is None:
        raise ConfigError(f"unknown accelerator {text!r}; choose one of {', '.join(entries)} "
                          "or give the path of a YAML file with the same fields")
    return entries[key]


def _from_file(text: str) -> Accelerator:
    path, name = text, None
    if not Path(text).is_file() and ":" in text:
        path, name = text.rsplit(":", 1)
    accs = load_accelerators(path)
    if name is None:
        if len(accs) == 1:
            return next(iter(accs.values()))
        raise ConfigError(f"{path} defines {', '.join(accs)}; pick one as {path}:NAME")
    if name not in accs:
        raise ConfigError(f"{path}: no accelerator {name!r}; it defines {', '.join(accs)}")
    return accs[name]


# CUDA / ROCm device names (``torch.cuda.get_device_name``) -> catalog keys, most specific first
DEVICE_NAME_KEYS = (("H200", "h200"), ("H100 PCIE", "h100-pcie"), ("H100", "h100-sxm"),
                    ("A100", "a100-80gb"), ("B200", "b200"), ("MI300", "mi300x"))


def accelerator_for_device_name(device_name: str) -> Accelerator:
    """The catalog entry of a device name as torch reports it ("NVIDIA H100 80GB HBM3" ->
    h100-sxm); ConfigError when the catalog has no such device."""
    name = device_name.upper()
    for key, acc in DEVICE_NAME_KEYS:
        if key in name:
            try:
                return get_accelerator(acc)
            except ConfigError:
                continue
    return get_accelerator(device_name)
