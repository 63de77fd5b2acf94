"""What the trainer's own steps take over everything else a profile prices, per counted kernel.

The profile's other probes each time one part of a step apart: the operators, the model's
own code in plain torch (``host_probe``), autograd per tensor, DeepSpeed's engine over plain
torch (``engine_probe``), the optimizer, the collectives. A launch is more than their sum, and
on this 2-core CPU it was more by a cost per kernel: priced by those probes alone, held-out
matrices 26-29 (52 launches) were optimistic by a median +12.4%, most where the step is
host-bound, and by more on two ranks than on one. One constant of 18.0 us per counted kernel,
fitted on matrices 22-25, took the later matrices 28 and 29 inside the issue's bars (bench/
results/cpu-heldout-matrix-29/per-kernel.txt). Plain torch's forward + backward of the same
cards priced within a few us per kernel (bench/host_excess.py), so the cost is in the trainer
and not in the model's code as such: its engine, its loop, its rank processes sharing the host.
Where a profiled step sees it: inside the ops. In matrices 30-31 the term tables, with this
cost charged on the ops' launches (the memory-bound ops' term on a CPU), put predicted and
measured memory-bound ops and "rest" on both sides (the rest over its measurement in 9 of 26
runs, the memory-bound ops under in 14); charged to the rest instead, 21 and 25 of 26. So each
op's host work costs more in the trainer's ranks than in the single-process host probe.

That constant was this VM's, fitted on runs. So ``profile`` measures it on the user's device
without a run of theirs: it launches the trainer (``ecdit-scale launch``, the trainer's own
processes, engine and loop) at the host probe's size (``host_probe.PROBE_SIZE``: compute
negligible beside the host's work) on one rank and on the profile's ``--nproc`` ranks
(expert-choice nano card, ep = ranks where they divide its experts, ZeRO-1, micro-batch 1,
AdamW, the trainer's defaults otherwise), prices each launch with the profile measured so
far (``validate``'s own ``predict.profile_prediction``), and keeps

    max(0, measured median step - predicted step) / kernels the step-time model counts

per rank count, launched ``PROBE_REPEATS`` times, interleaved (1, N, 1, N, ... ranks), keeping
each rank count's median: ``DeviceProfile.trainer_s_per_kernel``, which the step-time model
charges on every counted kernel of a layout at that many ranks (``step_time._profiled_compute``).
It is a cost per kernel measured at one size and on one model, charged at every size and model:
what the launches' misses do not scale with the kernels (a cost per step, per byte) is not in it.
Each launch's measurement, prediction and kernels stay in the profile's provenance.

Why three launches: one launch times ~40 steps, under a second of stepping, and this VM's speed
drifts within minutes. In matrix 34 the one reading of the one-rank cost ranged 6.1-16.0 us per
kernel across the three passes' profiles (4.5-33.7 in matrix 33's hour), the passes'
predictions of one run spread by up to 1.4x, and the sign of the matrix's error followed the
reading. The median of three launches ~20 s apart samples about a minute of the VM; the first
launch of each rank count is the single launch the probe made before (same arguments, same
place in the profile), so both readings come from one profile (``launches[N]["each"]``).
Matrix 35 (chosen before this was built): the passes' spread narrowed, 1.135x against 1.174x by
the first launch alone; the error did not (17.6% / 33.0% against 18.3% / 35.4%). ``profile
--trainer-launches N`` sets the count (the GPU session's script makes one: a GPU launch costs
~20-30 s of a 600 s lease).

    python -m ecdit_scale.evaluation.trainer_probe --device cpu --nproc 2 --profile P.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..config import FFNKind
from ..errors import ConfigError
from .host_probe import PROBE_CARDS, PROBE_SIZE

PROBE_STEPS = 40  # the median step is taken after the first two (``rows.row_from_run``)
PROBE_REPEATS = 3  # launches per rank count, interleaved; their median residual is kept
MAX_LAUNCHES = 9  # profile --trainer-launches
PROBE_MICRO_BATCH = 1
PROBE_ZERO = 1
PROBE_CARD = PROBE_CARDS[FFNKind.EXPERT_CHOICE]  # the host probe's expert-choice card
LAUNCH_TIMEOUT_S = 600


def launch_args(ranks: int, out: Path, device: str = "cpu") -> list[str]:
    """``ecdit-scale launch``'s arguments for the probe's launch on ``ranks`` ranks of
    ``device`` (the profile's)."""
    from ..planner.cards import load_card_or_name

    override = ",".join(f"{k}={v}" for k, v in PROBE_SIZE.items())
    # expert parallelism over the ranks where it divides the experts (else over a divisor)
    ep = math.gcd(ranks, load_card_or_name(PROBE_CARD).ffn.num_experts)
    return ["launch", PROBE_CARD, "--override", override, "--device", device,
            "--nproc", str(ranks),
            "--ep", str(ep), "--zero", str(PROBE_ZERO), "--micro-batch",
            str(PROBE_MICRO_BATCH), "--steps", str(PROBE_STEPS), "--limit", "512",
            "--no-checkpoints", "--no-track-memory", "--seed", "0", "--out", str(out), "--json"]


def check_launches(n: int) -> None:
    """``profile --trainer-launches``: one line where it is no count in 1..MAX_LAUNCHES."""
    if not 1 <= n <= MAX_LAUNCHES:
        raise ConfigError(f"--trainer-launches {n}: must be in 1..{MAX_LAUNCHES}")


def launch(ranks: int, out: Path, device: str = "cpu") -> Path:
    """Launch the probe's run into ``out`` (a fresh child process: DeepSpeed's state is
    process-wide) and return it; a failed launch is one ConfigError naming its last line."""
    cmd = [sys.executable, "-m", "ecdit_scale", *launch_args(ranks, out, device)]
    env = {k: v for k, v in os.environ.items() if k != "ECDIT_SCALE_PROFILE_STEP"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
                              env=env)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"the trainer probe's launch on {ranks} rank(s) took over "
                          f"{LAUNCH_TIMEOUT_S} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise ConfigError(f"the trainer probe's launch on {ranks} rank(s) failed "
                          f"(exit {done.returncode}): {last}")
    return out


def residual(run_dir: Path, acc: Any) -> dict[str, float]:
    """The launch in ``run_dir`` priced by ``acc``'s profile: its measured median step, the
    predicted step, the kernels the step-time model counts and the host seconds per kernel
    over the prediction (0 where the prediction already covers the measurement)."""
    from .predict import profile_prediction
    from .rows import row_from_run

    row = row_from_run(run_dir)
    if not row.step_s_measured:
        raise ConfigError(f"{run_dir}: the trainer probe's launch recorded no step time")
    st = profile_prediction(row, acc)
    kernels = float(st.kernels)
    if kernels <= 0:
        raise ConfigError(f"{run_dir}: the step-time model counts no kernels for the probe")
    measured, predicted = float(row.step_s_measured), float(st.total_s)
    return {"measured_s": measured, "predicted_s": predicted, "kernels": kernels,
            "s_per_kernel": max(0.0, measured - predicted) / kernels}


def rank_counts(nproc: int) -> list[int]:
    return sorted({1, nproc})


def launch_order(nproc: int, repeats: int = PROBE_REPEATS) -> list[tuple[int, int]]:
    """(ranks, repeat) in launch order: each round launches every rank count once."""
    return [(ranks, i) for i in range(repeats) for ranks in rank_counts(nproc)]


def median_record(launches: list[dict[str, float]]) -> dict[str, Any]:
    """One rank count's launches as one record: the median measured step and residual (the
    prediction and kernels are the same for every launch of one profile), each launch kept."""
    return {"measured_s": statistics.median(x["measured_s"] for x in launches),
            "predicted_s": launches[0]["predicted_s"], "kernels": launches[0]["kernels"],
            "s_per_kernel": statistics.median(x["s_per_kernel"] for x in launches),
            "each": [dict(x) for x in launches]}


def measure_trainer(nproc: int, acc: Any, report: Any = lambda _: None,
                    device: str = "cpu",
                    repeats: int = PROBE_REPEATS) -> tuple[dict[int, float], dict[str, Any]]:
    """({ranks: host seconds per counted kernel}, {ranks: each launch's record}) on
    ``device`` for the profile in ``acc`` (its ``trainer_s_per_kernel`` must be empty: the
    launches are priced without it): the median of ``repeats`` launches per rank count."""
    if acc.profile is None or acc.profile.trainer_s_per_kernel:
        raise ValueError("the trainer probe prices its launches by a profile without its term")
    got: dict[int, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ecdit-trainer-probe-") as tmp:
        for ranks, i in launch_order(nproc, repeats):
            report(f"the trainer's own step at the probe's size on {ranks} rank(s), launch "
                   f"{i + 1} of {repeats}")
            run = launch(ranks, Path(tmp) / f"ranks{ranks}-{i + 1}", device)
            got.setdefault(ranks, []).append(residual(run, acc))
    record = {str(ranks): median_record(launches) for ranks, launches in got.items()}
    out = {ranks: record[str(ranks)]["s_per_kernel"] for ranks in got}
    return out, {"trainer_probe": {"card": PROBE_CARD, "size": dict(PROBE_SIZE),
                                   "steps": PROBE_STEPS, "micro_batch": PROBE_MICRO_BATCH,
                                   "zero": PROBE_ZERO, "repeats": repeats,
                                   "launches": record}}


def trainer_term(nproc: int, acc: Any, report: Any = lambda _: None, device: str = "cpu",
                 repeats: int = PROBE_REPEATS) -> tuple[dict[int, float], dict[str, Any]]:
    """``measure_trainer``, where a failed launch loses only this term: the profile is kept
    without it (nothing charged) and its provenance says why."""
    try:
        return measure_trainer(nproc, acc, report, device, repeats)
    except ConfigError as exc:
        report(f"the trainer probe failed, its term is not charged: {exc}")
        return {}, {"trainer_probe": {"failed": str(exc)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--profile", required=True, help="an accelerator file from `profile`")
    args = ap.parse_args()
    from ..planner.hardware import get_accelerator

    acc = get_accelerator(args.profile)
    if acc.profile is None:
        sys.exit(f"error: {args.profile}: no measured profile in it")
    acc = dataclasses.replace(acc, profile=dataclasses.replace(acc.profile,
                                                               trainer_s_per_kernel={}))
    values, record = measure_trainer(args.nproc, acc, lambda m: print(m, file=sys.stderr),
                                     args.device)
    print(json.dumps({"trainer_s_per_kernel": values, **record}, indent=1))


if __name__ == "__main__":
    main()
