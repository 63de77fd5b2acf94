"""Saved fits: ``ecdit-scale fit --out FILE`` writes one, ``report``, ``plan --fit`` and
``sweep --design isoflop --fit`` read it back. YAML, or JSON where the file name ends in
``.json``: the same fields, read about 20x faster (the package's reference fit, which every
``plan`` reads, is JSON for that reason)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..errors import ConfigError
from ..files import atomic_write_text, load_json_file, load_yaml_file
from .results import FitFileError, ScalingFit


def save_fit(fit: ScalingFit, path) -> Path:
    """Write the fit atomically (temp file + os.replace): JSON where ``path`` ends in .json
    (infinite and undefined values as Python's json writes them, Infinity and NaN, which
    ``load_fit`` reads back), YAML otherwise."""
    if is_json(path):
        text = json.dumps(fit.to_dict(), indent=1) + "\n"
    else:
        text = yaml.safe_dump(fit.to_dict(), sort_keys=False, default_flow_style=None,
                              width=100)
    return atomic_write_text(path, text)


def load_fit(path) -> ScalingFit:
    """Read a fit written by save_fit; ConfigError naming the file (and field) otherwise."""
    path = Path(path)
    where = f"scaling fit {path}"
    if not path.is_file():
        raise ConfigError(f"{where}: no such file; write one with "
                          "`ecdit-scale fit TABLE --out FILE`")
    read = load_json_file if is_json(path) else load_yaml_file
    data = read(path, what="scaling fit")
    if data is None:
        raise ConfigError(f"{where}: empty file; write a fit with "
                          "`ecdit-scale fit TABLE --out FILE`")
    try:
        return ScalingFit.from_dict(data)
    except FitFileError as exc:
        raise ConfigError(f"{where}: not a fit written by `ecdit-scale fit` ({exc})") from None


def is_json(path) -> bool:
    return Path(path).suffix.lower() == ".json"
