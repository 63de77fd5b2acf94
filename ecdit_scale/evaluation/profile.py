"""``ecdit-scale profile``: measure what this device sustains, operator class by operator class,
and write it as a hardware profile (``planner.device_profile.DeviceProfile`` under an
accelerator entry) that ``plan --gpu PROFILE.yaml`` and ``validate --profile`` read.

Measured (each timed after a warm-up, the median of repeated batches):
- GEMM: ``torch.mm`` over a grid of (M, N, K) covering the model families' shapes, its
  operands rotated through a working set past the last-level cache (cold, as a step meets
  them);
- SDPA: ``F.scaled_dot_product_attention`` forward and forward + backward (the trainer's path:
  default backend, (batch, heads, q_len, head_dim) layout), self- and cross-attention lengths;
- memory bandwidth: a large tensor copy, (read + write) bytes / s;
- memory-bound kinds: copy, elementwise add, tanh-GELU, LayerNorm on activation-sized tensors;
- kernel launch: host seconds per counted kernel of a tiny residual network's forward +
  backward (CPU: the host runs the kernels, ``serial``; CUDA: enqueued, ``async``);
- the model's own host cost per kernel (``host_probe``): forward + backward of the model's
  code at a size where its compute is negligible, for each FFN kind and recompute policy, less
  what the rest of this profile prices (its recompute wrappers run in Python on the host);
- optimizer: AdamW, RMSProp and SGD as the trainer steps them (foreach on CPU, fused on CUDA)
  over one tensor of each of a few sizes, from cache-resident to past the last-level cache
  (seconds per byte as the step-time model counts each one's bytes), and AdamW over many small
  tensors (seconds per extra tensor);
- engine: autograd's work per parameter tensor (AccumulateGrad and its backward node), from a
  backward over many small tensors vs one tensor of the same size;
- DeepSpeed's engine (full profile only, ``engine_probe``): what it adds to a step over plain
  torch, per parameter tensor and per parameter, by ZeRO stage and engine setting (a dense or
  an MoE model, one rank's or data-parallel ranks' ZeRO settings);
- the trainer itself (full profile only, ``trainer_probe``): ``ecdit-scale launch`` at the
  host probe's size on one rank and on ``nproc``, three times each, interleaved, the median
  launch's step less what everything above prices for it, per counted kernel;
- with ``nproc > 1``: all-reduce, all-to-all and all-gather over message sizes between
  ``nproc`` local processes (gloo on CPU, nccl on CUDA), fitted to latency + bytes / bandwidth.
torch is imported here (and in the probes) only; progress goes to an optional
``report(message)`` callback.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..planner.compute import dtype_bytes
from ..planner.device_profile import (
    ENGINE_FIELDS,
    ENGINE_SETTINGS,
    MEMORY_KIND_TRAFFIC,
    DeviceProfile,
)
from ..planner.hardware import Accelerator, save_accelerator
from ..train.cpu_allocator import keep_large_allocations
from .engine_record import engine_dp_world1, engine_toy
from .gemm_grid import gemm_working_set_bytes, measure_bmm, measure_gemm, torch_dtype
from .trainer_probe import check_launches


@dataclass(frozen=True, kw_only=True)
class Settings:
    device: str = "cpu"
    quick: bool = False
    threads: int = 1  # CPU: the ranks of a run use one thread each
    nproc: int = 1
    dtype: str = ""  # "" = fp32 on CPU, bf16 on CUDA
    head_dim: int = 64
    trainer_launches: int = 3  # the trainer probe's launches per rank count (their median)

    @property
    def torch_dtype_name(self) -> str:
        return self.dtype or ("fp32" if self.device == "cpu" else "bf16")

    def grid(self) -> tuple[list[int], list[int], list[int]]:
        """GEMM (M, N, K) points. M reaches 1: a step multiplies one row per image (the adaLN
        modulation at M = micro-batch) and a few rows per expert, and a rate is clamped below
        the grid's edge, not extrapolated (M = 16's rate priced a one-row CPU GEMM 6-11x too
        fast). K reaches 1 too: a weight gradient contracts over those rows (an expert's dW
        at K = 8 ran at about half the K = 16 rate it was priced at). Points 4x apart where a
        step's shapes lie: the rate rises steeply there, and a straight line in log space
        between points 8x apart priced 64-row CPU GEMMs 1.4-1.8x too slow
        (bench/results/cpu-heldout-matrix-15). The quick grid, a smoke measurement, keeps its
        8x steps and adds the one-row edges."""
        if self.device == "cpu":
            if self.quick:
                return [1, 16, 128, 1024, 4096], [16, 128, 512], [1, 16, 128, 512]
            return ([1, 4, 16, 64, 256, 1024, 8192], [16, 64, 256, 1024, 2048],
                    [1, 4, 16, 64, 256, 1024, 2048])
        if self.quick:
            return [1, 64, 1024, 16384], [64, 1152, 4608], [1, 64, 1152, 4608]
        return ([1, 16, 64, 256, 1024, 4096, 32768], [64, 256, 1152, 4608, 9216],
                [1, 16, 64, 256, 1152, 4608, 9216])

    def sdpa_shapes(self) -> list[tuple[int, int, int, int]]:
        """(batch x heads, q_len, kv_len, head_dim) points."""
        hd = self.head_dim
        if self.device == "cpu":
            lens = [16, 64, 256] if self.quick else [16, 64, 256, 1024]
            return [(8, q, kv, hd) for q in lens for kv in sorted({16, q})]
        lens = [64, 256, 1024, 4096]
        return [(256, q, kv, hd) for q in lens for kv in sorted({16, q})]


class Timer:
    """Median seconds of one call. On a CPU the clock is this thread's CPU time (one device =
    one core running one thread): other processes on a shared machine do not inflate it. On
    CUDA it is wall time around a synchronize."""

    def __init__(self, device: str, quick: bool, threads: int = 1):
        import torch

        self.torch = torch
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self.clock = (time.thread_time if device == "cpu" and threads == 1
                      else time.perf_counter)
        self.target_s = 0.01 if quick else 0.05

    def __call__(self, fn: Callable[[], Any], *, batches: int = 3) -> float:
        clock = self.clock
        fn()
        self.sync()
        t0 = clock()
        fn()
        self.sync()
        once = max(clock() - t0, 1e-7)
        reps = max(1, min(1000, int(self.target_s / once)))
        out = []
        for _ in range(batches):
            t0 = clock()
            for _ in range(reps):
                fn()
            self.sync()
            out.append((clock() - t0) / reps)
        return statistics.median(out)


def measure_sdpa(s: Settings, timer: Timer) -> dict[str, list]:
    torch = timer.torch
    import torch.nn.functional as F

    dt = torch_dtype(torch, s.torch_dtype_name)
    by_flops: dict[float, list[tuple[float, float]]] = {}
    for bh, q_len, kv_len, hd in s.sdpa_shapes():
        q = torch.randn(1, bh, q_len, hd, device=s.device, dtype=dt, requires_grad=True)
        k = torch.randn(1, bh, kv_len, hd, device=s.device, dtype=dt, requires_grad=True)
        v = torch.randn(1, bh, kv_len, hd, device=s.device, dtype=dt, requires_grad=True)
        g = torch.randn(1, bh, q_len, hd, device=s.device, dtype=dt)
        flops = 4.0 * bh * q_len * kv_len * hd
        with torch.no_grad():
            fwd = timer(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v))

        def both(q=q, k=k, v=v, g=g):
            F.scaled_dot_product_attention(q, k, v).backward(g)

        bwd = max(timer(both) - fwd, 1e-9)
        by_flops.setdefault(flops, []).append((flops / fwd, 2 * flops / bwd))
    keys = sorted(by_flops)
    mean = lambda xs: statistics.geometric_mean(xs)  # noqa: E731
    return {"flops": keys,
            "forward_flops_per_s": [mean([r[0] for r in by_flops[f]]) for f in keys],
            "backward_flops_per_s": [mean([r[1] for r in by_flops[f]]) for f in keys]}


def measure_bandwidth(s: Settings, timer: Timer) -> float:
    torch = timer.torch
    n = (64 if s.quick else 256) * 2**20 // 4 if s.device == "cpu" else 2**30 // 4
    a = torch.empty(n, device=s.device)
    b = torch.empty_like(a)
    return 2 * n * 4 / timer(lambda: b.copy_(a))


def memory_kind_tensor_bytes(s: Settings) -> int:
    """Bytes of the tensor each memory-bound kind is timed on (2^17 elements on a CPU: 0.5 MiB
    in fp32; 2^24 on a GPU: 32 MiB in bf16); the profile records it."""
    return (2**17 if s.device == "cpu" else 2**24) * dtype_bytes(s.torch_dtype_name)


def measure_memory_kinds(s: Settings, timer: Timer) -> dict[str, float]:
    """Bytes / s of each memory-bound kind (``device_profile.MEMORY_KINDS``) on an activation-sized
    tensor: copy (read + write), elementwise add (2 reads + write), tanh-GELU (read + write),
    LayerNorm without affine (read + write)."""
    torch = timer.torch
    import torch.nn.functional as F

    dt = torch_dtype(torch, s.torch_dtype_name)
    nbytes = memory_kind_tensor_bytes(s)
    x = torch.randn(nbytes // dtype_bytes(s.torch_dtype_name) // 256, 256, device=s.device,
                    dtype=dt)
    y, out = torch.randn_like(x), torch.empty_like(x)
    calls = {"copy": lambda: out.copy_(x), "elementwise": lambda: torch.add(x, y, out=out),
             "activation": lambda: F.gelu(x, approximate="tanh"),
             "norm": lambda: F.layer_norm(x, (256,))}
    return {kind: MEMORY_KIND_TRAFFIC[kind] * nbytes / timer(call)
            for kind, call in calls.items()}


LAUNCH_LAYERS, LAUNCH_WIDTH = 16, 8


def measure_launch(s: Settings, timer: Timer) -> float:
    """Host seconds per kernel as ``operators.py`` counts kernels: forward + backward of a tiny
    residual network (LayerNorm, Linear, GELU, add per layer: 4 counted kernels; the backward
    counts twice the forward), whose compute is negligible, so the time is the host's: Python
    module calls, dispatch, views, autograd bookkeeping and launches."""
    torch = timer.torch
    from torch import nn

    layers = [nn.Sequential(nn.LayerNorm(LAUNCH_WIDTH, elementwise_affine=False),
                            nn.Linear(LAUNCH_WIDTH, LAUNCH_WIDTH), nn.GELU(approximate="tanh"))
              for _ in range(LAUNCH_LAYERS)]
    net = nn.ModuleList(layers).to(s.device)
    x0 = torch.randn(4, LAUNCH_WIDTH, device=s.device)

    def step():
        x = x0
        for layer in net:
            x = x + layer(x)
        x.sum().backward()

    counted = (4 * LAUNCH_LAYERS + 1) * (1 + 2)  # forward + BACKWARD_KERNELS_PER_FORWARD x it
    return timer(step) / counted


def optimizer_sizes(s: Settings) -> list[int]:
    """fp32 elements the optimizer is timed at stepping: from cache-resident to well past the
    last-level cache (a ZeRO partition of a large model)."""
    if s.device == "cpu":
        return [2**16, 2**21] if s.quick else [2**16, 2**18, 2**20, 2**22, 2**24]
    return [2**20, 2**24] if s.quick else [2**20, 2**23, 2**26]


def measure_optimizer(s: Settings, timer: Timer) -> dict[str, Any]:
    """Each optimizer as the trainer steps it (``train.engine.torch_optimizer``: its class,
    hyperparameters and kernels, fp32 states) over one tensor of each size of
    ``optimizer_sizes``: seconds per byte as ``step_time.optimizer_bytes`` counts an fp32
    step's bytes. AdamW's seconds per extra tensor: the largest size split into many tensors,
    against one."""
    torch = timer.torch

    from ..config import Optimizer
    from ..planner.step_time import fp32_optimizer_bytes_per_param
    from ..train.engine import optimizer_impl, torch_optimizer
    from ..train.records import Device

    device = Device(s.device)
    impl = {}

    def timed(optimizer: Optimizer, elements: int, parts: int = 1) -> float:
        ps = [torch.nn.Parameter(torch.randn(elements, device=s.device)) for _ in range(parts)]
        for p in ps:
            p.grad = torch.randn_like(p)
        opt = torch_optimizer(ps, optimizer, lr=1e-4, device=device)
        impl[optimizer] = optimizer_impl(opt)
        return timer(opt.step)

    sizes = optimizer_sizes(s)
    times = {o: [timed(o, n) for n in sizes] for o in Optimizer}
    curves = {o.value: [t / (fp32_optimizer_bytes_per_param(o) * n)
                        for t, n in zip(times[o], sizes, strict=True)] for o in Optimizer}
    # the largest size again, split into many tensors: the same bytes in the same working set,
    # so the difference is what each extra tensor costs
    parts, adamw = (64 if s.quick else 256), Optimizer.ADAMW
    per_tensor = (timed(adamw, sizes[-1] // parts, parts) - times[adamw][-1]) / (parts - 1)
    mid = min(range(len(sizes)), key=lambda i: abs(sizes[i] - 2**22))
    return {"s_per_byte": curves[adamw.value][mid], "s_per_tensor": max(0.0, per_tensor),
            "elements": [float(n) for n in sizes], "by_size": curves,
            "kernels": impl[adamw]}


def measure_engine(s: Settings, timer: Timer) -> float:
    """Seconds of autograd work per parameter tensor in one backward."""
    torch = timer.torch
    tensors, size = (64 if s.quick else 256), 256

    def timed(parts: int) -> float:
        ps = [torch.nn.Parameter(torch.randn(tensors * size // parts, device=s.device))
              for _ in range(parts)]

        def step():
            loss = ps[0].sum()
            for p in ps[1:]:
                loss = loss + p.sum()
            loss.backward()
            for p in ps:
                p.grad = None
        return timer(step)

    return max(0.0, (timed(tensors) - timed(1)) / (tensors - 1))


# ---------------------------------------------------------------------------------------------
# The whole profile
# ---------------------------------------------------------------------------------------------


def check_settings(s: Settings) -> None:
    if s.device not in ("cpu", "cuda"):
        raise ConfigError(f"--device {s.device!r}: choose cpu or cuda")
    if s.threads < 1:
        raise ConfigError(f"--threads {s.threads}: must be >= 1")
    import torch

    if s.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA device here; use --device cpu")
    limit = (torch.cuda.device_count() if s.device == "cuda" else (os.cpu_count() or 1))
    if not 1 <= s.nproc <= max(limit, 1):
        raise ConfigError(f"--nproc {s.nproc}: must be in 1..{limit} on this {s.device}")
    if s.torch_dtype_name not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"--dtype {s.dtype!r}: choose fp32, bf16 or fp16")
    check_launches(s.trainer_launches)


ENGINE_STEP = "DeepSpeed engine per parameter tensor and parameter, ZeRO 0-2"


def measure_profile(s: Settings, report: Callable[[str], None] = lambda _: None) -> DeviceProfile:
    import torch

    check_settings(s)
    old = torch.get_num_threads()
    allocator = "CUDA caching allocator"
    if s.device == "cpu":
        torch.set_num_threads(s.threads)
        allocator = keep_large_allocations()  # as the trainer's ranks run (engine.setup)
    try:
        timer = Timer(s.device, s.quick, s.threads)
        t0 = time.perf_counter()
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("GEMM grid", lambda: measure_gemm(s, timer)),
            ("batched GEMM grid", lambda: measure_bmm(s, timer, got["GEMM grid"])),
            ("SDPA", lambda: measure_sdpa(s, timer)),
            ("memory bandwidth", lambda: measure_bandwidth(s, timer)),
            ("memory-bound kinds", lambda: measure_memory_kinds(s, timer)),
            ("kernel launch", lambda: measure_launch(s, timer)),
            ("optimizer step", lambda: measure_optimizer(s, timer)),
            ("autograd per parameter tensor", lambda: measure_engine(s, timer)),
        ]
        if not s.quick:  # three fresh processes (DeepSpeed's state is process-wide), each
            # stage in four engine settings, and with nproc > 1 the data-parallel ones again
            # on nproc ranks: ~80-95 s on a 2-core CPU
            from .engine_probe import probe

            steps.append((ENGINE_STEP, lambda: probe(s.device, ranks=s.nproc)))
        got: dict[str, Any] = {}
        for name, fn in steps:
            report(name)
            got[name] = fn()
        coll = None
        if s.nproc > 1:
            report(f"all-reduce / all-to-all / all-gather over {s.nproc} processes")
            from .collectives import measure_collectives

            coll = measure_collectives(s)
        # the model's own code per kernel, its device time priced by the profile measured above
        report("the model's host cost per kernel, by FFN kind and recompute policy")
        from .host_probe import measure_host

        prof = _assemble(s, got, coll)
        prof = dataclasses.replace(prof, host_s_per_kernel=measure_host(
            s, timer, profile_accelerator(s, prof)))
        trainer, trainer_record = {}, {}
        if not s.quick:  # the trainer on 1 and nproc ranks, trainer_launches of each, priced by
            # all of the above (~8 s a launch on a 2-core CPU; a failure loses only this term)
            from .trainer_probe import trainer_term

            trainer, trainer_record = trainer_term(s.nproc, profile_accelerator(s, prof),
                                                   report, s.device, s.trainer_launches)
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(old)
    engine = got.get(ENGINE_STEP) or {}
    return dataclasses.replace(prof, trainer_s_per_kernel=trainer, provenance={
        **provenance(s, wall, allocator), **engine_toy(engine), **engine_dp_world1(engine),
        **trainer_record, **collective_table(coll)})


def collective_table(coll: dict[str, Any] | None) -> dict[str, Any]:
    """Each collective's timed seconds per call at each message size, as measured (the links
    are fitted to them): kept so that a later model can price calls at the sizes timed."""
    if not coll:
        return {}
    return {"collective_times": {"bytes": [int(b) for b in coll["sizes"]],
                                 **{name: [float(t) for t in coll["times"][name]]
                                    for name in coll["links"]}}}


def _assemble(s: Settings, got: dict[str, Any], coll: dict[str, Any] | None) -> DeviceProfile:
    """The profile of the measurements in ``got`` (by step name) and ``coll`` (collectives)."""
    gemm, bmm, sdpa = got["GEMM grid"], got["batched GEMM grid"], got["SDPA"]
    opt = got["optimizer step"]
    engine = got.get(ENGINE_STEP) or {}
    return DeviceProfile(
        dtype=s.torch_dtype_name, gemm_m=tuple(map(float, gemm["m"])),
        gemm_n=tuple(map(float, gemm["n"])), gemm_k=tuple(map(float, gemm["k"])),
        gemm_flops_per_s=tuple(gemm["flops_per_s"]),
        bmm_m=tuple(map(float, bmm["m"])), bmm_n=tuple(map(float, bmm["n"])),
        bmm_k=tuple(map(float, bmm["k"])), bmm_batch=tuple(map(float, bmm["batch"])),
        bmm_flops_per_s=tuple(bmm["flops_per_s"]), sdpa_flops=tuple(sdpa["flops"]),
        sdpa_forward_flops_per_s=tuple(sdpa["forward_flops_per_s"]),
        sdpa_backward_flops_per_s=tuple(sdpa["backward_flops_per_s"]),
        sdpa_head_dim=float(s.head_dim),
        memory_bw_bytes_per_s=got["memory bandwidth"],
        memory_kind_bw=got["memory-bound kinds"],
        memory_ops_tensor_bytes=float(memory_kind_tensor_bytes(s)),
        launch_s=got["kernel launch"],
        launch_mode="serial" if s.device == "cpu" else "async",
        optimizer_s_per_byte=opt["s_per_byte"], optimizer_s_per_tensor=opt["s_per_tensor"],
        optimizer_elements=tuple(opt["elements"]),
        optimizer_s_per_byte_by={k: tuple(v) for k, v in opt["by_size"].items()},
        optimizer_kernels=opt["kernels"],
        engine_s_per_param_tensor=got["autograd per parameter tensor"],
        **{attr: {k: v[""][i] for k, v in engine.items()}
           for i, (_, attr) in enumerate(ENGINE_FIELDS)},
        deepspeed_engine_by_setting={
            setting: {attr: {k: v[setting][i] for k, v in engine.items() if setting in v}
                      for i, (_, attr) in enumerate(ENGINE_FIELDS)}
            for setting in ENGINE_SETTINGS if any(setting in v for v in engine.values())},
        collective_nproc=s.nproc if coll else None,
        collective_backend=("nccl" if s.device == "cuda" else "gloo") if coll else None,
        links=coll["links"] if coll else {}, sync=coll.get("sync") if coll else None)


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine() or "cpu"


def provenance(s: Settings, wall_s: float, allocator: str = "") -> dict[str, Any]:
    import torch

    return {"device": device_name(s.device), "host": platform.node(),
            "torch": str(torch.__version__), "cuda": torch.version.cuda,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "measured_in_s": round(wall_s, 2), "allocator": allocator,
            "settings": {"device": s.device, "quick": s.quick, "threads": s.threads,
                         "nproc": s.nproc, "dtype": s.torch_dtype_name, "head_dim": s.head_dim,
                         "gemm_working_set_mib": gemm_working_set_bytes(s.device, s.quick)
                         // 2**20,
                         "optimizer": "the trainer's torch optimizers "
                                      "(train.engine.torch_optimizer)"}}


def profile_accelerator(s: Settings, prof: DeviceProfile) -> Accelerator:
    """The accelerator entry the profile is written under: on CUDA the catalog's entry for the
    card (its datasheet numbers, the measured bandwidth); on CPU one core (one rank)."""
    measured = ["memory_bw_bytes_per_s"]
    links = prof.links.get("all_reduce")
    if s.device == "cuda":
        from .calibrate import gpu_accelerator

        base = gpu_accelerator(device_name("cuda"))
        fields = base.to_dict()
        fields.pop("profile", None)
        fields.pop("measured", None)
        fields.update(memory_bw_bytes_per_s=prof.memory_bw_bytes_per_s,
                      notes=(base.notes + " Profiled by ecdit-scale profile.").strip())
        if links:
            fields["intra_node_bw_bytes_per_s"] = links.bw_bytes_per_s
            measured.append("intra_node_bw_bytes_per_s")
        return Accelerator(**fields, measured=tuple(measured), profile=prof)
    peak = max(prof.gemm_flops_per_s)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    measured = ["peak_bf16_flops", "memory_bw_bytes_per_s"]
    if links:
        measured.append("intra_node_bw_bytes_per_s")
    return Accelerator(
        name=f"cpu-{platform.node() or 'host'}", peak_bf16_flops=peak, memory_bytes=float(mem),
        memory_bw_bytes_per_s=prof.memory_bw_bytes_per_s,
        intra_node_bw_bytes_per_s=links.bw_bytes_per_s if links else prof.memory_bw_bytes_per_s,
        inter_node_bw_bytes_per_s=1.25e9, devices_per_node=os.cpu_count() or 1,
        source=f"measured by ecdit-scale profile on {platform.node()} "
               f"({prof.provenance.get('device', 'cpu')})",
        notes=(f"One device = one CPU core running one rank ({s.threads} thread(s)). "
               f"peak_bf16_flops holds the best measured {s.torch_dtype_name} GEMM rate "
               "(CPU runs train in fp32). memory_bytes is the host's RAM; inter-node bandwidth "
               "= 10 GbE: an assumption."
               + ("" if links else " intra-node bandwidth = the copy bandwidth: an assumption "
                                   "(run with --nproc 2 to measure gloo)")),
        deepspeed_accelerator="cpu", precisions=("fp32",), measured=tuple(measured),
        profile=prof)


@functools.lru_cache(maxsize=2)
def quick_cpu_profile(nproc: int) -> Accelerator:
    """A quick profile of this CPU (one thread per rank), measured once per process."""
    s = Settings(device="cpu", quick=True, nproc=nproc)
    return profile_accelerator(s, measure_profile(s))


def write_profile(acc: Accelerator, out: str | os.PathLike) -> Path:
    return save_accelerator(acc, out)

