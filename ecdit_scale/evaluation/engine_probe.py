"""What the DeepSpeed engine adds to a step, per parameter tensor, measured on this device.

The step-time model prices the model's kernels, autograd's per-tensor work and the optimizer
from the device profile; what DeepSpeed's engine does on top of that (ZeRO-1/2: gradient hooks,
bucket copies, the clipping norm; ZeRO-0 in bf16: its mixed-precision wrapper) depends on the
ZeRO stage and on the DeepSpeed version and settings. On an H200 the ZeRO-1 launches spent
~15 kernels per parameter tensor there, most of the step's 11-19k (bench/results/
h200-2026-11-26), which no other term of the profile saw.

So the profile measures it the way the trainer builds it: a toy model of many small Linear
layers (launch-bound: the time is the host's), the trainer's DeepSpeed config
(``launch.make_ds_config``'s settings through ``planner.deepspeed_config``), its torch optimizer
(``engine.build_optimizer``) and clipping norm (``engine.use_foreach_grad_norm``), world 1, bf16
on CUDA and fp32 on CPU as the trainer trains; and the same model stepped by plain torch (the
same optimizer, no engine). ``(engine step - plain step) / parameter tensors`` per ZeRO stage,
one fresh process per stage (DeepSpeed keeps process-wide state):

    python -m ecdit_scale.evaluation.engine_probe --device cpu --zero 1 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

PROBE_WIDTH = 32
PROBE_LAYERS = {True: 48, False: 128}  # quick / full: 2 tensors (weight, bias) per layer
PROBE_BATCH = 4
STAGES = (0, 1, 2)


def measure_stage(device: str, zero: int, quick: bool) -> dict[str, Any]:
    """In this process: one world-1 engine at ``zero`` beside plain torch (see the module)."""
    import types

    import torch
    from torch import nn

    from ..train.launch import free_port

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()), DS_ACCELERATOR=device)
    import deepspeed
    import deepspeed.ops

    from ..config import Optimizer, Precision
    from ..planner.deepspeed_config import deepspeed_config
    from ..train.engine import build_optimizer, use_foreach_grad_norm
    from ..train.records import Device

    if device == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")
    dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    bf16 = device == "cuda"
    layers = PROBE_LAYERS[quick]
    s = types.SimpleNamespace(lr=1e-4, optimizer=Optimizer.ADAMW, device=Device(device))

    def toy() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(*[nn.Linear(PROBE_WIDTH, PROBE_WIDTH) for _ in range(layers)]).to(dev)

    ds = deepspeed_config(micro_batch=PROBE_BATCH, grad_accum=1, zero_stage=zero,
                          precision=Precision.BF16 if bf16 else Precision.FP32,
                          optimizer=Optimizer.ADAMW, lr=1e-4, warmup_steps=0, world=1,
                          client_optimizer=True, scheduler=False)
    ds.update(steps_per_print=10**9, wall_clock_breakdown=False)
    if not bf16:
        ds.pop("bf16", None)
    model = toy()
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, s),
                                           config=ds)
    use_foreach_grad_norm(engine.optimizer)
    dtype = torch.bfloat16 if bf16 else torch.float32
    x = torch.randn(PROBE_BATCH, PROBE_WIDTH, device=dev, dtype=dtype)

    def engine_step() -> None:
        loss = engine(x).float().pow(2).mean()
        engine.backward(loss)
        engine.step()

    plain = toy().to(dtype)
    opt = build_optimizer(plain, s)

    def plain_step() -> None:
        loss = plain(x).float().pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed(fn, repeats: int) -> float:
        for _ in range(3):
            fn()
        out = []
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    repeats = 5 if quick else 15
    t_engine, t_plain = timed(engine_step, repeats), timed(plain_step, repeats)
    tensors = sum(1 for _ in plain.parameters())
    return {"zero": zero, "device": device, "precision": "bf16" if bf16 else "fp32",
            "tensors": tensors, "engine_step_s": t_engine, "plain_step_s": t_plain,
            "s_per_param_tensor": max(0.0, (t_engine - t_plain) / tensors),
            "deepspeed": deepspeed.__version__}


def probe(device: str, *, quick: bool = False, stages: tuple[int, ...] = STAGES,
          timeout_s: float = 30.0) -> dict[int, float]:
    """Seconds per parameter tensor the engine adds to a step, by ZeRO stage, each stage in a
    process of its own; a stage that fails or times out is left out (the model then prices
    no engine term for it)."""
    out: dict[int, float] = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for zero in stages:
        cmd = [sys.executable, "-m", "ecdit_scale.evaluation.engine_probe", "--device", device,
               "--zero", str(zero), "--json"] + (["--quick"] if quick else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  env=env)
        except subprocess.TimeoutExpired:
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode == 0 and lines:
            out[zero] = float(json.loads(lines[-1])["s_per_param_tensor"])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ecdit_scale.evaluation.engine_probe")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--zero", type=int, choices=STAGES, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = measure_stage(args.device, args.zero, args.quick)
    print(json.dumps(res) if args.json else
          f"ZeRO-{res['zero']} {res['precision']} on {res['device']}: engine "
          f"{res['engine_step_s'] * 1e3:.2f} ms, plain {res['plain_step_s'] * 1e3:.2f} ms, "
          f"{res['s_per_param_tensor'] * 1e6:.1f} us per parameter tensor", flush=True)
    os._exit(0)  # DeepSpeed's process group: no teardown to wait for


if __name__ == "__main__":
    main()
