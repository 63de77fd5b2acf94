"""The step-time model against the CPU held-out matrix of issue 19 (``results/cpu-heldout-
matrix/matrix.yaml``, 13 launches fixed before the model changed): launch each run (a run whose
summary.json exists is kept, so an interrupted pass resumes), profile this CPU once with
``profile --nproc 2``, and print ``validate --profile``'s profile-only error per run
(measured / predicted - 1) with the mean and worst |error|, and the term that misses most.

    python bench/cpu_heldout_matrix.py --out DIR [--profile P.yaml | --profile-each]
                                       [--only NAME,...] [--without-profile-part PART]
                                       [--gemm-from-m M] [--engine-from-toy]
                                       [--engine-dp-world1] [--repeats N | --passes N]

``--passes 3`` (matrix 28 on) spreads each run's launches and its profiles over the hour: three
passes over the matrix, each after one profile of its own, one launch per run per pass; a run's
error is the median of its launches against the median of the passes' predictions (each pass's
profile alone beside it). ``--profile-each --repeats 3`` (matrices 21-27) profiled right before
a run and launched it three times back to back: one moment of the VM's speed, which drifts by
up to 1.5x within an hour, for the profile and all three launches together.

``--without-profile-part bmm`` prices the same runs by the same profiles with that part of each
profile removed (a copy under OUT/without-PART/): the model as it was before the change that
part feeds, against the same launches and the same measurements. ``--gemm-from-m 16`` does the
same with each profile's GEMM and bmm grids cut to M >= 16, the CPU grid's edge before it
reached one-row GEMMs (its 4x steps stay: the profiles hold no 8x grid to go back to).

Step times are wall clock: run it on an otherwise idle machine (it prints the load average it
saw). ``--repeats 3`` launches each run three times back to back (OUT/NAME, OUT/NAME.r2, ...)
and takes the median of the launches' step times: on this 2-core VM two launches of the same
2-rank run a minute apart measured 706 and 873 ms a step (base-dense, ZeRO-1, 2026-12-06).
Each run profiles one step (``ECDIT_SCALE_PROFILE_STEP``) so that validate's term table
says which term misses. This is a measurement, not a test.

Before each profile and each launch it flushes the page cache's dirty pages (``sync``, its
seconds kept in OUT/settle.json): DeepSpeed writes a launch's checkpoint without fsync (1.3 GB
for a base card on 2 ranks), and the kernel writes it back ~30 s later (``dirty_expire``), on
this 2-core VM possibly during the next launch's first steps (matrix 23's base-ec8 at ep 2:
1,088 ms a step in its first launch, 1,334 and 1,271 in the two that followed). It was not
the drift: in matrix 24 the flushes took 0.0-0.84 s and the launches spread as before
(base-tc8: 1.38, 1.21, 1.09 s). Kept, so that no launch pays for the one before it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ecdit_scale.evaluation.terms import TERMS
from ecdit_scale.files import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_speed_check import speed_check  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MATRIX = ROOT / "bench" / "results" / "cpu-heldout-matrix" / "matrix.yaml"
PROFILED_STEP = "12"


def cli(*args: str, env: dict | None = None, json_out: bool = True) -> dict | None:
    cmd = [sys.executable, "-m", "ecdit_scale", *args] + (["--json"] if json_out else [])
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"error: ecdit-scale {' '.join(args)} failed: {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout) if json_out else None


def own_profile(out: Path, name: str) -> Path:
    return out / f"{name}.profile.yaml"


def without(profile: Path, part: str, out: Path, from_m: int = 0,
            engine_from_toy: bool = False, engine_dp_world1: bool = False) -> Path:
    """``profile`` (an accelerator file, the profile under its ``profile:`` key), or a copy of it
    under OUT/without-PART/ with that part of the profile removed, (``from_m``) its GEMM and
    bmm grids cut to M >= from_m (the grid before it reached one-row GEMMs),
    (``engine_from_toy``) DeepSpeed's engine costs as the probe's old toy priced them (kept in
    the profile's provenance since 2026-12-06), and (``engine_dp_world1``) the data-parallel
    settings' engine costs as a world-1 engine priced them (kept since 2026-12-06)."""
    if not part and not from_m and not engine_from_toy and not engine_dp_world1:
        return profile
    acc = yaml.safe_load(profile.read_text())
    prof = acc.get("profile", acc)
    if part and part not in prof:
        sys.exit(f"error: --without-profile-part {part!r}: {profile} has no such part; it has "
                 f"{', '.join(sorted(prof))}")
    prof.pop(part, None)
    prof.pop("measured", None)  # a summary to_dict writes and from_dict never reads
    if engine_from_toy:
        toy = prof.get("provenance", {}).get("engine_toy")
        if not toy:
            sys.exit(f"error: --engine-from-toy: {profile} records no engine_toy (profiled "
                     "before 2026-12-06, or without the engine probe)")
        prof.update(toy)
    if engine_dp_world1:
        world1 = prof.get("provenance", {}).get("engine_dp_world1")
        if not world1:
            sys.exit(f"error: --engine-dp-world1: {profile} records no engine_dp_world1 "
                     "(profiled before 2026-12-06, with --nproc 1, or without the engine probe)")
        prof.setdefault("deepspeed_engine_by_setting", {}).update(world1)
    for grid in (prof.get(g) for g in ("gemm", "bmm")):
        if grid and from_m:
            per_m = len(grid["n"]) * len(grid["k"])
            keep = [i for i, m in enumerate(grid["m"]) if m >= from_m]
            if not keep:
                sys.exit(f"error: --gemm-from-m {from_m}: {profile}'s grid stops at M "
                         f"{max(grid['m'])}")
            grid["flops_per_s"] = [r for i in keep
                                   for r in grid["flops_per_s"][i * per_m:(i + 1) * per_m]]
            for key in ("m", "batch"):
                if key in grid:
                    grid[key] = [grid[key][i] for i in keep]
    copy = out / "-".join(["without"] + [part] * bool(part)
                          + [f"m-below-{from_m}"] * bool(from_m)
                          + ["engine-from-toy"] * engine_from_toy
                          + ["engine-dp-world1"] * engine_dp_world1) / profile.name
    copy.parent.mkdir(exist_ok=True)
    copy.write_text(yaml.safe_dump(acc, sort_keys=False))
    return copy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="where the runs go")
    ap.add_argument("--profile", type=Path, default=None,
                    help="a profile of this CPU (default: OUT/cpu-profile.yaml, made once)")
    ap.add_argument("--only", default="", help="comma-separated run names (default: all)")
    ap.add_argument("--profile-each", action="store_true",
                    help="profile the CPU (profile --nproc 2) right before each launch and "
                         "price each run by its own profile (OUT/NAME.profile.yaml): the "
                         "VM's speed drifts by up to 1.5x within an hour")
    ap.add_argument("--matrix", type=Path, default=MATRIX,
                    help="the held-out launches (default: the first matrix, "
                         "results/cpu-heldout-matrix/matrix.yaml)")
    ap.add_argument("--without-profile-part", default="", metavar="PART",
                    help="price by copies of the profiles without this top-level part (e.g. "
                         "bmm): the model before the change that part feeds")
    ap.add_argument("--gemm-from-m", type=int, default=0, metavar="M",
                    help="price by copies of the profiles whose GEMM and bmm grids start at "
                         "M (16: the CPU grid before it reached one-row GEMMs)")
    ap.add_argument("--engine-from-toy", action="store_true",
                    help="price by copies of the profiles whose DeepSpeed engine costs are the "
                         "old toy's (provenance.engine_toy): the model before the engine probe "
                         "timed the model's own code")
    ap.add_argument("--repeats", type=int, default=1, metavar="N",
                    help="launch each run N times and take the median launch's step time")
    ap.add_argument("--engine-dp-world1", action="store_true",
                    help="price by copies of the profiles whose data-parallel engine settings "
                         "are a world-1 engine's (provenance.engine_dp_world1): the model before "
                         "the probe timed them on several ranks")
    ap.add_argument("--passes", type=int, default=0, metavar="N",
                    help="N passes over the matrix, each after a profile of its own "
                         "(OUT/passK.profile.yaml), each run launched once per pass: a run's "
                         "prediction is the median over the N profiles, its measurement the "
                         "median over its N launches")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats {args.repeats}: must be at least 1")
    if args.passes < 0 or (args.passes and (args.profile_each or args.profile
                                            or args.repeats > 1)):
        ap.error(f"--passes {args.passes}: a count of at least 1, without --profile-each, "
                 "--profile or --repeats (each pass has its own profile and one launch per run)")
    matrix = yaml.safe_load(args.matrix.read_text())
    names = [n for n in matrix["runs"] if not args.only or n in args.only.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)  # profile --out wants an existing folder
    load_before = os.getloadavg()[0]
    if args.passes:
        launch_passes(args.out, matrix, names, args.passes)
    else:
        launch_repeats(args.out, matrix, names, args.repeats, args.profile_each)
    part = args.without_profile_part
    kw = dict(from_m=args.gemm_from_m, engine_from_toy=args.engine_from_toy,
              engine_dp_world1=args.engine_dp_world1)
    if args.passes:
        rows = [price_passes(args.out, n, args.passes, part, kw) for n in names]
        profile = (f"one per pass ({args.passes} passes, OUT/passK.profile.yaml); each run "
                   "priced by the median over them")
    elif args.profile_each:  # each run against the profile taken just before it
        speeds = read_speeds(args.out)
        rows = [median_launch(cli("validate", *map(str, run_dirs(args.out, n, args.repeats)),
                                  "--profile", str(without(own_profile(args.out, n), part,
                                                           args.out, **kw)))["rows"],
                              speeds, own_profile(args.out, n).name)
                for n in names]
        profile = "each run's own, taken right before it (OUT/NAME.profile.yaml)"
    else:
        profile = args.profile or args.out / "cpu-profile.yaml"
        if not profile.is_file():
            print("profiling this CPU (profile --nproc 2) ...", file=sys.stderr, flush=True)
            cli("profile", "--nproc", "2", "--out", str(profile))
        every = cli("validate", *(str(d) for n in names for d in run_dirs(args.out, n,
                                                                          args.repeats)),
                    "--profile", str(without(Path(profile), part, args.out, **kw)),
                    "--csv", str(args.out / "validation.csv"))["rows"]
        rows = [median_launch(every[i * args.repeats:(i + 1) * args.repeats])
                for i in range(len(names))]
    print(f"load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} cores; runs in {args.out}; profile {profile}"
          + (f", without its {part}" if part else "")
          + (f", its GEMM grids cut to M >= {args.gemm_from_m}" if args.gemm_from_m else "")
          + (", its engine costs the old toy's" if args.engine_from_toy else "")
          + (", its data-parallel engine costs a world-1 engine's" if args.engine_dp_world1
             else ""))
    many = args.repeats > 1 or args.passes > 1
    print(f"{'run':<30} {'measured':>10} {'predicted':>10} {'error':>8}   own steps p10 / p90"
          + ("   launches (each / the median)" if many else ""))
    errors, inside = [], 0
    for r in rows:
        errors.append(r["step_s_error"])
        lo, hi = own_spread(args.out / r["name"])
        inside += lo <= r["step_s_predicted"] / r["step_s_measured"] <= hi
        print(f"{r['name'].split('.r')[0]:<30} {r['step_s_measured'] * 1e3:>8.1f}ms "
              f"{r['step_s_predicted'] * 1e3:>8.1f}ms {r['step_s_error']:>+8.1%}   "
              f"{lo - 1:+.0%} / {hi - 1:+.0%}"
              + (" " * 10 + " ".join(f"{t / r['step_s_measured']:.2f}" for t in r["launches"])
                 if many else ""))
    absolute = [abs(e) for e in errors]
    print(f"held out: {len(errors)} runs, mean |error| {statistics.mean(absolute):.1%}, "
          f"worst {max(absolute):.1%} (target: mean <= 15%, worst <= 30%)")
    print(f"{inside} of {len(rows)} predictions lie within their run's own steps' p10-p90 "
          "(the steps the median is taken over, each / the median): the run's own noise")
    print_at_speed(rows)
    print_passes(rows)
    print_terms(rows)


def pass_profile(out: Path, k: int) -> Path:
    return out / f"pass{k}.profile.yaml"


def profile_now(out: Path, path: Path, what: str) -> None:
    """Profile this CPU into ``path`` (flushed first, the speed check kept after it)."""
    print(f"profiling before {what} ...", file=sys.stderr, flush=True)
    settle(out, path.name)
    cli("profile", "--nproc", "2", "--out", str(path))
    record_speed(out, path.name)


def launch_now(out: Path, matrix: dict, name: str, run: Path, what: str) -> None:
    """Launch run ``name`` into ``run`` (flushed and speed-checked first), profiling one step."""
    print(f"launching {name} ({what}) ...", file=sys.stderr, flush=True)
    settle(out, run.name)
    record_speed(out, run.name)
    cli("launch", *matrix["runs"][name], *matrix["common"], "--out", str(run),
        env={"ECDIT_SCALE_PROFILE_STEP": PROFILED_STEP})
    # the run's end checkpoint is never read here, and 39 launches left 20-27 GB of them
    # (matrix 36's disk filled in its second pass): the step times are in summary.json
    shutil.rmtree(run / "checkpoints", ignore_errors=True)


def launch_repeats(out: Path, matrix: dict, names: list[str], repeats: int,
                   profile_each: bool) -> None:
    """Each run's launches back to back (``--repeats``), with ``--profile-each`` its own
    profile measured just before its first launch (the run is not seen)."""
    for name in names:
        launches = run_dirs(out, name, repeats)
        for i, run in enumerate(launches):
            if (run / "summary.json").is_file():
                continue
            if profile_each and not own_profile(out, name).is_file():
                profile_now(out, own_profile(out, name), name)
            launch_now(out, matrix, name, run, f"{i + 1} of {len(launches)}")


def launch_passes(out: Path, matrix: dict, names: list[str], passes: int) -> None:
    """``--passes``: pass k profiles the CPU (unless OUT/passK.profile.yaml exists), then
    launches each run once more (OUT/NAME for the first pass, OUT/NAME.rK after), so that a
    run's launches and its profiles spread over the hour the matrix takes, where
    ``--profile-each`` meets the VM's speed of one moment (matrix 27's micro-dense: profiled
    and launched three times back to back at a speed check of 0.107 s, 39% slower than its
    prediction; the same launch measured 1% from it on the same code a day later)."""
    for k in range(1, passes + 1):
        todo = [n for n in names if not (run_dirs(out, n, k)[-1] / "summary.json").is_file()]
        if todo and not pass_profile(out, k).is_file():
            profile_now(out, pass_profile(out, k), f"pass {k}")
        for name in todo:
            launch_now(out, matrix, name, run_dirs(out, name, k)[-1], f"pass {k} of {passes}")


def price_passes(out: Path, name: str, passes: int, part: str, kw: dict) -> dict:
    """Run ``name``'s row under ``--passes``: its launches priced by every pass's profile; the
    prediction the median over the profiles (the profile that gives it prices the terms), the
    measurement the median over the launches. Kept beside it: the first pass alone (its
    profile and its launch: a one-moment snapshot) and each launch against its own pass's
    profile (the median of those errors)."""
    launches = run_dirs(out, name, passes)
    by_profile = [cli("validate", *map(str, launches), "--profile",
                      str(without(pass_profile(out, k), part, out, **kw)))["rows"]
                  for k in range(1, passes + 1)]
    middle = sorted(by_profile, key=lambda rows: rows[0]["step_s_predicted"])[(passes - 1) // 2]
    row = median_launch(middle)
    own = [by_profile[k][k]["step_s_measured"] / by_profile[k][k]["step_s_predicted"] - 1.0
           for k in range(passes)]
    return {**row, "first_pass_error": own[0], "own_pass_error": statistics.median(own),
            "predictions": [rows[0]["step_s_predicted"] for rows in by_profile]}


def print_passes(rows: list[dict]) -> None:
    """Under ``--passes``: each run's error as one moment would have measured it (the first
    pass's profile and launch) and each launch against its own pass's profile, beside the
    medians' error above."""
    if not rows or "first_pass_error" not in rows[0]:
        return
    print("the same launches read other ways: the first pass alone (its profile, its launch); "
          "each launch against its own pass's profile (median); the passes' predictions / "
          "their median")
    for r in rows:
        mid = statistics.median(r["predictions"])
        print(f"{r['name'].split('.r')[0]:<30} {r['first_pass_error']:>+8.1%} "
              f"{r['own_pass_error']:>+8.1%}   "
              + " ".join(f"{p / mid:.2f}" for p in r["predictions"]))
    for key, label in (("first_pass_error", "first pass alone"),
                       ("own_pass_error", "each launch, own pass")):
        absolute = [abs(r[key]) for r in rows]
        print(f"{label}: {len(rows)} runs, mean |error| {statistics.mean(absolute):.1%}, "
              f"worst {max(absolute):.1%}")


def run_dirs(out: Path, name: str, repeats: int) -> list[Path]:
    """The launches of run ``name``: OUT/NAME, then OUT/NAME.r2 ... OUT/NAME.rN."""
    return [out / name] + [out / f"{name}.r{i}" for i in range(2, repeats + 1)]


SPEEDS = "speed.json"  # OUT/speed.json: cpu_speed_check's seconds, by profile or launch name
SETTLES = "settle.json"  # OUT/settle.json: seconds each flush took, by profile or launch name


def read_seconds(path: Path) -> dict[str, float]:
    return json.loads(path.read_text()) if path.is_file() else {}


def keep_seconds(path: Path, key: str, seconds: float) -> None:
    """Add ``key``: ``seconds`` to the JSON record at ``path`` (written atomically)."""
    record = read_seconds(path)
    record[key] = seconds
    atomic_write_text(path, json.dumps(record, indent=1))


def settle(out: Path, key: str) -> None:
    """Flush dirty pages before a timed profile or launch (see the module) and keep how long
    that took under ``key``: the writeback a previous launch left."""
    t0 = time.perf_counter()
    os.sync()
    keep_seconds(out / SETTLES, key, time.perf_counter() - t0)


def read_speeds(out: Path) -> dict[str, float]:
    return read_seconds(out / SPEEDS)


def record_speed(out: Path, key: str) -> None:
    """Time the speed check now (after a profile, before a launch) and keep it under ``key``."""
    keep_seconds(out / SPEEDS, key, speed_check())


def median_launch(rows: list[dict], speeds: dict[str, float] | None = None,
                  profile_key: str = "") -> dict:
    """validate's row of the launch with the median step time (of an odd count; the lower
    middle of an even one), with every launch's step time ("launches"), per term of the
    profiled steps the median over the launches ("terms_measured"), and where the speed check
    timed the profile and every launch, the error at each launch's speed ("at_speed_error":
    the median over launches of measured / (predicted x the check's seconds at that launch /
    its seconds right after the profile) - 1)."""
    speeds = speeds or {}
    at_speed = None
    keys = [Path(r["source"]).name for r in rows]
    if profile_key in speeds and all(k in speeds for k in keys):
        at_speed = statistics.median(
            r["step_s_measured"] / (r["step_s_predicted"] * speeds[k] / speeds[profile_key])
            for r, k in zip(rows, keys, strict=True)) - 1.0
    times = [r["step_s_measured"] for r in rows]
    middle = sorted(rows, key=lambda r: r["step_s_measured"])[(len(rows) - 1) // 2]
    measured = {t: statistics.median(r[f"{t}_s_measured"] for r in rows)
                for t in TERMS if all(r.get(f"{t}_s_measured") is not None for r in rows)}
    return {**middle, "launches": times, "terms_measured": measured, "at_speed_error": at_speed}


def print_at_speed(rows: list[dict]) -> None:
    """Each run's error with its prediction scaled by the machine's speed at each launch
    (``cpu_speed_check``), where every launch of the run was checked."""
    known = [r for r in rows if r["at_speed_error"] is not None]
    if not known:
        return
    print("at each launch's speed (the prediction x the speed check's seconds before that "
          "launch / right after the profile; median over the launches):")
    for r in known:
        print(f"{r['name'].split('.r')[0]:<30} {r['at_speed_error']:>+8.1%}")
    absolute = [abs(r["at_speed_error"]) for r in known]
    print(f"at launch speed: {len(known)} runs, mean |error| {statistics.mean(absolute):.1%}, "
          f"worst {max(absolute):.1%}")


def print_terms(rows: list[dict]) -> None:
    """Each run's terms in ms, predicted -> measured, the measured one the median over its
    launches' profiled steps: one profiled step of one launch scatters by 20-60% per term on
    this VM (matrix 22: nano-ec8's model all-to-all 1.9-9.5 ms over three launches)."""
    if not any(r["terms_measured"] for r in rows):
        return
    print("terms (ms), predicted -> measured (median over the launches' profiled steps; "
          "host time with the profiler's cost; rest = the median step less the others)")
    for r in rows:
        print(f"{r['name'].split('.r')[0]:<30} " + " ".join(
            f"{t} {(r.get(f'{t}_s_predicted') or 0.0) * 1e3:.1f}->{v * 1e3:.1f}"
            for t, v in r["terms_measured"].items()))


def own_spread(run: Path) -> tuple[float, float]:
    """p10 and p90 of a run's timed steps (after the first two, the profiled one left out) over
    their median: how far the run's own steps scatter around the step time validate uses."""
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    times = [s["step_s"] for s in steps if s["step"] > 2 and s["step"] != int(PROFILED_STEP)]
    deciles = statistics.quantiles(times, n=10)
    median = statistics.median(times)
    return deciles[0] / median, deciles[-1] / median


if __name__ == "__main__":
    main()
