"""The bad-input cases of `ecdit-scale`, defined once: `bench/fuzz_scan.py` runs them all as
subprocesses, `tests/test_bad_input.py` runs them by category.

A case is a command line plus the files it reads, written into an empty folder that is the
command's working directory. What a case expects:

- ``error`` (the default): refused with exit code 2 and ONE line on stderr that names the bad
  value, option, field or file (any of ``mention``), no traceback;
- ``json``: exit 0 and a stdout that a strict JSON parser accepts (no NaN/Infinity);
- ``sane``: odd but arguably valid: exit 0, or a refusal shaped like ``error``;
- in every case, files in ``keep`` survive byte for byte, paths in ``absent`` are not created,
  no traceback, and the command ends within ``timeout`` seconds.

``category`` is the issue's (#12, "Reliability"): traceback, hang, silent, usage, message,
dataloss, json, partial. ``area`` is who fixes it: core, scaling, eval, run.
"""

from __future__ import annotations

from fuzz_files import (
    ACC,
    BINARY,
    CPU_PROFILE_FILE,
    DIR,
    GPU_FILE,
    LATIN1,
    MISSING,
    REF_FIT,
    REF_TABLE,
    SMALL,
    Case,
    acc,
    alias_bomb,
    big,
    card,
    card_variants,
    fit_file_variants,
    nano,
    run_dir,
    run_dir_variants,
    settings_json,
    table,
    table_variants,
    ydump,
)
from fuzz_hostile import hostile_cases


def card_cases() -> list[Case]:
    out = []
    quick = {"empty", "binary", "latin1", "truncated", "list", "int-key", "ffn-string",
             "ffn-kind-int", "alias-bomb", "notes-50mb", "hidden_size=2^62", "hidden_size=0",
             "ffn.num_experts=eight", "mlp_ratio=nan", "alias-bomb-notes", "deep-nesting",
             "ffn.capacity_factor=inf"}
    for slug, cat, content, fields in card_variants():
        files = (("bad-card.yaml", content),)
        mention = ("bad-card.yaml", *fields)
        heavy = cat == "hang"
        expect = "sane" if slug == "ffn.group_size=7" else "error"  # a group may span images
        out.append(Case(f"models-show/card:{slug}", "core", cat,
                        ("models", "show", "bad-card.yaml"), files, expect=expect, mention=mention,
                        isolate=heavy, quick=slug in quick))
        out.append(Case(f"plan/card:{slug}", "core", cat,
                        ("plan", "--model", "bad-card.yaml", "--no-write"), files, expect=expect,
                        mention=mention, isolate=heavy,
                        quick=slug in ("int-key", "hidden_size=2^62", "ffn-string")))
        if slug in quick:
            out.append(Case(f"launch/card:{slug}", "run", cat,
                            ("launch", "bad-card.yaml", *LAUNCH[2:]), files,
                            mention=mention, isolate=True, timeout=30))
    out.append(Case("models-show/card:directory", "core", "traceback",
                    ("models", "show", "adir.yaml"), (("adir.yaml", DIR),), mention=("adir.yaml",),
                    quick=True))
    out.append(Case("models-show/card:missing", "core", "message",
                    ("models", "show", "missing.yaml"), mention=("missing.yaml",)))
    out.append(Case("plan/card:missing", "core", "message",
                    ("plan", "--model", "missing.yaml", "--no-write"), mention=("missing.yaml",)))
    out.append(Case("launch/card:missing", "run", "message", ("launch", "missing.yaml"),
                    mention=("missing.yaml",), isolate=True, timeout=30))
    # a 3.9 MB notes string is under the YAML size limit: printing it must not take minutes
    out.append(Case("models-show/card:notes-3.9mb", "core", "hang",
                    ("models", "show", "big-notes.yaml"),
                    (("big-notes.yaml",
                      lambda repo: (card(notes=MISSING) + "notes: " + "x" * 3_900_000
                                    + "\n").encode()),),
                    expect="sane", mention=("big-notes.yaml", "notes"), isolate=True, quick=True))
    return out


def models_cases() -> list[Case]:
    E = "error"
    rows = [
        ("list --family bogus", ("models", "list", "--family", "bogus"), E, ("bogus", "--family")),
        ("list --kind bogus", ("models", "list", "--kind", "bogus"), E, ("bogus", "--kind")),
        ("list --family ''", ("models", "list", "--family", ""), E, ("--family",)),
        ("show unknown", ("models", "show", "nope"), E, ("nope",)),
        ("show ''", ("models", "show", ""), E, ("''", "name")),
        ("show both", ("models", "show", "nano-ec8", "--params", "1B"), E, ("--params",)),
        ("show neither", ("models", "show"), E, ("--params", "NAME")),
        ("show --params abc", ("models", "show", "--params", "abc"), E, ("abc",)),
        ("show --params 0", ("models", "show", "--params", "0"), E, ("0", "--params")),
        ("show --params -5B", ("models", "show", "--params", "-5B"), E, ("-5B",)),
        ("show --params nan", ("models", "show", "--params", "nan"), E, ("nan",)),
        ("show --params inf", ("models", "show", "--params", "inf"), E, ("inf",)),
        ("show --params 1e400", ("models", "show", "--params", "1e400"), E, ("1e400",)),
        ("show --kind bogus", ("models", "show", "--params", "1B", "--kind", "bogus"), E,
         ("bogus",)),
        ("show /etc/passwd", ("models", "show", "/etc/passwd"), E, ("/etc/passwd", "passwd")),
        ("show --json extra", ("models", "show", "nano-ec8", "--json", "--bogus"), E, ("--bogus",)),
    ]
    out = [Case(f"models/{name}", "core", "silent" if "0" in name else "message", argv,
                expect=exp, mention=m, quick=name in ("show unknown", "show --params nan"))
           for name, argv, exp, m in rows]
    out += [
        Case("models/list --json", "core", "json", ("models", "list", "--json"), expect="json"),
        Case("models/show --json", "core", "json", ("models", "show", "nano-ec8", "--json"),
             expect="json"),
        Case("models/show --params 97B --json", "core", "json",
             ("models", "show", "--params", "97B", "--json"), expect="json", quick=True),
        Case("models/export keeps a user's card", "core", "dataloss",
             ("models", "export", "--out", "cards"),
             (("cards/my-experiment.yaml", card(name="my-experiment")),), expect="sane",
             mention=("my-experiment",), keep=("cards/my-experiment.yaml",), quick=True),
        Case("models/export --check keeps a user's card", "core", "dataloss",
             ("models", "export", "--out", "cards", "--check"),
             (("cards/my-experiment.yaml", card(name="my-experiment")),), expect="sane",
             mention=("cards", "stale"), keep=("cards/my-experiment.yaml",)),
        Case("models/export --out FILE", "core", "partial", ("models", "export", "--out", "taken"),
             (("taken", "user data\n"),), mention=("taken",), keep=("taken",)),
        Case("models/export --out FILE/sub", "core", "traceback",
             ("models", "export", "--out", "taken/sub"), (("taken", "user data\n"),),
             mention=("--out", "taken"), keep=("taken",)),
        Case("models/export --out ''", "core", "silent", ("models", "export", "--out", ""),
             mention=("--out", "''"), absent=("nano-ec8.yaml",), quick=True),
        Case("models/export --json", "core", "json",
             ("models", "export", "--out", "cards", "--json"), expect="json", quick=True),
        Case("plans/export keeps a user's file", "core", "dataloss",
             ("plans", "export", "--out", "p"), (("p/my-notes.md", "mine\n"),), expect="sane",
             keep=("p/my-notes.md",), mention=("p",)),
        Case("plans/export --out FILE", "core", "partial", ("plans", "export", "--out", "taken"),
             (("taken", "user data\n"),), mention=("taken",), keep=("taken",)),
        Case("plans/export --out ''", "core", "silent", ("plans", "export", "--out", ""),
             mention=("--out", "''"), absent=("m-64e-paper-run",)),
        Case("plans/export --json", "core", "json", ("plans", "export", "--out", "p", "--json"),
             expect="json", quick=True),
    ]
    return out


PLAN = ("plan", "--params", "8B", "--no-write")
BAD_INTS = ("0", "-1")
NOT_INTS = ("nan", "inf", "abc", "1.5", "")
HUGE = "99999999999999999999999999"


def plan_cases() -> list[Case]:
    out = []
    # (option, values that must be refused, values that must be refused even though typer parses)
    int_opts = {"--gpus": BAD_INTS, "--nodes": BAD_INTS, "--gpus-per-node": BAD_INTS,
                "--global-batch": BAD_INTS, "--steps": BAD_INTS, "--zero": ("-1", "4"),
                "--dp": (*BAD_INTS, "3"), "--ep": (*BAD_INTS, "3"), "--tp": (*BAD_INTS, "3"),
                "--micro-batch": BAD_INTS, "--top": ("-3",), "--sampling-steps": BAD_INTS,
                "--inference-devices": BAD_INTS}
    issue = {("--nodes", "0"), ("--gpus-per-node", "0"), ("--tp", "0"), ("--top", "-3"),
             ("--price", "nan"), ("--price", "inf"), ("--nodes", "abc")}
    for opt, bad in int_opts.items():
        m = (opt, opt.lstrip("-"), opt.lstrip("-").replace("-", "_"),
             opt.lstrip("-").replace("-", " "))
        for x in bad:
            out.append(Case(f"plan/{opt} {x}", "core", "silent", (*PLAN, opt, x), mention=m,
                            quick=(opt, x) in issue))
        for x in NOT_INTS:
            out.append(Case(f"plan/{opt} {x or repr(x)}", "core", "usage", (*PLAN, opt, x),
                            mention=m, quick=(opt, x) in issue))
        out.append(Case(f"plan/{opt} huge", "core", "hang", (*PLAN, opt, HUGE), expect="sane",
                        mention=(*m, HUGE)))
    for x in ("nan", "inf", "-inf", "-1", "abc", "", "1e400"):
        out.append(Case(f"plan/--price {x or repr(x)}", "core", "silent" if x != "abc" else "usage",
                        (*PLAN, "--price", x), mention=("--price", "price"),
                        quick=("--price", x) in issue))
    out.append(Case("plan/--price nan --json", "core", "json", (*PLAN, "--price", "nan", "--json"),
                    mention=("--price", "price"), quick=True))
    out.append(Case("plan/--top 0", "core", "silent", (*PLAN, "--top", "0"), expect="sane",
                    mention=("--top",)))
    for x in ("", "abc", "0", "-5B", "nan", "inf", "1e400", "97Q", "B", "97 B", "1e30", "0.001"):
        out.append(Case(f"plan/--params {x or repr(x)}", "core", "silent",
                        ("plan", "--params", x, "--no-write"), mention=("--params", x or "''"),
                        expect="sane" if x == "97 B" else "error",
                        quick=x in ("nan", "1e30")))
    for opt in ("--routing", "--optimizer", "--recompute"):
        out.append(Case(f"plan/{opt} bogus", "core", "message", (*PLAN, opt, "bogus"),
                        mention=(opt, "bogus")))
    out += [
        Case("plan/--model and --params", "core", "message",
             ("plan", "--model", "nano-ec8", "--params", "1B", "--no-write"),
             mention=("--model", "--params")),
        Case("plan/--model unknown", "core", "message", ("plan", "--model", "nope", "--no-write"),
             mention=("nope",)),
        Case("plan/--gpus 12 not a multiple", "core", "message", (*PLAN, "--gpus", "12"),
             mention=("--gpus",)),
        Case("plan/--gpus contradicts --nodes", "core", "message",
             (*PLAN, "--gpus", "16", "--nodes", "4"), mention=("--gpus", "--nodes")),
        Case("plan/--zero 3 --ep 8 tiny cluster", "core", "silent",
             (*PLAN, "--gpus", "1", "--ep", "8"), mention=("--ep", "ep")),
        Case("plan/--json valid", "core", "json",
             ("plan", "--params", "1B", "--no-write", "--json"), expect="json", quick=True),
        Case("plan/--json tiny", "core", "json",
             ("plan", "--model", "nano-ec8", "--gpus", "1", "--no-write", "--json"), expect="json"),
    ]
    out += gpu_cases() + fit_file_cases() + plan_out_cases()
    return out


def gpu_cases() -> list[Case]:
    profiles = [
        ("empty", ""), ("binary", BINARY), ("latin1", LATIN1), ("list", "- 1\n- 2\n"),
        ("scalar", "h100\n"), ("malformed", "name: [\n"), ("int-key", acc() + "1: x\n"),
        ("no-peak", acc(peak_bf16_flops=MISSING)), ("peak=-1", acc(peak_bf16_flops=-1)),
        ("peak=0", acc(peak_bf16_flops=0)), ("peak=nan", acc(peak_bf16_flops=float("nan"))),
        ("peak=inf", acc(peak_bf16_flops=float("inf"))), ("peak=fast", acc(peak_bf16_flops="fast")),
        ("peak=list", acc(peak_bf16_flops=[1])), ("efficiency=2", acc(efficiency=2)),
        ("efficiency=0", acc(efficiency=0)), ("devices_per_node=0", acc(devices_per_node=0)),
        ("devices_per_node=2.5", acc(devices_per_node=2.5)),
        ("devices_per_node=true", acc(devices_per_node=True)),
        ("devices_per_node=2^40", acc(devices_per_node=2**40)),
        ("unknown-field", acc(colour="red")), ("notes-dict", acc(notes={"a": 1})),
        ("name-list", acc(name=[1])), ("alias-bomb", alias_bomb()), ("50mb", big(50, "name: ")),
        ("memory=1-byte", acc(memory_bytes=1)), ("two-gpus", ydump({"a": ACC, "b": ACC})),
        ("named-not-mapping", ydump({"a": 5})),
    ]
    out = []
    for slug, content in profiles:
        cat = "hang" if slug in ("alias-bomb", "50mb") else "traceback"
        fields = tuple(f for f in ACC if slug.startswith(f.split("_")[0])) + (
            ("peak_bf16_flops",) if slug.startswith("peak") else ())
        out.append(Case(f"plan/--gpu profile:{slug}", "core", cat,
                        (*PLAN, "--gpu", "gpu.yaml"), (("gpu.yaml", content),),
                        mention=("gpu.yaml", ACC["name"], *fields), isolate=cat == "hang",
                        quick=slug in ("binary", "peak=nan", "alias-bomb")))
    for name, argv, mention in [
        ("unknown", ("--gpu", "nope"), ("nope",)),
        ("empty", ("--gpu", ""), ("--gpu", "accelerator")),
        ("missing file", ("--gpu", "missing.yaml"), ("missing.yaml",)),
        ("a folder", ("--gpu", "adir/"), ("adir",)),
        ("file:NAME unknown", ("--gpu", "gpu.yaml:nope"), ("nope",)),
    ]:
        out.append(Case(f"plan/--gpu {name}", "core", "message", (*PLAN, *argv),
                        (("gpu.yaml", acc()), ("adir", DIR)), mention=mention))
    return out


def fit_file_cases() -> list[Case]:
    out = []
    quick = ("empty", "malformed", "partial", "truncated-reference")
    for slug, content in fit_file_variants():
        cat = "hang" if slug == "alias-bomb" else "traceback"
        out.append(Case(f"plan/--fit {slug}", "core", cat, (*PLAN, "--fit", "fit.yaml"),
                        (("fit.yaml", content),), mention=("fit.yaml", "--fit"),
                        isolate=cat == "hang", quick=slug in quick))
    out += [
        Case("plan/--fit missing", "core", "message", (*PLAN, "--fit", "missing.yaml"),
             mention=("missing.yaml",)),
        Case("plan/--fit a folder", "core", "traceback", (*PLAN, "--fit", "adir"),
             (("adir", DIR),), mention=("adir",)),
    ]
    return out


def plan_out_cases() -> list[Case]:
    base = ("plan", "--params", "1B")
    return [
        Case("plan/--out ''", "core", "silent", (*base, "--out", ""), mention=("--out", "''"),
             absent=("plan.yaml", "launch.sh"), quick=True),
        Case("plan/--out FILE", "core", "partial", (*base, "--out", "taken"),
             (("taken", "user data\n"),), mention=("taken",), keep=("taken",)),
        Case("plan/--out FILE/sub", "core", "traceback", (*base, "--out", "taken/sub"),
             (("taken", "user data\n"),), mention=("taken",), keep=("taken",)),
        Case("plan/--out keeps a user's file", "core", "dataloss", (*base, "--out", "p"),
             (("p/my-notes.md", "mine\n"),), expect="sane", mention=("p", "my-notes"),
             keep=("p/my-notes.md",), quick=True),
        Case("plan/failed plan writes nothing", "core", "partial",
             (*base, "--out", "p", "--fit", "fit.yaml"), (("fit.yaml", "power_laws: [\n"),),
             mention=("fit.yaml", "--fit"), absent=("p",), quick=True),
    ]


def scaling_cases() -> list[Case]:
    out = []
    quick = {"empty", "ragged", "one-row", "constant-loss", "binary", "header-only"}
    ref_fit = ("--fit", REF_FIT)
    for slug, cat, name, content, fields in table_variants():
        files = ((name, content),)
        mention = (name, *fields)
        sane = slug in ("one-kind", "compute-1e308")
        out.append(Case(f"fit/table:{slug}", "scaling", cat, ("fit", name, "--n-boot", "4"), files,
                        expect="sane" if sane else "error", mention=mention, quick=slug in quick,
                        absent=() if sane else ("fit.yaml",), isolate=slug == "constant-loss"))
        # with a saved fit, report only plots: few runs or a flat loss are no reason to refuse
        sane = sane or slug in ("one-row", "two-rows", "constant-loss")
        out.append(Case(f"report/table:{slug}", "scaling", cat,
                        ("report", name, *ref_fit, "--out", "rep"), files,
                        expect="sane" if sane else "error", mention=mention,
                        absent=() if sane else ("rep",), quick=slug == "ragged"))
    out.append(Case("fit/table:missing", "scaling", "message", ("fit", "missing.csv"),
                    mention=("missing.csv",)))
    out.append(Case("report/table:missing", "scaling", "message", ("report", "missing.csv"),
                    mention=("missing.csv",)))
    fit = ("fit", "t.csv", "--n-boot", "2")  # the nano table: a fit takes a few seconds
    NANO = (("t.csv", table(nano)),)
    opts = [("--n-boot", "-1"), ("--n-boot", "abc"), ("--holdout", "-1"), ("--holdout", "1000"),
            ("--extrapolate-to", "-1"), ("--extrapolate-to", "0"), ("--extrapolate-to", "nan"),
            ("--extrapolate-to", "inf"), ("--extrapolate-to", "-inf"), ("--extrapolate-to", "abc"),
            ("--extrapolate-to", "1e400"), ("--seed", "-1"), ("--seed", "abc")]
    for opt, x in opts:
        out.append(Case(f"fit/{opt} {x}", "scaling", "usage" if x == "abc" else "silent",
                        (*fit, opt, x), NANO, mention=(opt, opt.lstrip("-")),
                        absent=("fit.yaml",),
                        quick=opt == "--extrapolate-to" and x in ("-1", "nan", "0")))
    out += [
        Case("fit/--n-boot huge", "scaling", "hang", (*fit[:2], "--n-boot", "1000000000"), NANO,
             expect="sane", mention=("--n-boot",), isolate=True),
        Case("fit/--out ''", "scaling", "silent", (*fit, "--out", ""), NANO,
             mention=("--out", "''")),
        Case("fit/--out a folder", "scaling", "traceback", (*fit, "--out", "adir"),
             (*NANO, ("adir", DIR)), mention=("adir",)),
        Case("fit/--out under a file", "scaling", "traceback", (*fit, "--out", "taken/fit.yaml"),
             (*NANO, ("taken", "user data\n")), mention=("--out", "taken"), keep=("taken",),
             quick=True),
        Case("fit/--json small", "scaling", "json", ("fit", "small.csv", "--n-boot", "4", "--json"),
             SMALL, expect="json"),
        Case("fit/--json nano", "scaling", "json", (*fit, "--json"), NANO, expect="json",
             quick=True),
        Case("fit/--json one kind", "scaling", "json", ("fit", "t.csv", "--n-boot", "4", "--json"),
             (("t.csv", table(lambda d: d[d.card.isin(["nano-ec8", "micro-ec8"])])),),
             expect="json"),
        Case("fit/--json far extrapolation", "scaling", "json",
             (*fit, "--json", "--extrapolate-to", "1e300"), NANO, expect="json"),
        Case("fit/--json reference table", "scaling", "json",
             ("fit", REF_TABLE, "--json", "--out", "fit.yaml"), expect="json", slow=True,
             timeout=600, isolate=True),
    ]
    rep = ("report", "small.csv", "--out", "rep")
    for slug, content in fit_file_variants():
        out.append(Case(f"report/--fit {slug}", "scaling",
                        "hang" if slug == "alias-bomb" else "traceback",
                        (*rep, "--fit", "fit.yaml"), (*SMALL, ("fit.yaml", content)),
                        mention=("fit.yaml", "--fit"), absent=("rep",),
                        quick=slug in ("empty", "partial"), isolate=slug == "alias-bomb"))
    out += [
        Case("report/--fit missing", "scaling", "silent",
             ("report", "t.csv", "--out", "rep", "--fit", "missing.yaml"), NANO,
             mention=("missing.yaml",), absent=("rep",), quick=True, isolate=True),
        Case("report/--out FILE", "scaling", "partial",
             ("report", "small.csv", *ref_fit, "--out", "taken"),
             (*SMALL, ("taken", "user data\n")), mention=("taken",), keep=("taken",)),
        Case("report/--out FILE/sub", "scaling", "traceback",
             ("report", "small.csv", *ref_fit, "--out", "taken/rep"),
             (*SMALL, ("taken", "user data\n")), mention=("--out", "taken"), keep=("taken",),
             quick=True),
        Case("report/--json", "scaling", "json",
             ("report", "small.csv", *ref_fit, "--out", "rep", "--json"), SMALL, expect="json",
             quick=True),
        # one kind: what is checked is stdout while report fits (20 resamples)
        Case("report/--json while fitting", "scaling", "json",
             ("report", "t.csv", "--out", "rep", "--n-boot", "20", "--json"),
             (("t.csv", table(lambda d: d[d.card.isin(["nano-ec8", "micro-ec8"])])),),
             expect="json", quick=True, timeout=120),
    ]
    return out


def eval_cases() -> list[Case]:
    out = []
    quick = {"run.json-malformed", "summary-malformed", "metrics-garbage", "card-missing"}
    for slug, cat, files, mention in run_dir_variants():
        out.append(Case(f"validate/run:{slug}", "eval", cat, ("validate", "run"), files,
                        mention=("run", *mention), quick=slug in quick, timeout=60))
        out.append(Case(f"adaptive/run:{slug}", "eval", cat, ("adaptive", "run"), files,
                        mention=("run", *mention), isolate=True, timeout=60))
    gpu = [("malformed", "{"), ("list", "[]"), ("no-configs", "{}"),
           ("configs-dict", '{"configs": {}}'),
           ("config-no-card", '{"configs": [{"model": "x"}]}'),
           ("config-bad-card",
            '{"configs": [{"model": "x", "card": {"name": "x", "hidden_size": -1}}]}'),
           ("config-bad-numbers", '{"configs": [{"model": "x", "card": {"name": "nano-ec8"}, '
                                  '"world": "two", "step_s": "slow"}]}'),
           ("binary", BINARY)]
    for slug, content in gpu:
        out.append(Case(f"validate/gpu-file:{slug}", "eval", "traceback", ("validate", "gpu.json"),
                        (("gpu.json", content),), mention=("gpu.json",), timeout=60,
                        quick=slug == "config-no-card"))
    out += [
        Case("validate/missing", "eval", "message", ("validate", "nope"), mention=("nope",)),
        Case("validate/a file", "eval", "message", ("validate", "notes.txt"),
             (("notes.txt", "hi\n"),), mention=("notes.txt",)),
        Case("validate/--calibrate-on unknown", "eval", "message",
             ("validate", "run", "--calibrate-on", "nope"), run_dir(),
             mention=("nope", "--calibrate-on"), timeout=60),
        Case("validate/--csv a folder", "eval", "traceback", ("validate", "run", "--csv", "adir"),
             (*run_dir(), ("adir", DIR)), mention=("adir", "--csv"), timeout=60),
        Case("validate/--csv ''", "eval", "silent", ("validate", "run", "--csv", ""), run_dir(),
             mention=("--csv", "''"), timeout=60),
        Case("validate/--save-profile a folder", "eval", "traceback",
             ("validate", "run", "--save-profile", "adir"), (*run_dir(), ("adir", DIR)),
             mention=("adir", "--save-profile"), timeout=60),
        Case("validate/--json", "eval", "json", ("validate", "run", "--json"), run_dir(),
             expect="json", timeout=60),  # a quick profile of this CPU: ~8 s, so not quick
        Case("validate/--json --profile", "eval", "json",
             ("validate", "run", "--json", "--profile", CPU_PROFILE_FILE), run_dir(),
             expect="json", timeout=60, quick=True),
        Case("validate/--json gpu file", "eval", "json",
             ("validate", GPU_FILE, "--json", "--csv", "v.csv"), expect="json", timeout=120),
    ]
    ec_run = run_dir()
    dense = run_dir(settings=settings_json(card="nano-dense", model_name="nano-dense"),
                    card_text=lambda repo: (repo / "models" / "nano-dense.yaml").read_bytes())
    for opt, x in [("--samples", "0"), ("--samples", "-1"), ("--timesteps", "0"),
                   ("--timesteps", "-1"), ("--timesteps", "100000000"),
                   ("--samples", "100000000"), ("--timesteps", "abc")]:
        out.append(Case(f"adaptive/{opt} {x}", "eval", "usage" if x == "abc" else (
            "traceback" if x == "100000000" else "silent"), ("adaptive", "run", opt, x), ec_run,
            mention=(opt, opt.lstrip("-")), isolate=True, timeout=60,
            quick=x == "100000000" and opt == "--timesteps"))
    out += [
        Case("adaptive/missing", "eval", "message", ("adaptive", "nope"), mention=("nope",),
             isolate=True),
        Case("adaptive/dense run", "eval", "message", ("adaptive", "run"), dense,
             mention=("run", "dense"), isolate=True, timeout=60),
        Case("adaptive/no checkpoint", "eval", "message", ("adaptive", "run"), ec_run,
             mention=("run", "checkpoint"), isolate=True, timeout=60),
        Case("adaptive/--out a file", "eval", "traceback", ("adaptive", "run", "--out", "taken"),
             (*ec_run, ("taken", "user data\n")), mention=("taken", "run"), keep=("taken",),
             isolate=True, timeout=60),
    ]
    return out


LAUNCH = ("launch", "nano-ec8", "--steps", "2", "--limit", "64", "--holdout", "8",
          "--dataset", "shapes", "--out", "r")


def run_cases() -> list[Case]:
    out = []
    opts = [("--nproc", "0"), ("--nproc", "-1"), ("--nproc", "1000"), ("--nproc", "abc"),
            ("--ep", "0"), ("--ep", "-1"), ("--ep", "3"), ("--ep", "16"), ("--zero", "-1"),
            ("--zero", "4"), ("--zero", "3"), ("--steps", "0"), ("--steps", "-1"),
            ("--micro-batch", "0"), ("--micro-batch", "-1"), ("--grad-accum", "0"),
            ("--limit", "0"), ("--limit", "-1"), ("--limit", "10"), ("--holdout", "-1"),
            ("--lr", "0"), ("--lr", "-1"), ("--lr", "nan"), ("--lr", "inf"), ("--warmup", "-1"),
            ("--checkpoint-every", "0"), ("--checkpoint-every", "-1"), ("--dataset", "bogus"),
            ("--optimizer", "bogus"), ("--tc-impl", "bogus"), ("--tc-impl", "deepspeed"),
            ("--compile", "bogus"),
            ("--device", "bogus"), ("--seed", "-1"), ("--seed", "abc"), ("--steps", HUGE),
            ("--cooldown-branches", "1"), ("--cooldown-branches", "abc"),
            ("--cooldown-branches", "-1")]
    for opt, x in opts:
        cat = "usage" if x == "abc" else ("hang" if x == HUGE else "silent")
        out.append(Case(f"launch/{opt} {x if x != HUGE else 'huge'}", "run", cat, (*LAUNCH, opt, x),
                        mention=(opt, opt.lstrip("-"), opt.lstrip("-").replace("-", "_")),
                        isolate=True, timeout=30, absent=("r/launch.log",),
                        quick=(opt, x) in (("--lr", "inf"), ("--nproc", "0"), ("--seed", "-1"))))
    hostfiles = [("missing", None), ("empty", ""), ("garbage", "host slots=many\n"),
                 ("binary", BINARY), ("a folder", DIR)]
    for slug, content in hostfiles:
        files = () if content is None else (("hosts", content),)
        out.append(Case(f"launch/--hostfile {slug}", "run", "message",
                        (*LAUNCH, "--hostfile", "hosts"), files, mention=("hosts", "--hostfile"),
                        isolate=True, timeout=30))
    out += [
        Case("launch/dense --ep 2", "run", "message", ("launch", "nano-dense", "--ep", "2"),
             mention=("--ep",), isolate=True, timeout=30),
        Case("launch/unknown card", "run", "message", ("launch", "nope"), mention=("nope",),
             isolate=True, timeout=30),
        Case("launch/--out a file", "run", "partial", (*LAUNCH[:-1], "taken"),
             (("taken", "user data\n"),), mention=("taken",), keep=("taken",), isolate=True,
             timeout=30),
        Case("launch/--resume without --out", "run", "message", ("launch", "nano-ec8", "--resume"),
             mention=("--resume", "--out"), isolate=True, timeout=30),
        Case("launch/--resume missing run", "run", "message", (*LAUNCH, "--resume"),
             mention=("--resume", "r"), isolate=True, timeout=30),
        Case("launch/existing run without --resume", "run", "dataloss",
             ("launch", "nano-ec8", "--out", "run"),
             run_dir(), mention=("run", "--resume"), keep=("run/metrics.jsonl", "run/run.json"),
             isolate=True, timeout=30),
    ]
    # --resume of a damaged run: refused before anything starts (the request differs from the
    # run's settings, so even a run.json that reads fine cannot launch)
    resume = ("launch", "nano-ec8", "--out", "run", "--resume", "--steps", "16")
    for slug, cat, files, mention in run_dir_variants():
        if slug.startswith(("run.json", "empty-folder", "metrics-garbage")):
            out.append(Case(f"launch/--resume run:{slug}", "run", cat, resume, files,
                            mention=("run", *mention),
                            keep=tuple(p for p, v in files if v is not DIR),
                            isolate=True, timeout=30, quick=slug == "run.json-missing-field"))
    sweep = ("sweep", "--sizes", "nano", "--variants", "dense", "--steps", "20", "--out", "sw")
    sweep_opts = [("--sizes", ""), ("--sizes", "bogus"), ("--sizes", ",,"), ("--variants", "bogus"),
                  ("--variants", ""), ("--steps", "0"), ("--steps", "-1"), ("--steps", "5"),
                  ("--budgets", "abc"), ("--budgets", "0"), ("--budgets", "-1"),
                  ("--budgets", "nan"), ("--budgets", "2"), ("--budgets", ""),
                  ("--nproc", "0"), ("--nproc", "-1"),
                  ("--micro-batch", "0"), ("--micro-batch", "-1"), ("--dataset", "bogus"),
                  ("--lr", "nan"), ("--lr", "-1"), ("--lr", "0"), ("--lr", "inf"),
                  ("--seeds", "-1"), ("--seeds", "0,0"), ("--seeds", "a"), ("--schedule", "cosine"),
                  ("--cooldown", "0"), ("--lr-search", "0.5,-1"), ("--parallel", "0"),
                  ("--holdout", "-1"), ("--limit", "9")]
    for opt, x in sweep_opts:
        out.append(Case(f"sweep/{opt} {x or repr(x)}", "run", "silent", (*sweep, opt, x),
                        mention=(opt, opt.lstrip("-"), opt.lstrip("-").replace("-", "_"),
                                 x or "''"),
                        isolate=True, timeout=30,
                        quick=(opt, x) in (("--nproc", "0"), ("--budgets", "nan"))))
    out.append(Case("sweep/--out a file", "run", "partial", (*sweep[:-1], "taken"),
                    (("taken", "user data\n"),), mention=("taken",), keep=("taken",),
                    isolate=True, timeout=30))
    for cmd in (sweep[:-1], LAUNCH[:-1]):
        out.append(Case(f"{cmd[0]}/--out under a file", "run", "traceback",
                        (*cmd, "taken/sub"), (("taken", "user data\n"),),
                        mention=("--out", "taken"), keep=("taken",), isolate=True, timeout=30,
                        quick=cmd[0] == "launch"))
    return out


def usage_cases() -> list[Case]:
    rows = [("unknown command", ("frobnicate",), ("frobnicate",)),
            ("unknown option", ("plan", "--bogus"), ("--bogus",)),
            ("extra argument", ("plan", "extra"), ("extra",)),
            ("fit without a table", ("fit",), ("TABLE", "table")),
            ("report without a table", ("report",), ("TABLE", "table")),
            ("launch without a card", ("launch",), ("CARD", "card")),
            ("validate without runs", ("validate",), ("RUNS", "runs")),
            ("adaptive without a run", ("adaptive",), ("RUN", "run")),
            ("models unknown subcommand", ("models", "frob"), ("frob",)),
            ("plans unknown subcommand", ("plans", "frob"), ("frob",)),
            ("models show two names", ("models", "show", "a", "b"), ("b",)),
            ("option without a value", ("plan", "--nodes"), ("--nodes",)),
            ("--json=1", ("models", "list", "--json=1"), ("--json",)),
            ("bool flag value", ("plan", "--active=maybe"), ("--active",))]
    return [Case(f"usage/{name}", "core", "usage", argv, mention=m,
                 quick=name in ("unknown command", "unknown option", "fit without a table"))
            for name, argv, m in rows]


def all_cases() -> list[Case]:
    cases = (card_cases() + models_cases() + plan_cases() + scaling_cases() + eval_cases()
             + run_cases() + usage_cases() + hostile_cases())
    ids = [c.id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise AssertionError(f"duplicate case ids: {sorted(dup)}")
    return cases
