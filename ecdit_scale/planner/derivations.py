"""The printed assumptions, read from ``DERIVATIONS.md`` (shipped with the package): the lines
under a section's **Printed assumptions**, their ``{name}`` fields filled from the caller's
constants. One file holds the derivations and what ``plan`` prints about them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

DERIVATIONS = Path(__file__).with_name("DERIVATIONS.md")
MARKER = "**Printed assumptions**"


@functools.lru_cache(maxsize=1)
def _sections() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    section, listing = "", False
    for line in DERIVATIONS.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section, listing = line[3:].strip(), False
        elif line.strip() == MARKER:
            listing = True
            out[section] = []
        elif listing and line.startswith("- "):
            out[section].append(line[2:].strip())
        elif listing and line.strip():
            listing = False
    return {k: tuple(v) for k, v in out.items()}


def assumptions(section: str, **values: Any) -> tuple[str, ...]:
    """The printed assumptions of ``section``, formatted with ``values``."""
    try:
        lines = _sections()[section]
    except KeyError:
        raise KeyError(f"DERIVATIONS.md has no printed assumptions under '## {section}'") \
            from None
    return tuple(line.format(**values) for line in lines)
