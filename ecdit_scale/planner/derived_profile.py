"""A device profile for a catalog device that was never measured, derived from one that was
(issue 19: every catalog device priced by operator class, no flat efficiency).

The template is the profile measured on one H200 (``ecdit-scale profile --device cuda``,
2026-11-26, ``bench/results/profile_nvidia-h200.yaml``). Each measured number is carried over
with the ratio of the two devices' datasheet figures for the resource that bounds it:

- GEMM grid and SDPA rates: x peak_bf16(device) / peak_bf16(template) -- the H200's measured
  fraction of peak at each shape is kept (its efficiencies are the template);
- memory-bound throughputs by kind, the copy bandwidth, the optimizer's seconds per byte and
  DeepSpeed's engine work per parameter (per step and per further micro-step):
  x datasheet HBM bandwidth(device) / datasheet HBM bandwidth(template) (4.8 TB/s, H200 SXM
  datasheet; the profile measured 4.26 TB/s copy = 89% of it, kept for the device);
- kernel launch, per-tensor optimizer and autograd/engine work: host-side, carried unchanged.

The result says so in its provenance (``derived_from``, ``scales``), and the plan's notes name
it "derived" term by term (``compute.term_sources``). A measured profile always wins.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .device_profile import DeviceProfile

# NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: 4.8 TB/s HBM3e (the catalog keeps the
# measured 4.26 TB/s as the h200's memory_bw_bytes_per_s)
TEMPLATE_DATASHEET_BW_BYTES_PER_S = 4.8e12
TEMPLATE_NAME = "h200"


def derive_profile(template: DeviceProfile, *, template_peak_bf16_flops: float,
                   template_bw_bytes_per_s: float, peak_bf16_flops: float,
                   bw_bytes_per_s: float, template_name: str = TEMPLATE_NAME) -> DeviceProfile:
    """``template`` carried to a device of ``peak_bf16_flops`` and datasheet ``bw_bytes_per_s``
    (the template's own datasheet figures given likewise); see the module docstring."""
    f = peak_bf16_flops / template_peak_bf16_flops
    b = bw_bytes_per_s / template_bw_bytes_per_s
    t = template
    scaled = dict(
        gemm_flops_per_s=tuple(x * f for x in t.gemm_flops_per_s),
        bmm_flops_per_s=tuple(x * f for x in t.bmm_flops_per_s),
        sdpa_forward_flops_per_s=tuple(x * f for x in t.sdpa_forward_flops_per_s),
        sdpa_backward_flops_per_s=tuple(x * f for x in t.sdpa_backward_flops_per_s),
        memory_bw_bytes_per_s=(None if t.memory_bw_bytes_per_s is None
                               else t.memory_bw_bytes_per_s * b),
        memory_kind_bw={k: v * b for k, v in t.memory_kind_bw.items()},
        optimizer_s_per_byte=(None if t.optimizer_s_per_byte is None
                              else t.optimizer_s_per_byte / b),
        optimizer_s_per_byte_by={k: tuple(x / b for x in v)
                                 for k, v in t.optimizer_s_per_byte_by.items()},
        deepspeed_engine_s_per_param={k: v / b for k, v in
                                      t.deepspeed_engine_s_per_param.items()},
        deepspeed_micro_s_per_param={k: v / b for k, v in
                                     t.deepspeed_micro_s_per_param.items()},
        deepspeed_engine_by_setting={
            setting: {attr: ({k: v / b for k, v in stages.items()}
                             if attr.endswith("per_param") else dict(stages))
                      for attr, stages in fields.items()}
            for setting, fields in t.deepspeed_engine_by_setting.items()},
        links={},  # collectives follow the device's own links (comm.py), never the template's
        collective_nproc=None, collective_backend=None,
        provenance={"derived_from": f"{template_name} profile "
                                    f"({t.provenance.get('date', 'undated')})",
                    "scales": {"compute": round(f, 4), "memory": round(b, 4)},
                    "template_device": t.provenance.get("device", template_name)},
    )
    return dataclasses.replace(t, **scaled)


def is_derived(profile: Any) -> bool:
    return profile is not None and "derived_from" in getattr(profile, "provenance", {})


def derived_note(profile: Any) -> str:
    """One line for a plan's notes: where a derived profile's numbers come from."""
    p = profile.provenance
    s = p.get("scales", {})
    return (f"derived from the {p['derived_from']}: GEMM/SDPA rates x {s.get('compute')} "
            f"(datasheet bf16 peak ratio), memory-bound x {s.get('memory')} (datasheet HBM "
            "bandwidth ratio), launch/engine carried unchanged")
