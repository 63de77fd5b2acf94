"""Do ranks on one CPU host slow each other's kernels? (issue 19)

A CPU profile times each operator class in one process; a launch with several ranks on the
host runs them side by side. This times the same kernels (one thread each, as the trainer's
ranks run) in one process alone, then in N processes at once (started together at a barrier),
and prints each kind's seconds per call with N running over its seconds alone: 1.0 = no
slowdown. Wall clock and thread CPU time are both shown (CPU time leaves out time a rank
spends descheduled; wall time does not).

    python bench/cpu_concurrency.py [--nproc 2] [--seconds 0.2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

KINDS = ("gemm 1024x1024x1024", "gemm 64x256x1024", "copy 32 MiB", "add 32 MiB",
         "tanh-gelu 32 MiB", "layer_norm 2048x512", "sdpa 8x256x64", "add 2048x512")


def time_kinds(seconds: float) -> dict[str, tuple[float, float]]:
    """{kind: (wall s per call, thread CPU s per call)}, each the median of three batches."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(0)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    s, w = torch.randn(64, 1024), torch.randn(1024, 256)
    big, big2 = torch.randn(8 << 20), torch.randn(8 << 20)
    out = torch.empty_like(big)
    x = torch.randn(2048, 512)
    q = torch.randn(1, 8, 256, 64)
    calls = dict(zip(KINDS, (
        lambda: torch.mm(a, b), lambda: torch.mm(s, w), lambda: out.copy_(big),
        lambda: torch.add(big, big2, out=out), lambda: F.gelu(big, approximate="tanh"),
        lambda: F.layer_norm(x, (512,)), lambda: F.scaled_dot_product_attention(q, q, q),
        lambda: torch.add(x, x)), strict=True))
    got = {}
    for kind, fn in calls.items():
        fn()
        t0 = time.perf_counter()
        fn()
        reps = max(1, int(seconds / max(time.perf_counter() - t0, 1e-7)))
        walls, cpus = [], []
        for _ in range(3):
            w0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(reps):
                fn()
            walls.append((time.perf_counter() - w0) / reps)
            cpus.append((time.thread_time() - c0) / reps)
        got[kind] = (statistics.median(walls), statistics.median(cpus))
    return got


def _worker(barrier, seconds: float, queue) -> None:
    barrier.wait()
    queue.put(time_kinds(seconds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=2, help="processes at once (default 2)")
    ap.add_argument("--seconds", type=float, default=0.2, help="per batch of calls")
    args = ap.parse_args()
    if args.nproc < 2:
        raise SystemExit(f"error: --nproc {args.nproc}: must be >= 2")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    solo_barrier = ctx.Barrier(1)
    p = ctx.Process(target=_worker, args=(solo_barrier, args.seconds, queue))
    p.start()
    alone = queue.get()
    p.join()
    barrier = ctx.Barrier(args.nproc)
    procs = [ctx.Process(target=_worker, args=(barrier, args.seconds, queue))
             for _ in range(args.nproc)]
    for p in procs:
        p.start()
    together = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    print(f"{args.nproc} processes at once / one alone, seconds per call (one thread each)")
    print(f"{'kind':24s} {'alone':>10s} {'wall ratio':>18s} {'CPU-time ratio':>18s}")
    for kind in KINDS:
        wall = [t[kind][0] / alone[kind][0] for t in together]
        cpu = [t[kind][1] / alone[kind][1] for t in together]
        print(f"{kind:24s} {alone[kind][0] * 1e3:8.3f}ms "
              f"{min(wall):8.2f}-{max(wall):<8.2f} {min(cpu):8.2f}-{max(cpu):<8.2f}")


if __name__ == "__main__":
    main()
