"""Measure peak memory and step time of a few small configs on one CUDA GPU, next to the
planner's predictions, and write bench/results/gpu_<device>.json for ``ecdit-scale validate``.

    python bench/gpu_measure.py                      # small-dense, small-ec8, base-ec16, bf16
    python bench/gpu_measure.py --no-deepspeed       # plain torch (bf16 params), no DeepSpeed
    ecdit-scale validate bench/results/gpu_*.json    # the comparison table + calibration

One process, world size 1, NCCL. Default mode: a DeepSpeed engine with ZeRO-1 and bf16, a
plain torch AdamW (no JIT-compiled DeepSpeed op), the same model and expert layout as
``ecdit-scale launch``. ``--no-deepspeed`` (or deepspeed missing / failing to initialise): bf16
parameters and a torch AdamW over them, no fp32 master copy; the planner's mixed-precision
model-state accounting then over-counts (the result file records the mode). Inputs are random
tensors of the right shapes, so no dataset is needed. Takes well under a minute after start-up on
an H100.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_CONFIGS = ("small-dense", "small-ec8", "base-ec16")


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def single_process_env() -> None:
    """torch.distributed / DeepSpeed env of a world of one (no MPI discovery, no launcher)."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")


def init_single_process_group(backend: str) -> None:
    import torch.distributed as dist

    single_process_env()
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=0, world_size=1)


def predictions(cfg, micro_batch: int, device_name: str) -> dict:
    from ecdit_scale.config import ParallelLayout, Recompute, TrainingConfig
    from ecdit_scale.params import count_params
    from ecdit_scale.planner.flops import training_flops_per_image
    from ecdit_scale.planner.memory import memory_breakdown

    t = training_flops_per_image(cfg, Recompute.NONE)
    mem = memory_breakdown(cfg, ParallelLayout(dp=1, ep=1, zero=1, micro_batch=micro_batch),
                           TrainingConfig(global_batch=micro_batch, precision="bf16",
                                          optimizer="adamw"))
    out = {"params": count_params(cfg).model_params,
           "model_flops_per_step": t.model_flops * micro_batch,
           "hardware_flops_per_step": t.hardware_flops * micro_batch,
           "memory_total": mem.total, "memory_model_states": mem.model_states,
           "memory_activations": mem.activations, "memory": mem.to_dict()}
    try:
        from ecdit_scale.evaluation.calibrate import gpu_accelerator

        acc = gpu_accelerator(device_name)
        out.update(accelerator=acc.name, efficiency_assumed=acc.efficiency,
                   step_s=out["hardware_flops_per_step"] / (acc.peak_bf16_flops * acc.efficiency),
                   step_s_note="compute only: hardware FLOPs / (catalog peak x efficiency)")
    except Exception as exc:  # an unknown GPU: no step-time prediction
        out.update(step_s=None, step_s_note=f"no catalog entry for {device_name}: {exc}")
    return out


def build(cfg, mode: str, seed: int):
    """(step function, model, counts) for one config."""
    import torch

    from ecdit_scale.model import build_model, rectified_flow_loss

    torch.manual_seed(seed)
    dev = torch.device("cuda", 0)
    if mode == "deepspeed":
        import deepspeed

        from ecdit_scale.planner.deepspeed_config import deepspeed_config
        from ecdit_scale.train.engine import build_optimizer
        from ecdit_scale.train.expert_parallel import create_groups, param_counts, shard_experts
        from ecdit_scale.train.records import RunSettings

        ep = create_groups(1)
        model = shard_experts(build_model(cfg), ep)
        counts = param_counts(model, ep)
        s = RunSettings.build(card=cfg.name, model_name=cfg.name, steps=1, nodes=1,
                        nproc_per_node=1, ep=1, zero=1, micro_batch=1, grad_accum=1,
                        dataset="emoji", data_limit=None, holdout=0, seed=seed, lr=1e-4,
                        warmup_steps=0, optimizer="adamw", precision="bf16", device="cuda",
                        checkpoint_every=1, keep_checkpoints=1, track_memory=False)
        ds_cfg = deepspeed_config(micro_batch=1, grad_accum=1, zero_stage=1, precision="bf16",
                                  optimizer="adamw", lr=1e-4, warmup_steps=0, world=1,
                                  client_optimizer=True, scheduler=False)
        ds_cfg["steps_per_print"] = 10**9
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, s),
                                               config=ds_cfg)

        def step(x, c, gen):
            loss = rectified_flow_loss(engine, x.bfloat16(), c.bfloat16(), generator=gen).loss
            engine.backward(loss)
            engine.step()
            return loss

        return step, engine.module, counts, engine
    # plain torch: bf16 parameters and optimizer state, no fp32 master copy (the model's MoE
    # layers mix dtypes under torch.autocast, so autocast is not used)
    model = build_model(cfg).to(dev, torch.bfloat16)
    counts = {"model_params": sum(p.numel() for p in model.parameters())}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(x, c, gen):
        loss = rectified_flow_loss(model, x.bfloat16(), c.bfloat16(), generator=gen).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step, model, counts, None


def count_flops(cfg, micro_batch: int, seed: int = 0) -> float:
    """FLOPs of one forward + backward (no optimizer step) of a fresh copy on the GPU."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ecdit_scale.model import build_model, rectified_flow_loss

    dev = torch.device("cuda", 0)
    model = build_model(cfg).to(dev, torch.bfloat16)
    g = torch.Generator(device=dev).manual_seed(seed)
    x = torch.randn(micro_batch, cfg.in_channels, cfg.input_size, cfg.input_size, device=dev,
                    dtype=torch.bfloat16)
    c = torch.randn(micro_batch, cfg.text_tokens, cfg.text_dim, device=dev, dtype=torch.bfloat16)
    # math SDPA: attention as plain matmuls (flash backward is counted with its recompute)
    with FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH):
        rectified_flow_loss(model, x, c, generator=g).loss.backward()
    return float(fc.get_total_flops())


def measure(name: str, mode: str, micro_batch: int, warmup: int, steps: int, device_name: str,
            seed: int = 0) -> dict:
    import gc

    import torch

    from ecdit_scale import sizes
    from ecdit_scale.planner.memory import CONTEXT_BYTES

    cfg = sizes.get(name)
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()  # left over from an earlier config, if anything
    step, model, counts, engine = build(cfg, mode, seed)
    dev = torch.device("cuda", 0)
    g = torch.Generator(device=dev).manual_seed(seed)
    x = torch.randn(micro_batch, cfg.in_channels, cfg.input_size, cfg.input_size, device=dev,
                    generator=g)
    c = torch.randn(micro_batch, cfg.text_tokens, cfg.text_dim, device=dev, generator=g)
    for _ in range(warmup):
        step(x, c, g)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(x, c, g)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() - base
    del step, model, engine, x, c
    gc.collect()
    torch.cuda.empty_cache()
    flops = count_flops(cfg, micro_batch, seed)
    pred = predictions(cfg, micro_batch, device_name)
    # max_memory_allocated does not see the CUDA context: compare without the planner's allowance
    pred["memory_allocator"] = pred["memory_total"] - CONTEXT_BYTES
    step_s = statistics.median(times)
    ratios = {"memory": peak / pred["memory_allocator"],
              "params": counts["model_params"] / pred["params"],
              "flops": flops / pred["model_flops_per_step"],
              "step_s": step_s / pred["step_s"] if pred.get("step_s") else None}
    return {"model": name, "card": cfg.to_dict(), "mode": mode, "micro_batch": micro_batch,
            "global_batch": micro_batch, "world": 1, "ep": 1,
            "zero": 1 if mode == "deepspeed" else 0,
            "precision": "bf16" if mode == "deepspeed" else "bf16 params, no fp32 master",
            "step_s": step_s, "step_s_all": times, "peak_bytes": peak,
            "params_measured": counts["model_params"], "flops_measured_per_step": flops,
            "images_per_s": micro_batch / step_s, "predicted": pred, "ratios": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help="comma-separated registry names")
    ap.add_argument("--micro-batch", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-deepspeed", action="store_true", help="plain torch, bf16 parameters")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    try:
        import torch
    except ImportError:
        fail("torch is not installed")
    if not torch.cuda.is_available():
        fail("bench/gpu_measure.py needs a CUDA GPU (torch.cuda.is_available() is False); on a "
             "CPU machine use `ecdit-scale launch` + `ecdit-scale validate` instead")
    from ecdit_scale import sizes

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    for n in names:
        sizes.get(n)  # unknown names fail here, before any GPU work
    torch.cuda.set_device(0)
    device_name = torch.cuda.get_device_name(0)
    mode = "torch" if args.no_deepspeed else "deepspeed"
    single_process_env()
    if mode == "deepspeed":
        try:
            import deepspeed  # noqa: F401
            import deepspeed.ops

            deepspeed.init_distributed(dist_backend="nccl")
        except Exception as exc:
            print(f"note: DeepSpeed unavailable ({type(exc).__name__}: {exc}); measuring with "
                  "plain torch (--no-deepspeed)", file=sys.stderr)
            mode = "torch"
    if mode == "torch":
        init_single_process_group("nccl")
    t_all = time.perf_counter()
    results = []
    for n in names:
        t0 = time.perf_counter()
        try:
            r = measure(n, mode, args.micro_batch, args.warmup, args.steps, device_name)
        except Exception as exc:
            if mode == "deepspeed":
                print(f"note: DeepSpeed run of {n} failed ({type(exc).__name__}: {exc}); "
                      "retrying with plain torch", file=sys.stderr)
                traceback.print_exc()
                try:
                    r = measure(n, "torch", args.micro_batch, args.warmup, args.steps, device_name)
                except Exception as exc2:
                    r = {"model": n, "error": f"{type(exc2).__name__}: {exc2}"}
            else:
                r = {"model": n, "error": f"{type(exc).__name__}: {exc}"}
        r["wall_s"] = time.perf_counter() - t0
        results.append(r)
        if "error" in r:
            print(f"{n:12s} FAILED: {r['error']}")
            continue
        rt = r["ratios"]
        p = r["predicted"]
        print(f"{n:12s} [{r['mode']}] step {r['step_s'] * 1e3:8.2f} ms (pred "
              f"{(p['step_s'] or float('nan')) * 1e3:8.2f} ms, ratio "
              f"{rt['step_s'] if rt['step_s'] is not None else float('nan'):.2f}) | peak "
              f"{r['peak_bytes'] / 2**20:9.1f} MiB (pred {p['memory_allocator'] / 2**20:9.1f} MiB, "
              f"ratio {rt['memory']:.2f}; model states pred "
              f"{p['memory_model_states'] / 2**20:.1f} MiB) | FLOPs ratio {rt['flops']:.4f} | "
              f"params ratio {rt['params']:.4f}", flush=True)
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / (f"gpu_{slug}.json" if mode == "deepspeed" else f"gpu_{slug}_{mode}.json")
    doc = {"device": device_name, "torch": torch.__version__, "cuda": torch.version.cuda,
           "deepspeed": _version("deepspeed"), "mode": mode, "host": platform.node(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": time.perf_counter() - t_all,
           "notes": ["world size 1, NCCL; random inputs; median of timed steps after warm-up",
                     "peak_bytes: torch.cuda.max_memory_allocated over the timed steps, less "
                     "what was allocated before the config was built; compared with the "
                     "planner's total less its CUDA-context allowance (memory_allocator)",
                     "predicted step_s: compute only with the catalog's assumed efficiency",
                     "ratios are measured / predicted"],
           "configs": results}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")
    try:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    finally:
        sys.stdout.flush()
    if all("error" in r for r in results):
        sys.exit(1)


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except Exception:
        return None


if __name__ == "__main__":
    main()
