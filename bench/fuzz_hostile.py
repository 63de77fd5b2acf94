"""Bad-input cases of issue 22 ("hostile inputs beyond the fuzz scan") and the new classes tried
with them: physically meaningless device numbers, thread counts that crash torch, a plan
validated against a run of another model, outputs nobody asked for, folders that are links,
unicode paths. Part of `fuzz_cases.all_cases`; same rules (see fuzz_cases.py).
"""

from __future__ import annotations

import json

from fuzz_files import DIR, REF_FIT, SMALL, Case, acc, run_dir

PLAN = ("plan", "--params", "8B", "--no-table")
NANO_PLAN = ("plan", "--model", "nano-ec8", "--gpus", "1")

# field changes of a GPU profile that no device has (planner/bounds.py), and what names them
ABSURD_DEVICES = [
    ("inter-node bandwidth 1e-300", dict(inter_node_bw_bytes_per_s=1e-300),
     "inter_node_bw_bytes_per_s"),
    ("intra-node bandwidth 1 B/s", dict(intra_node_bw_bytes_per_s=1), "intra_node_bw_bytes_per_s"),
    ("memory bandwidth 1e30", dict(memory_bw_bytes_per_s=1e30), "memory_bw_bytes_per_s"),
    ("peak 1e30", dict(peak_bf16_flops=1e30), "peak_bf16_flops"),
    ("peak 1 FLOP/s", dict(peak_bf16_flops=1), "peak_bf16_flops"),
    ("memory 1e20 bytes", dict(memory_bytes=1e20), "memory_bytes"),
    ("profile launch 3600 s", dict(profile={"launch": {"seconds": 3600.0}}),
     "profile.launch.seconds"),
    ("profile copy 1e-9 B/s", dict(profile={"memory_bw_bytes_per_s": 1e-9}),
     "profile.memory_bw_bytes_per_s"),
    ("profile gemm 1e30", dict(profile={"gemm": {"m": [64], "n": [64], "k": [64],
                                                  "flops_per_s": [1e30]}}),
     "profile.gemm.flops_per_s"),
    ("profile all-reduce latency 1e9 s",
     dict(profile={"collectives": {"nproc": 2, "backend": "gloo", "all_reduce": {
         "latency_s": 1e9, "bw_bytes_per_s": 1e9, "half_bytes": 1}}}),
     "profile.collectives.all_reduce.latency_s"),
]


def _plan_of(model: str) -> str:
    """The parts of a plan.yaml that `validate PLAN RUN` reads, for ``model``."""
    return json.dumps({"model": model, "best": {"layout": {"ep": 8, "zero": 1}},
                       "training": {"optimizer": "rmsprop"}, "cluster": {"world": 512},
                       "accelerator": {"name": "h100-sxm"}})


def hostile_cases() -> list[Case]:
    out = [Case(f"plan/--gpu absurd:{slug}", "core", "silent", (*PLAN, "--gpu", "gpu.yaml"),
                (("gpu.yaml", acc(**change)),), mention=(field,),
                quick=slug in ("inter-node bandwidth 1e-300", "profile launch 3600 s"))
           for slug, change, field in ABSURD_DEVICES]
    out += [
        # torch.set_num_threads(100000) segfaulted (exit 139, no message)
        Case("profile/--threads 100000", "eval", "message", ("profile", "--threads", "100000"),
             mention=("--threads",), absent=("profile-cpu.yaml",), quick=True, isolate=True),
        Case("profile/--threads 0", "eval", "message", ("profile", "--threads", "0"),
             mention=("--threads",), absent=("profile-cpu.yaml",)),
        # a 97B plan against a nano run printed ratios without saying the models differ
        Case("validate/plan of another model", "eval", "silent", ("validate", "plan", "run"),
             (("plan/plan.yaml", _plan_of("ecdit-m-64e")), *run_dir()),
             mention=("models differ",), quick=True, timeout=60),
        # plan writes files only into --out: --json alone (and no option) writes nothing
        Case("plan/--json writes nothing", "core", "partial", (*NANO_PLAN, "--json"),
             expect="json", absent=("plan-nano-ec8",), quick=True),
        Case("plan/no --out writes nothing", "core", "partial", NANO_PLAN, expect="sane",
             absent=("plan-nano-ec8",)),
        Case("plan/--out with --no-write", "core", "silent",
             (*NANO_PLAN, "--out", "p", "--no-write"), mention=("--no-write",), absent=("p",)),
        Case("plan/--out unicode", "core", "json", (*NANO_PLAN, "--out", "plän-ü/ö", "--json"),
             expect="json"),
        Case("plan/--model unicode card", "core", "json",
             ("plan", "--model", "kärte.yaml", "--gpus", "1", "--json"),
             (("kärte.yaml", lambda repo: (repo / "models" / "nano-ec8.yaml").read_bytes()),),
             expect="json"),
        Case("plan/--routing not a choice", "core", "usage", (*NANO_PLAN, "--routing", "ec"),
             mention=("--routing",), quick=True),
        Case("plan/--zero 9", "core", "silent", (*NANO_PLAN, "--zero", "9"), mention=("--zero",)),
        Case("--version", "core", "usage", ("--version",), expect="sane"),
        # the report folder is swapped in whole: the current folder cannot be, nor a file
        Case("report/--out .", "scaling", "dataloss", ("report", "small.csv", "--fit", REF_FIT,
                                                       "--out", "."),
             SMALL, mention=("--out",), keep=("small.csv",), quick=True),
        Case("report/--out a file in a folder", "scaling", "dataloss",
             ("report", "small.csv", "--fit", REF_FIT, "--out", "adir/taken"),
             (*SMALL, ("adir", DIR), ("adir/taken", "user data\n")), mention=("--out", "taken"),
             keep=("adir/taken",)),
        Case("report/--out keeps the user's files", "scaling", "dataloss",
             ("report", "small.csv", "--fit", REF_FIT, "--out", "rep", "--json"),
             (*SMALL, ("rep/notes.md", "mine\n"), ("rep/figures/old.png", b"\x89PNG")),
             expect="json", keep=("rep/notes.md",)),
    ]
    return out
