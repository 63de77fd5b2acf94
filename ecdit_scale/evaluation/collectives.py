"""All-reduce, all-to-all and all-gather between ``nproc`` local processes (gloo on CPU, nccl on
CUDA) for ``ecdit-scale profile --nproc N``: each rank is a fresh interpreter
(``python -m ecdit_scale.evaluation.collectives RANK ARGS``) that joins a process group and
times the collectives over message sizes, every rank the same number of calls; rank 0 writes
the times, and ``fit_link`` turns them into latency + bytes / bandwidth. On CPU the ranks then
time how they meet at a collective after a stretch of compute (``_sync_waits``: the profile's
``sync``, ``planner.rank_sync``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..planner.link_fit import COLLECTIVES, LinkFit, link_factor
from ..planner.rank_sync import SyncFit
from ..train.cpu_allocator import keep_large_allocations

COLLECTIVE_TIMEOUT_S = 120


def collective_sizes(s: Any) -> list[int]:
    """Message sizes from 64 B by factors of 16. The largest reaches what DeepSpeed's buckets
    carry in a run on the device (a CPU run's reduce bucket holds every gradient, tens to
    hundreds of MiB): gloo's bandwidth at 64 MiB is ~60% of its 4 MiB bandwidth, once the
    message no longer fits the last-level cache."""
    top = (4 if s.quick else 64) * 2**20 if s.device == "cpu" else 256 * 2**20
    sizes, b = [], 64
    while b <= top:
        sizes.append(b)
        b *= 16
    return sizes


def _collective_worker(rank: int, nproc: int, port: int, device: str, sizes: list[int],
                       out: str, quick: bool) -> None:
    """One rank of ``measure_collectives``."""
    import warnings

    import torch
    import torch.distributed as dist

    # torch 2.13 names all_gather_into_tensor deprecated; DeepSpeed 0.19.8 calls it
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(1)
    if device == "cpu":  # as the trainer's ranks run (engine.setup)
        keep_large_allocations()
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=nproc)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed(fn, reps: int) -> float:
        """Median of 7 batches (3 quick) after 3 warm-up calls; every rank runs the same
        number of calls (no deadlock). A small message's time on a shared CPU moves with the
        scheduler: three batches let two profiles of one machine differ 2x in latency."""
        for _ in range(3):
            fn()
        sync()
        out = []
        for _ in range(3 if quick else 7):
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            sync()
            out.append((time.perf_counter() - t0) / reps)
        return statistics.median(out)

    res: dict[str, list[float]] = {name: [] for name in COLLECTIVES}
    try:
        for b in sizes:
            n = max(nproc, b // 4 // nproc * nproc)
            x = torch.ones(n, device=device)
            y = torch.empty_like(x)
            part = x[: n // nproc]  # all-gather: each rank's share of a message of b bytes
            reps = max(2, min(100 if not quick else 20, 2**24 // max(b, 1)))
            res["all_reduce"].append(timed(lambda x=x: dist.all_reduce(x), reps))
            res["all_to_all"].append(timed(lambda x=x, y=y: dist.all_to_all_single(y, x), reps))
            # DeepSpeed's ZeRO-1/2 post-step gather (all_gather_dp_groups) and ZeRO-3's
            res["all_gather"].append(
                timed(lambda y=y, part=part: dist.all_gather_into_tensor(y, part), reps))
        if device == "cpu":
            res["sync"] = _sync_waits(rank, nproc, quick)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(res))


# compute between two collectives, seconds: what the ranks' drift apart is measured over
SYNC_SEGMENTS_S = {False: (0.5e-3, 2e-3, 8e-3, 32e-3), True: (2e-3, 8e-3)}
SYNC_SECONDS = {False: 0.6, True: 0.2}  # compute per segment length


def _sync_waits(rank: int, nproc: int, quick: bool) -> list[list[float]] | None:
    """Ranks that run the same ops between two collectives do not reach the second at once: a
    CPU's ranks share its cores with each other's communication threads and the OS. Each
    segment of a model-like op mix (GEMM, GELU, GEMM, layer norm at a CPU model's width),
    then a small all-to-all, whose wait every rank records. For N ranks, per collective:

        excess = max over ranks of the wait - the mean wait   (= the last arrival less the
                 mean arrival: what the step loses to the ranks' drift per synchronisation)
        wait   = the smallest wait (the last to arrive only waits for the transfer itself,
                 which after a stretch of compute includes waking gloo's threads)

    Returns [segment_s, excess_s, wait_s] per segment length on rank 0 (None elsewhere)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(rank)
    a, w1, w2 = (torch.randn(*shape, generator=g) for shape in ((64, 96), (96, 384), (384, 96)))

    def unit() -> torch.Tensor:
        return F.layer_norm(F.gelu(a @ w1) @ w2 + a, (96,))

    for _ in range(20):
        unit()
    t0 = time.perf_counter()
    for _ in range(100):
        unit()
    per = torch.tensor([(time.perf_counter() - t0) / 100], dtype=torch.float64)
    dist.broadcast(per, 0)  # rank 0's rate sets every rank's counts: the same calls on each
    x = torch.zeros(256)
    y = torch.empty_like(x)
    out = []
    for target in SYNC_SEGMENTS_S[quick]:
        reps = max(1, round(target / float(per)))
        iters = max(8, int(SYNC_SECONDS[quick] / target))
        for _ in range(3):
            dist.all_to_all_single(y, x)
        segs, waits = [], []
        for _ in range(iters):
            t0 = time.perf_counter()
            for _ in range(reps):
                unit()
            t1 = time.perf_counter()
            dist.all_to_all_single(y, x)
            segs.append(t1 - t0)
            waits.append(time.perf_counter() - t1)
        mine = torch.tensor([segs, waits], dtype=torch.float64)
        every = [torch.empty_like(mine) for _ in range(nproc)]
        dist.all_gather(every, mine)
        seg, wait = torch.stack(every).unbind(1)  # (ranks, iters) each
        out.append([float(seg.mean()), float((wait.max(0).values - wait.mean(0)).mean()),
                    float(wait.min(0).values.mean())])
    return out if rank == 0 else None


def fit_link(sizes: list[int], times: list[float], *, factor: float) -> LinkFit:
    """latency = the smallest message's time; bandwidth from the two largest; half_bytes such
    that ``comm.py``'s message-size term reproduces the intercept of the large-message line;
    and the calls timed (link volume, seconds), by which ``comm.py`` prices a call.
    ``factor``: the bytes a rank's link carries per message byte and per (n - 1) peers:
    all-reduce 2 (n-1)/n, all-to-all (n-1)/n; given as the (n - 1)-free part times (n - 1)."""
    (b1, t1), (b2, t2) = (sizes[-2], times[-2]), (sizes[-1], times[-1])
    slope = max((t2 - t1) / (b2 - b1), 1e-15)
    intercept = max(t2 - slope * b2, 0.0)
    latency = max(min(times[0], intercept if intercept > 0 else times[0]), 0.0)
    bw = factor / slope
    half = max(0.0, (intercept - latency)) * bw / max(factor, 1e-9)
    return LinkFit(latency_s=latency, bw_bytes_per_s=bw, half_bytes=half,
                   timed_volume=tuple(b * factor for b in sizes), timed_s=tuple(times))


def measure_collectives(s: Any) -> dict[str, Any]:
    """Spawn ``nproc`` fresh interpreters (``python -m ecdit_scale.evaluation.profile``): each
    rank joins a process group, times the collectives, rank 0 writes the result."""
    sizes = collective_sizes(s)
    from ..train.process import free_port

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "collectives.json")
        args = json.dumps({"nproc": s.nproc, "port": port, "device": s.device, "sizes": sizes,
                           "out": out, "quick": s.quick})
        procs = [subprocess.Popen([sys.executable, "-m", "ecdit_scale.evaluation.collectives",
                                   str(rank), args], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
                 for rank in range(s.nproc)]
        try:
            logs = [p.communicate(timeout=COLLECTIVE_TIMEOUT_S)[0] for p in procs]
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise ConfigError(f"--nproc {s.nproc}: the collective benchmark did not finish in "
                              f"{COLLECTIVE_TIMEOUT_S} s") from None
        if any(p.returncode for p in procs) or not os.path.isfile(out):
            tail = next((log.strip().splitlines()[-1] for p, log in zip(procs, logs, strict=True)
                         if p.returncode and log.strip()), "no output")
            raise ConfigError(f"--nproc {s.nproc}: the collective benchmark failed ({tail})")
        raw = json.loads(Path(out).read_text())
    n = s.nproc
    links = {name: fit_link(sizes, raw[name], factor=link_factor(name, n))
             for name in COLLECTIVES}
    sync = raw.get("sync")
    return {"links": links, "sizes": sizes, "times": raw,
            "sync": SyncFit(segment_s=tuple(r[0] for r in sync),
                            excess_s=tuple(r[1] for r in sync), wait_s=tuple(r[2] for r in sync))
            if sync else None}


if __name__ == "__main__":  # one rank of measure_collectives
    _a = json.loads(sys.argv[2])
    _collective_worker(int(sys.argv[1]), _a["nproc"], _a["port"], _a["device"], _a["sizes"],
                       _a["out"], _a["quick"])
