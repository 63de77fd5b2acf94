"""A folder written by ``data prepare`` as a dataset the trainer reads (what ``launch --data DIR``
and ``sweep --data DIR`` load).

- ``open_prepared(DIR)``: the manifest, checked (a folder without one is an unfinished
  preparation: refused in one line);
- ``card_for_data(cfg, data)``: the card with its input shaped by the data: in_channels,
  input_size and vae_downsample follow the prepared arrays, so the token count is
  (size / patch)^2, and text_dim follows the text encoder's width. A card that cannot take
  them (class-conditioned, or a patch size that does not divide the data's size) is refused in
  one line; ``strict=True`` (a card file the user wrote) refuses an input shape that differs
  instead of reshaping, and keeps its text width (the token rows are mapped to it);
- ``prepared_splits(data, cfg, holdout=, seed=)``: the items as ``captioned.CaptionedImages``
  (pixels to [-1, 1], latents as stored; each caption's token rows padded or cut to the card's
  text_tokens and mapped to its text width by ``text_encoder.fit_text_dim``), split by item
  into training and held-out rows (``batches.holdout_rows``); the held-out items' names come
  with them, for the run record.

numpy and safetensors only until the arrays become tensors (``prepared_splits``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Conditioning, ModelConfig
from . import DataError
from .prepare import FORMAT, MANIFEST_FILE, SETTINGS_FILE
from .text_encoder import fit_text_dim

# Shape suffixes: a tensor named text_NTD has dims (N, T, D).
#   N items   T text tokens per caption   D embedding width   L token rows of a
#   shard (all items' tokens, unpadded)


@dataclass(frozen=True)
class PreparedData:
    root: Path
    manifest: dict

    @property
    def channels(self) -> int:
        return int(self.manifest["inputs"]["channels"])

    @property
    def size(self) -> int:
        """Model input pixels per side (latent pixels for a VAE's latents)."""
        return int(self.manifest["inputs"]["size"])

    @property
    def vae_downsample(self) -> int:
        return int(self.manifest["inputs"]["vae_downsample"])

    @property
    def text_dim(self) -> int:
        """Width of the stored token rows (the text encoder's)."""
        return int(self.manifest["text"]["dim"])

    @property
    def items(self) -> int:
        return int(self.manifest["counts"]["prepared"])

    def describe(self) -> dict:
        """What a run record keeps about its data."""
        m = self.manifest
        digest = hashlib.sha256((self.root / MANIFEST_FILE).read_bytes()).hexdigest()
        return {"dir": str(self.root), "manifest_sha256": digest,
                "source": m["source"]["spec"], "items": self.items,
                "inputs": m["inputs"],
                "text_encoder": {k: m["text"][k] for k in ("name", "sha256")},
                "vae": None if m["vae"] is None else {k: m["vae"][k] for k in ("name", "sha256")}}


def open_prepared(path: str | Path) -> PreparedData:
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"--data {path}: no such folder; make one with `ecdit-scale data prepare`")
    mf = root / MANIFEST_FILE
    if not mf.is_file():
        unfinished = (root / SETTINGS_FILE).is_file()
        raise DataError(f"--data {path}: " + (
            "the preparation did not finish (no manifest.json); rerun the same `data prepare` "
            "command to complete it" if unfinished else
            "not a prepared folder (no manifest.json); make one with `ecdit-scale data prepare`"))
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"--data {path}: manifest.json is damaged; "
                        "prepare the folder again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"--data {path}: manifest.json is not of format {FORMAT!r}")
    if manifest["counts"]["prepared"] < 2:
        raise DataError(f"--data {path}: holds {manifest['counts']['prepared']} prepared items; "
                        "a run needs at least 2 (one to train on, one held out)")
    return PreparedData(root, manifest)


def card_for_data(cfg: ModelConfig, data: PreparedData, *, strict: bool = False) -> ModelConfig:
    """``cfg`` with the data's input shape (see the module docstring), or one line why not."""
    where = f"--data {data.root}"
    if cfg.conditioning is not Conditioning.TEXT:
        raise DataError(f"{cfg.name}: conditioned on {cfg.conditioning.value}, not text; "
                        f"{where} holds captions: use a text-conditioned card")
    shape = (data.channels, data.size, data.vae_downsample)
    if strict and (cfg.in_channels, cfg.input_size, cfg.vae_downsample) != shape:
        raise DataError(
            f"{cfg.name}: takes {cfg.in_channels}-channel {cfg.input_size}x{cfg.input_size} "
            f"inputs (vae_downsample {cfg.vae_downsample}); {where} holds {shape[0]}-channel "
            f"{shape[1]}x{shape[1]} (vae_downsample {shape[2]}): edit the card or prepare at "
            "that shape")
    if data.size % cfg.patch_size:
        raise DataError(f"{cfg.name}: patch_size {cfg.patch_size} does not divide the data's "
                        f"{data.size}x{data.size} inputs ({where}); prepare at a resolution "
                        f"that is a multiple of {cfg.patch_size * data.vae_downsample}")
    if strict:
        return cfg  # its own text width: the rows are mapped to it (``load_arrays``)
    return dataclasses.replace(cfg, in_channels=data.channels, input_size=data.size,
                               vae_downsample=data.vae_downsample, text_dim=data.text_dim)


def check_data_fits(cfg: ModelConfig, data: PreparedData) -> None:
    """One line if ``cfg`` (already shaped) cannot read ``data`` as it stands."""
    card_for_data(cfg, data, strict=True)


@dataclass(frozen=True)
class PreparedArrays:
    """Every prepared item, in source order: images (pixels NHW3 uint8 or latents NCHW float32),
    token rows padded to ``text_tokens`` (N, T, D) float32, lengths, names, captions."""

    images: np.ndarray
    is_latent: bool
    text_NTD: np.ndarray
    lengths_N: np.ndarray
    keys: list[str]
    captions: list[str]


def load_arrays(data: PreparedData, *, text_tokens: int, text_dim: int | None = None
                ) -> PreparedArrays:
    from safetensors.numpy import load_file

    from .prepare import shard_header

    images, texts, lengths, keys, captions = [], [], [], [], []
    for shard in data.manifest["shards"]:
        path = data.root / shard["file"]
        if not path.is_file():
            raise DataError(f"--data {data.root}: {shard['file']} is missing; prepare again")
        meta, _ = shard_header(path)
        arrays = load_file(str(path))
        images.append(arrays[data.manifest["inputs"]["array"]])
        texts.append(_pad_rows(arrays["text"], arrays["text_len"], text_tokens))
        lengths.append(np.minimum(arrays["text_len"], text_tokens))
        keys += meta["keys"]
        captions += meta["captions"]
    text = np.concatenate(texts)
    if text_dim is not None:
        text = fit_text_dim(text, text_dim)
    return PreparedArrays(images=np.concatenate(images),
                          is_latent=data.manifest["inputs"]["array"] == "latents",
                          text_NTD=text, lengths_N=np.concatenate(lengths), keys=keys,
                          captions=captions)


def _pad_rows(rows_LD: np.ndarray, lengths_N: np.ndarray, text_tokens: int) -> np.ndarray:
    """Ragged token rows -> (N, text_tokens, D), zero padding, each caption cut to its first
    ``text_tokens`` rows."""
    out = np.zeros((len(lengths_N), text_tokens, rows_LD.shape[1]), np.float32)
    starts = np.concatenate([[0], np.cumsum(lengths_N)[:-1]]).astype(np.int64)
    for i, (s, n) in enumerate(zip(starts, lengths_N, strict=False)):
        k = min(int(n), text_tokens)
        out[i, :k] = rows_LD[s:s + k]
    return out


@dataclass(frozen=True)
class PreparedSplit:
    train: object  # captioned.CaptionedImages
    held: object  # captioned.CaptionedImages
    held_keys: list[str]  # the held-out items by name (for the run record)


def prepared_splits(data: PreparedData, cfg: ModelConfig, *, holdout: int, seed: int,
                    limit: int | None = None) -> PreparedSplit:
    """The run's training and held-out items, shaped for ``cfg`` (``check_data_fits`` first);
    ``limit``: only the first N items (source order) before the split, as ``--limit``."""
    import torch

    from .batches import holdout_rows, subset
    from .captioned import CaptionedImages, to_unit_range

    check_data_fits(cfg, data)
    if limit is not None and (not isinstance(limit, int) or limit < 2):
        raise DataError(f"limit = {limit!r}: must be None or an integer >= 2")
    a = load_arrays(data, text_tokens=cfg.text_tokens, text_dim=cfg.text_dim)
    if limit is not None and limit < len(a.keys):
        a = PreparedArrays(images=a.images[:limit], is_latent=a.is_latent,
                           text_NTD=a.text_NTD[:limit], lengths_N=a.lengths_N[:limit],
                           keys=a.keys[:limit], captions=a.captions[:limit])
    images = torch.from_numpy(a.images) if a.is_latent else to_unit_range(a.images)
    ds = CaptionedImages(images=images, text=torch.from_numpy(a.text_NTD),
                         text_len=torch.from_numpy(a.lengths_N), captions=a.captions)
    train, held = holdout_rows(len(ds), holdout, seed)
    return PreparedSplit(train=subset(ds, train), held=subset(ds, held),
                         held_keys=[a.keys[i] for i in held])
