"""The structure drawing as a test: the layers of DESIGN.md hold for every import in ecdit_scale/.

bench/structure.py reads every module with ``ast`` (absolute, relative and function-level
imports), draws the graph (``python bench/structure.py --png out.png``) and defines the rules;
this file asserts them on the package, and checks on a small made-up package that each rule
catches what it should.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_structure():
    from conftest import bench_module

    return bench_module("structure")


structure = _load_structure()


@pytest.fixture(scope="module")
def tree():
    return structure.scan(ROOT)


def _holds(found: list[str]) -> None:
    if found:
        pytest.fail(f"{len(found)} offence(s):\n" + "\n".join(found), pytrace=False)


def test_the_scan_sees_the_whole_package(tree):
    assert len(tree.files) >= 40
    assert "ecdit_scale.config" in tree.files and "ecdit_scale.cli" in tree.files
    # function-level imports are part of the graph (the CLI imports train lazily)
    assert any(i.lazy and i.internal for i in tree.imports)


def test_every_module_has_a_layer(tree):
    _holds(structure.unplaced(tree))


def test_every_import_of_the_package_resolves(tree):
    _holds(structure.unresolved(tree))


def test_no_import_cycles_between_modules(tree):
    _holds(structure.module_cycles(tree))


def test_no_import_cycles_between_packages(tree):
    _holds(structure.unit_cycles(tree))


def test_no_upward_imports(tree):
    """config/errors/files/units <- sizes, params, hardware <- model, planner, scaling <- datasets
    <- train, evaluation <- cli; so nothing imports cli."""
    _holds(structure.upward(tree))


def test_planner_and_scaling_never_reach_torch_deepspeed_model_or_train(tree):
    _holds(structure.torch_reach(tree))


def test_rich_is_imported_only_under_cli(tree):
    _holds(structure.rich_outside_cli(tree))


def test_no_source_file_over_500_lines(tree):
    _holds(structure.long_files(tree))


# ---------------------------------------------------------------------------------------------
# The rules catch what they should, on a made-up package
# ---------------------------------------------------------------------------------------------

FAKE = {
    "__init__.py": "",
    "errors.py": "",
    "config.py": "from .errors import ConfigError\n",
    "sizes.py": "from . import config\n",
    "planner/__init__.py": "",
    # a cycle between two modules, hidden behind a function-level relative import
    "planner/a.py": "def f():\n    from .b import g\n",
    "planner/b.py": "from ..planner import a\nimport ecdit_scale.sizes\n",
    # reaches torch only through a lazy import of model
    "planner/c.py": "def f():\n    from ecdit_scale.model import net\n",
    "model/__init__.py": "",
    "model/net.py": "import torch\nfrom ..config import x\n",
    # upward: config is the bottom layer, cli the top
    "units.py": "def show():\n    from .cli import main\n    import rich.table\n",
    "cli/__init__.py": "import rich\nfrom ..planner import a\n",
    "stray.py": "from .nowhere import thing\n",
    "scaling/__init__.py": "",
    "scaling/fit.py": "x = 1\n" * 501,
}


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake")
    for name, text in FAKE.items():
        path = root / "ecdit_scale" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return structure.scan(root)


def test_relative_absolute_and_lazy_imports_resolve_to_modules(fake):
    edges = {(i.source, i.target, i.lazy) for i in fake.imports if i.internal}
    assert ("ecdit_scale.planner.a", "ecdit_scale.planner.b", True) in edges
    assert ("ecdit_scale.planner.b", "ecdit_scale.planner.a", False) in edges
    assert ("ecdit_scale.planner.b", "ecdit_scale.sizes", False) in edges
    assert ("ecdit_scale.sizes", "ecdit_scale.config", False) in edges
    assert ("ecdit_scale.config", "ecdit_scale.errors", False) in edges


def test_the_rules_find_each_offence(fake):
    assert structure.unplaced(fake) == [
        "ecdit_scale/stray.py: module ecdit_scale.stray has no layer; add its unit to LAYERS "
        "in bench/structure.py"]
    assert [line.split(":")[0] for line in structure.unresolved(fake)] == ["ecdit_scale/stray.py"]
    (cycle,) = structure.module_cycles(fake)
    assert cycle.startswith(
        "ecdit_scale.planner.a -> ecdit_scale.planner.b -> ecdit_scale.planner.a")
    assert "planner/a.py:2 (in a function)" in cycle
    (upward,) = structure.upward(fake)
    assert upward.startswith("ecdit_scale/units.py:2 (in a function): units (foundation) imports "
                             "ecdit_scale.cli")
    reach = "\n".join(structure.torch_reach(fake))
    assert "ecdit_scale/planner/c.py: ecdit_scale.planner.c -> ecdit_scale.model.net" in reach
    assert "ecdit_scale/units.py: ecdit_scale.units -> ecdit_scale.cli" in reach
    assert structure.rich_outside_cli(fake) == [
        "ecdit_scale/units.py:3 (in a function): imports rich outside cli/"]
    assert structure.long_files(fake) == ["ecdit_scale/scaling/fit.py: 501 lines (at most 500)"]


def test_a_cycle_between_packages_is_found_when_each_module_graph_is_acyclic(tmp_path):
    files = {"__init__.py": "", "cards.py": "from .planner import flops\n",
             "planner/__init__.py": "", "planner/flops.py": "",
             "planner/plan.py": "from .. import cards\n"}
    for name, text in files.items():
        (tmp_path / "ecdit_scale" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "ecdit_scale" / name).write_text(text)
    tree = structure.scan(tmp_path)
    assert structure.module_cycles(tree) == []
    (cycle,) = structure.unit_cycles(tree)
    assert cycle.startswith("cards -> planner -> cards")


def test_the_drawing_lists_every_layer_and_rule(fake):
    text = structure.draw_text(fake)
    for name, _ in structure.LAYERS:
        assert name in text
    for title, _ in structure.RULES:
        assert title in text
    assert "planner" in text and "-> " in text


def test_the_script_exits_1_on_a_broken_rule_and_2_without_a_package(fake, tmp_path, capsys):
    assert structure.main(["--root", str(fake.root)]) == 1
    assert "NO " in capsys.readouterr().out
    assert structure.main(["--root", str(tmp_path)]) == 2
    assert "no ecdit_scale/ folder" in capsys.readouterr().err


def test_ruff_is_clean():
    """``ruff check`` with the configuration in pyproject.toml (``[tool.ruff]``)."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "ecdit_scale",
                           "tests", "bench"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
