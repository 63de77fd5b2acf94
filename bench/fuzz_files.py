"""The files a bad-input case reads: broken cards, hardware profiles, fits, run tables and run
directories, and the ``Case`` record. The case lists are in ``fuzz_cases.py``.

File contents are data (str or bytes), ``DIR`` (make a folder), or a function of the repository
root for files made from checked-in ones (the reference run table and fit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REF_TABLE = "{repo}/bench/results/reference-sweep/runs.csv"
REF_FIT = "{repo}/bench/results/reference-sweep/fit.yaml"
GPU_FILE = "{repo}/bench/results/gpu_nvidia-h200.json"
# a measured CPU profile (matrix 15's, the tests' RECORDED_CPU_PROFILE): validate without one
# measures this CPU first (~8 s)
CPU_PROFILE_FILE = ("{repo}/bench/results/cpu-heldout-matrix-15/profiles/"
                    "smalltc8-w1-z1-mb16-sel.profile.yaml")
DIR = object()  # a file spec: make a folder here
FileSpec = Any  # str | bytes | DIR | Callable[[Path], bytes] (called with the repo root)


@dataclass(frozen=True)
class Case:
    id: str
    area: str
    category: str
    argv: tuple[str, ...]
    files: tuple[tuple[str, FileSpec], ...] = ()
    expect: str = "error"
    mention: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    timeout: float = 30.0
    slow: bool = False  # skipped by `fuzz_scan.py --skip-slow`
    isolate: bool = False  # may launch, hang or allocate: tests run it as a subprocess
    quick: bool = False  # in `--quick` and in tests/test_bad_input.py
    exit_code: int = 2  # the exit of a clear refusal (3: a run stopped as diverged)

    def args(self, repo: Path) -> list[str]:
        return [a.replace("{repo}", str(repo)) for a in self.argv]


def materialize(case: Case, folder: Path, repo: Path) -> None:
    """Write the case's files into ``folder`` (its working directory)."""
    for rel, spec in case.files:
        path = folder / rel
        if spec is DIR:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        data = spec(repo) if callable(spec) else spec
        path.write_bytes(data.encode() if isinstance(data, str) else data)


# ---------------------------------------------------------------------------------------------
# Files: cards, hardware profiles, fits, run tables, run directories
# ---------------------------------------------------------------------------------------------

FFN = dict(kind="expert-choice", num_experts=8, capacity_factor=2.0, top_k=2, group_size=None,
           moe_every=2, moe_offset=1, aux_loss_coef=0.01, drop_tokens=True)
CARD = dict(name="fuzz-ec8", family="cpu", input_size=32, in_channels=3, patch_size=4,
            vae_downsample=1, learn_sigma=False, hidden_size=64, depth=4, num_heads=2,
            num_kv_heads=1, mlp_ratio=4.0, qkv_bias=True, adaln="zero", conditioning="text",
            text_dim=384, text_tokens=16, text_encoder_params=22713216, count_text_encoder=False,
            num_classes=1000, cond_dropout=0.1, timestep_freq_dim=256, ffn=FFN, notes="fuzz card")
ACC = dict(name="fuzz-gpu", peak_bf16_flops=1e15, memory_bytes=8e10, memory_bw_bytes_per_s=3e12,
           intra_node_bw_bytes_per_s=4.5e11, inter_node_bw_bytes_per_s=5e10, devices_per_node=8,
           source="fuzz datasheet", efficiency=0.45)
MISSING = object()


def ydump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def card(*, ffn: Any = MISSING, **changes: Any) -> str:
    data = {**CARD, **changes}
    if ffn is not MISSING:
        data["ffn"] = ffn if not isinstance(ffn, dict) else {**FFN, **ffn}
    return ydump({k: v for k, v in data.items() if v is not MISSING})


def acc(**changes: Any) -> str:
    return ydump({k: v for k, v in {**ACC, **changes}.items() if v is not MISSING})


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def big(n_mb: int, prefix: str = "") -> Callable[[Path], bytes]:
    return lambda repo: prefix.encode() + b"x" * (n_mb * 2**20) + b"\n"


BINARY = bytes(range(256)) * 8
LATIN1 = "name: caf\xe9\nhidden_size: 64\n".encode("latin-1")


def ref_table(repo: Path) -> Any:
    import pandas as pd

    return pd.read_csv(repo / REF_TABLE.removeprefix("{repo}/"))


def table(rows: Callable[[Any], Any]) -> Callable[[Path], bytes]:
    """A run table made from the reference table by ``rows`` (a DataFrame -> DataFrame)."""
    return lambda repo: rows(ref_table(repo).drop(columns=["run_dir"])).to_csv(index=False).encode()


def small(df):  # two kinds, five budgets each: a fit finishes in seconds
    return df[df.card.isin(["nano-dense", "nano-ec8", "micro-dense", "micro-ec8"])].copy()


def nano(df):  # one size per kind: the quickest fit that still reports multipliers
    return df[df.card.isin(["nano-dense", "nano-ec8"])].copy()


def _set(col: str, value: Any, rows=slice(0, 1)):
    def f(df):
        df = small(df).reset_index(drop=True)
        df[col] = df[col].astype(object)
        df.loc[df.index[rows], col] = value
        return df
    return f


def truncated_ref_fit(repo: Path) -> bytes:
    text = (repo / REF_FIT.removeprefix("{repo}/")).read_bytes()
    return text[: len(text) // 2]


def ref_fit_edit(edit: Callable[[dict], None]) -> Callable[[Path], bytes]:
    def f(repo: Path) -> bytes:
        data = yaml.load((repo / REF_FIT.removeprefix("{repo}/")).read_text(),
                         Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        edit(data)
        return yaml.safe_dump(data).encode()
    return f


def _first_law(data: dict) -> dict:
    return next(iter(data["power_laws"].values()))["law"]


RUN_SETTINGS = dict(card="nano-ec8", model_name="nano-ec8", steps=8, nodes=1, nproc_per_node=1,
                    ep=1, zero=1, micro_batch=4, grad_accum=1, dataset="shapes", data_limit=256,
                    holdout=16, seed=0, lr=1e-3, warmup_steps=0, optimizer="adamw",
                    precision="fp32", device="cpu", checkpoint_every=4, keep_checkpoints=2,
                    track_memory=True, tc_impl="ecdit")
SUMMARY = dict(status="completed", steps=8, steps_done=8, median_step_s=0.05, peak_bytes=5e7,
               params={"model_params": 866416}, returncode=0)


def metrics_lines(n: int = 8) -> str:
    return "".join(json_line(step=i, loss=1.0 - 0.01 * i, step_s=0.05) for i in range(1, n + 1))


def json_line(**kw: Any) -> str:
    import json
    return json.dumps(kw) + "\n"


def run_dir(name: str = "run", *, settings: Any = MISSING, summary: Any = MISSING,
            metrics: Any = MISSING, card_text: Any = MISSING,
            extra: tuple = ()) -> tuple[tuple[str, FileSpec], ...]:
    """A fake finished run directory of nano-ec8 (no checkpoints: nothing launches from it)."""
    import json

    files = {"run.json": json.dumps({**RUN_SETTINGS}) if settings is MISSING else settings,
             "summary.json": json.dumps(SUMMARY) if summary is MISSING else summary,
             "metrics.jsonl": metrics_lines() if metrics is MISSING else metrics,
             "card.yaml": card(name="nano-ec8", notes="") if card_text is MISSING else card_text}
    out = [(f"{name}/{k}", v) for k, v in files.items() if v is not None]
    return tuple(out) + tuple((f"{name}/{k}", v) for k, v in extra)

# ---------------------------------------------------------------------------------------------
# Variants: (slug, category, content, names a message may use instead of the file)
# ---------------------------------------------------------------------------------------------


def card_variants() -> list[tuple[str, str, FileSpec, tuple[str, ...]]]:
    """(slug, category, file content, field names a message may name instead of the file)."""
    v: list[tuple[str, str, FileSpec, tuple[str, ...]]] = [
        ("empty", "traceback", "", ()), ("comment-only", "traceback", "# nothing here\n", ()),
        ("binary", "message", BINARY, ()), ("latin1", "message", LATIN1, ()),
        ("truncated", "traceback", card()[:200] + 'notes: "unterminated\n', ()),
        ("malformed", "traceback", "name: [unclosed\nhidden_size: 64\n", ()),
        ("tab-indent", "traceback", "name: x\n\tffn: 1\n", ()),
        ("list", "traceback", "- name: fuzz\n- hidden_size: 64\n", ()),
        ("scalar", "traceback", "just a string\n", ()), ("null", "traceback", "null\n", ()),
        ("int-key", "traceback", card() + "1: one\n", ()),
        ("complex-key", "traceback", "? [a, b]\n: 1\n" + card(), ()),
        ("bool-key", "traceback", card() + "yes: 1\n", ()),
        ("null-key", "traceback", card() + "~: 1\n", ()),
        ("model-list", "traceback", ydump({"model": [1, 2]}), ("model",)),
        ("deep-nesting", "hang", "notes: " + "[" * 50000 + "]" * 50000 + "\n", ("notes",)),
        ("alias-bomb", "hang", alias_bomb(), ()),
        ("alias-bomb-notes", "hang", alias_bomb(6, 10) + card(notes=MISSING) + "notes: *l5\n",
         ("notes",)),
        ("alias-bomb-ffn", "hang", alias_bomb(6, 10) + card(ffn=MISSING) + "ffn: *l5\n", ("ffn",)),
        ("notes-50mb", "hang", big(50, "name: fuzz\nnotes: "), ("notes",)),
        ("notes-dict", "traceback", card(notes={"a": 1}), ("notes",)),
        ("unknown-field", "message", card(colour="blue"), ("colour",)),
        ("no-name", "message", card(name=MISSING), ("name",)),
        ("name-empty", "silent", card(name=""), ("name",)),
        ("name-list", "traceback", card(name=["a", "b"]), ("name",)),
        ("name-int", "traceback", card(name=123), ("name",)),
        ("ffn-string", "traceback", card(ffn="expert-choice"), ("ffn",)),
        ("ffn-list", "traceback", card(ffn=[1, 2]), ("ffn",)),
        ("ffn-int", "traceback", card(ffn=8), ("ffn",)),
        ("ffn-kind-bogus", "message", card(ffn={"kind": "bogus"}), ("kind", "bogus")),
        ("ffn-kind-int", "traceback", card(ffn={"kind": 3}), ("kind",)),
        ("ffn-unknown-field", "message", card(ffn={"colour": 1}), ("colour",)),
        ("adaln-bogus", "message", card(adaln="bogus"), ("adaln", "bogus")),
        ("conditioning-bogus", "message", card(conditioning="bogus"), ("conditioning", "bogus")),
        ("adaln-list", "traceback", card(adaln=[1]), ("adaln",)),
    ]
    numbers = {
        "hidden_size": [2**62, 0, -64, 64.5, "64", True, None, float("nan"), float("inf"), 10**400],
        "depth": [0, -1, 10**9, 2.5],
        "num_heads": [0, 3, -2], "num_kv_heads": [0, 3], "patch_size": [0, 5, -4],
        "input_size": [0, -32, 2**40], "in_channels": [0, -3],
        "mlp_ratio": [0, -1.0, float("nan"), float("inf"), "big"],
        "text_dim": [0, -384], "text_tokens": [0, -1], "cond_dropout": [1.5, -0.1, float("nan")],
        "timestep_freq_dim": [0, 3], "num_classes": [-1],
    }
    ffn_numbers = {
        "num_experts": [0, -8, 8.5, "eight", True, 2**62],
        "capacity_factor": [0, -1.0, float("nan"), float("inf"), "big"],
        "top_k": [0, -1], "moe_every": [0, -1], "moe_offset": [-1, 100],
        "group_size": [0, -64, 7], "aux_loss_coef": [-1.0, float("nan")],
    }
    for field, values in numbers.items():
        for x in values:
            v.append((f"{field}={_slug(x)}", _num_category(x), card(**{field: x}), (field,)))
    for field, values in ffn_numbers.items():
        for x in values:
            v.append((f"ffn.{field}={_slug(x)}", _num_category(x), card(ffn={field: x}),
                      (field, "ffn")))
    return v


def _slug(x: Any) -> str:
    if isinstance(x, int) and not isinstance(x, bool) and abs(x) >= 2**30:
        return f"2^{x.bit_length() - 1}" if x > 0 else f"-2^{(-x).bit_length() - 1}"
    return str(x).replace(" ", "")


def _num_category(x: Any) -> str:
    if isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) >= 2**30:
        return "hang"  # huge: overflow, or work without bound
    return "silent" if isinstance(x, (int, float)) and not isinstance(x, bool) else "traceback"


def fit_file_variants() -> list[tuple[str, FileSpec]]:
    return [
        ("empty", ""), ("binary", BINARY), ("latin1", LATIN1), ("malformed", "power_laws: [\n"),
        ("list", "- 1\n"), ("scalar", "fit\n"), ("empty-mapping", "{}\n"),
        ("partial", "power_laws: {}\n"), ("truncated-reference", truncated_ref_fit),
        ("no-power-laws", ref_fit_edit(lambda d: d.pop("power_laws"))),
        ("law-E-string", ref_fit_edit(lambda d: _first_law(d).update(E="big"))),
        ("law-alpha-nan", ref_fit_edit(lambda d: _first_law(d).update(alpha=float("nan")))),
        ("law-missing-A", ref_fit_edit(lambda d: _first_law(d).pop("A"))),
        ("power-laws-list", ref_fit_edit(lambda d: d.update(power_laws=[1, 2]))),
        ("alias-bomb", alias_bomb()), ("csv", "a,b\n1,2\n"),
    ]


def table_variants() -> list[tuple[str, str, str, FileSpec, tuple[str, ...]]]:
    """(slug, category, file name, content, fields a message may name)."""
    def ragged(repo):
        lines = table(small)(repo).decode().splitlines()
        lines[3] += ",1,2,3"
        return ("\n".join(lines) + "\n").encode()

    def const(df):
        df = small(df)
        for column in ("final_loss", "smoothed_loss", "heldout_loss"):
            if column in df.columns:
                df[column] = 0.5
        return df

    def one_kind(df):
        return df[df.card.isin(["nano-ec8", "micro-ec8"])]

    cols = ("final_loss", "smoothed_loss", "compute_flops")
    return [
        ("empty", "traceback", "t.csv", "", ()), ("binary", "message", "t.csv", BINARY, ()),
        ("latin1", "message", "t.csv", LATIN1, ()), ("header-only", "message", "t.csv",
                                                     table(lambda d: d.iloc[:0]), ("rows",)),
        ("ragged", "traceback", "t.csv", ragged, ("line", "row")),
        ("missing-columns", "message", "t.csv", "name,ffn_kind\na,dense\n", ("columns",)),
        ("one-row", "silent", "t.csv", table(lambda d: d.iloc[:1]), ("rows", "runs")),
        ("two-rows", "silent", "t.csv", table(lambda d: small(d).iloc[:2]), ("rows", "runs")),
        ("constant-loss", "traceback", "t.csv", table(const), ("loss", "constant")),
        ("loss-nan", "message", "t.csv", table(_set("final_loss", float("nan"))), cols),
        ("loss-negative", "message", "t.csv", table(_set("final_loss", -1.0)), cols),
        ("compute-inf", "message", "t.csv", table(_set("compute_flops", float("inf"))), cols),
        ("compute-text", "message", "t.csv", table(_set("compute_flops", "lots")), cols),
        ("params-negative", "message", "t.csv", table(_set("params", -5)), ("params",)),
        ("kind-unknown", "message", "t.csv", table(_set("ffn_kind", "bogus")), ("ffn_kind",)),
        ("duplicate-names", "message", "t.csv",
         table(lambda d: small(d).assign(name="same")), ("name",)),
        ("alignment-5", "message", "t.csv", table(_set("alignment", 5.0)), ("alignment",)),
        ("compute-1e308", "hang", "t.csv", table(_set("compute_flops", 1e308, slice(0, 5))), cols),
        ("one-kind", "silent", "t.csv", table(one_kind), ()),
        ("txt-suffix", "message", "t.txt", table(small), ("t.txt", "suffix")),
        ("parquet-garbage", "traceback", "t.parquet", BINARY, ()),
        ("a-folder", "traceback", "t.csv", DIR, ()),
    ]


SMALL = (("small.csv", table(small)),)


def run_dir_variants() -> list[tuple[str, str, tuple, tuple[str, ...]]]:
    """(slug, category, files of a run directory `run/`, names a message may use)."""
    import json

    s = dict(RUN_SETTINGS)
    no_steps = {k: v for k, v in s.items() if k != "steps"}
    return [
        ("empty-folder", "message", (("run", DIR),), ("run.json",)),
        ("run.json-malformed", "traceback", run_dir(settings="{ not json"), ("run.json",)),
        ("run.json-empty", "traceback", run_dir(settings=""), ("run.json",)),
        ("run.json-binary", "message", run_dir(settings=BINARY), ("run.json",)),
        ("run.json-list", "traceback", run_dir(settings="[1, 2]"), ("run.json",)),
        ("run.json-missing-field", "traceback", run_dir(settings=json.dumps(no_steps)),
         ("run.json", "steps")),
        ("run.json-wrong-type", "traceback",
         run_dir(settings=json.dumps({**s, "micro_batch": "four"})), ("run.json", "micro_batch")),
        ("run.json-nan", "traceback", run_dir(settings=json.dumps({**s, "lr": float("nan")})),
         ("run.json", "lr")),
        ("card-missing", "traceback", run_dir(card_text=None), ("card.yaml",)),
        ("card-binary", "message", run_dir(card_text=BINARY), ("card.yaml",)),
        ("card-list", "traceback", run_dir(card_text="- 1\n"), ("card.yaml",)),
        ("summary-malformed", "traceback", run_dir(summary="{"), ("summary.json",)),
        ("summary-list", "traceback", run_dir(summary="[]"), ("summary.json",)),
        ("summary-binary", "message", run_dir(summary=BINARY), ("summary.json",)),
        ("summary-wrong-types", "traceback",
         run_dir(summary=json.dumps({**SUMMARY, "median_step_s": "slow", "peak_bytes": "lots",
                                     "params": 5})), ("summary.json", "median_step_s", "params")),
        ("metrics-garbage", "traceback",
         run_dir(summary=None, metrics="garbage\n" + metrics_lines()), ("metrics.jsonl",)),
        ("metrics-binary", "message", run_dir(summary=None, metrics=BINARY), ("metrics.jsonl",)),
        ("metrics-wrong-types", "traceback",
         run_dir(summary=None, metrics=json_line(step="one", loss="low", step_s=None) * 3),
         ("metrics.jsonl", "step", "loss")),
        ("predictions-malformed", "traceback", run_dir(extra=(("predictions.json", "{"),)),
         ("predictions.json",)),
        ("predictions-list", "traceback", run_dir(extra=(("predictions.json", "[]"),)),
         ("predictions.json",)),
    ]


def settings_json(**changes: Any) -> str:
    import json
    return json.dumps({**RUN_SETTINGS, **changes})


