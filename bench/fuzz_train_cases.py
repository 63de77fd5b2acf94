"""Fuzz cases for training that must not silently go wrong (issue 22): damaged checkpoints on
resume, a diverging run, RMSProp at its default learning rate. Registered in fuzz_scan.py next
to fuzz_cases.py's lists.

- a resume whose every checkpoint was replaced by random bytes (same size, so only the
  checksum in its completion marker sees it; or an older checkpoint without a marker, named
  by ``latest``) is refused in one line, exit 2, before any rank starts; no worker.pid stays;
- a run whose loss explodes stops in one line with exit 3 (``records.DIVERGED_EXIT``);
- ``--optimizer rmsprop`` at the default lr and warm-up trains (it diverged before: loss 1.88
  -> 58,434 in 12 steps, exit 0).
"""

from __future__ import annotations

import hashlib
import json
import os

from fuzz_files import RUN_SETTINGS, Case, run_dir

MODEL_STATES = "mp_rank_00_model_states.pt"
# the fake run of fuzz_files (8 steps of nano-ec8), resumed to 16: the same settings
RESUME = ("launch", "nano-ec8", "--out", "run", "--resume", "--steps", "16", "--device", "cpu",
          "--micro-batch", "4", "--dataset", "shapes", "--limit", "256", "--holdout", "16",
          "--warmup", "0", "--checkpoint-every", "4")
TRAIN = ("launch", "nano-dense", "--steps", "12", "--limit", "64", "--holdout", "8",
         "--dataset", "shapes", "--micro-batch", "4", "--no-track-memory", "--device", "cpu",
         "--out", "r")


def checkpoint(step: int, *, marked: bool) -> tuple:
    """checkpoints/step<N>: model states of random bytes; with ``marked``, a completion marker
    whose size matches them and whose sha256 is of other bytes (the file was replaced)."""
    data = os.urandom(4096)
    files = [(f"run/checkpoints/step{step}/{MODEL_STATES}", data)]
    if marked:
        saved = hashlib.sha256(os.urandom(4096)).hexdigest()
        marker = {"step": step, "files": {MODEL_STATES: {"bytes": len(data), "sha256": saved}}}
        files.append((f"run/checkpoints/step{step}/ecdit_complete.json", json.dumps(marker)))
    return tuple(files)


def train_cases() -> list[Case]:
    assert RUN_SETTINGS["steps"] == 8 and RUN_SETTINGS["checkpoint_every"] == 4
    replaced = run_dir(extra=()) + checkpoint(4, marked=True) + checkpoint(8, marked=True) + (
        ("run/checkpoints/latest", "step8"),)
    unmarked = run_dir() + checkpoint(8, marked=False) + (("run/checkpoints/latest", "step8"),)
    keep = ("run/metrics.jsonl", "run/run.json", f"run/checkpoints/step8/{MODEL_STATES}")
    return [
        Case("launch/--resume checkpoints replaced by random bytes", "run", "dataloss", RESUME,
             replaced, mention=("checkpoint", "sha256"), keep=keep,
             absent=("run/worker.pid",), isolate=True, timeout=60),
        Case("launch/--resume unmarked checkpoint of random bytes", "run", "traceback", RESUME,
             unmarked, mention=("checkpoint", MODEL_STATES), keep=keep,
             absent=("run/worker.pid",), isolate=True, timeout=60),
        Case("launch/a diverging run (sgd --lr 1e4)", "run", "silent",
             (*TRAIN, "--optimizer", "sgd", "--lr", "1e4", "--warmup", "0", "--json"),
             mention=("diverged",), exit_code=3, absent=("r/worker.pid",), isolate=True,
             timeout=180, slow=True),
        Case("launch/--optimizer rmsprop at its defaults", "run", "silent",
             (*TRAIN, "--optimizer", "rmsprop", "--json"), expect="json",
             absent=("r/worker.pid",), isolate=True, timeout=180, slow=True),
    ]
