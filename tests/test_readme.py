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
