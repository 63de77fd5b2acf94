"""Large CPU tensors under glibc's default thresholds and the trainer's (``train.cpu_allocator``).

    python bench/cpu_allocator.py

For each size, two fresh processes time ``torch.stack`` of 8 weights and ``clone`` (median of
15 after a warm-up), one with glibc's defaults and one after ``keep_large_allocations``, and
the script prints GB/s (read + write) for both and their ratio. Below glibc's 32 MiB mmap
threshold the two should agree; above it the default maps and page-faults every new tensor.
One thread per process, as a rank runs. A measurement, not a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES_MIB = (8, 24, 48, 96, 192)

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


if __name__ == "__main__":
    main()
