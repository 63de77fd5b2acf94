"""Test the operator-level step-time model against the trainer: profile the device, time
(config, micro-batch) points through the launch path's DeepSpeed engine, and compare each with
the planner's prediction from the profile alone. One prepared script for one H100/H200 in
<= 6 minutes, with a CPU mode that proves it end to end.

    python bench/gpu_validate.py                         # CUDA: profile + 13 points
    python bench/gpu_validate.py --device cpu --quick    # CPU: quick profile + 3 tiny points
    ecdit-scale validate --profile bench/results/profile_<device>.yaml \
        bench/results/validate_<device>.json             # the same rows through `validate`

Each point runs in a worker process (``--worker``) that builds the engine with
``bench/gpu_measure.build`` (the model, expert layout, ZeRO-1 DeepSpeed config and torch
optimizer ``ecdit-scale launch`` uses; random inputs), warms up >= 5 steps and times >= 10; the
parent kills a worker whose point runs past ``--point-timeout`` and carries on with the next.
Results: ``bench/results/validate_<device>.json`` (device, versions, settings, per point the
median step, its spread, every step, peak memory, the prediction term by term and the error)
and the profile YAML next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# (registry name, micro-batch, depth override or None): dense / token choice / expert choice at
# XL width, 8 and 32 experts cut in depth to fit, micro-batch 8-128, small configs where kernel
# launches dominate
CUDA_POINTS = [
    ("ecdit-xl", 8, None), ("ecdit-xl", 32, None), ("ecdit-xl", 128, 8),
    ("ecdit-xl-8e", 8, 14), ("ecdit-xl-8e", 32, 14), ("ecdit-xl-8e", 64, 14),
    ("ecdit-xl-8e-tc", 32, 14),
    ("ecdit-xl-32e", 16, 6), ("ecdit-xl-32e", 64, 6),
    ("base-ec16", 128, None), ("small-dense", 8, None), ("small-ec8", 8, None),
    ("small-ec8", 128, None),
]
CPU_POINTS = [("nano-dense", 8, None), ("nano-ec8", 8, None), ("nano-tc8", 4, None)]


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def point_config(name: str, depth: int | None):
    from ecdit_scale import sizes

    cfg = sizes.get(name)
    if depth is not None and depth != cfg.depth:
        cfg = cfg.replace(depth=depth, name=f"{name}-d{depth}")
    return cfg


# ---------------------------------------------------------------------------------------------
# Worker: time points one after another, one JSON line per point
# ---------------------------------------------------------------------------------------------


def run_worker(args) -> None:
    import gc

    import gpu_measure  # the launch path's engine (bench/gpu_measure.build)
    import torch

    points = json.loads(args.worker)
    device = args.device
    gpu_measure.single_process_env()
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")
    if device == "cpu":
        torch.set_num_threads(1)
    for p in points:
        print(json.dumps({"start": p["index"]}), flush=True)
        out = {"index": p["index"]}
        try:
            out.update(time_point(p, device, args.warmup, args.steps, gpu_measure))
        except Exception as exc:  # a point that fails is recorded, the next one runs
            out["error"] = f"{type(exc).__name__}: {exc}"
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        print(json.dumps({"result": out}), flush=True)


def time_point(p: dict, device: str, warmup: int, steps: int, gpu_measure) -> dict:
    import torch

    cfg = point_config(p["model"], p["depth"])
    mb = p["micro_batch"]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    step, model, counts, engine = gpu_measure.build(cfg, "deepspeed", seed=0)
    dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(mb, cfg.in_channels, cfg.input_size, cfg.input_size, device=dev, generator=g)
    c = torch.randn(mb, cfg.text_tokens, cfg.text_dim, device=dev, generator=g)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        step(x, c, g)
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(x, c, g)
        sync()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() - base if device == "cuda" else None
    del step, model, engine
    return {"card": cfg.to_dict(), "step_s": statistics.median(times), "step_s_all": times,
            "peak_bytes": peak, "params_measured": counts["model_params"]}


# ---------------------------------------------------------------------------------------------
# Parent: profile, points under a watchdog, predictions, result file
# ---------------------------------------------------------------------------------------------


def run_points(points: list[dict], args) -> dict[int, dict]:
    """Workers over the remaining points; a point past --point-timeout is killed and recorded."""
    results: dict[int, dict] = {}
    todo = list(points)
    while todo:
        cmd = [sys.executable, "-u", __file__, "--device", args.device, "--warmup",
               str(args.warmup), "--steps", str(args.steps), "--worker", json.dumps(todo)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if args.device == "cpu":
            env["OMP_NUM_THREADS"] = "1"
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, start_new_session=True)
        current, started, log = None, time.monotonic(), []
        os.set_blocking(proc.stdout.fileno(), False)
        while True:
            line = proc.stdout.readline()
            if line:
                log.append(line)
                msg = _message(line)
                if msg and "start" in msg:
                    current, started = msg["start"], time.monotonic()
                elif msg and "result" in msg:
                    r = msg["result"]
                    results[r["index"]] = r
                    current = None
                    _show(points[r["index"]], r)
                continue
            if proc.poll() is not None:
                break
            if current is not None and time.monotonic() - started > args.point_timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                results[current] = {"index": current,
                                    "error": f"timeout after {args.point_timeout} s"}
                _show(points[current], results[current])
                break
            time.sleep(0.05)
        done = set(results)
        left = [p for p in todo if p["index"] not in done]
        if left and proc.returncode not in (None, 0, -signal.SIGKILL):
            # the worker died outside a point's try (import, DeepSpeed init): record and stop
            tail = "".join(log[-5:]).strip()
            first = left[0]["index"] if current is None else current
            results[first] = {"index": first, "error": f"worker exited {proc.returncode}: {tail}"}
            left = [p for p in left if p["index"] != first]
        todo = left
    return results


def _message(line: str) -> dict | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


def _show(p: dict, r: dict) -> None:
    depth = "" if p["depth"] is None else f" depth {p['depth']}"
    label = f"{p['model']}{depth} mb {p['micro_batch']}"
    if "error" in r:
        print(f"{label:34s} FAILED: {r['error'][:300]}", flush=True)
    else:
        print(f"{label:34s} step {r['step_s'] * 1e3:9.2f} ms", flush=True)


def predict(r: dict, p: dict, acc, datasheet) -> dict:
    from ecdit_scale.config import ClusterConfig, ModelConfig, ParallelLayout, TrainingConfig
    from ecdit_scale.planner.layouts import estimate_layout

    cfg = ModelConfig.from_dict(r["card"])
    layout = ParallelLayout(dp=1, ep=1, tp=1, zero=1, micro_batch=p["micro_batch"])
    training = TrainingConfig(global_batch=p["micro_batch"], optimizer="adamw", precision="bf16")
    out = {}
    for key, a in (("profile", acc), ("datasheet", datasheet)):
        if a is None:
            continue
        est = estimate_layout(cfg, layout, training,
                              ClusterConfig(gpu=a.name, nodes=1, gpus_per_node=1), a)
        out[key] = est.step.to_dict()
        out[f"{key}_memory_total"] = est.memory.total
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--quick", action="store_true", help="quick profile (and on CPU tiny points)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--point-timeout", type=float, default=90.0, help="seconds per point")
    ap.add_argument("--only", help="comma-separated point numbers (1-based) to run")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.warmup < 5 or args.steps < 10:
        fail("--warmup must be >= 5 and --steps >= 10 (two H200 measurements of one config "
             "differed by 1.7x with 3 warm-up steps)")
    if args.worker:
        run_worker(args)
        return
    try:
        import torch
    except ImportError:
        fail("torch is not installed")
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: torch sees no CUDA device; use --device cpu --quick")
    from ecdit_scale.evaluation.calibrate import gpu_accelerator
    from ecdit_scale.evaluation.profile import (
        Settings,
        device_name,
        measure_profile,
        profile_accelerator,
        write_profile,
    )

    t_all = time.perf_counter()
    dev_name = device_name(args.device)
    if args.device == "cpu":  # `validate` reads "cpu ..." devices as CPUs
        dev_name = f"cpu ({dev_name})"
    slug = re.sub(r"[^a-z0-9]+", "-", dev_name.lower()).strip("-")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # CPU mode times bf16 like the GPU (the engine path is the same), so profile in bf16 too
    s = Settings(device=args.device, quick=args.quick, dtype="bf16")
    print(f"profiling {dev_name} ({'quick' if args.quick else 'full'}) ...", flush=True)
    prof = measure_profile(s, report=lambda m: print(f"  {m}", flush=True))
    acc = profile_accelerator(s, prof)
    if args.device == "cpu":  # the profile entry says fp32 for CPU runs; these points run bf16
        import dataclasses

        acc = dataclasses.replace(acc, precisions=("fp32", "bf16"))
    profile_path = write_profile(acc, out_dir / f"profile_{slug}.yaml")
    print(f"  wrote {profile_path} ({prof.provenance['measured_in_s']} s)", flush=True)
    try:
        datasheet = gpu_accelerator(dev_name) if args.device == "cuda" else None
    except Exception:  # a card the catalog lacks: no datasheet comparison
        datasheet = None

    table = CUDA_POINTS if args.device == "cuda" else CPU_POINTS
    points = [{"index": i, "model": m, "micro_batch": mb, "depth": d}
              for i, (m, mb, d) in enumerate(table)]
    if args.only:
        keep = {int(x) - 1 for x in args.only.split(",") if x.strip()}
        points = [p for p in points if p["index"] in keep]
    for p in points:
        point_config(p["model"], p["depth"])  # unknown names fail here, before any timing
    results = run_points(points, args)

    configs, errors = [], []
    for p in points:
        r = results.get(p["index"], {"error": "not run"})
        row = {"model": p["model"], "depth_override": p["depth"], "micro_batch": p["micro_batch"],
               "global_batch": p["micro_batch"], "world": 1, "ep": 1, "zero": 1,
               "mode": "deepspeed", "precision": "bf16", "optimizer": "adamw"}
        if "error" in r:
            configs.append({**row, "error": r["error"]})
            continue
        times = sorted(r["step_s_all"])
        pred = predict(r, p, acc, datasheet)
        step_pred = pred["profile"]["total_s"]
        err = r["step_s"] / step_pred - 1
        errors.append(err)
        configs.append({**row, "card": r["card"], "step_s": r["step_s"],
                        "step_s_all": r["step_s_all"],
                        "step_s_spread": {"min": times[0], "max": times[-1],
                                          "p10": times[len(times) // 10],
                                          "p90": times[-1 - len(times) // 10]},
                        "peak_bytes": r["peak_bytes"], "params_measured": r["params_measured"],
                        "predicted": {"step_s": step_pred, "terms": pred["profile"],
                                      "datasheet": pred.get("datasheet"),
                                      "memory_total": pred["profile_memory_total"]},
                        "step_s_error": err})
        print(f"{p['model']:16s} mb {p['micro_batch']:4d}: measured {r['step_s'] * 1e3:9.2f} ms "
              f"[{times[0] * 1e3:.2f}-{times[-1] * 1e3:.2f}], profile-only "
              f"{step_pred * 1e3:9.2f} ms ({err:+.1%})", flush=True)
    summary = ({"points": len(errors), "mean_abs_error": statistics.mean(map(abs, errors)),
                "max_abs_error": max(map(abs, errors)), "target": "mean <= 10%, max <= 20%"}
               if errors else {"points": 0})
    print(f"summary: {json.dumps(summary)}", flush=True)
    doc = {"device": dev_name, "host": platform.node(), "torch": str(torch.__version__),
           "cuda": torch.version.cuda, "deepspeed": _version("deepspeed"),
           "driver": _driver() if args.device == "cuda" else None,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "settings": {"device": args.device, "quick": args.quick, "warmup": args.warmup,
                        "steps": args.steps, "point_timeout_s": args.point_timeout},
           "profile": str(profile_path), "wall_s": time.perf_counter() - t_all,
           "notes": ["world size 1, DeepSpeed ZeRO-1 bf16, torch AdamW (bench/gpu_measure.build:"
                     " the launch path's engine), random inputs",
                     "step_s: median of the timed steps after warm-up; spread: min/max/p10/p90",
                     "predicted: planner step time for the same layout from the profile alone "
                     "(no run calibrates it); datasheet: the catalog entry's one-constant model",
                     "errors are measured / predicted - 1"],
           "summary": summary, "configs": configs}
    path = out_dir / f"validate_{slug}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.replace(path)
    print(f"wrote {path} in {doc['wall_s']:.0f} s")
    if not errors:
        sys.exit(1)


def _version(mod: str) -> str | None:
    try:
        return str(__import__(mod).__version__)
    except Exception:
        return None


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or None
    except Exception:
        return None


if __name__ == "__main__":
    main()
