"""Memory of the trainer's step, phase by phase, on CPU, against the planner.

The trainer's engine (``train.engine``: its torch optimizer, ``make_ds_config``) is built at
world 1 for each precision x ZeRO stage x optimizer x update kernel (foreach, or fused where
torch has one), in a process of its own (DeepSpeed keeps process-wide state). DeepSpeed
0.19.8's CPU accelerator accepts bf16, so the GPU's bf16 ZeRO path runs here too. One
untracked step creates the optimizer state; the next runs under ``train.peak_memory.PeakBytes``
with the model states, optimizer state and EMA registered, and records the live-byte peak of
each phase (forward, backward, optimizer step, EMA update). The planner's parts for the same
layout (``planner.memory.memory_breakdown``, with the update kernel the run used) give the
predicted peaks at the end of the forward, at the backward's end and at the step.

    python bench/step_memory.py                          # base-dense, micro-batch 1, the grid
    python bench/step_memory.py --model small-ec8 --precision bf16 --zero 0 --optimizer rmsprop
    python bench/step_memory.py --json bench/results/step-memory-cpu.json

A micro-batch of 1 makes the model states the larger part, which is what the step phase is
about. Prints per configuration the measured peaks, the planner's and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 2**20
FUSED = {"adamw", "sgd"}  # torch optimizers with a fused kernel (CPU and CUDA)


def measure(model: str, zero: int, precision: str, optimizer: str, kernel: str,
            micro_batch: int, ema: str) -> dict:
    """One configuration, in this process."""
    import torch
    from engine_ops import one_rank_engine

    from ecdit_scale.planner.memory import memory_breakdown
    from ecdit_scale.train import engine as engine_mod
    from ecdit_scale.train import worker
    from ecdit_scale.train.ema import make_ema
    from ecdit_scale.train.expert_parallel import is_expert_param
    from ecdit_scale.train.peak_memory import PeakBytes, PhasePeaks

    r = one_rank_engine(model, zero=zero, precision=precision, steps=4, optimizer=optimizer,
                        micro_batch=micro_batch, ema=ema, kernel=kernel)
    s, eng, cfg = r.s, r.engine, r.cfg
    shadow = make_ema(eng.module, mode=s.ema, decay=0.9999, dp_rank=0, dp_size=1,
                      expert_dp_rank=0, expert_dp_size=1, is_expert=is_expert_param)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(micro_batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    c = torch.randn(micro_batch, cfg.text_tokens, cfg.text_dim, generator=g)
    worker.train_step(r, 1, x, c)  # the optimizer's state exists from here on
    if shadow is not None:
        shadow.update()

    tracker = PeakBytes()
    tracker.register_states(eng, shadow)
    held = tracker.current
    r.phases = PhasePeaks(tracker, cuda=False)  # the worker's phase marks measure each phase
    r.phases.begin()
    with tracker:
        worker.train_step(r, 2, x, c)
        if shadow is not None:
            with worker.marked(r, "ema"):
                shadow.update()
    peaks = r.phases.by_phase
    r.phases.end()

    mem = memory_breakdown(cfg, s.layout, s.training, fused=kernel == "fused").to_dict()
    predicted = {k: mem[f"{k}_peak"] for k in ("forward", "backward", "step")}
    return {"model": model, "zero": zero, "precision": precision, "optimizer": optimizer,
            "kernel": engine_mod.optimizer_impl(eng.optimizer), "ema": ema,
            "micro_batch": micro_batch, "wrapper": type(eng.optimizer).__name__,
            "params": sum(p.numel() for p in eng.module.parameters()),
            "held_before_step_bytes": held, "peak_bytes": peaks,
            "predicted_bytes": predicted,
            "planner_parts_bytes": {k: v for k, v in mem.items()
                                    if isinstance(v, (int, float))}}


def report(res: dict) -> None:
    p, pred = res["peak_bytes"], res["predicted_bytes"]
    step = max(p.get("step", 0), p.get("ema", 0))  # the EMA update follows the step
    meas, planned = max(p.values()), max(pred.values())
    print(f"{res['precision']:5s} z{res['zero']} {res['optimizer']:8s} {res['kernel']:8s} "
          f"ema {res['ema']:10s} held {res['held_before_step_bytes'] / MiB:7.1f}"
          f"  fwd {p.get('forward', 0) / MiB:7.1f} / {pred['forward'] / MiB:7.1f}"
          f"  bwd {p.get('backward', 0) / MiB:7.1f} / {pred['backward'] / MiB:7.1f}"
          f"  step {step / MiB:7.1f} / {pred['step'] / MiB:7.1f}"
          f"  peak {meas / planned:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="base-dense")
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--zero", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--precision", nargs="*", default=["fp32", "bf16"])
    ap.add_argument("--optimizer", nargs="*", default=["adamw", "rmsprop", "sgd"])
    ap.add_argument("--kernel", nargs="*", default=["foreach", "fused"],
                    help="foreach (CPU's, and CUDA's for rmsprop) and/or fused (CUDA's for "
                         "adamw and sgd); fused is skipped for rmsprop, which has none")
    ap.add_argument("--ema", nargs="*", default=["none"])
    ap.add_argument("--json", type=Path, help="write all results here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a child: one configuration, JSON out
    a = ap.parse_args()
    if a.one:
        model, zero, precision, optimizer, kernel, mb, ema = a.one.split(",")
        print("RESULT " + json.dumps(measure(model, int(zero), precision, optimizer, kernel,
                                             int(mb), ema)))
        return
    import deepspeed
    import torch

    print(f"{a.model}, micro-batch {a.micro_batch}: MiB measured / planned per phase (step: the "
          "optimizer's or the EMA update's, the larger); peak: measured / planned, the largest")
    results = []
    for precision in a.precision:
        for zero in a.zero:
            for optimizer in a.optimizer:
                for kernel in a.kernel:
                    if kernel == "fused" and optimizer not in FUSED:
                        continue
                    for ema in a.ema:
                        one = (f"{a.model},{zero},{precision},{optimizer},{kernel},"
                               f"{a.micro_batch},{ema}")
                        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
                        proc = subprocess.run([sys.executable, __file__, "--one", one],
                                              capture_output=True, text=True, env=env)
                        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                        if proc.returncode or not line:
                            print(f"{one}: failed\n{proc.stderr[-3000:]}")
                            continue
                        results.append(json.loads(line[0][7:]))
                        report(results[-1])
    if a.json:
        a.json.write_text(json.dumps({
            "what": __doc__.split("\n\n")[0], "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "deepspeed": deepspeed.__version__,
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "results": results},
            indent=1) + "\n")


if __name__ == "__main__":
    main()
