"""SDPA at head dims around FlashAttention-2's kernel sizes: does a head dim of 72 run at the
rate of the 96 kernel per FLOP computed, as the plan prices it (``compute.flash_head_dim``)?

    python bench/sdpa_head_dims.py [--device cuda|cpu] [--out results.json]

Times torch's scaled_dot_product_attention forward and backward (bf16 on CUDA, fp32 on CPU) at
head dims 64, 72, 96 and 128 with the same batch x heads and sequence, and prints the FLOP/s of
the FLOPs counted at each head dim (4 B H S^2 d forward, twice that backward) and, for 72, the
ratio to 96's: the plan predicts 72/96 = 0.75 on CUDA (the 96 kernel computes the padding) and
no padding on CPU. A measurement, printed; not a test.
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

from ecdit_scale.planner.compute import flash_head_dim  # noqa: E402

HEAD_DIMS = (64, 72, 96, 128)


def time_sdpa(torch, device: str, head_dim: int, *, batch_heads: int, seq: int,
              reps: int) -> tuple[float, float]:
    """Median seconds of a forward and of a backward of SDPA at ``head_dim``."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    q, k, v = (torch.randn(1, batch_heads, seq, head_dim, device=device, dtype=dtype,
                           requires_grad=True) for _ in range(3))
    f = torch.nn.functional.scaled_dot_product_attention
    fwd, bwd = [], []
    for i in range(reps + 2):
        sync()
        t0 = time.perf_counter()
        out = f(q, k, v)
        sync()
        t1 = time.perf_counter()
        out.sum().backward()
        sync()
        t2 = time.perf_counter()
        if i >= 2:  # two warm-up calls
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return sorted(fwd)[len(fwd) // 2], sorted(bwd)[len(bwd) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    ap.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = ap.parse_args()
    import torch

    device = pick_device(torch, args.device)
    bh, seq, reps = (256, 4096, 10) if device == "cuda" else (8, 256, 5)
    rows = []
    for d in HEAD_DIMS:
        tf, tb = time_sdpa(torch, device, d, batch_heads=bh, seq=seq, reps=reps)
        flops = 4.0 * bh * seq * seq * d
        rows.append({"head_dim": d, "kernel_head_dim": flash_head_dim(d) if device == "cuda"
                     else d, "forward_flops_per_s": flops / tf,
                     "backward_flops_per_s": 2 * flops / tb})
    by = {r["head_dim"]: r for r in rows}
    predicted = 72 / flash_head_dim(72) if device == "cuda" else 1.0
    print(f"SDPA on {device} ({torch.__version__}), batch x heads {bh}, sequence {seq}")
    print(f"{'head dim':>8} {'kernel':>6} {'forward TFLOP/s':>16} {'backward TFLOP/s':>17}")
    for r in rows:
        print(f"{r['head_dim']:>8} {r['kernel_head_dim']:>6} "
              f"{r['forward_flops_per_s'] / 1e12:>16.3f} {r['backward_flops_per_s'] / 1e12:>17.3f}")
    ratio = {p: by[72][f"{p}_flops_per_s"] / by[96][f"{p}_flops_per_s"]
             for p in ("forward", "backward")}
    print(f"rate at 72 / rate at 96 (FLOPs counted at each): forward {ratio['forward']:.3f}, "
          f"backward {ratio['backward']:.3f}; the plan predicts {predicted:.3f}")
    if args.out:
        args.out.write_text(json.dumps({"device": device, "torch": str(torch.__version__),
                                        "batch_heads": bh, "seq": seq, "rows": rows,
                                        "ratio_72_over_96": ratio,
                                        "predicted": predicted}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
