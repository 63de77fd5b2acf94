"""The package installs where GPUs live: Python 3.11 and 3.12, and a torch that is already
installed (a GPU machine's CUDA build) is kept, while CI still gets this machine's CPU wheel
through constraints.txt."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirement(name: str) -> Requirement:
    reqs = [Requirement(r) for r in _project()["dependencies"]]
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


def test_python_3_11_and_3_12_are_supported():
    spec = SpecifierSet(_project()["requires-python"])
    for version in ("3.11.0", "3.11.7", "3.12.0", "3.12.1"):
        assert spec.contains(version), f"requires-python {spec} rejects Python {version}"
    assert not spec.contains("3.10.13")


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
    (project / "ecdit_scale" / "__init__.py").write_text("")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    report = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(fake), PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_INPUT="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
         "--no-build-isolation", "--quiet", "--report", str(report), "-e", str(project)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    installs = {i["metadata"]["name"]: i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}
    assert installs == {"ecdit-scale": _project()["version"]}
