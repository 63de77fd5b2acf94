"""CI proves the README: .ci/run ends with the README's test command, character for character."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->\s*```(?:bash|sh)?\n(.*?)\n```", text, re.S)
    assert m, f"README.md has no ```block after <!-- {marker} -->"
    return m.group(1).strip()


def test_ci_runs_the_readme_test_command_exactly():
    last = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    assert last == _readme_block("test-command")


def test_readme_main_job_runs_the_plan():
    assert "ecdit-scale plan --params 97B" in _readme_block("main-job")


def _pip_args(marker: str) -> list[str]:
    words = _readme_block(marker).split()
    at = [i for i, w in enumerate(words) if w == "install" and words[i - 1] == "pip"]
    assert at, f"README's {marker} command installs nothing"
    return words[at[0] + 1:words.index("&&", at[0])]


def test_readme_main_job_installs_the_core_only():
    """The planner needs no torch: the main job installs the package without extras."""
    args = _pip_args("main-job")
    assert args[-2:] == ["-e", "."], f"README's main job does not install the bare core: {args}"


def test_readme_test_command_installs_everything_through_the_constraints_file():
    """pyproject.toml asks for a torch range; the test command (and so CI) names the
    constraints file that picks this machine's CPU wheel, and the [test] extra (= [train] +
    pytest)."""
    assert (ROOT / "constraints.txt").is_file()
    args = _pip_args("test-command")
    assert "-c" in args and args[args.index("-c") + 1] == "constraints.txt", args
    assert args[-2:] == ["-e", "'.[test]'"], args
