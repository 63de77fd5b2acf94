"""``ecdit-scale data prepare``: a team's images and captions (``sources``) as the arrays the
trainer reads (``prepared``), encoded once by frozen encoders (``encoders``).

Every image is resized (shorter side to R, bicubic) and centre-cropped to R x R, then kept as
uint8 pixels or encoded by a VAE; every caption becomes its text encoder's per-token outputs.
The output folder holds

- ``prepare.json``: the settings (source, resolution, encoders' hashes, shard size), written
  first; a rerun with other settings is refused, a rerun with the same ones resumes;
- ``shards/NNNNN.safetensors``: shard k covers source items k x S .. k x S + S - 1 (S = shard
  size). Arrays ``pixels`` (n, R, R, 3) uint8 or ``latents`` (n, C, R/f, R/f) float32; ``text``
  (sum of lengths, D) float32, the captions' token rows one after the other, and ``text_len``
  (n,) int64; the header names each row's item and caption and the items skipped. Each shard
  is written whole or not at all (``files.atomic_output``), so an interrupted preparation
  resumes at the first missing shard and loses at most the shard it was writing;
- ``manifest.json``: counts, shapes, encoders (names, hashes), source and skipped items
  (named, with the reason), written last: a folder with a manifest is complete.

Damaged images (anything Pillow cannot decode), missing files and items without a caption are
counted, named and skipped. No torch here: the encoders load it.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_write_text, check_output_folder, strict_json
from . import DataError
from .sources import Item, Source, count_items, iter_items, open_source

FORMAT = "ecdit-scale prepared data v1"
SETTINGS_FILE, MANIFEST_FILE, SHARDS_DIR = "prepare.json", "manifest.json", "shards"
RESOLUTION_RANGE = (8, 4096)
TEXT_TOKENS_DEFAULT = 77  # the paper's cards; the trainer truncates to a card's own count
SHARD_SIZE_DEFAULT = 1024
PROGRESS_EVERY = 64  # items between progress calls inside a shard

Progress = Callable[[int, int], None]  # (source items done, source items in all)


@dataclass(frozen=True)
class PrepareRequest:
    source: str
    out: str
    resolution: int
    vae: str | None = None
    text_encoder: str | None = None  # None: the bundled all-MiniLM-L6-v2
    text_tokens: int = TEXT_TOKENS_DEFAULT
    shard_size: int = SHARD_SIZE_DEFAULT
    device: str = "auto"
    workers: int = 1  # threads decoding images (the output does not depend on it)


@dataclass(frozen=True)
class PrepareResult:
    out: Path
    manifest: dict
    shards_written: int  # by this call (0: the folder was complete already)
    shards_kept: int  # found complete from an earlier, interrupted call


def check_request(req: PrepareRequest) -> None:
    """One line for a bad value, before any slow work."""
    lo, hi = RESOLUTION_RANGE
    if not isinstance(req.resolution, int) or not lo <= req.resolution <= hi:
        raise DataError(f"--resolution {req.resolution!r}: must be an integer in {lo}..{hi}")
    if not isinstance(req.text_tokens, int) or not 1 <= req.text_tokens <= 4096:
        raise DataError(f"--text-tokens {req.text_tokens!r}: must be an integer in 1..4096")
    if not isinstance(req.shard_size, int) or not 1 <= req.shard_size <= 1_000_000:
        raise DataError(f"--shard-size {req.shard_size!r}: must be an integer in 1..1000000")
    if not isinstance(req.workers, int) or not 1 <= req.workers <= 256:
        raise DataError(f"--workers {req.workers!r}: must be an integer in 1..256")
    if "{" not in str(req.source) and not Path(req.source).exists():  # brace patterns: opened later
        raise DataError(f"source {str(req.source)!r}: no such file or folder")
    check_output_folder(req.out, "--out")


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def load_image(data: bytes, resolution: int) -> np.ndarray:
    """Encoded image bytes -> (R, R, 3) uint8: shorter side resized to R (bicubic), centre
    crop. Transparent pixels are composited on white. Raises on anything Pillow cannot read."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (resolution, resolution))  # JPEG: decode at the smallest scale >= R
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            img = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img.alpha_composite(rgba)
            img = img.convert("RGB")
        else:
            img = im.convert("RGB")
    w, h = img.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    if size != (w, h):
        img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0 if scale < 1 else None)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return np.asarray(img.crop((left, top, left + resolution, top + resolution)), dtype=np.uint8)


def _reason(exc: Exception) -> str:
    """'damaged image (Error: message)', without object addresses (the same on every run)."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", first).strip()
    return f"damaged image ({type(exc).__name__}{': ' + text[:120] if text else ''})"


# ---------------------------------------------------------------------------------------------
# Settings, shards, manifest
# ---------------------------------------------------------------------------------------------


def _settings(req: PrepareRequest, source: Source, items: int, vae, text) -> dict:
    spec = str(Path(source.spec).absolute())
    return {"format": FORMAT, "source": {"kind": source.kind, "spec": spec, "items": items},
            "resolution": req.resolution, "text_tokens": req.text_tokens,
            "shard_size": req.shard_size,
            "vae": None if vae is None else {"name": vae.path.name, "sha256": vae.sha256},
            "text_encoder": {"name": text.name, "sha256": text.sha256}}


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            out.append(f"{k} {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}")
    return out


def _claim_folder(out: Path, settings: dict) -> None:
    """Write prepare.json into a new or empty ``out``; in a folder made by an earlier prepare,
    check that the settings are the same (then it resumes). Anything else is refused."""
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"--out {out}: {SETTINGS_FILE} is damaged; "
                            "choose a new folder") from None
        diff = _differences(old, settings)
        if diff:
            raise DataError(f"--out {out}: holds a preparation with other settings ({diff[0]}"
                            + (f"; {len(diff) - 1} more" if len(diff) > 1 else "")
                            + "); choose a new folder, or the same settings to resume")
        return
    if out.is_dir() and any(out.iterdir()):
        raise DataError(f"--out {out}: holds files this command did not write; choose a new or "
                        "empty folder")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, strict_json(settings) + "\n")


def shard_path(out: Path, k: int) -> Path:
    return out / SHARDS_DIR / f"{k:05d}.safetensors"


def _write_shard(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    from safetensors.numpy import save_file

    from ..files import atomic_output

    with atomic_output(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in meta.items()})


def shard_header(path: Path) -> tuple[dict, dict[str, list[int]]]:
    """A shard's metadata (decoded) and array shapes, without reading its arrays."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    return meta, shapes


def _decode(item: Item, resolution: int) -> np.ndarray | str:
    """The item's (R, R, 3) pixels, or why it is skipped."""
    if item.image is None:
        return item.problem or "missing image file"
    if item.caption is None:
        return item.problem
    try:
        return load_image(item.image, resolution)
    except Exception as exc:  # Pillow raises many kinds for a damaged file
        return _reason(exc)


def _encode_shard(batch: list[tuple[int, Item]], req: PrepareRequest, vae, text,
                  tick: Callable[[], None], pool) -> tuple[dict, dict]:
    """The arrays and header of one shard from its items (decoded on ``pool``'s threads when
    there is one: Pillow releases the GIL while it decodes and resizes)."""
    keys, captions, pixels, skipped = [], [], [], []
    items = [item for _, item in batch]
    decoded = (pool.map(_decode, items, [req.resolution] * len(items)) if pool is not None
               else (_decode(item, req.resolution) for item in items))
    for item, result in zip(items, decoded, strict=True):
        tick()
        if isinstance(result, str):
            skipped.append([item.key, result])
            continue
        pixels.append(result)
        keys.append(item.key)
        captions.append(item.caption)
    r = req.resolution
    px = np.stack(pixels) if pixels else np.zeros((0, r, r, 3), np.uint8)
    arrays = {"latents": vae.encode(px)} if vae is not None else {"pixels": px}
    rows, lengths = text.encode(captions, req.text_tokens)
    arrays["text"] = (np.concatenate(rows).astype(np.float32) if rows
                      else np.zeros((0, text.dim), np.float32))
    arrays["text_len"] = lengths
    meta = {"first_item": batch[0][0], "source_items": len(batch), "keys": keys,
            "captions": captions, "skipped": skipped}
    return arrays, meta


def _manifest(out: Path, settings: dict, source: Source, n_shards: int, vae, text) -> dict:
    shards, skipped, prepared, shapes = [], [], 0, {}
    for k in range(n_shards):
        meta, shapes = shard_header(shard_path(out, k))
        shards.append({"file": shard_path(out, k).relative_to(out).as_posix(),
                       "items": len(meta["keys"]), "first_item": meta["first_item"],
                       "source_items": meta["source_items"]})
        skipped += [{"key": key, "reason": reason} for key, reason in meta["skipped"]]
        prepared += len(meta["keys"])
    by_reason: dict[str, int] = {}
    for s in skipped:
        head = s["reason"].split(" (")[0]
        by_reason[head] = by_reason.get(head, 0) + 1
    array = "latents" if vae is not None else "pixels"
    shape = shapes[array][1:]
    r = settings["resolution"]
    inputs = ({"array": "latents", "channels": shape[0], "size": shape[1],
               "vae_downsample": r // shape[1], "dtype": "float32", "layout": "NCHW"}
              if vae is not None else
              {"array": "pixels", "channels": 3, "size": r, "vae_downsample": 1,
               "dtype": "uint8", "layout": "NHWC"})
    return {
        "format": FORMAT,
        "source": {**source.describe(), "spec": settings["source"]["spec"],
                   "items": settings["source"]["items"]},
        "resolution": r,
        "inputs": inputs,
        "text": {**text.describe(), "stored_tokens_max": settings["text_tokens"],
                 "dtype": "float32", "layout": "ragged: text (sum of text_len, dim)"},
        "vae": None if vae is None else vae.describe(),
        "counts": {"source_items": settings["source"]["items"], "prepared": prepared,
                   "skipped": len(skipped), "skipped_by_reason": by_reason},
        "skipped": skipped,
        "shards": shards,
        "settings": settings,
    }


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _decoders(workers: int):
    if workers <= 1:
        yield None
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        yield pool


def prepare(req: PrepareRequest, progress: Progress | None = None) -> PrepareResult:
    """Prepare ``req.source`` into ``req.out`` (see the module docstring); resumes an
    interrupted call with the same settings. ``progress(done, total)`` is called as items go."""
    check_request(req)
    source = open_source(req.source)  # an empty source is refused here
    n_items = count_items(source)
    from .encoders import load_text_encoder, load_vae

    vae = load_vae(req.vae, req.device) if req.vae else None
    if vae is not None and req.resolution % vae.downsample:
        raise DataError(f"--resolution {req.resolution}: must be a multiple of {vae.downsample}, "
                        f"the downsampling of --vae {req.vae}")
    text = load_text_encoder(req.text_encoder, req.device)
    if req.text_tokens > text.max_tokens:
        raise DataError(f"--text-tokens {req.text_tokens}: {text.name} reads at most "
                        f"{text.max_tokens} tokens")
    out = Path(req.out)
    settings = _settings(req, source, n_items, vae, text)
    _claim_folder(out, settings)
    manifest_path = out / MANIFEST_FILE
    n_shards = -(-n_items // req.shard_size)
    done = {k for k in range(n_shards) if shard_path(out, k).is_file()}
    total_done = sum(min(req.shard_size, n_items - k * req.shard_size) for k in done)
    report = progress or (lambda d, t: None)
    report(total_done, n_items)
    written = 0
    if len(done) < n_shards or not manifest_path.is_file():
        wanted = lambda i: (i // req.shard_size) not in done  # noqa: E731
        batch: list[tuple[int, Item]] = []
        counter = [total_done]

        def tick() -> None:
            counter[0] += 1
            if counter[0] % PROGRESS_EVERY == 0:
                report(counter[0], n_items)

        with _decoders(req.workers) as pool:
            for index, item in iter_items(source, wanted):
                if item is None:
                    continue
                batch.append((index, item))
                if index == n_items - 1 or (index + 1) % req.shard_size == 0:  # shard's last
                    arrays, meta = _encode_shard(batch, req, vae, text, tick, pool)
                    _write_shard(shard_path(out, index // req.shard_size), arrays, meta)
                    written += 1
                    report(counter[0], n_items)
                    batch = []
        missing = [k for k in range(n_shards) if not shard_path(out, k).is_file()]
        if missing:  # the source changed under us (fewer items than counted)
            raise DataError(f"source {req.source!r}: changed while it was read (shard {missing[0]} "
                            "has no items); prepare it again into a new folder")
        manifest = _manifest(out, settings, source, n_shards, vae, text)
        atomic_write_text(manifest_path, strict_json(manifest) + "\n")
    manifest = json.loads(manifest_path.read_text())
    return PrepareResult(out=out, manifest=manifest, shards_written=written,
                         shards_kept=len(done))
