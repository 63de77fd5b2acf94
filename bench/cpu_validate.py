"""The step-time model against CPU runs it never saw: launch a 1-rank dense run and a 2-rank
expert-choice run (ep 2, ZeRO-2), measure a quick profile of this CPU right after them, and
print ``validate``'s profile-only and leave-one-out errors (measured / predicted - 1).

    python bench/cpu_validate.py [--out DIR] [--steps 30]

Run it on an otherwise idle machine: the runs' step times are wall clock, and on 2 cores any
other process is measured with them (the script prints the load average it saw). This is a
measurement, not a test; the tests check the pipeline only (tests/test_profile.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "ecdit_scale", *args, "--json"], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: ecdit-scale {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="where the runs go (default: a "
                    "temporary folder)")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="cpu-validate-"))
    common = ("--steps", str(args.steps), "--limit", "512", "--checkpoint-every", "1000",
              "--no-track-memory", "--seed", "0")
    runs = {
        "dense-w1": ("nano-dense", "--nproc", "1", "--micro-batch", "8"),
        "ec8-ep2-z2": ("nano-ec8", "--nproc", "2", "--ep", "2", "--zero", "2",
                       "--micro-batch", "4"),
    }
    load_before = os.getloadavg()[0]
    for name, run_args in runs.items():
        if not (out / name / "summary.json").is_file():
            print(f"launching {name} ...", file=sys.stderr, flush=True)
            cli("launch", *run_args, *common, "--out", str(out / name))
    print("profiling this CPU ...", file=sys.stderr, flush=True)
    profile = out / "cpu-profile.yaml"
    cli("profile", "--quick", "--nproc", "2", "--out", str(profile))
    report = cli("validate", *(str(out / n) for n in runs), "--profile", str(profile),
                 "--csv", str(out / "validation.csv"))
    print(f"load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} cores; runs in {out}")
    print(f"{'run':<12} {'measured':>10} {'profile-only':>13} {'error':>8} {'LOO':>10} "
          f"{'error':>8}  calibrated on")
    for r in report["rows"]:
        loo = r.get("step_s_loo")
        print(f"{r['name']:<12} {r['step_s_measured'] * 1e3:>8.1f}ms "
              f"{r['step_s_predicted'] * 1e3:>11.1f}ms {r['step_s_error']:>+8.1%} "
              + (f"{loo * 1e3:>8.1f}ms {r['step_s_loo_error']:>+8.1%}" if loo else
                 f"{'n/a':>10} {'':>8}")
              + f"  {r.get('calibrated_on') or '-'}")


if __name__ == "__main__":
    main()
