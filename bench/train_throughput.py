"""How busy the trainer keeps one GPU: XL-width EC-DiT configs through the real launch path
(``ecdit-scale launch``: DeepSpeed launcher, worker, ZeRO-1 bf16, world 1), each at two
micro-batches, with step time, images/s, achieved model FLOP/s, % of the device's dense bf16
peak and the kernels, launches and host syncs of one profiled step. One prepared script for one
H100/H200 in <= 6 minutes, and a --cpu mode with tiny configs that proves it end to end.

    python bench/train_throughput.py --prepare-data bench/.throughput_data   # dev machine, once
    PYTHONPATH=/tmp/site:. python bench/train_throughput.py --out $OUT       # the GPU machine
    python bench/train_throughput.py --cpu --out /tmp/tt                     # CPU, ~1 minute
    python bench/train_throughput.py --list                                  # the plan, no runs

The GPU machine has no text encoder: its captions' MiniLM embeddings are made here by
--prepare-data (~20 MB) and travel with the tree (carry ``bench/.throughput_data`` when it is
git-ignored); DeepSpeed comes as in shared/GPU.md (this script installs ``.whl/*.whl`` into
/tmp/site itself when deepspeed does not import).

Each point is one ``ecdit-scale launch`` in its own process group, killed at its timeout or at
the run's deadline (whichever is first; the next point still runs), and the result file
``train_throughput_<device>.json`` under --out is rewritten after every point: device, driver,
torch/CUDA/DeepSpeed versions, settings, and per point the median step over the timed steps
(>= 5 warm-up, >= 10 timed: two measurements with 3 warm-up steps differed 1.7x), its spread,
every step, images/s, FLOP/s, % of peak and the profiled step's counts (``train.step_profile``).
A point runs with ``--no-checkpoints`` (no checkpoint, not even the final one, which for
XL-8e would write ~25 GB) and ``--holdout 0``. The eager twin of the first point gives the
compiled/eager step-time ratio and checks that both train the same loss (bf16 tolerance).
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA_DIR = ROOT / "bench" / ".throughput_data"
SITE = Path("/tmp/site")


@dataclass(frozen=True)
class Point:
    model: str
    micro_batch: int
    compile: str = "block"
    depth: int | None = None  # --override depth=N: the paper's card cut to fit one GPU
    dataset: str = "latents"
    engine: str = "lean"  # "deepspeed-defaults": $ECDIT_SCALE_ENGINE, the engine before the cuts

    @property
    def name(self) -> str:
        depth = "" if self.depth is None else f"-d{self.depth}"
        engine = "" if self.engine == "lean" else "-dsdefaults"
        return f"{self.model}{depth}-mb{self.micro_batch}-{self.compile}{engine}"


# run order = priority: the headline and its engine baseline (DeepSpeed's defaults, the A/B of
# the per-gradient cuts), the MoE configs beside it, the headline's eager twin, then the second
# micro-batches (what a short budget loses last matters least)
# in the order a cut budget keeps them: the lean engine and its A/B first, then the largest
# micro-batch (the best case for the 40%-of-peak target), the MoE variants, the rest
GPU_POINTS = [
    Point("ecdit-xl", 32), Point("ecdit-xl", 32, engine="deepspeed-defaults"),
    Point("ecdit-xl", 128), Point("ecdit-xl-8e", 32), Point("ecdit-xl-8e-tc", 32),
    Point("ecdit-xl-32e", 32, depth=8), Point("ecdit-xl", 64),
    Point("base-ec16", 128, dataset="shapes"), Point("ecdit-xl", 32, compile="none"),
    Point("ecdit-xl-8e", 16), Point("base-ec16", 256, dataset="shapes"),
    Point("ecdit-xl-8e-tc", 16), Point("ecdit-xl-32e", 16, depth=8),
]
CPU_POINTS = [
    Point("nano-ec8", 4, compile="none", dataset="shapes"),
    Point("nano-ec8", 4, compile="block", dataset="shapes"),
    Point("nano-ec8", 8, compile="none", dataset="shapes"),
    Point("nano-tc8", 4, compile="none", dataset="shapes"),
    Point("nano-ec8", 4, compile="none", dataset="shapes", engine="deepspeed-defaults"),
]
LOSS_RTOL = {"cuda": 2e-2, "cpu": 1e-5}  # bf16 kernels fused differently; CPU: aot_eager


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def point_config(p: Point):
    from ecdit_scale import sizes
    from ecdit_scale.planner.cards import override_config

    cfg = sizes.get(p.model)
    return override_config(cfg, f"depth={p.depth}") if p.depth is not None else cfg


def data_limit(p: Point) -> int:
    return max(128, p.micro_batch)  # one step's batch at least; holdout 0


# ---------------------------------------------------------------------------------------------
# Data: the captions' text embeddings are the only thing the GPU machine cannot make
# ---------------------------------------------------------------------------------------------


def missing_data(points: list[Point], cache: Path | None) -> list[str]:
    """The cached text-embedding files the points need that ``cache`` lacks (None: the
    default cache)."""
    from ecdit_scale.datasets.latents import make_latents
    from ecdit_scale.datasets.shapes import make_shapes
    from ecdit_scale.datasets.text_encoder import TextEncoder

    out = []
    for p in points:
        cfg = point_config(p)
        n = data_limit(p)
        if p.dataset == "latents":
            _, captions = make_latents(n, cfg.image_size, 0)
        else:
            captions = [s.caption for s in make_shapes(n, cfg.image_size, 0)[1]]
        path = TextEncoder(cache).cache_path(sorted(set(captions)), cfg.text_tokens)
        if not path.is_file() and path.name not in out:
            out.append(path.name)
    return out


def prepare_data(points: list[Point], cache: Path) -> None:
    from ecdit_scale.datasets.arrays import dataset_arrays_for

    for p in points:
        dataset_arrays_for(p.dataset, point_config(p), limit=data_limit(p), seed=0,
                           cache_dir=cache)
    size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    print(f"{cache}: text embeddings for {len(points)} points, {size / 2**20:.1f} MiB; carry "
          "this folder to the GPU machine")


# ---------------------------------------------------------------------------------------------
# One point: one launch
# ---------------------------------------------------------------------------------------------


def launch_command(p: Point, run_dir: Path, *, device: str, warmup: int, timed: int) -> list[str]:
    steps = warmup + timed + 1  # + the profiled step; --no-checkpoints
    cmd = [sys.executable, "-m", "ecdit_scale", "launch", p.model, "--device", device,
           "--nproc", "1", "--micro-batch", str(p.micro_batch), "--steps", str(steps),
           "--no-checkpoints",
           "--limit", str(data_limit(p)), "--holdout", "0", "--dataset", p.dataset,
           "--compile", p.compile, "--no-track-memory", "--out", str(run_dir), "--json"]
    if p.depth is not None:
        cmd += ["--override", f"depth={p.depth}"]
    return cmd


def run_point(p: Point, out: Path, args, timeout_s: float, env: dict[str, str]) -> dict:
    run_dir = out / "runs" / p.name
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    cmd = launch_command(p, run_dir, device=args.device, warmup=args.warmup, timed=args.steps)
    profile_step = args.warmup + args.steps + 1
    t0 = time.monotonic()
    env = {**env, "ECDIT_SCALE_ENGINE": p.engine}
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**env, "ECDIT_SCALE_PROFILE_STEP":
                                                str(profile_step)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        stop(proc, run_dir)
        stdout, stderr = proc.communicate()
        timed_out = True
    res = {"point": asdict(p), "name": p.name, "run_dir": str(run_dir),
           "wall_s": time.monotonic() - t0, "command": " ".join(cmd[2:])}
    try:
        res.update(read_run(run_dir, warmup=args.warmup, timed=args.steps,
                            profile_step=profile_step))
    except (OSError, ValueError, KeyError) as exc:
        res["read_error"] = f"{type(exc).__name__}: {exc}"
    if timed_out:
        res["error"] = f"timeout after {timeout_s:.0f} s"
    elif res.get("steps_recorded", 0) < profile_step:
        tail = (stderr or "").strip().splitlines()[-3:] + (stdout or "").strip().splitlines()[-2:]
        res["error"] = f"launch exited {proc.returncode}: " + " | ".join(tail)[-600:]
    return res


def compile_broke(r: dict) -> bool:
    """A compiled launch that failed before its first step, not by the budget's timeout."""
    return "error" in r and not r["error"].startswith("timeout") and not r.get("steps_recorded")


def stop(proc: subprocess.Popen, run_dir: Path) -> None:
    """SIGTERM to the launch (it forwards it to its ranks), then SIGKILL to both groups."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    groups = {proc.pid}
    try:
        groups.add(os.getpgid(int((run_dir / "worker.pid").read_text())))
    except (OSError, ValueError):
        pass
    for g in groups:
        try:
            os.killpg(g, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def spread(values: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "iqr": qs[2] - qs[0]}


def read_run(run_dir: Path, *, warmup: int, timed: int, profile_step: int) -> dict:
    """Timed steps warmup+1 .. warmup+timed of a point's run directory, and its profile."""
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    out: dict = {"steps_recorded": len(recs), "losses": [r["loss"] for r in recs],
                 "first_step_s": recs[0]["step_s"] if recs else None}
    run = json.loads((run_dir / "run.json").read_text())
    out["settings"] = {k: run.get(k) for k in ("model_name", "world", "ep", "zero",
                                               "micro_batch", "global_batch", "precision",
                                               "optimizer", "compile", "dataset", "device")}
    pred = json.loads((run_dir / "predictions.json").read_text())
    out["params"] = pred["params"]["model_params"]
    out["model_flops_per_image"] = pred["flops"]["model_flops_per_image"]
    window = [r for r in recs if warmup < r["step"] <= warmup + timed and not r.get("profiled")]
    if window:
        for key in ("step_s", "images_per_s", "model_flops_per_s_per_device"):
            out[key] = spread([r[key] for r in window])
        pct = [r["pct_of_peak"] for r in window if r.get("pct_of_peak") is not None]
        out["pct_of_peak"] = spread(pct) if pct else None
        out["step_s_all"] = [r["step_s"] for r in window]
        peaks = [r["peak_bytes"] for r in window if r.get("peak_bytes")]
        out["peak_bytes"] = max(peaks) if peaks else None
    prof = run_dir / f"profile_step{profile_step}.json"
    out["profile"] = json.loads(prof.read_text()) if prof.is_file() else None
    out["ceilings"] = ceilings(out)
    summary = run_dir / "summary.json"  # the worker's start-up by phase (engine.PhaseClock)
    out["startup_s"] = (json.loads(summary.read_text()).get("startup_s")
                        if summary.is_file() else None)
    return out


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def ensure_deepspeed() -> None:
    """shared/GPU.md: deepspeed's wheels in .whl/ go to /tmp/site when it does not import."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        return
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if not wheels:
        fail("deepspeed does not import and .whl/ holds no wheels (see shared/GPU.md)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(SITE),
                    *map(str, wheels)], check=True)
    sys.path.insert(0, str(SITE))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SITE), os.environ.get("PYTHONPATH", "")])


def device_info(device: str) -> dict:
    import torch

    from ecdit_scale.train.throughput import device_peak

    info = {"torch": torch.__version__, "python": platform.python_version(),
            "host": platform.node(), "deepspeed": _version("deepspeed")}
    if device == "cpu":
        peak, source = device_peak(None)
        return {**info, "device": f"cpu ({platform.processor() or platform.machine()})",
                "peak_flops_per_s": peak, "peak_source": source}
    name = torch.cuda.get_device_name(0)
    peak, source = device_peak(name)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                 "--format=csv,noheader"], capture_output=True, text=True,
                                timeout=20).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        driver = None
    return {**info, "device": name, "driver": driver, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "peak_flops_per_s": peak,
            "peak_source": source}


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except Exception:
        return None


def _compare(a: dict, b: dict, device: str) -> dict:
    """b's step time over a's, both kernel counts, and whether the first losses agree."""
    k = min(3, len(a["losses"]), len(b["losses"]))
    rel = [abs(x - y) / max(abs(y), 1e-12)
           for x, y in zip(a["losses"][:k], b["losses"][:k], strict=True)]
    return {"step_s_ratio": b["step_s"]["median"] / a["step_s"]["median"],
            "kernels": [(a.get("profile") or {}).get("kernels"),
                        (b.get("profile") or {}).get("kernels")],
            "loss_rel_diff_first_steps": rel, "loss_rtol": LOSS_RTOL[device],
            "same_loss": bool(rel) and max(rel) <= LOSS_RTOL[device]}


def checks(results: list[dict], device: str) -> dict:
    """Compiled vs eager of the same config, and the lean engine vs DeepSpeed's defaults:
    step-time ratio (eager / compiled, defaults / lean), kernels, the same loss per step."""
    out = {}
    done = {r["name"]: r for r in results if "error" not in r and r.get("step_s")}
    for name, r in done.items():
        if name.endswith("-block") and (name[: -len("block")] + "none") in done:
            c = _compare(r, done[name[: -len("block")] + "none"], device)
            out[name[: -len("-block")]] = {
                "eager_over_compiled_step_s": c["step_s_ratio"],
                "compiled_kernels": c["kernels"][0], "eager_kernels": c["kernels"][1],
                **{k: c[k] for k in ("loss_rel_diff_first_steps", "loss_rtol", "same_loss")}}
        if name + "-dsdefaults" in done:
            c = _compare(r, done[name + "-dsdefaults"], device)
            out[name + " engine"] = {
                "defaults_over_lean_step_s": c["step_s_ratio"],
                "lean_kernels": c["kernels"][0], "defaults_kernels": c["kernels"][1],
                **{k: c[k] for k in ("loss_rel_diff_first_steps", "loss_rtol", "same_loss")}}
    return out


def ceilings(r: dict) -> dict | None:
    """Where the step's time goes, from the profiled step's breakdown (train.step_profile), and
    the share of peak the point would reach if the step took only: every part's device time
    (no host gaps), the model's kernels (no engine, optimizer or EMA), the model's GEMMs and
    attention (memory-bound ops free). Scaled from the measured median: % x step / time."""
    b = (r.get("profile") or {}).get("breakdown")
    if not b or not r.get("step_s") or not r.get("pct_of_peak"):
        return None
    step_ms, pct = r["step_s"]["median"] * 1e3, r["pct_of_peak"]["median"]
    m, parts = b["model_ms"], b["parts_ms"]
    model_ms = sum(m.values())
    terms = {"gemm_ms": m["gemm"], "attention_ms": m["attention"],
             "memory_bound_ms": m["memory_bound"],
             "optimizer_ms": parts["step/optimizer"] + parts["ema"],
             "engine_ms": (parts["backward/hooks"] + parts["backward/engine"]
                           + parts["step/engine"]),
             "outside_ms": parts["outside"], "step_ms": step_ms}
    busy = sum(parts.values())
    terms["host_gap_ms"] = step_ms - busy  # CPU: the host's own time outside the ops

    def at(ms: float) -> float | None:
        return pct * step_ms / ms if ms > 0 else None

    return {**terms, "basis": b.get("basis"),
            "memory_bound_top_ms": (b.get("memory_bound_top_ms") or [])[:5],
            "pct_if_no_host_gaps": at(busy), "pct_if_model_only": at(model_ms),
            "pct_if_gemm_and_attention_only": at(m["gemm"] + m["attention"])}


def show(r: dict) -> None:
    if "error" in r or not r.get("step_s"):
        print(f"{r['name']:34s} FAILED: {r.get('error') or r.get('read_error')}"[:400], flush=True)
        return
    prof = r.get("profile") or {}
    pct = "n/a" if r.get("pct_of_peak") is None else f"{r['pct_of_peak']['median']:.1f}%"
    print(f"{r['name']:34s} {r['step_s']['median'] * 1e3:9.1f} ms/step (IQR "
          f"{r['step_s']['iqr'] * 1e3:.1f})  {r['images_per_s']['median']:8.1f} img/s  "
          f"{r['model_flops_per_s_per_device']['median'] / 1e12:8.4f} TFLOP/s  {pct} of peak  "
          f"{prof.get('kernels', '?')} kernels, {prof.get('host_syncs') or 'n/a'} syncs/step",
          flush=True)
    c = r.get("ceilings")
    if c:
        def pct_of(x):
            return "n/a" if x is None else f"{x:.0f}%"

        print(f"{'':34s} GEMM {c['gemm_ms']:.1f} + attention {c['attention_ms']:.1f} + "
              f"memory-bound {c['memory_bound_ms']:.1f} + optimizer/EMA "
              f"{c['optimizer_ms']:.1f} + engine {c['engine_ms']:.1f} ms, host gaps "
              f"{c['host_gap_ms']:.1f} ms; ceilings: {pct_of(c['pct_if_no_host_gaps'])} with no "
              f"gaps, {pct_of(c['pct_if_model_only'])} model only, "
              f"{pct_of(c['pct_if_gemm_and_attention_only'])} GEMM + attention only", flush=True)
        if c["memory_bound_top_ms"]:
            print(f"{'':34s} memory-bound, largest: " + "; ".join(
                f"{name[:48]} {ms:.1f} ms" for name, ms in c["memory_bound_top_ms"][:3]),
                flush=True)


def write(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="folder for the result file and the run directories")
    ap.add_argument("--cpu", action="store_true", help="tiny configs on this CPU")
    ap.add_argument("--configs", default=None, help="comma-separated point names (--list)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (GPU 5, CPU 2)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (GPU 10, CPU 3)")
    ap.add_argument("--budget-s", type=float, default=330.0, help="deadline for all points")
    ap.add_argument("--point-timeout-s", type=float, default=150.0)
    ap.add_argument("--data-cache", default=None, help=f"text embeddings (default {DATA_DIR} "
                    "if present on GPU; the usual cache on CPU)")
    ap.add_argument("--prepare-data", metavar="DIR", help="make the GPU points' text "
                    "embeddings into DIR (needs the text encoder) and exit")
    ap.add_argument("--list", action="store_true", help="the points, their planned memory "
                    "and data; no runs")
    args = ap.parse_args()
    args.device = "cpu" if args.cpu else "cuda"
    points = CPU_POINTS if args.cpu else GPU_POINTS
    if args.configs:
        wanted = [c.strip() for c in args.configs.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in {p.name for p in points}]
        if unknown:
            fail(f"--configs {','.join(unknown)}: not a point; choose among "
                 f"{', '.join(p.name for p in points)}")
        points = [p for p in points if p.name in wanted]
    for name, value in (("--warmup", args.warmup), ("--steps", args.steps)):
        if value is not None and value < 1:
            fail(f"{name} {value}: must be >= 1")
    args.warmup = args.warmup or (2 if args.cpu else 5)
    args.steps = args.steps or (3 if args.cpu else 10)
    if args.prepare_data:
        prepare_data(GPU_POINTS, Path(args.prepare_data))
        return
    cache = Path(args.data_cache) if args.data_cache else (
        DATA_DIR if not args.cpu and DATA_DIR.is_dir() else None)
    if args.list:
        list_points(points, cache)
        return
    if not args.out:
        fail("--out DIR is needed (or --list / --prepare-data)")
    run_all(points, args, cache)


def list_points(points: list[Point], cache: Path | None) -> None:
    """The plan, checked without a GPU: cards, planned memory on an H100, cached data."""
    from ecdit_scale.config import ParallelLayout, TrainingConfig
    from ecdit_scale.planner.hardware import get_accelerator
    from ecdit_scale.planner.memory import memory_breakdown

    h100 = get_accelerator("h100-sxm")
    for p in points:
        cfg = point_config(p)
        mem = memory_breakdown(cfg, ParallelLayout(dp=1, ep=1, zero=1, micro_batch=p.micro_batch),
                               TrainingConfig(global_batch=p.micro_batch, precision="bf16",
                                              optimizer="adamw"))
        print(f"{p.name:34s} {p.dataset:8s} planned {mem.total / 2**30:5.1f} GiB of the H100's "
              f"{h100.memory_bytes / 2**30:.0f}")
    missing = missing_data(points, cache)
    print(f"data in {cache or 'the default cache'}: "
          + ("all cached" if not missing else "missing " + ", ".join(missing)))


def run_all(points: list[Point], args, cache: Path | None) -> None:
    t_start = time.monotonic()
    deadline = t_start + args.budget_s
    os.environ.setdefault("DS_ACCELERATOR", args.device)  # no accelerator guess on stdout
    if args.device == "cuda":
        ensure_deepspeed()
        import torch

        if not torch.cuda.is_available():
            fail("no CUDA device is visible; use --cpu on a CPU machine")
    missing = missing_data(points, cache)
    if missing and args.device == "cuda":
        fail(f"text embeddings {', '.join(missing)} are not in {cache or 'the cache'}; "
             "make them with --prepare-data bench/.throughput_data on a machine with the "
             "text encoder and bring that folder along")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    if cache is not None:
        env["ECDIT_SCALE_CACHE"] = str(cache)
    if args.device == "cpu":  # inductor needs ~45 s per nano model here: capture only
        env.setdefault("ECDIT_SCALE_COMPILE_BACKEND", "aot_eager")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = device_info(args.device)
    slug = re.sub(r"[^a-z0-9]+", "-", info["device"].lower()).strip("-")
    path = out / f"train_throughput_{slug}.json"
    doc = {**info, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "settings": {"warmup_steps": args.warmup, "timed_steps": args.steps,
                        "budget_s": args.budget_s, "point_timeout_s": args.point_timeout_s,
                        "compile_backend": env.get("ECDIT_SCALE_COMPILE_BACKEND", "inductor"),
                        "launch": "ecdit-scale launch, world 1, ZeRO-1, bf16 on CUDA (fp32 on "
                                  "CPU), AdamW, ends at the profiled step, no checkpoint",
                        "data_cache": str(cache) if cache else "default"},
           "notes": ["step_s, images_per_s, model_flops_per_s_per_device, pct_of_peak: median, "
                     "min, max, IQR over the timed steps (the metrics.jsonl records)",
                     "profile: torch.profiler on the step after the timed ones "
                     "(train.step_profile); kernels = device kernels on CUDA, aten compute "
                     "ops on CPU",
                     "ceilings: the profiled step's parts (train.step_profile.breakdown) and "
                     "the % of peak the median step would reach without host gaps, with the "
                     "model's kernels only, with its GEMMs and attention only"],
           "points": [], "checks": {}}
    print(f"{info['device']}: {len(points)} points, budget {args.budget_s:.0f} s -> {path}",
          flush=True)
    eager_only = None  # why the remaining points run eager (a compiled launch broke)
    for p in points:
        if eager_only and p.compile == "block":
            p = replace(p, compile="none")
            if any(r["name"] == p.name for r in doc["points"]):
                continue
        left = deadline - time.monotonic()
        done = doc["points"]
        if len(done) >= 2 and not any("error" not in r for r in done):
            r = {"point": asdict(p), "name": p.name,
                 "error": "skipped: the first points all failed (see their errors)"}
        elif left < min(60.0, args.point_timeout_s):
            r = {"point": asdict(p), "name": p.name,
                 "error": f"skipped: {max(0, left):.0f} s of the budget left"}
        else:
            r = run_point(p, out, args, min(args.point_timeout_s, left), env)
            if p.compile == "block" and compile_broke(r):
                eager_only = f"{p.name} failed compiled: the points after it run eager"
                doc["settings"]["compile_fallback"] = eager_only
                print(eager_only, flush=True)
        doc["points"].append(r)
        doc["checks"] = checks(doc["points"], args.device)
        doc["wall_s"] = time.monotonic() - t_start
        write(path, doc)
        show(r)
    for name, c in doc["checks"].items():
        ratio = (f"eager/compiled step time {c['eager_over_compiled_step_s']:.2f}x"
                 if "eager_over_compiled_step_s" in c else
                 f"DeepSpeed defaults / lean engine step time "
                 f"{c['defaults_over_lean_step_s']:.2f}x")
        print(f"{name}: {ratio}; same loss (rtol {c['loss_rtol']}): {c['same_loss']}")
    print(f"wrote {path} ({doc['wall_s']:.0f} s)")
    if not any("error" not in r for r in doc["points"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
