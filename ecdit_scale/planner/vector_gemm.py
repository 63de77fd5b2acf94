"""The rate of an fp32 GEMM on a GPU's vector (CUDA-core) units, as a fraction of their peak.

A run in fp32 without TF32 (``torch.backends.cuda.matmul.allow_tf32`` False, torch's default
since 1.12) multiplies on the fp32 units, not the tensor cores. Until 2026-12-08 the plan priced
it at the measured bf16 tensor-core rate x fp32 peak / bf16 peak, i.e. at the tensor cores'
fraction of peak at that shape (about 63% at DiT-XL/2's). SGEMM on the vector units keeps a
different fraction, and nothing measured on the template H200 says what it is. A public
measurement does: cuBLAS's fp32 ``torch.matmul`` on an NVIDIA A100 80GB PCIe, square problems
256-3200 (triton-lang/triton#2491, comment by constroy, 2023-11-28, the "cuBLAS" column of
Triton's matmul benchmark), against the A100's datasheet fp32 peak of 19.5 TFLOP/s. Its curve
is used for every catalog device whose fp32 peak is vector math (``Accelerator.fp32_gemm``):
the A100 as measured, the Hopper and Blackwell parts by the same fraction of their own fp32
peak (not measured on them: ``bench/gemm_precisions.py`` times it when a GPU is lent).

A problem of shape (M, N, K) is read off the square curve at the cube root of M x N x K (the
square of the same FLOPs; ``compute._gemm_rates`` never prices it above the same GEMM's bf16
rate, which binds at a few hundred rows, where both are launch-bound); between published sizes
the fraction is interpolated linearly in log size, below the smallest and above the largest it
is held at the end point. The published points scatter (2,304: 97.5%, 2,688: 85.5%), so each
is replaced by the median of it and its two neighbours before interpolating.

Checked against two timings the curve does not use, a 10240-cube fp32 matmul on an A100 with
TF32 off: 0.11 s (pytorch/pytorch#40800, the TF32 note of torch's CUDA docs, "on GA100") and
0.113 s (PaddlePaddle/Paddle#30612): 19.5 and 19.0 TFLOP/s. The curve, held at 94.7% past 3200,
prices it at 0.116 s: 6% and 3% slow.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

SOURCE = ("cuBLAS fp32 matmul on an A100 80GB PCIe, triton-lang/triton#2491 (2023-11-28), "
          "over the A100's 19.5 TFLOP/s fp32 peak")
A100_FP32_PEAK_FLOPS = 19.5e12  # NVIDIA A100 datasheet, FP32 (non-tensor)
# (square size, TFLOP/s) as published
PUBLISHED_TFLOPS = (
    (256, 2.048), (384, 5.266), (512, 8.192), (640, 12.190), (768, 13.405), (896, 14.191),
    (1024, 16.009), (1152, 16.681), (1280, 16.450), (1408, 16.984), (1536, 16.852),
    (1664, 16.884), (1792, 16.725), (1920, 17.345), (2048, 17.605), (2176, 17.348),
    (2304, 19.019), (2432, 17.963), (2560, 17.000), (2688, 16.681), (2816, 18.575),
    (2944, 18.728), (3072, 17.993), (3200, 18.460),
)


@functools.lru_cache(maxsize=1)
def _curve() -> tuple[np.ndarray, np.ndarray]:
    """(log sizes, fractions of peak), each fraction the median of it and its neighbours."""
    size = np.array([s for s, _ in PUBLISHED_TFLOPS], dtype=float)
    frac = np.array([t for _, t in PUBLISHED_TFLOPS]) * 1e12 / A100_FP32_PEAK_FLOPS
    padded = np.concatenate([frac[:1], frac, frac[-1:]])
    smooth = np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)
    return np.log(size), smooth


def vector_fraction(m: Any, n: Any, k: Any) -> Any:
    """The fraction of the fp32 vector peak an (M, N, K) SGEMM runs at (arrays broadcast)."""
    logs, frac = _curve()
    cube = (np.log(np.asarray(m, dtype=float)) + np.log(np.asarray(n, dtype=float))
            + np.log(np.asarray(k, dtype=float))) / 3.0
    return np.interp(cube, logs, frac)
