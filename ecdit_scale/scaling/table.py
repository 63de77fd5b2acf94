"""Run tables: one row per training run, the input of every scaling fit.

A run table is a pandas DataFrame (CSV or Parquet on disk) with the columns in
`REQUIRED_COLUMNS`; `alignment` (checked when present), `run_dir`, `experts` and `budget`
are optional.
`validate_run_table` turns every problem into a one-line `RunTableError` that names the
offending rows, so a user can fix the CSV without reading a traceback.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import FFNKind
from ..errors import ConfigError
from ..files import atomic_output

REQUIRED_COLUMNS = (
    "name",
    "ffn_kind",
    "params",
    "active_params",
    "images_seen",
    "tokens_seen",
    "compute_flops",
    "final_loss",
    "smoothed_loss",
)
FFN_KINDS = tuple(k.value for k in FFNKind)  # in the order reports list them

_POSITIVE_COLUMNS = {
    "compute_flops": "compute must be > 0",
    "params": "parameter counts must be > 0",
    "active_params": "parameter counts must be > 0",
    "images_seen": "images seen must be > 0",
    "tokens_seen": "tokens seen must be > 0",
}
_LOSS_COLUMNS = ("final_loss", "smoothed_loss")
# what a fit can use (heldout_loss is optional; a sweep records it at the end of every run)
LOSS_COLUMNS = ("heldout_loss", "smoothed_loss", "final_loss")
_MAX_ROWS_LISTED = 5


class RunTableError(ConfigError):
    """A run table that cannot be fitted; the message is one line naming the rows."""


def load_run_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a run table from .csv or .parquet and validate it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise RunTableError(f"run table: {path} has suffix {suffix!r}; use .csv or .parquet")
    if not path.is_file():
        raise RunTableError(f"run table {path}: no such file; `ecdit-scale sweep` writes one")
    if suffix == ".csv":
        df = _read_csv(path)
    else:
        df = _read_parquet(path)
    try:
        return validate_run_table(df)
    except RunTableError as exc:
        raise RunTableError(f"{exc}".replace("run table:", f"run table {path}:", 1)) from None


def save_run_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a run table to .csv or .parquet atomically (temp file + os.replace)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise RunTableError(f"run table: {path} has suffix {suffix!r}; use .csv or .parquet")
    with atomic_output(path) as tmp:
        if suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
    return path


def validate_run_table(df: pd.DataFrame) -> pd.DataFrame:
    """Return a copy with numeric columns as floats; raise RunTableError on any problem."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise RunTableError(
            f"run table: missing columns {', '.join(missing)}; "
            f"required: {', '.join(REQUIRED_COLUMNS)}"
        )
    if len(df) == 0:
        raise RunTableError("run table: no rows; a fit needs at least 3 runs per ffn_kind")
    df = df.reset_index(drop=True).copy()
    df["name"] = df["name"].astype(str)
    df["ffn_kind"] = df["ffn_kind"].astype(str).str.strip()
    for column in (*_POSITIVE_COLUMNS, *_LOSS_COLUMNS):
        df[column] = pd.to_numeric(df[column], errors="coerce").astype(float)
    for column in ("alignment", "heldout_loss"):
        if column in df.columns:
            df[column] = pd.to_numeric(df[column], errors="coerce").astype(float)
    problems = _problems(df)
    if problems:
        raise RunTableError("run table: " + "; ".join(problems))
    return df


def _problems(df: pd.DataFrame) -> list[str]:
    problems = []
    for column, hint in _POSITIVE_COLUMNS.items():
        bad = ~(np.isfinite(df[column]) & (df[column] > 0))
        if bad.any():
            problems.append(f"missing, non-finite or non-positive {column} in rows "
                            f"{_rows(df, bad)}; {hint}")
    for column in _LOSS_COLUMNS:
        bad = ~np.isfinite(df[column])
        if bad.any():
            problems.append(f"NaN or non-finite {column} in rows {_rows(df, bad)}; "
                            "loss must be a finite number")
        bad = np.isfinite(df[column]) & (df[column] <= 0)
        if bad.any():
            problems.append(f"non-positive {column} in rows {_rows(df, bad)}; "
                            "loss must be > 0 to be fitted in log space")
    if "heldout_loss" in df.columns:  # may be missing (NaN) in rows; never <= 0
        bad = np.isfinite(df["heldout_loss"]) & (df["heldout_loss"] <= 0)
        if bad.any():
            problems.append(f"non-positive heldout_loss in rows {_rows(df, bad)}; loss must "
                            "be > 0 to be fitted in log space")
    bad = ~df["ffn_kind"].isin(FFN_KINDS)
    if bad.any():
        kinds = sorted(set(df.loc[bad, "ffn_kind"]))
        problems.append(f"unknown ffn_kind {', '.join(map(repr, kinds))} in rows "
                        f"{_rows(df, bad)}; valid: {', '.join(FFN_KINDS)}")
    bad = df["name"].duplicated(keep=False)
    if bad.any():
        problems.append(f"duplicate name in rows {_rows(df, bad)}; run names must be unique")
    if "alignment" in df.columns:
        a = df["alignment"]
        bad = a.notna() & ~((a >= 0) & (a <= 1))
        if bad.any():
            problems.append(f"alignment outside 0..1 in rows {_rows(df, bad)}; "
                            "alignment is a GenEval-style score in [0, 1]")
    return problems


def _rows(df: pd.DataFrame, mask: pd.Series) -> str:
    """'3 (tiny-ec8-b2), 7 (small-dense-b1)' for the rows in mask, at most a few listed."""
    idx = np.flatnonzero(mask.to_numpy())
    listed = ", ".join(f"{i} ({df['name'].iat[i]})" for i in idx[:_MAX_ROWS_LISTED])
    extra = len(idx) - _MAX_ROWS_LISTED
    return listed + (f" and {extra} more" if extra > 0 else "")


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        with warnings.catch_warnings():  # a row longer than the header: an error, not a warning
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, index_col=False)
    except pd.errors.EmptyDataError:
        raise RunTableError(f"run table {path}: empty file; the first line must name the "
                            f"columns {', '.join(REQUIRED_COLUMNS)}") from None
    except UnicodeDecodeError:
        raise RunTableError(f"run table {path}: not a UTF-8 text CSV (binary data?)") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RunTableError(f"run table {path}: not a well-formed CSV ({first}); every row "
                            "needs one value per column of the header") from None
    if df.columns.duplicated().any():
        dup = sorted(set(df.columns[df.columns.duplicated()]))
        raise RunTableError(f"run table {path}: column {', '.join(dup)} appears twice in the "
                            "header")
    return df


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except ImportError as err:
        raise RunTableError(
            f"run table: reading {path} needs a Parquet engine (pip install pyarrow), "
            "or save the table as .csv"
        ) from err
