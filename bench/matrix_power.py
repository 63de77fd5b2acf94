"""What a 13-run CPU held-out matrix can show, tested on planted truth laid out like the real
ones (issue 19): the scored errors of matrices 21-25 (one model) give the bias and spread; draws
of 13 runs from a normal law with that spread, with and without the bias, say how often the
worst |error| stays <= 30%; and matrix 25's stated test (its micro-batch >= 32 runs at least 5
points less optimistic than its <= 16 runs, 5 against 8 runs) is replayed with no true
difference and with the observed one, for its false-positive rate and its power.

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


def errors(matrix: int) -> list[tuple[int, float]]:
    """(micro-batch, signed error %) of each run of a matrix's result-profile-each.txt."""
    text = (RESULTS / f"cpu-heldout-matrix-{matrix}" / "result-profile-each.txt").read_text()
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


if __name__ == "__main__":
    main()
