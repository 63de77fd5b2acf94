"""The DeepSpeed engine's costs as the engine probe's other ways priced them, kept in a profile's
provenance for the record (``bench/cpu_heldout_matrix.py --engine-from-toy`` and
``--engine-dp-world1`` price by them): the profile itself prices the model's own code on the
profile's ranks (``engine_probe``)."""

from __future__ import annotations

from typing import Any

from ..planner.device_profile import ENGINE_FIELDS
from .engine_probe import DP_SETTINGS


def engine_toy(engine: dict[int, dict[str, tuple[float, ...]]]) -> dict[str, Any]:
    """The DeepSpeed engine's costs as the probe's toy of many Linear(32, 32) layers priced
    them (``engine_probe.probe``'s "toy" of each stage), for the record: the profile prices
    the model's own code's (``bench/cpu_heldout_matrix.py --engine-from-toy`` prices the toy's)."""
    toy = _engine_record(engine, "toy")
    return {"engine_toy": toy} if toy else {}


def engine_dp_world1(engine: dict[int, dict[str, tuple[float, ...]]]) -> dict[str, Any]:
    """The data-parallel settings' engine costs as a world-1 engine priced them, where the
    probe timed them on several ranks too (``engine_probe.probe``'s "world1:SETTING"), for the
    record (``bench/cpu_heldout_matrix.py --engine-dp-world1`` prices by them)."""
    out = {setting: record for setting in DP_SETTINGS
           if (record := _engine_record(engine, f"world1:{setting}"))}
    return {"engine_dp_world1": out} if out else {}


def _engine_record(engine: dict[int, dict[str, tuple[float, ...]]], label: str) -> dict:
    """{``ENGINE_FIELDS`` key: {ZeRO stage: seconds}} of the probe's ``label`` costs ({}: none)."""
    stages = {k: v[label] for k, v in sorted(engine.items()) if label in v}
    return {key: {k: four[i] for k, four in stages.items()}
            for i, (key, _) in enumerate(ENGINE_FIELDS)} if stages else {}
