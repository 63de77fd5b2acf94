"""Image-caption sources a team brings (``data prepare SRC``), read in one fixed order.

- an image folder in the Hugging Face ImageFolder layout: ``metadata.jsonl`` (or ``.csv``)
  files whose rows name an image (``file_name``, relative to that file's folder) and its
  caption (``text``, or ``caption``); without any metadata file, every image under the folder
  with a side-car caption (``cat.png`` + ``cat.txt``);
- WebDataset tar shards as img2dataset writes them (``000000001.jpg`` + ``000000001.txt`` or
  ``.json`` with a ``caption``/``text`` field): one ``.tar``, a brace pattern
  (``shards/{00000..00009}.tar``) or a folder of ``.tar`` files.

Items are numbered 0, 1, 2 ... in a fixed order (sorted files; tar members in stream order),
so that a resumed preparation finds item i where it found it before. An item without a
readable caption is yielded with ``caption=None`` and a reason: the preparation counts it and
skips it, as it does an image that does not decode. No torch, no numpy.
"""

from __future__ import annotations

import csv
import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_KEYS = ("text", "caption")  # ImageFolder's field first, then img2dataset's json field
MAX_CAPTION_BYTES = 1 << 20
TRUNCATED = "truncated"  # marks the sample a damaged shard ends in


@dataclass(frozen=True)
class Source:
    """Where the items come from: ``kind`` 'imagefolder' or 'webdataset', the spec as given, and
    the files read (the image folder, or the tar shards in order)."""

    kind: str
    spec: str
    paths: tuple[Path, ...]

    def describe(self) -> dict:
        return {"kind": self.kind, "spec": self.spec, "files": [str(p) for p in self.paths]}


@dataclass(frozen=True)
class Item:
    """One source item: a name a user can find (relative path, or ``shard.tar/key``), its image
    bytes (None if missing) and caption (None if missing, with ``problem`` saying why)."""

    key: str
    image: bytes | None
    caption: str | None
    problem: str = ""


# ---------------------------------------------------------------------------------------------
# Which kind of source
# ---------------------------------------------------------------------------------------------


def _expand_braces(pattern: str) -> list[str]:
    from braceexpand import braceexpand

    try:
        return list(braceexpand(pattern))
    except Exception as exc:  # braceexpand raises its own errors for malformed patterns
        raise DataError(f"source {pattern!r}: not a valid brace pattern ({exc})") from None


def open_source(spec: str) -> Source:
    """The source named by ``spec``; DataError (one line) if it is missing or holds no items."""
    if not str(spec).strip():
        raise DataError("source '': give an image folder, a .tar shard, a brace pattern or a "
                        "folder of .tar shards")
    spec = str(spec)
    if "{" in spec:
        paths = [Path(p) for p in _expand_braces(spec)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"source {spec!r}: {missing[0]} does not exist"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        return _checked(Source("webdataset", spec, tuple(paths)))
    path = Path(spec)
    if path.is_file():
        if not path.name.endswith(".tar"):
            raise DataError(f"source {spec!r}: a file must be a WebDataset .tar shard")
        return _checked(Source("webdataset", spec, (path,)))
    if not path.is_dir():
        raise DataError(f"source {spec!r}: no such file or folder")
    tars = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(".tar"))
    if tars:
        return _checked(Source("webdataset", spec, tuple(tars)))
    return _checked(Source("imagefolder", spec, (path,)))


def _checked(source: Source) -> Source:
    if count_items(source) == 0:
        what = ("no image files (.jpg .png .webp ...) with captions" if source.kind == "imagefolder"
                else "no image members (NNN.jpg|png|webp)")
        raise DataError(f"source {source.spec!r} is empty: it holds {what}; nothing to prepare")
    return source


# ---------------------------------------------------------------------------------------------
# Reading items
# ---------------------------------------------------------------------------------------------


def count_items(source: Source) -> int:
    """How many items ``iter_items`` yields (tar headers only; no image is decoded)."""
    return sum(1 for _ in _entries(source, lambda i: False))


def iter_items(source: Source, wanted: Callable[[int], bool] = lambda i: True
               ) -> Iterator[tuple[int, Item | None]]:
    """(index, item) for every item in order; an item whose index is not ``wanted`` is yielded
    as (index, None) without reading its bytes (a resumed preparation skips what it has)."""
    yield from _entries(source, wanted)


def _entries(source: Source, wanted: Callable[[int], bool]) -> Iterator[tuple[int, Item | None]]:
    if source.kind == "imagefolder":
        rows = _folder_rows(source.paths[0])
        for i, (key, image_path, caption, problem) in enumerate(rows):
            yield i, (_folder_item(key, image_path, caption, problem) if wanted(i) else None)
        return
    index = 0

    def wanted_now() -> bool:
        # called by _tar_groups as it reaches each sample: it must read the index then (the
        # loop below advances it), so it is not bound to a value here
        return wanted(index)

    for tar_path in source.paths:
        for key, members in _tar_groups(tar_path, wanted_now):
            if members is not None:
                yield index, _tar_item(f"{tar_path.name}/{key}", members)
            else:
                yield index, None
            index += 1


# ----- ImageFolder ------------------------------------------------------------------------------


def _caption_of(row: dict) -> str | None:
    for k in CAPTION_KEYS:
        if isinstance(row.get(k), str):
            return row[k]
    return None


def _metadata_rows(meta: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a metadata.jsonl (one JSON object a line) or metadata.csv (a
    header row naming the columns)."""
    if meta.suffix == ".csv":
        with open(meta, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for n, row in enumerate(reader, 2):
                yield n, row
        return
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{meta}: line {n} is not JSON; each line must be an object "
                            'like {"file_name": "a.png", "text": "a caption"}') from None
        yield n, row


def _folder_rows(root: Path) -> list[tuple[str, Path, str | None, str]]:
    """(key, image path, caption, problem) for every item of an image folder, in order."""
    metas = sorted(p for p in root.rglob("metadata.*") if p.name in METADATA_FILES)
    rows: list[tuple[str, Path, str | None, str]] = []
    if metas:
        for meta in metas:
            for n, row in _metadata_rows(meta):
                where = f"{meta.relative_to(root).as_posix()}:{n}"
                if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
                    raise DataError(f"{meta}: line {n} has no \"file_name\"")
                image = meta.parent / row["file_name"]
                caption = _caption_of(row)
                key = image.relative_to(root).as_posix() if image.is_relative_to(root) else where
                rows.append((key, image, caption, "" if caption is not None
                             else f"no caption (no \"text\" in {where})"))
        return rows
    for image in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS
                        and p.is_file()):
        side = image.with_suffix(".txt")
        caption, problem = None, "no caption (no side-car .txt)"
        if side.is_file():
            caption, problem = _decode_caption(side.read_bytes(), ".txt")
        rows.append((image.relative_to(root).as_posix(), image, caption, problem))
    return rows


def _folder_item(key: str, image_path: Path, caption: str | None, problem: str) -> Item:
    if not image_path.is_file():
        return Item(key, None, caption, "missing image file")
    return Item(key, image_path.read_bytes(), caption, problem)


# ----- WebDataset -------------------------------------------------------------------------------


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (dot + ext).lower()


def _tar_groups(tar_path: Path, wanted: Callable[[], bool]
                ) -> Iterator[tuple[str, dict[str, bytes] | None]]:
    """(key, {extension: bytes}) per image-bearing sample of one shard, in stream order; the
    bytes are read only when ``wanted()`` says so at the sample's first member. A shard that
    ends early (truncated download) yields the samples before the damage, and the sample it
    ends in marked ``TRUNCATED`` (a damaged item, named and skipped like a broken image)."""
    try:
        tar = tarfile.open(tar_path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{tar_path}: not a readable tar shard ({exc})") from None
    with tar:
        key, exts, data, read = None, set(), {}, False
        try:
            for member in tar:
                if not member.isfile() or member.name.startswith("._"):
                    continue
                k, ext = _split_key(member.name)
                if k != key:
                    if key is not None and exts & set(IMAGE_EXTS):
                        yield key, (data if read else None)
                    key, exts, data, read = k, set(), {}, wanted()
                exts.add(ext)
                if read and (ext in IMAGE_EXTS or ext in (".txt", ".json")):
                    try:
                        fh = tar.extractfile(member)
                        data[ext] = fh.read() if fh is not None else b""
                    except (tarfile.TarError, EOFError, OSError):
                        data[TRUNCATED] = b""  # the shard ends inside this sample: damaged
                        break
        except (tarfile.TarError, EOFError, OSError):
            pass  # a damaged header: the samples before it stand
        if key is not None and exts & set(IMAGE_EXTS):
            yield key, (data if read else None)


def _decode_caption(raw: bytes, ext: str) -> tuple[str | None, str]:
    if len(raw) > MAX_CAPTION_BYTES:
        return None, f"no caption ({ext} over {MAX_CAPTION_BYTES >> 20} MiB)"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, f"no caption ({ext} is not UTF-8)"
    if ext == ".txt":
        return text.strip(), ""
    try:
        row = json.loads(text)
    except json.JSONDecodeError:
        return None, "no caption (.json is not JSON)"
    caption = _caption_of(row) if isinstance(row, dict) else None
    return (caption.strip(), "") if caption is not None else (None, "no caption (none in .json)")


def _tar_item(key: str, members: dict[str, bytes]) -> Item:
    if TRUNCATED in members:
        return Item(key, None, None, "damaged image (the tar shard ends inside this sample)")
    image = next((members[e] for e in IMAGE_EXTS if e in members), None)
    caption, problem = None, "no caption (no .txt or .json)"
    for ext in (".txt", ".json"):
        if ext in members:
            caption, problem = _decode_caption(members[ext], ext)
            if caption is not None:
                break
    return Item(key, image, caption, problem)
