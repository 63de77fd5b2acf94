"""What ColossalAI's ZeRO-2 step adds per parameter tensor: one candidate for the Open-Sora gap.

    pip download colossalai==0.3.6 --no-deps -d /tmp/cai
    tar xzf /tmp/cai/colossalai-0.3.6.tar.gz -C /tmp/cai
    python bench/colossal_zero_step.py --colossalai /tmp/cai/colossalai-0.3.6 [--out r.json]

Open-Sora 1.0's six public rows (bench/results/public-throughput) are 1.5-1.85x optimistic by
0.29-0.50 s a step whatever the model's own terms. They were trained with ColossalAI v0.3.6's
``LowLevelZeroOptimizer`` (ZeRO-2, fp16, gradient clipping at 1.0), whose step, read from its
source, works one parameter tensor at a time in Python: an inf/nan check with a host sync per
gradient, a float64 norm per gradient, an unscale per gradient, and after the update, for every
tensor, ``world`` zero tensors, a cast, a list ``all_gather``, a flatten and a copy. The plan
prices DeepSpeed's engine, not this. Is it the missing ~0.35 s?

This runs that optimizer (imported from an unpacked ColossalAI source tree given on the command
line; nothing of it is copied here) and plain torch (the same model and AdamW, no engine) on
``--nproc`` ranks over a model with DiT-XL/2's and PixArt-XL/2's number of trainable parameter
tensors (``TENSORS``), each tensor tiny, so that the step's time is the host's; the two are
launched alternately ``--repeats`` times. It prints the median step of each and ColossalAI's
extra time per step and per parameter tensor, and its top-level operators per tensor (the
profiler's outermost ``aten::``/``c10d::`` events of one step). On a CPU, ColossalAI's accelerator
refuses streams, synchronisation and a device count: those three are answered here (no stream,
nothing to wait for, one device) and its sanity check (a CUDA or NPU device) is skipped; its
code paths are otherwise as on a GPU. A measurement, printed; not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecdit_scale.errors import ConfigError  # noqa: E402
from ecdit_scale.files import atomic_write_text  # noqa: E402

# trainable parameter tensors, counted from the models' source: DiT-XL/2 (facebookresearch/DiT
# models.py: 28 blocks x (qkv, proj, fc1, fc2, adaLN) weights and biases = 280, patch embed 2,
# timestep MLP 4, label table 1, final layer 4) and PixArt-XL/2 as Open-Sora 1.0 builds it (28
# blocks x (self-attention 4, cross-attention 6, MLP 4, scale-shift table 1) = 420, patch embed
# 2, timestep MLP 4, t_block 2, caption MLP 4, final layer 3)
TENSORS = {"dit-xl-2": 291, "pixart-xl-2": 435}
WIDTH = 32  # each Linear is WIDTH x WIDTH: the time is the host's, not the arithmetic's


def _import_colossalai(src: Path) -> type:
    """ColossalAI 0.3.6's LowLevelZeroOptimizer from an unpacked source tree, without running
    ``colossalai/__init__`` or ``colossalai/zero/__init__`` (their imports reach legacy modules
    that Python 3.11 refuses)."""
    pkg = src / "colossalai"
    if not (pkg / "zero" / "low_level" / "low_level_optim.py").is_file():
        raise ConfigError(f"--colossalai {src}: no colossalai/zero/low_level/low_level_optim.py "
                          "there; give the unpacked colossalai-0.3.6 source directory")
    sys.path.insert(0, str(src))
    for name, sub in (("colossalai", pkg), ("colossalai.zero", pkg / "zero")):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(sub)]
            sys.modules[name] = module
    from colossalai.zero.low_level.low_level_optim import LowLevelZeroOptimizer
    return LowLevelZeroOptimizer


def _cpu_accelerator() -> None:
    """Answer the three calls ColossalAI's CPU accelerator refuses (see the module's doc)."""
    import contextlib

    from colossalai.accelerator import set_accelerator
    from colossalai.accelerator.cpu_accelerator import CpuAccelerator

    CpuAccelerator.device_count = lambda self: 1
    CpuAccelerator.synchronize = lambda self, device=None: None
    CpuAccelerator.current_stream = lambda self, device=None: None
    CpuAccelerator.stream = lambda self, stream: contextlib.nullcontext()
    set_accelerator("cpu")


def _model(torch, tensors: int, device: str):
    from torch import nn

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lins = nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(tensors // 2))
            self.extra = nn.Parameter(torch.zeros(WIDTH)) if tensors % 2 else None

        def forward(self, x):
            for lin in self.lins:
                x = x + lin(x)
            return x if self.extra is None else x + self.extra

    return Stack().to(device)


def _rank(rank: int, world: int, port: int, src: str, tensors: int, mode: str, steps: int,
          device: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo" if device == "cpu" else "nccl", rank=rank, world_size=world)
    if device == "cuda":
        torch.cuda.set_device(rank)
    torch.manual_seed(0)
    model = _model(torch, tensors, device)
    x = torch.randn(4, WIDTH, device=device)
    if mode == "plain":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

        def step() -> None:
            model(x).float().pow(2).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        zero_optimizer = _import_colossalai(Path(src))
        if device == "cpu":
            _cpu_accelerator()
            zero_optimizer._sanity_checks = lambda self: None  # its one check: CUDA or NPU
        model = model.half()
        x = x.half()
        # Open-Sora 1.0: LowLevelZeroPlugin(stage=2, precision="fp16", initial_scale=2**16,
        # max_norm=1.0), the plugin's 12M-element buckets
        opt = zero_optimizer(torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True),
                             initial_scale=2**16, clip_grad_norm=1.0,
                             reduce_bucket_size=12 * 1024 * 1024,
                             overlap_communication=device != "cpu", partition_grad=True)

        def step() -> None:
            opt.backward(model(x).float().pow(2).mean())
            opt.step()
            opt.zero_grad()

    def timed() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(5):
        step()
    dist.barrier()
    times = [timed() for _ in range(steps)]
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    ops = sum(1 for e in prof.events()
              if e.name.startswith(("aten::", "c10d::")) and e.cpu_parent is None)
    if rank == 0:
        atomic_write_text(Path(out), json.dumps({"median_s": statistics.median(times),
                                                 "ops": ops}))
    dist.destroy_process_group()


def launch(src: Path, tensors: int, mode: str, steps: int, nproc: int, device: str,
           tmp: Path) -> dict:
    import torch.multiprocessing as mp

    from ecdit_scale.train.process import free_port

    out = tmp / f"{mode}-{tensors}.json"
    mp.spawn(_rank, args=(nproc, free_port(), str(src), tensors, mode, steps, device, str(out)),
             nprocs=nproc)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--colossalai", type=Path, required=True,
                    help="an unpacked colossalai-0.3.6 source directory")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--out", type=Path, help="also write the table as JSON here")
    args = ap.parse_args(argv)
    try:
        for name, low in (("--nproc", 1), ("--steps", 3), ("--repeats", 1)):
            if getattr(args, name[2:]) < low:
                raise ConfigError(f"{name} {getattr(args, name[2:])}: must be >= {low}")
        _import_colossalai(args.colossalai)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import tempfile

    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, tensors in TENSORS.items():
            got: dict[str, list[dict]] = {"plain": [], "colossalai": []}
            for _ in range(args.repeats):
                for mode in got:
                    got[mode].append(launch(args.colossalai, tensors, mode, args.steps,
                                            args.nproc, args.device, Path(tmp)))
            plain = statistics.median(g["median_s"] for g in got["plain"])
            zero = statistics.median(g["median_s"] for g in got["colossalai"])
            rows.append({"model": model, "tensors": tensors, "plain_step_s": plain,
                         "colossalai_step_s": zero, "extra_s": zero - plain,
                         "extra_s_per_tensor": (zero - plain) / tensors,
                         "colossalai_ops_per_tensor": got["colossalai"][0]["ops"] / tensors,
                         "launches": got})
    print(f"{'model':<12} {'tensors':>7} {'plain s':>9} {'ColossalAI s':>12} {'extra s':>9} "
          f"{'extra us/tensor':>15} {'ops/tensor':>10}")
    for r in rows:
        print(f"{r['model']:<12} {r['tensors']:>7} {r['plain_step_s']:>9.4f} "
              f"{r['colossalai_step_s']:>12.4f} {r['extra_s']:>9.4f} "
              f"{r['extra_s_per_tensor'] * 1e6:>15.1f} {r['colossalai_ops_per_tensor']:>10.1f}")
    if args.out:
        atomic_write_text(args.out, json.dumps({
            "device": args.device, "nproc": args.nproc, "steps": args.steps,
            "repeats": args.repeats, "torch": torch.__version__, "colossalai": "0.3.6",
            "width": WIDTH, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
