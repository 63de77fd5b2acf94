"""Where a sweep's launches run at the same time: its slots.

- CPU: ``--parallel N`` launches share this machine's cores (no placement);
- CUDA on one machine: ``--parallel`` slots dealt over groups of ``--nproc`` local devices,
  so that with as many launches as groups each launch has GPUs of its own (more launches
  share them in turn): a one-rank run sees only its device
  (CUDA_VISIBLE_DEVICES), a several-rank run is started on its devices only (DeepSpeed
  ``--include localhost:ids``);
- ``--hostfile``: every host's slots (``slots=N``) in groups of ``--nproc``; each run is its
  own world on one host, started through DeepSpeed's launcher over ssh (a one-host hostfile
  of its own in ``<out>/hostfiles/``, ``--include HOST:ids --force_multi``); the sweep keeps
  every slot busy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_write_text


@dataclass(frozen=True)
class Slot:
    devices: str | None = None  # CUDA device ids ("0" or "2,3"); None: no placement (CPU)
    host: str | None = None  # a hostfile's host (None: this machine)
    hostfile: str | None = None  # the one-host hostfile of ``host``


def local_slots(parallel: int, nproc: int, gpus: int) -> list[Slot]:
    """``parallel`` launches on this machine: on GPUs, groups of ``nproc`` devices dealt out in
    turn (one launch per group; more launches than groups share them, as small models leave
    a GPU mostly idle); without GPUs, no placement. One line if a launch cannot have
    ``nproc`` devices."""
    if gpus == 0:
        return [Slot()] * parallel
    groups = gpus // nproc
    if groups == 0:
        raise ConfigError(f"--nproc {nproc}: this machine has {gpus} CUDA devices; use "
                          f"--nproc <= {gpus}, or --hostfile for several machines")
    return [Slot(devices=",".join(str((k % groups) * nproc + i) for i in range(nproc)))
            for k in range(parallel)]


def host_slots(hostfile: str, nproc: int, out: str | Path) -> list[Slot]:
    """Every host's slots in groups of ``nproc`` devices, each with a one-host hostfile."""
    from .request import parse_hostfile

    hosts = parse_hostfile(hostfile)
    slots: list[Slot] = []
    for host, n in hosts.items():
        if n < nproc:
            raise ConfigError(f"--hostfile {hostfile}: {host} has {n} slots, fewer than "
                              f"--nproc {nproc}")
        path = Path(out) / "hostfiles" / host
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, f"{host} slots={n}\n")
        for k in range(n // nproc):
            slots.append(Slot(devices=",".join(str(k * nproc + i) for i in range(nproc)),
                              host=host, hostfile=str(path)))
    return slots


def sweep_slots(*, parallel: int, nproc: int, device: str, hostfile: str | None,
                out: str | Path) -> list[Slot]:
    """The slots of a sweep (see the module docstring)."""
    if hostfile is not None:
        return host_slots(hostfile, nproc, out)
    if device == "cpu":
        return [Slot()] * parallel
    from .request import _torch_is_cpu_only

    if _torch_is_cpu_only():
        return [Slot()] * parallel
    import torch

    return local_slots(parallel, nproc, torch.cuda.device_count())
