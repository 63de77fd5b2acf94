"""How much of a CPU held-out matrix's error is the VM's drift, not the model (issue 19).

Two readings of runs already launched, nothing launched here:

- ``--spread OUT``: a ``--profile-each`` matrix's runs (OUT/NAME, one profile per run,
  OUT/NAME.profile.yaml) each priced by every profile of the matrix, all taken within its hour
  on the same machine: the spread of one run's predictions (sd / mean) is what the moment of
  profiling alone moves a prediction by;
- ``--relaunch OUT OUT2``: the same matrix launched again later into OUT2 (one launch per run,
  ``cpu_heldout_matrix.py --repeats 1``): each run's step time there over OUT's (the median of
  OUT's launches), and both against OUT's own-profile prediction.

- ``--per-kernel FIT... --on OUT...``: what the misses have in common. Fitted on the
  ``--profile-each`` matrices FIT (weighted least squares on measured / predicted - 1), one
  number of seconds per kernel the step-time model counts (``StepTime.kernels``) that the
  trainer spends over its price, then applied unchanged to the ``--passes`` matrices OUT
  (OUT/passK.profile.yaml; each run's median prediction over the passes, its median launch):
  their errors with and without it. A reading for the next change, not part of the model.

    python bench/matrix_drift.py --spread /work/runs/m27
    python bench/matrix_drift.py --relaunch /work/runs/m27 /work/runs/m27b
    python bench/matrix_drift.py --per-kernel /work/runs/m2{2,3,4,5} --on /work/runs/m2{8,9}

Step times are ``validate``'s (the run's median timed step, the profiled one left out);
predictions are ``validate --profile``'s (``evaluation.predict.profile_prediction``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecdit_scale.evaluation.predict import profile_prediction  # noqa: E402
from ecdit_scale.evaluation.rows import row_from_run  # noqa: E402
from ecdit_scale.planner.hardware import get_accelerator  # noqa: E402

SUFFIX = ".profile.yaml"


def runs_with_profiles(out: Path) -> list[str]:
    names = sorted(p.name[:-len(SUFFIX)] for p in out.glob(f"*{SUFFIX}"))
    if not names:
        sys.exit(f"error: {out}: no NAME{SUFFIX} files (a --profile-each matrix's folder)")
    return names


def launches(out: Path, name: str) -> list[Path]:
    """OUT/NAME and its repeats OUT/NAME.r2, OUT/NAME.r3, ... that finished."""
    found = [out / name] + sorted(out.glob(f"{name}.r[0-9]*"))
    return [d for d in found if (d / "summary.json").is_file()]


def measured(out: Path, name: str) -> float:
    """The median over a run's launches of each launch's median step (seconds)."""
    times = [row_from_run(d).step_s_measured for d in launches(out, name)]
    if not times:
        sys.exit(f"error: {out / name}: no finished launch (summary.json)")
    return statistics.median(times)


def spread(out: Path) -> None:
    names = runs_with_profiles(out)
    accs = {n: get_accelerator(str(out / f"{n}{SUFFIX}")) for n in names}
    sds = []
    print(f"{'run':<34} {'own':>8} {'all profiles: min-max':>22} {'median':>8} {'sd':>6} "
          f"{'measured':>9}")
    for n in names:
        row = row_from_run(out / n)
        preds = np.array([profile_prediction(row, a).total_s for a in accs.values()])
        own = profile_prediction(row, accs[n]).total_s
        sd = float(preds.std() / preds.mean())
        sds.append(sd)
        print(f"{n:<34} {own * 1e3:7.1f}ms {preds.min() * 1e3:9.1f}-{preds.max() * 1e3:7.1f}ms "
              f"{np.median(preds) * 1e3:7.1f}ms {sd:6.1%} {measured(out, n) * 1e3:8.1f}ms")
    print(f"{len(names)} runs x {len(accs)} profiles: median sd of one run's predictions "
          f"{statistics.median(sds):.1%}")


def relaunch(out: Path, again: Path) -> None:
    names = runs_with_profiles(out)
    print(f"{'run':<34} {'then':>9} {'again':>9} {'ratio':>6} {'predicted':>10} "
          f"{'error then':>10} {'error again':>11}")
    ratios, then_err, again_err = [], [], []
    for n in names:
        then, now = measured(out, n), measured(again, n)
        pred = profile_prediction(row_from_run(out / n),
                                  get_accelerator(str(out / f"{n}{SUFFIX}"))).total_s
        ratios.append(now / then)
        then_err.append(then / pred - 1)
        again_err.append(now / pred - 1)
        print(f"{n:<34} {then * 1e3:7.1f}ms {now * 1e3:7.1f}ms {now / then:6.2f} "
              f"{pred * 1e3:8.1f}ms {then_err[-1]:+10.1%} {again_err[-1]:+11.1%}")
    r = np.array(ratios)
    print(f"again / then: median {np.median(r):.3f}, sd of the log ratio "
          f"{np.log(r).std():.1%}, range {r.min():.2f}-{r.max():.2f}")
    for label, e in (("then", then_err), ("again", again_err)):
        print_errors(f"against the own-profile predictions, {label}: ", e)


def print_errors(prefix: str, errors: list[float]) -> None:
    a = np.abs(errors)
    print(f"{prefix}mean |error| {a.mean():.1%}, worst {a.max():.1%}, median "
          f"{np.median(errors):+.1%}, sd {np.std(errors, ddof=1):.1%}")


def own_profile_rows(out: Path) -> list[tuple[float, float, float]]:
    """(measured, predicted, kernels) of each run of a --profile-each matrix."""
    rows = []
    for n in runs_with_profiles(out):
        st = profile_prediction(row_from_run(out / n), get_accelerator(str(out / f"{n}{SUFFIX}")))
        rows.append((measured(out, n), st.total_s, float(st.kernels)))
    return rows


def passes_rows(out: Path) -> list[tuple[str, float, float, float]]:
    """(name, measured, predicted, kernels) of each run of a --passes matrix: the median
    launch, the median prediction over the passes' profiles."""
    accs = [get_accelerator(str(p)) for p in sorted(out.glob(f"pass*{SUFFIX}"))]
    if not accs:
        sys.exit(f"error: {out}: no passK{SUFFIX} files (a --passes matrix's folder)")
    names = sorted(d.name for d in out.iterdir()
                   if d.is_dir() and ".r" not in d.name and (d / "summary.json").is_file())
    rows = []
    for n in names:
        row = row_from_run(out / n)
        st = sorted((profile_prediction(row, a) for a in accs),
                    key=lambda x: x.total_s)[(len(accs) - 1) // 2]
        rows.append((n, measured(out, n), st.total_s, float(st.kernels)))
    return rows


def per_kernel(fit: list[Path], on: list[Path]) -> None:
    data = [r for out in fit for r in own_profile_rows(out)]
    meas, pred, kern = (np.array(c) for c in zip(*data, strict=True))
    w = 1.0 / meas  # relative errors: each run counts alike
    s = float(np.sum(w * w * kern * (meas - pred)) / np.sum(w * w * kern * kern))
    print(f"fitted on {len(data)} runs of {', '.join(p.name for p in fit)}: "
          f"{s * 1e6:.1f} us per counted kernel over the model's price")
    for out in on:
        print(f"{out.name} (--passes): error with the model as it is -> with {s * 1e6:.1f} us "
              "per kernel added")
        e0, e1 = [], []
        for n, m, p, k in passes_rows(out):
            e0.append(m / p - 1)
            e1.append(m / (p + s * k) - 1)
            print(f"  {n:<34} kernels {k:6.0f} +{s * k * 1e3:5.1f}ms  {e0[-1]:+7.1%} -> "
                  f"{e1[-1]:+7.1%}")
        for label, e in (("as it is", e0), ("per kernel added", e1)):
            print_errors(f"  {label:<17} ", e)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--spread", type=Path, metavar="OUT",
                       help="a --profile-each matrix's folder: each run by every profile")
    group.add_argument("--relaunch", type=Path, nargs=2, metavar=("OUT", "OUT2"),
                       help="a matrix's folder and the same matrix launched again")
    group.add_argument("--per-kernel", type=Path, nargs="+", metavar="FIT",
                       help="--profile-each matrices' folders to fit the per-kernel excess on")
    ap.add_argument("--on", type=Path, nargs="+", default=[], metavar="OUT",
                    help="with --per-kernel: --passes matrices' folders to apply it to")
    args = ap.parse_args()
    if args.on and not args.per_kernel:
        ap.error("--on goes with --per-kernel")
    if args.spread:
        spread(args.spread)
    elif args.relaunch:
        relaunch(*args.relaunch)
    else:
        per_kernel(args.per_kernel, args.on)


if __name__ == "__main__":
    main()
