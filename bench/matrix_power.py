"""What a 13-run CPU held-out matrix can show, tested on planted truth laid out like the real
ones (issue 19): the scored errors of matrices 21-25 (one model) give the bias and spread; draws
of 13 runs from a normal law with that spread, with and without the bias, say how often the
worst |error| stays <= 30%; and matrix 25's stated test (its micro-batch >= 32 runs at least 5
points less optimistic than its <= 16 runs, 5 against 8 runs) is replayed with no true
difference and with the observed one, for its false-positive rate and its power.

Then what one matrix meeting both bars (mean |error| <= 15% and worst <= 30%, as matrix 26 did
after the one-arena change) can say: how often 13 runs drawn from matrices 21-25's own errors
(the old model's, heavy tail and all: resampled) or from the normal law above meet both, and
the spread and bias of matrices 26-29 (the one-arena model; 28-29 measured in three passes)
beside theirs, and how often 13 runs resampled from those matrices' own errors meet both bars;
and the same for matrices 30-31 (the trainer probe's model) with and without the probe, and
for matrices 32 (the all-to-alls priced by their own fit), 33 (each collective call priced
at the calls the profile timed) and 35 (the trainer probe's median of three launches) with and
without their change, and matrices 34, 36, 37 and 38 (replications of the model as shipped), pooled
with 30-31 as each was scored.

    python bench/matrix_power.py
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROW = re.compile(r"^(\S+-mb(\d+)\S*)\s+[\d.]+ms\s+[\d.]+ms\s+([+-][\d.]+)%")
DRAWS = 100_000
# the matrices run since each CPU rank keeps to one malloc arena (28-29 measured in three passes)
ONE_ARENA = (26, 27, 28, 29)
# the matrices run since the profile launches the trainer (evaluation/trainer_probe.py), each
# also priced without it on the same launches and profiles
TRAINER_PROBE = (30, 31)
WITHOUT_PROBE = "result-passes-without-trainer.txt"
# the matrices chosen before a change to the model (how the collectives are priced, 32-33; how
# the trainer probe reads its launches, 35), each also priced by the model before it (trainer
# term re-derived: bench/rederive_trainer.py): (matrix, the change, the model before it, the
# file of the same launches scored by the model before)
MODEL_CHANGES = (
    (32, "with the all-to-all's own fit", "the same launches by the all-reduce's fit",
     "result-passes-without-a2a-fit.txt"),
    (33, "with each call priced at the calls timed", "the same launches by the two-point fits",
     "result-passes-without-timed-calls.txt"),
    (35, "with the median of three probe launches",
     "the same launches by each rank count's first probe launch",
     "result-passes-first-probe-launch.txt"),
)
# matrices chosen to replicate the model as shipped, nothing changed (profiles made by it)
REPLICATIONS = (34, 36, 37, 38)
RESULT_FILES = ("result-profile-each.txt", "result-passes.txt")


def result_file(matrix: int) -> Path | None:
    """A matrix's scored result: ``--profile-each``'s or (matrix 28 on) ``--passes``'."""
    found = [RESULTS / f"cpu-heldout-matrix-{matrix}" / name for name in RESULT_FILES]
    return next((f for f in found if f.is_file()), None)


def errors(matrix: int, name: str = "") -> list[tuple[int, float]]:
    """(micro-batch, signed error %) of each run of a matrix's scored result, or of its file
    ``name`` (the runs' first table: under ``--passes`` the medians' errors, not the first
    pass's)."""
    path = RESULTS / f"cpu-heldout-matrix-{matrix}" / name if name else result_file(matrix)
    text = path.read_text()
    return [(int(m.group(2)), float(m.group(3)))
            for m in map(ROW.match, text.splitlines()) if m]


def main() -> None:
    rng = np.random.default_rng(0)
    pooled = [e for m in range(21, 26) for _, e in errors(m)]
    bias, sd = statistics.median(pooled), statistics.stdev(pooled)
    print(f"matrices 21-25: {len(pooled)} runs, median error {bias:+.1f}%, sd {sd:.1f} points")
    for planted in (0.0, bias):
        worst = np.abs(rng.normal(planted, sd, (DRAWS, 13))).max(axis=1)
        print(f"  planted bias {planted:+.1f}%: worst of 13 median {np.median(worst):.1f}%, "
              f"P(worst <= 30%) {np.mean(worst <= 30):.2f}")
    runs = errors(25)
    big = [e for mb, e in runs if mb >= 32]
    small = [e for mb, e in runs if mb < 32]
    observed = statistics.mean(small) - statistics.mean(big)
    within = statistics.stdev([e - statistics.mean(g) for g in (big, small) for e in g])
    print(f"matrix 25: {len(small)} runs at micro-batch <= 16 minus {len(big)} at >= 32: "
          f"{observed:+.1f} points (within-group sd {within:.1f})")
    for spread in (within, sd):
        for planted in (0.0, observed):
            d = (rng.normal(planted, spread, (DRAWS, len(small))).mean(axis=1)
                 - rng.normal(0.0, spread, (DRAWS, len(big))).mean(axis=1))
            print(f"  sd {spread:.1f}, planted difference {planted:+.1f}: P(>= 5 points) "
                  f"{np.mean(d >= 5):.2f}, P(>= observed) {np.mean(d >= observed):.3f}")
    both_bars(rng, np.array(pooled), bias, sd)


def both_bars(rng: np.random.Generator, pooled: np.ndarray, bias: float, sd: float) -> None:
    """How often 13 runs meet both bars under the old model's errors, against the matrices run
    since the one-arena change."""
    def rate(draws: np.ndarray) -> float:
        a = np.abs(draws)
        return float(np.mean((a.mean(axis=1) <= 15) & (a.max(axis=1) <= 30)))

    resampled = rng.choice(pooled, size=(DRAWS, 13))
    print(f"both bars on 13 runs: matrices 21-25's errors resampled {rate(resampled):.2f}, "
          f"normal (bias {bias:+.1f}%, sd {sd:.1f}) {rate(rng.normal(bias, sd, (DRAWS, 13))):.2f}"
          f"; met by {sum(passes(errors(m)) for m in range(21, 26))} of matrices 21-25")
    since = {m: errors(m) for m in ONE_ARENA if result_file(m) is not None}
    sds = resampled.std(axis=1, ddof=1)  # to set each matrix's spread against the old model's
    for m, runs in since.items():
        e, sd_m = [x for _, x in runs], statistics.stdev(x for _, x in runs)
        print(f"matrix {m}: {len(e)} runs, median error {statistics.median(e):+.1f}%, sd "
              f"{sd_m:.1f} points, mean |error| {statistics.mean(map(abs, e)):.1f}%, worst "
              f"{max(map(abs, e)):.1f}%, both bars {'met' if passes(runs) else 'missed'}")
        print(f"  13 runs of matrices 21-25 spread as little (sd <= {sd_m:.1f}) in "
              f"{np.mean(sds <= sd_m):.2f} of draws")
    if len(since) > 1:  # the one-arena model's own errors, resampled the same way
        now = np.array([x for runs in since.values() for _, x in runs])
        print(f"matrices {min(since)}-{max(since)} (one model since the one-arena change): "
              f"{len(now)} runs, median {np.median(now):+.1f}%, sd {now.std(ddof=1):.1f}; "
              f"13 of them resampled meet both bars {rate(rng.choice(now, (DRAWS, 13))):.2f} "
              f"of the time")

    for label, name in (("with the trainer probe", ""), ("the same launches without it",
                                                         WITHOUT_PROBE)):
        got = np.array([x for m in TRAINER_PROBE for _, x in errors(m, name)])
        print(f"matrices {TRAINER_PROBE[0]}-{TRAINER_PROBE[-1]} {label}: {len(got)} runs, "
              f"median {np.median(got):+.1f}%, sd {got.std(ddof=1):.1f}; 13 of them resampled "
              f"meet both bars {rate(rng.choice(got, (DRAWS, 13))):.2f} of the time (never "
              f"worse than their worst), 13 from a normal law of that median and sd "
              f"{rate(rng.normal(np.median(got), got.std(ddof=1), (DRAWS, 13))):.2f}")
    scored = list(TRAINER_PROBE)
    for matrix, change, before, before_file in MODEL_CHANGES:
        if result_file(matrix) is None:
            continue
        scored.append(matrix)
        for label, name in ((change, ""), (before, before_file)):
            got = np.array([x for _, x in errors(matrix, name)])
            print(f"matrix {matrix} {label}: {len(got)} runs, median {np.median(got):+.1f}%, sd "
                  f"{got.std(ddof=1):.1f}, mean |error| {np.abs(got).mean():.1f}%, worst "
                  f"{np.abs(got).max():.1f}%")
    for matrix in REPLICATIONS:
        if result_file(matrix) is None:
            continue
        scored.append(matrix)
        got = np.array([x for _, x in errors(matrix)])
        print(f"matrix {matrix} (a replication, nothing changed): {len(got)} runs, median "
              f"{np.median(got):+.1f}%, sd {got.std(ddof=1):.1f}, mean |error| "
              f"{np.abs(got).mean():.1f}%, worst {np.abs(got).max():.1f}%")
    now = np.array([x for m in scored for _, x in errors(m)])
    print(f"matrices {min(scored)}-{max(scored)} as each was scored: {len(now)} runs, median "
          f"{np.median(now):+.1f}%, sd {now.std(ddof=1):.1f}; 13 from a normal law of that "
          f"median and sd meet both bars "
          f"{rate(rng.normal(np.median(now), now.std(ddof=1), (DRAWS, 13))):.2f} of the time")


def passes(runs: list[tuple[int, float]]) -> bool:
    """Whether a matrix's runs (``errors``) meet both bars."""
    a = [abs(e) for _, e in runs]
    return statistics.mean(a) <= 15 and max(a) <= 30


if __name__ == "__main__":
    main()
