"""The one user-facing error type.

A ``ConfigError`` carries one line that names the bad value (or file) and what would be valid.
The CLI prints it on stderr and exits with code 2; nothing else is shown.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing error: one line naming the bad value and what would be valid."""
