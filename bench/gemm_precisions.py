"""GEMMs in each precision's math: does a run in TF32, FP32 or FP16 get the rate the plan prices
it at (``compute.gemm_flops_per_s``: the profile's bf16 GEMM rate x peak of the run's math /
bf16 peak for the tensor-core maths; for fp32 on the CUDA cores, the fp32 peak x the fraction
cuBLAS SGEMM reached on an A100 at that size, a public measurement, ``planner/vector_gemm.py``)?

    python bench/gemm_precisions.py [--device cuda|cpu] [--gpu CATALOG_NAME] [--out r.json]

Times torch.matmul at DiT-XL/2's training shapes (micro-batch 32: 8,192 rows of d = 1,152) and
EC-DiT-M's (micro-batch 8: 2,048 rows of d = 3,072) in bf16, fp16, TF32 (fp32 tensors with
``torch.backends.cuda.matmul.allow_tf32``) and fp32 (without it: the CUDA cores), and prints
each one's TFLOP/s, its rate over bf16's at the same shape, and the plan's ratio for the
device's catalog entry (``--gpu``; default: read off the CUDA device's name). The public rows
this tests: DiT#22's fp32 run (priced 1.16x fast since the SGEMM curve; 1.7x slow before) and
TF32 run (1.6x fast), on A100s (bench/results/public-throughput); on Hopper, whether the A100's
SGEMM fraction of peak holds there. On a CPU only bf16 and fp32 are timed and the catalog has no
entry to compare with. A measurement, printed; not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_device import pick_device  # noqa: E402

from ecdit_scale.errors import ConfigError  # noqa: E402
from ecdit_scale.files import atomic_write_text  # noqa: E402
from ecdit_scale.planner.compute import gemm_flops_per_s  # noqa: E402
from ecdit_scale.planner.hardware import get_accelerator  # noqa: E402

# (label, M, N, K): a block's attention projection, MLP up and MLP down
SHAPES = {"cuda": (("dit-xl-2 qkv/proj", 8192, 1152, 1152), ("dit-xl-2 mlp up", 8192, 4608, 1152),
                   ("dit-xl-2 mlp down", 8192, 1152, 4608),
                   ("ecdit-m proj", 2048, 3072, 3072), ("ecdit-m mlp up", 2048, 12288, 3072)),
          "cpu": (("small square", 256, 256, 256), ("small mlp up", 256, 1024, 256))}
MATHS = {"cuda": ("bf16", "fp16", "tf32", "fp32"), "cpu": ("bf16", "fp32")}


def catalog_name(torch, device: str) -> str | None:
    """The catalog entry of the CUDA device here, read off its name (H200, H100 SXM / PCIe,
    A100); None on a CPU or an unknown card."""
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    for needle, entry in (("H200", "h200"), ("H100 PCIe", "h100-pcie"), ("H100", "h100-sxm"),
                          ("A100", "a100-80gb")):
        if needle in name:
            return entry
    return None


def time_gemm(torch, device: str, math: str, m: int, n: int, k: int, reps: int) -> float:
    """Median seconds of one (m x k) @ (k x n) in ``math``."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(math, torch.float32)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = math == "tf32"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    times = []
    for i in range(reps + 3):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        if i >= 3:  # three warm-up calls
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    ap.add_argument("--gpu", default=None, help="catalog entry to compare with (default: read "
                    "off the CUDA device's name)")
    ap.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = ap.parse_args()
    import torch

    device = pick_device(torch, args.device)
    entry = args.gpu or catalog_name(torch, device)
    try:
        acc = get_accelerator(entry) if entry else None
    except ConfigError as exc:
        sys.exit(f"error: --gpu {entry!r}: {exc}")
    reps = 20 if device == "cuda" else 5
    rows = []
    for label, m, n, k in SHAPES[device]:
        flops = 2.0 * m * n * k
        rate = {math: flops / time_gemm(torch, device, math, m, n, k, reps)
                for math in MATHS[device]}
        for math, r in rate.items():
            rows.append({"shape": label, "m": m, "n": n, "k": k, "math": math,
                         "flops_per_s": r, "over_bf16": r / rate["bf16"],
                         "planned_over_bf16": (gemm_flops_per_s(acc, m, n, k, math)
                                               / gemm_flops_per_s(acc, m, n, k, "bf16")
                                               if acc is not None else None)})
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"GEMMs on {name} ({torch.__version__}); plan's ratios from "
          f"{acc.name if acc is not None else 'no catalog entry'}")
    print(f"{'shape':<20} {'M x N x K':>18} {'math':>5} {'TFLOP/s':>9} {'/ bf16':>7} "
          f"{'planned':>8} {'measured / planned':>19}")
    for r in rows:
        planned = r["planned_over_bf16"]
        print(f"{r['shape']:<20} {r['m']:>6}x{r['n']}x{r['k']:<5} {r['math']:>5} "
              f"{r['flops_per_s'] / 1e12:>9.2f} {r['over_bf16']:>7.3f} "
              + (f"{planned:>8.3f} {r['over_bf16'] / planned:>19.2f}" if planned else
                 f"{'-':>8} {'-':>19}"))
    if args.out:
        atomic_write_text(args.out, json.dumps({"device": name, "torch": torch.__version__,
                                                "catalog": acc.name if acc else None,
                                                "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
