"""Large CPU tensors under glibc's default thresholds and the trainer's (``train.cpu_allocator``).

    python bench/cpu_allocator.py

For each size, two fresh processes time ``torch.stack`` of 8 weights and ``clone`` (median of
15 after a warm-up), one with glibc's defaults and one after ``keep_large_allocations``, and
the script prints GB/s (read + write) for both and their ratio. Below glibc's 32 MiB mmap
threshold the two should agree; above it the default maps and page-faults every new tensor.
One thread per process, as a rank runs.

Then gloo's all-gather on two ranks (the ZeRO-1/2 step's parameter gather), three ways: glibc's
defaults, the thresholds alone (the trainer before 2026-12-07), and the trainer's setting
(thresholds and one arena): milliseconds per call (median of 7) and the MiB page-faulted per
call. gloo allocates a temporary the size of the output on its own thread, whose arena maps
anything above 64 MiB afresh. A measurement, not a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES_MIB = (8, 24, 48, 96, 192)
GATHER_MIB = (16, 96, 340)  # the all-gather's output; 340: base-ec8's fp32 parameters

CHILD = r"""
import json, sys, time
import torch
from ecdit_scale.train.cpu_allocator import keep_large_allocations
torch.set_num_threads(1)
how = keep_large_allocations() if sys.argv[1] == "kept" else "glibc default"
out = {"allocator": how}
for mib in map(int, sys.argv[2:]):
    ws = [torch.randn(mib * 2**20 // 32) for _ in range(8)]  # 8 fp32 weights, mib in all
    def timed(f):
        f()
        ts = []
        for _ in range(15):
            t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
        return sorted(ts)[len(ts) // 2]
    nbytes = 2 * mib * 2**20  # read + write
    out[mib] = {"stack": nbytes / timed(lambda: torch.stack(ws)) / 1e9,
                "clone": nbytes / timed(lambda: ws[0].repeat(8)) / 1e9}
print(json.dumps(out))
"""


GATHER = r"""
import json, resource, sys, time
import torch, torch.distributed as dist
from ecdit_scale.train.cpu_allocator import keep_large_allocations
torch.set_num_threads(1)
mode, rank, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode != "default":  # "thresholds": as the ranks ran before the one arena
    keep_large_allocations(one_arena=mode == "kept")
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
out = {}
for mib in map(int, sys.argv[4:]):
    full = torch.empty(mib * 2**20 // 4)
    part = torch.ones(full.numel() // 2)
    for _ in range(3):
        dist.all_gather_into_tensor(full, part)
    ts, fs = [], []
    for _ in range(7):
        dist.barrier()
        f, t = faults(), time.perf_counter()
        dist.all_gather_into_tensor(full, part)
        ts.append(time.perf_counter() - t)
        fs.append((faults() - f) * resource.getpagesize() / 2**20)
    out[mib] = {"ms": sorted(ts)[3] * 1e3, "fault_mib": sorted(fs)[3]}
    del full, part
if rank == 0:
    print(json.dumps(out))
dist.destroy_process_group()
"""


def gather(mode: str) -> dict:
    from ecdit_scale.train.process import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "PYTHONWARNINGS": "ignore"}
    env.pop("ECDIT_SCALE_MALLOC", None)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-c", GATHER, mode, str(rank), port,
                               *map(str, GATHER_MIB)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for rank in (0, 1)]
    stdout = [p.communicate(timeout=600)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"the {mode} all-gather ranks failed")
    return json.loads(stdout[0])


def measure(mode: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("ECDIT_SCALE_MALLOC", None)
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, *map(str, SIZES_MIB)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def main() -> None:
    default, kept = measure("default"), measure("kept")
    print(f"trainer's allocator: {kept['allocator']}")
    print(f"{'MiB':>5} {'op':6} {'default GB/s':>12} {'trainer GB/s':>12} {'ratio':>6}")
    for mib in SIZES_MIB:
        for op in ("stack", "clone"):
            d, k = default[str(mib)][op], kept[str(mib)][op]
            print(f"{mib:5d} {op:6} {d:12.1f} {k:12.1f} {k / d:6.2f}")
    got = {mode: gather(mode) for mode in ("default", "thresholds", "kept")}
    print("gloo all-gather, 2 ranks: ms per call (MiB page-faulted per call)")
    print(f"{'MiB':>5} {'glibc default':>16} {'thresholds only':>16} {'trainer':>16} "
          f"{'trainer / thresholds':>21}")
    for mib in map(str, GATHER_MIB):
        cells = [f"{got[m][mib]['ms']:7.1f} ({got[m][mib]['fault_mib']:4.0f})"
                 for m in ("default", "thresholds", "kept")]
        ratio = got["kept"][mib]["ms"] / got["thresholds"][mib]["ms"]
        print(f"{mib:>5} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16} {ratio:21.2f}")


if __name__ == "__main__":
    main()
