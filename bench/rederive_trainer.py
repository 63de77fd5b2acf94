"""Re-derive profiles' trainer term against the step-time model of the code that runs this script,
from the probe launches their provenance recorded: an A/B of a model change on the same profiles.

A profile's ``trainer_s_per_kernel`` is what the trainer's own probe launches took over the rest
of that profile's price (``evaluation.trainer_probe``), so it depends on the step-time model that
priced them. To price held-out runs by the model before a change (a git worktree of the older
commit), the term must be the older model's too. This keeps each probe launch's measured step and
kernel count from the profile's provenance and prices the probe's layout again, here: the layout
comes from a run of the probe's configuration (launched into OUT/probe-ranksN when absent; only
its configuration is priced; its own step time is not used).

    python bench/rederive_trainer.py --out DIR P1.yaml [P2.yaml ...]
    PYTHONPATH=WORKTREE python WORKTREE/bench/rederive_trainer.py ...   # the older model's
    python bench/rederive_trainer.py --launch first --out DIR P1.yaml ...  # one launch's

``--launch first`` keeps only each rank count's first probe launch (the probe launched once per
rank count until 2026-12-08; since then three times, ``launches[N]["each"]``, and keeps the
median): the single-launch reading, from the same profile.

Writes DIR/<name of each profile> with the re-derived values and a provenance note, and prints
old and new values per rank count.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecdit_scale.evaluation.trainer_probe import launch, residual  # noqa: E402
from ecdit_scale.files import atomic_write_text, dump_yaml, load_yaml_file  # noqa: E402
from ecdit_scale.planner.hardware import get_accelerator  # noqa: E402


def probe_run(out: Path, ranks: int) -> Path:
    run = out / f"probe-ranks{ranks}"
    if not (run / "summary.json").exists():
        print(f"launching the probe's configuration on {ranks} rank(s) into {run}",
              file=sys.stderr)
        launch(ranks, run)
    return run


def rederive(path: Path, out: Path, which: str = "median") -> Path:
    data = load_yaml_file(path)
    prof = data["profile"]
    launches = prof["provenance"]["trainer_probe"]["launches"]
    acc = get_accelerator(str(path))  # priced without its trainer term, as the probe prices
    acc = dataclasses.replace(acc, profile=dataclasses.replace(acc.profile,
                                                               trainer_s_per_kernel={}))
    new, records = {}, {}
    for ranks, rec in sorted(launches.items(), key=lambda kv: int(kv[0])):
        if which == "first" and rec.get("each"):
            rec = dict(rec["each"][0])
        predicted = residual(probe_run(out, int(ranks)), acc)["predicted_s"]
        kernels = float(rec["kernels"])
        new[int(ranks)] = max(0.0, float(rec["measured_s"]) - predicted) / kernels
        records[ranks] = dict(rec, predicted_s=predicted, s_per_kernel=new[int(ranks)])
        old = prof.get("trainer_s_per_kernel", {}).get(int(ranks), 0.0)
        print(f"{path.name}: {ranks} rank(s): {old * 1e6:.1f} -> {new[int(ranks)] * 1e6:.1f} "
              f"us per kernel (measured {rec['measured_s'] * 1e3:.1f} ms, predicted "
              f"{rec['predicted_s'] * 1e3:.1f} -> {predicted * 1e3:.1f} ms)")
    provenance = dict(prof["provenance"], trainer_probe=dict(
        prof["provenance"]["trainer_probe"], launches=records,
        rederived=f"bench/rederive_trainer.py --launch {which} from {path}, by the step-time "
                  f"model at {ROOT}"))
    prof = dict(prof, trainer_s_per_kernel=new, provenance=provenance)
    target = out / path.name
    atomic_write_text(target, dump_yaml(dict(data, profile=prof)))
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for the re-derived copies")
    ap.add_argument("--launch", choices=("median", "first"), default="median",
                    help="each rank count's median probe launch (as recorded) or its first only")
    ap.add_argument("profiles", nargs="+", type=Path)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for p in args.profiles:
        rederive(p, args.out, args.launch)


if __name__ == "__main__":
    main()
