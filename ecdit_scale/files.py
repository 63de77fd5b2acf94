"""Files the tool reads and writes: atomic writes (files and whole folders), strict JSON,
and YAML loaded with limits a hostile file cannot get past (size, aliases).

Every writer in the package goes through here, so a reader sees the old file or folder or the
whole new one, never half of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import json
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

# A card, plan, profile or fit is a few KB; anything this large is not one of ours.
MAX_YAML_BYTES = 4 * 1024 * 1024
# Our files use no anchors; a handful are allowed, a "billion laughs" document is not (k
# aliases can nest into about e^(k/e) values: 16 allow a few hundred).
MAX_YAML_ALIASES = 16


# ---------------------------------------------------------------------------------------------
# Plain data
# ---------------------------------------------------------------------------------------------


def to_plain(obj: Any) -> Any:
    """Dataclasses, enums, tuples -> dicts, values, lists (for YAML and JSON)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def json_default(obj: Any) -> Any:
    """json.dumps fallback for our dataclasses, numpy scalars/arrays and enums."""
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, enum.Enum):
        return obj.value
    return str(obj)


def finite_or_none(obj: Any) -> Any:
    """Replace NaN and +-inf floats (at any depth) by None, so JSON stays strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def strict_json(data: Any, *, indent: int | None = 2, compact: bool = False) -> str:
    """JSON that strict parsers accept: non-finite numbers become null."""
    plain = json.loads(json.dumps(data, default=json_default))  # numpy, enums, dataclasses
    seps = (",", ":") if compact else None
    return json.dumps(finite_or_none(plain), indent=None if compact else indent,
                      separators=seps, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and move it
    over ``path`` (os.replace), so readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block succeeds, the folder
    replaces ``path`` whole (files of an older ``path`` that the block did not write are kept
    only if the block copied them). A failed block leaves ``path`` as it was. Concurrent
    writers: the last one wins, and ``path`` always holds one writer's whole folder."""
    path = Path(path)
    if str(path).strip() == "":
        raise ConfigError("output folder '': give a folder name")
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old: Path | None = None
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        for attempt in range(_SWAP_ATTEMPTS):
            kind = path_kind(path)  # one stat: another writer may swap the folder any time
            if kind == "other":
                raise ConfigError(f"{path}: exists and is not a folder")
            if kind == "dir":
                if old is None:
                    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old",
                                                dir=path.parent))
                try:
                    os.replace(path, old / str(attempt))
                except FileNotFoundError:  # another writer moved it first
                    continue
            try:
                os.replace(tmp, path)
                break
            except OSError as exc:  # another writer put its folder there in between
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        else:
            raise ConfigError(f"{path}: other processes keep replacing this folder; try again")
    except BaseException:
        if old is not None and (old / "0").exists() and not path.exists():
            os.replace(old / "0", path)  # put the previous folder back
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def path_kind(path: Path) -> str:
    """'missing', 'dir' or 'other', from a single lstat (no check-then-act race)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing"
    return "dir" if stat.S_ISDIR(mode) else "other"


def same_text(path: str | os.PathLike, text: str) -> bool:
    """Whether ``path`` is a file holding exactly ``text`` (False if unreadable)."""
    try:
        return Path(path).is_file() and Path(path).read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        return False


_SWAP_ATTEMPTS = 10
MAX_CARRIED_ENTRIES = 10_000


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)  # same file system (the new folder is created beside the old)
    except OSError:
        shutil.copy2(src, dst)


def check_output_file(path: str | os.PathLike, option: str) -> None:
    """Before any slow work: ``path`` can become a file, i.e. no folder on its way is an
    existing file (one line naming it otherwise)."""
    for parent in Path(path).parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{option} {path}: {parent} is a file, not a folder")
            return


def check_output_folder(path: str | os.PathLike, option: str) -> None:
    """Before any slow work: ``path`` is, or can become, a folder (one line naming the file in
    the way otherwise)."""
    if Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(f"{option} {path}: exists and is not a folder")
    check_output_file(path, option)


def write_tree(texts: dict[str, str], out_dir: str | os.PathLike, *, keep_foreign: bool,
               generated: Callable[[str, Path], bool] = lambda rel, path: False,
               mode: Callable[[str], int] = lambda rel: 0o644) -> dict[str, Path]:
    """Write ``texts`` (relative path -> text) as the folder ``out_dir``, which appears whole
    (``atomic_dir``). A file already there that is not in ``texts``: dropped when
    ``generated(rel, path)`` says this tool wrote it (stale output); otherwise it is the user's,
    and it is kept (``keep_foreign``: linked into the new folder) or the write is refused with
    a one-line ConfigError naming it. Nothing of the user's is ever deleted."""
    out = Path(out_dir)
    if str(out_dir).strip() == "":
        raise ConfigError("--out '': give a folder name")
    check_output_file(out, "--out")  # no file on the way to it
    if path_kind(out) == "other":
        raise ConfigError(f"--out {out}: exists and is not a folder")
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise ConfigError(f"--out {out}: the current folder (or one above it) cannot be replaced "
                          "as a whole; give a subfolder")
    foreign = _foreign_files(texts, out, generated)
    if foreign and not keep_foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise ConfigError(f"--out {out}: holds {foreign[0]}{more}, which this command does not "
                          "write; choose a new or empty folder, or move those files")
    with atomic_dir(out) as tmp:
        for rel in foreign:
            _link_or_copy(out / rel, tmp / rel)
        for rel, text in texts.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(mode(rel))
    return {rel: out / rel for rel in texts}


def _foreign_files(texts: dict[str, str], out: Path,
                   generated: Callable[[str, Path], bool]) -> list[str]:
    """Files in ``out`` this write would not produce (rescanned if another writer swaps the
    folder while it is read)."""
    for _ in range(_SWAP_ATTEMPTS):
        try:
            return _scan_foreign(texts, out, generated)
        except FileNotFoundError:
            continue
    raise ConfigError(f"--out {out}: other processes keep replacing this folder; try again")


def _scan_foreign(texts: dict[str, str], out: Path,
                  generated: Callable[[str, Path], bool]) -> list[str]:
    foreign: list[str] = []
    if path_kind(out) == "dir":
        for n, path in enumerate(sorted(out.rglob("*"))):
            if n > MAX_CARRIED_ENTRIES:
                raise ConfigError(f"--out {out}: holds over {MAX_CARRIED_ENTRIES:,} entries; "
                                  "choose a new or empty folder")
            if path.is_dir() and not path.is_symlink():
                continue
            rel = path.relative_to(out).as_posix()
            if rel not in texts and not generated(rel, path):
                foreign.append(rel)
    return foreign


# ---------------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------------


_BASE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _check_aliases(text: str) -> None:
    """Count the aliases of a document (the C loader has no hook for it, so this scans the
    parser's events first; only documents that could have an anchor pay for it)."""
    if "&" not in text or "*" not in text:
        return
    aliases = 0
    for event in yaml.parse(text, Loader=_BASE_LOADER):
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise ConfigError(f"more than {MAX_YAML_ALIASES} YAML aliases; our files use none")


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(to_plain(data), sort_keys=False, default_flow_style=False)


def parse_yaml(text: str, *, source: str) -> Any:
    """Parse YAML text with the size and alias limits; errors name ``source``."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: {len(text) / 2**20:.1f} MiB is too large for a YAML file "
                          f"of ours (limit {MAX_YAML_BYTES // 2**20} MiB)")
    try:
        _check_aliases(text)
        return yaml.load(text, Loader=_BASE_LOADER)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}: malformed YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None


def read_text_file(path: str | os.PathLike, *, what: str = "file",
                   max_bytes: int | None = None) -> str:
    """Read a UTF-8 text file, with one-line errors for missing, binary or oversized files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what}")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise ConfigError(f"{path}: {size / 2**20:.1f} MiB is too large for a {what} "
                          f"(limit {max_bytes / 2**20:.0f} MiB)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text {what} (binary data?)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None


def load_yaml_file(path: str | os.PathLike, *, what: str = "file") -> Any:
    text = read_text_file(path, what=what, max_bytes=MAX_YAML_BYTES)
    return parse_yaml(text, source=str(path))


def load_json_file(path: str | os.PathLike, *, what: str = "file") -> Any:
    """A JSON file of ours (Python's reading: Infinity and NaN allowed), with the YAML files'
    size limit and one-line errors naming the file and the line."""
    text = read_text_file(path, what=what, max_bytes=MAX_YAML_BYTES)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: malformed JSON at line {exc.lineno}") from None
    except RecursionError:
        raise ConfigError(f"{path}: JSON nested too deeply") from None
