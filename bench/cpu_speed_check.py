"""How fast this CPU runs a model-like op mix right now: seconds for a fixed amount of work.

The CPU held-out matrix (``cpu_heldout_matrix.py``) prices each run from a profile taken
before its first launch, then launches it three times. On this VM the same code ran 17-25%
slower in a run's later launches than in its first (matrix 22, tiny-tc8: 280.7 ms, then 351
and 355 ms a step), which one profile cannot see. This times the same fixed mix (GEMMs,
GELU, layer norm, adds: the op classes of a DiT block, one thread as each trainer rank runs)
right after the profile and right before each launch; the ratio says how much slower or
faster the machine is at that launch than when it was profiled.

Judged on matrix 23 (2026-12-07): scaling each launch's prediction by this ratio made the
errors worse (mean 11.8% -> 16.5%, worst 32.8% -> 59.5%). The check read 0.056-0.099 s over
the hour and moved by up to 30% between two checks a minute apart, where six idle back-to-back
checks agree within 4%: after a profile or a launch it times the machine's recovery, not the
speed the next launch meets. The bench prints the scaled errors as a record, not a correction.

    python bench/cpu_speed_check.py            # prints the seconds of the mix (median of 15)
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

REPEATS = 15
WARM_UP = 10


def time_mix() -> float:
    """Median seconds of one pass over the mix, in this process (one thread)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(512, 192)
    w1, w2 = torch.randn(768, 192), torch.randn(192, 768)

    def once() -> None:
        for _ in range(16):
            h = F.layer_norm(x, (192,))
            h = F.gelu(F.linear(h, w1))
            y = F.linear(h, w2) + x
            y.mul_(0.5).add_(x)

    for _ in range(WARM_UP):  # a fresh process runs its first passes 10-40% slower
        once()
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def speed_check() -> float:
    """The mix's seconds, timed in a fresh process (as a trainer rank starts)."""
    out = subprocess.run([sys.executable, __file__], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


if __name__ == "__main__":
    print(f"{time_mix():.6f}")
