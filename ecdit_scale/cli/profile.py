"""`ecdit-scale profile`: measure this device operator class by operator class and write a
hardware profile that `plan --gpu PROFILE.yaml` and `validate --profile PROFILE.yaml` read.

torch is imported inside the command only.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..files import to_plain
from ..planner.device_profile import ENGINE_SETTING_NAMES
from .common import app, console, err_console, print_json


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@app.command("profile")
def profile_cmd(
    out: str | None = typer.Option(None, "--out",
                                   help="Profile YAML to write (default profile-<device>.yaml)."),
    device: str = typer.Option("cpu", "--device", metavar="<cpu|cuda>",
                               help="The device to measure."),
    nproc: int = typer.Option(1, "--nproc",
                              help="Processes for all-reduce / all-to-all / all-gather (gloo "
                                   "on CPU, nccl on CUDA); 1 skips them."),
    quick: bool = typer.Option(False, "--quick",
                               help="A smaller grid and shorter timings (a few seconds on a CPU)."),
    threads: int = typer.Option(1, "--threads",
                                help="CPU threads, 1 to the CPUs available "
                                     "(a CPU rank of `launch` runs one)."),
    dtype: str = typer.Option("", "--dtype", metavar="<fp32|bf16|fp16>",
                              help="Default: fp32 on CPU, bf16 on CUDA."),
    trainer_launches: int = typer.Option(
        3, "--trainer-launches", help="Launches of the trainer probe per rank count (their "
        "median is kept; a full profile only)."),
    json_out: bool = typer.Option(False, "--json", help="Print the profile as JSON."),
) -> None:
    """Measure GEMMs, SDPA, bandwidth, launch overhead, the optimizer step and collectives."""
    from ..errors import ConfigError
    from ..evaluation.profile import (
        Settings,
        check_settings,
        measure_profile,
        profile_accelerator,
        write_profile,
    )

    cpus = available_cpus()
    if not 1 <= threads <= cpus:  # torch.set_num_threads(100000) segfaults
        raise ConfigError(f"--threads {threads}: must be in 1..{cpus} (the CPUs this process "
                          "may use; more would measure contention, not the device)")
    path = Path(out or f"profile-{device}.yaml")
    if path.is_dir() or not path.parent.is_dir():
        raise ConfigError(f"--out {path}: must be a file in an existing folder")
    s = Settings(device=device, quick=quick, threads=threads, nproc=nproc, dtype=dtype,
                 trainer_launches=trainer_launches)
    check_settings(s)  # before the spinner: a refusal is its one line, no blank line above it
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=json_out) as bar:
        task = bar.add_task("profiling", total=None)
        prof = measure_profile(s, report=lambda m: bar.update(task, description=f"measuring {m}"))
    acc = profile_accelerator(s, prof)
    write_profile(acc, path)
    if json_out:
        print_json({"path": str(path), "accelerator": to_plain(acc.to_dict())})
        return
    render_profile(acc, path)


def render_profile(acc, path: Path) -> None:
    p = acc.profile
    t = Table(title=f"Profile of {p.provenance.get('device', acc.name)} ({p.dtype})")
    t.add_column("measurement")
    t.add_column("value", justify="right")
    t.add_row("GEMM, best / worst of grid", f"{max(p.gemm_flops_per_s) / 1e9:,.1f} / "
                                            f"{min(p.gemm_flops_per_s) / 1e9:,.2f} GFLOP/s")
    if p.has_bmm:
        t.add_row("batched GEMM (bmm), best / worst of grid",
                  f"{max(p.bmm_flops_per_s) / 1e9:,.1f} / {min(p.bmm_flops_per_s) / 1e9:,.2f} "
                  "GFLOP/s")
    t.add_row("SDPA forward, largest call", f"{p.sdpa_forward_flops_per_s[-1] / 1e9:,.1f} GFLOP/s")
    t.add_row("SDPA backward, largest call",
              f"{p.sdpa_backward_flops_per_s[-1] / 1e9:,.1f} GFLOP/s")
    t.add_row("copy bandwidth", f"{p.memory_bw_bytes_per_s / 1e9:,.1f} GB/s")
    t.add_row(f"kernel launch ({p.launch_mode})", f"{p.launch_s * 1e6:.2f} us")
    for kind, policies in p.host_s_per_kernel.items():
        t.add_row(f"model's host cost per kernel, {kind} (recompute none / selective / full)",
                  " / ".join(f"{policies[r] * 1e6:.1f}" for r in policies) + " us")
    for ranks, seconds in sorted(p.trainer_s_per_kernel.items()):
        t.add_row(f"trainer's steps over the rest, per kernel, {ranks} rank(s)",
                  f"{seconds * 1e6:.1f} us")
    t.add_row(f"optimizer (AdamW{', ' + p.optimizer_kernels if p.optimizer_kernels else ''})",
              f"{p.optimizer_s_per_byte * 1e12:.2f} ps/byte + "
              f"{(p.optimizer_s_per_tensor or 0) * 1e6:.1f} us/tensor")
    for name, curve in sorted(p.optimizer_s_per_byte_by.items()):
        t.add_row(f"optimizer ({name}), {p.optimizer_elements[0]:.0e}-"
                  f"{p.optimizer_elements[-1]:.0e} elements per tensor",
                  " / ".join(f"{r * 1e12:.0f}" for r in curve) + " ps/byte")
    t.add_row("autograd per parameter tensor", f"{p.engine_s_per_param_tensor * 1e6:.1f} us")
    if p.deepspeed_engine_s:
        t.add_row("DeepSpeed engine per tensor", ", ".join(
            f"ZeRO-{k} {v * 1e6:.1f} us" for k, v in sorted(p.deepspeed_engine_s.items())))
    if p.deepspeed_engine_s_per_param:
        t.add_row("DeepSpeed engine per parameter", ", ".join(
            f"ZeRO-{k} {v * 1e9:.2f} ns"
            for k, v in sorted(p.deepspeed_engine_s_per_param.items())))
    if p.deepspeed_micro_s or p.deepspeed_micro_s_per_param:
        t.add_row("DeepSpeed engine per further micro-step", ", ".join(
            f"ZeRO-{k} {p.deepspeed_micro_s.get(k, 0.0) * 1e6:.1f} us/tensor + "
            f"{p.deepspeed_micro_s_per_param.get(k, 0.0) * 1e9:.2f} ns/param"
            for k in sorted(set(p.deepspeed_micro_s) | set(p.deepspeed_micro_s_per_param))))
    on_ranks = p.provenance.get("engine_dp_world1", {})  # timed on nproc ranks too
    for setting, fields in p.deepspeed_engine_by_setting.items():
        per_tensor = fields.get("deepspeed_engine_s", {})
        per_param = fields.get("deepspeed_engine_s_per_param", {})
        where = (f" (on {p.provenance.get('settings', {}).get('nproc')} ranks, less "
                 "their collectives)"
                 if setting in on_ranks else "")
        t.add_row(f"DeepSpeed engine, {ENGINE_SETTING_NAMES[setting]}{where}", ", ".join(
            f"ZeRO-{k} {per_tensor.get(k, 0.0) * 1e6:.1f} us/tensor + "
            f"{per_param.get(k, 0.0) * 1e9:.2f} ns/param"
            for k in sorted(set(per_tensor) | set(per_param))))
    for name, fit in p.links.items():
        t.add_row(f"{name} ({p.collective_nproc} x {p.collective_backend})",
                  f"{fit.bw_bytes_per_s / 1e9:.2f} GB/s, {fit.latency_s * 1e6:.0f} us, "
                  f"half at {fit.half_bytes / 1024:.0f} KiB")
    if p.sync is not None:
        t.add_row(f"ranks meeting after compute ({p.collective_nproc} x "
                  f"{p.collective_backend}): the last's lead over the mean; its own wait",
                  ", ".join(f"{s * 1e3:.1f} ms: {e * 1e6:.0f} us; {w * 1e6:.0f} us"
                            for s, e, w in zip(p.sync.segment_s, p.sync.excess_s,
                                               p.sync.wait_s, strict=True)))
    console.print(t)
    console.print(f"measured in {p.provenance.get('measured_in_s')} s; wrote {path} "
                  f"(use: ecdit-scale plan --gpu {path} ...)", highlight=False, markup=False)
