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


def test_readme_commands_install_through_the_constraints_file():
    """pyproject.toml asks for a torch range; the quick-start commands (and so CI) name the
    constraints file that picks this machine's CPU wheel."""
    assert (ROOT / "constraints.txt").is_file()
    for marker in ("main-job", "test-command"):
        words = _readme_block(marker).split()
        at = [i for i, w in enumerate(words) if w == "install" and words[i - 1] == "pip"]
        assert at, f"README's {marker} command installs nothing"
        pip_args = words[at[0] + 1:words.index("&&", at[0])]
        assert "-c" in pip_args and pip_args[pip_args.index("-c") + 1] == "constraints.txt", (
            f"README's {marker} command does not install with -c constraints.txt: {pip_args}")
