"""The scaling sweep a reviewer asked for, in one prepared run, designed in FLOPs (issue 20): per
compute level (IsoFLOP, Hoffmann et al. 2022 Approach 2) 4 sizes around the expected optimum,
each trained for the steps that spend the level; dense / token choice / expert choice, 2 seeds;
a learning-rate grid per size and variant at the middle level with both seeds; data that never
repeats, scored by the held-out loss at fixed noise; then the fit (the headline L(N, D), its
minimum detectable multiplier, the levels whose minimum sits on an edge) and the report.

    python bench/gpu_sweep.py --prepare-data bench/.sweep_data  # dev machine, once (~90 s)
    python bench/gpu_sweep.py --out $OUT/gpu-sweep           # CUDA: <= 10 minutes of one GPU
    python bench/gpu_sweep.py --device cpu --quick --out /tmp/s  # CPU: the same path, tiny

The GPU machine has no text encoder (no sentence-transformers, no network): the whole caption
table of the shapes stream (2,772 captions) is encoded once here with --prepare-data and travels
with the tree (carry ``bench/.sweep_data``; git ignores it). Every run then reads that table.

It calls the product's own ``sweep --design isoflop`` (train/isoflop.py designs,
train/isoflop_run.py trains every run through ``ecdit-scale launch``) with ``--parallel`` launches
at once (small models leave a GPU mostly idle), then ``fit`` and ``report``. A deadline
(``--budget-s``) stops launching new runs in time to fit what is done. The sweep resumes: run it
again with the same --out to finish. Everything goes under --out: runs.csv, lr-search.csv,
fit.yaml, the report (HTML + Markdown + figures) and provenance.json (device, versions, settings,
timings).
The run directories themselves (checkpoints) are deleted at the end unless --keep-runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA_DIR = ROOT / "bench" / ".sweep_data"

# CUDA: levels 1e12-1e13 FLOPs (10x), 4 sizes a level around a prior of 1 token per activated
# parameter (the CPU reference sweep's smallest size won at 0.03-0.61 tokens per parameter, so the
# optimum lies at more tokens per parameter than it trained), 3 variants, 2 seeds, lr grid 0.5-4x
# of 1e-3: ~61k steps of 32 images in all (`sweep --design isoflop ... --dry-run` lists them)
CUDA = dict(flops=(1e12, 3e12, 1e13), tokens_per_param=1.0, sizes_per_level=4, spread=4.0,
            variants=("dense", "tc8", "ec8"), seeds=(0, 1), micro_batch=32,
            lr_grid=(0.5, 1.0, 2.0, 4.0), holdout=64, parallel=8)
# CPU --quick: the same path at toy scale (three levels, nano/micro, 1 seed, one lr), ~1.5 min
CPU_QUICK = dict(flops=(1e10, 2e10, 4e10), tokens_per_param=0.01, sizes_per_level=3, spread=2.0,
                 variants=("dense",), seeds=(0,), micro_batch=4, lr_grid=(1.0,), holdout=8,
                 parallel=2)

def versions() -> dict:
    import deepspeed
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"torch": torch.__version__, "deepspeed": deepspeed.__version__,
            "cuda": torch.version.cuda, "gpu": gpu, "python": platform.python_version(),
            "host_cpus": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--prepare-data", type=Path, metavar="DIR",
                    help="encode the stream's whole caption table into DIR and exit")
    ap.add_argument("--data", type=Path, default=DATA_DIR,
                    help=f"the prepared caption table (default {DATA_DIR.relative_to(ROOT)})")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--quick", action="store_true", help="CPU: toy sizes (the path, not results)")
    ap.add_argument("--budget-s", type=float, default=540.0,
                    help="stop launching new runs after this many seconds (default 540)")
    ap.add_argument("--parallel", type=int, default=None, help="launches at once")
    ap.add_argument("--keep-runs", action="store_true")
    args = ap.parse_args(argv)
    from ecdit_scale import sizes
    from ecdit_scale.datasets.stream import all_captions, full_table_cached

    text_tokens = sizes.get("nano-dense").text_tokens  # the CPU ladder's, every size alike
    if args.prepare_data:
        from ecdit_scale.datasets.text_encoder import TextEncoder

        TextEncoder(args.prepare_data).encode(all_captions(), text_tokens)
        print(f"[gpu_sweep] {len(all_captions())} captions encoded under {args.prepare_data}")
        return 0
    if args.out is None:
        ap.error("--out DIR is needed (or --prepare-data DIR)")
    if args.device == "cuda":  # shared/GPU.md: DeepSpeed from .whl/ when it does not import
        sys.path.insert(0, str(ROOT / "bench"))
        from train_throughput import ensure_deepspeed

        ensure_deepspeed()
    if full_table_cached(text_tokens, args.data):
        os.environ["ECDIT_SCALE_CACHE"] = str(args.data.resolve())  # the launches inherit it
    elif args.device == "cuda":
        print(f"error: no caption table under {args.data}; make it with --prepare-data "
              f"{args.data} on a machine with the text encoder and carry it", file=sys.stderr)
        return 2

    from ecdit_scale.errors import ConfigError
    from ecdit_scale.scaling.fit import fit_run_table
    from ecdit_scale.scaling.fit_file import save_fit
    from ecdit_scale.scaling.report import write_report
    from ecdit_scale.scaling.table import load_run_table
    from ecdit_scale.train.isoflop import design_isoflop
    from ecdit_scale.train.isoflop_run import run_isoflop

    settings = dict(CPU_QUICK if args.quick else CUDA)
    parallel = args.parallel or settings.pop("parallel")
    settings.pop("parallel", None)
    holdout, micro_batch = settings.pop("holdout"), settings.pop("micro_batch")
    out = args.out.resolve()
    runs_dir = out / "runs"
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    provenance = {"script": "bench/gpu_sweep.py", "argv": sys.argv[1:], "device": args.device,
                  "caption_table": os.environ.get("ECDIT_SCALE_CACHE", "encoded here"),
                  "versions": versions(), "parallel": parallel, "budget_s": args.budget_s,
                  "design": _plain(settings), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    timings = {}
    table = out / "runs.csv"
    try:
        levels = settings.pop("flops")
        design = design_isoflop(levels, global_batch=micro_batch, **settings)
        for note in design.notes:
            print(f"[gpu_sweep] design: {note}", flush=True)
        res = run_isoflop(design, lr=1e-3, nproc=1, micro_batch=micro_batch,
                          dataset="shapes-stream", holdout=holdout, device=args.device,
                          out=runs_dir, parallel=parallel, stop_at=deadline,
                          on_event=lambda state, run, i, n: print(
                              f"[gpu_sweep] {i + 1}/{n} {state} {run.run_dir.name}", flush=True)
                          if state not in ("done", "finished") else None)
        timings["sweep_s"] = round(time.monotonic() - t0, 1)
        if res.failed:
            print(f"[gpu_sweep] {len(res.failed)} runs failed: {res.failed[:3]}", flush=True)
        if res.not_started:
            print(f"[gpu_sweep] deadline: {len(res.not_started)} runs not started; fitting what "
                  "is done", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        if res.table_path.exists():
            shutil.copyfile(res.table_path, table)
        if (runs_dir / "lr-search.csv").exists():
            shutil.copyfile(runs_dir / "lr-search.csv", out / "lr-search.csv")
        provenance.update(lr_per_size=res.lr_of, notes=res.notes, failed=res.failed,
                          not_started=res.not_started, timings=timings,
                          runs=[r.to_dict() for r in design.runs])
        _write(out / "provenance.json", provenance)
        if not table.exists():
            print("[gpu_sweep] no finished run: nothing to fit", flush=True)
            return 1
        tf = time.monotonic()
        df = load_run_table(table)
        fit = fit_run_table(df, n_boot=200, seed=0)
        save_fit(fit, out / "fit.yaml")
        write_report(df, fit, out / "report")
        timings["fit_report_s"] = round(time.monotonic() - tf, 1)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        timings["total_s"] = round(time.monotonic() - t0, 1)
        provenance.update(timings=timings, finished=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
        if out.exists():
            _write(out / "provenance.json", provenance)
    if not args.keep_runs:
        shutil.rmtree(runs_dir, ignore_errors=True)
    print(f"[gpu_sweep] {len(df)} rows, {timings['total_s']} s -> {out}", flush=True)
    return 0


def _plain(d):
    return json.loads(json.dumps(d, default=str))


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
