"""Time the full layout search for the 97B EC-DiT on 1,024 H100s against the 1 s target.

    python bench/plan_speed.py

Prints one line: best-of-5 wall time, the number of layouts evaluated, and the ratio to the
target (the search must stay interactive: ``ecdit-scale plan`` runs it on every call).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecdit_scale import sizes  # noqa: E402
from ecdit_scale.config import ClusterConfig, TrainingConfig  # noqa: E402
from ecdit_scale.planner.hardware import get_accelerator  # noqa: E402
from ecdit_scale.planner.layouts import search_layouts  # noqa: E402

TARGET_S = 1.0
REPEATS = 5


def main() -> None:
    cfg = sizes.resolve("97B").config
    training = TrainingConfig()
    cluster = ClusterConfig(gpu="h100-sxm", nodes=128, gpus_per_node=8)  # 1,024 devices
    acc = get_accelerator(cluster.gpu)
    times, result = [], None
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        result = search_layouts(cfg, training, cluster, acc)
        times.append(time.perf_counter() - t0)
    best, cold = min(times), times[0]
    print(f"search ({cfg.name} on {cluster.world:,} {acc.name}): {best:.3f} s for "
          f"{result.num_evaluated:,} layouts ({result.num_feasible:,} fit), best of {REPEATS}; "
          f"{TARGET_S / best:.1f}x under the {TARGET_S:g} s target "
          f"(first call {cold:.3f} s: {TARGET_S / cold:.1f}x)")
    print(f"best layout: {result.best.describe()}, step {result.best.step.total_s:.3f} s, "
          f"MFU {result.best.step.mfu:.1%}")


if __name__ == "__main__":
    main()
