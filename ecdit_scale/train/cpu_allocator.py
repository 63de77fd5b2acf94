"""glibc's malloc on a CPU rank: large tensors stay on the heap instead of being mapped afresh.

glibc serves an allocation above its mmap threshold (dynamic, at most 32 MiB on 64-bit) with a
new ``mmap`` and unmaps it on ``free``, so every such tensor is page-faulted in again at first
touch. A training step allocates the same large tensors every step (each MoE layer's stack of
expert weights, the activations of a big micro-batch); on the project's 2-core VM a 96 MiB
``torch.stack`` runs at 3.7 GB/s that way and at 19 GB/s into reused heap memory
(``bench/cpu_allocator.py`` measures both in one run). So each CPU rank, and the CPU profile
that prices it, raises the mmap threshold to 1 GiB and the trim threshold to 2 GiB once at
start (``mallopt``; the same as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``, which
would have to be set before the process starts). The cost: freed memory stays in the process
instead of going back to the system, so resident memory stays near its peak.

The thresholds hold for glibc's main arena only. A thread of its own gets another arena, whose
heaps are at most 64 MiB each: a larger tensor allocated there is mapped afresh and unmapped
on free whatever the threshold. gloo's collectives run on such threads, and its all-gather
allocates a temporary the size of its output on every call: a ZeRO-1/2 rank of base-ec8 on two
ranks page-faulted 324 MiB in every optimizer step that way (the whole model's fp32 gather),
and its collectives took a median 583 ms a step (timed by hand, 2026-12-07). So a rank also
keeps to one arena (``M_ARENA_MAX`` 1, as ``MALLOC_ARENA_MAX=1``): every thread's tensors come
from the main heap, the faults stop after the first steps, and the same step's collectives
took a median 356-400 ms (two runs). ``bench/cpu_allocator.py`` times gloo's all-gather both
ways in one run. A rank runs one compute thread, so the one arena's lock is not contended.

Left alone where the user chose an allocator: ``LD_PRELOAD`` (jemalloc, tcmalloc), glibc's own
variables, or ``ECDIT_SCALE_MALLOC=default``; and off glibc (macOS, musl), which has no
``mallopt``.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1 << 30
TRIM_THRESHOLD_BYTES = (1 << 31) - 1  # mallopt takes an int
OPT_OUT = "ECDIT_SCALE_MALLOC"
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                 "MALLOC_ARENA_MAX")


def keep_large_allocations(environ: dict[str, str] | None = None, *,
                           one_arena: bool = True) -> str:
    """Set glibc's thresholds for this process (see the module); return what was done, as the
    run records it. ``one_arena=False``: the thresholds alone, as the ranks ran before
    2026-12-07 (``bench/cpu_allocator.py`` and its test compare the two)."""
    env = os.environ if environ is None else environ
    if env.get(OPT_OUT, "").strip().lower() == "default":
        return f"glibc default ({OPT_OUT}=default)"
    if env.get("LD_PRELOAD", "").strip():
        return "left to the preloaded allocator (LD_PRELOAD)"
    if any(k in env for k in USER_SETTINGS) or "malloc" in env.get("GLIBC_TUNABLES", ""):
        return "left to the user's glibc malloc settings"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "system default (not glibc)"
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = (libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(MMAP_THRESHOLD_BYTES)) == 1
              and libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(TRIM_THRESHOLD_BYTES)) == 1
              and (not one_arena or libc.mallopt(M_ARENA_MAX, ctypes.c_int(1)) == 1))
    except (OSError, AttributeError):
        ok = False
    if not ok:
        return "glibc default (mallopt refused the thresholds)"
    return (f"glibc, mmap threshold {MMAP_THRESHOLD_BYTES >> 20} MiB, trim threshold "
            f"{TRIM_THRESHOLD_BYTES >> 20} MiB, " + ("one arena (large tensors reuse heap memory, "
                                                     "on every thread)" if one_arena else
                                                     "one arena per thread"))
