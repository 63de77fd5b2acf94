"""What a sweep's ``--sizes`` may name, and the card each (size, variant) trains.

A size is one of:

- a name of the CPU ladder (``sizes.CPU_SIZES``: nano ... base): the registry's cards
  ``<size>-<variant>`` (``nano-ec8``);
- a YAML card (a path): its backbone (width, depth, heads, recipe) with each variant's FFN;
- a parameter target (``20M``, ``1.5e8``): the dense backbone ``sizes.synthesise`` makes for
  that many total parameters, with each variant's FFN (so ``20M`` is the dense model's size
  and the MoE variants add their experts to it, as the ladder's do).

A variant is ``dense``, ``ec<E>`` or ``tc<E>`` (``sizes.expert_choice`` / ``token_choice``
with E experts). Cards other than the ladder's are written into ``<out>/cards/`` and launched
by path; with ``--data`` they are shaped for the prepared folder first
(``datasets.prepared.card_for_data``), so the launch's check that a YAML card fits the data
holds by construction.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from .. import sizes
from ..config import FFNConfig, ModelConfig, load_model_config, save_model_config
from ..errors import ConfigError

_VARIANT = re.compile(r"^(dense|ec|tc)(\d*)$")
SIZE_FORMS = ("a CPU-ladder name (" + ", ".join(sizes.CPU_SIZES) + "), a YAML card path or a "
              "parameter target like 20M")


@dataclass(frozen=True)
class SweepSize:
    label: str  # the size as runs and the table name it (no '-': run names split on it)
    base: ModelConfig | None  # None: a ladder name (the registry holds its cards)


def variant_ffn(variant: str) -> FFNConfig:
    """dense | ec<E> | tc<E> -> the FFN config (one line naming the bad variant)."""
    m = _VARIANT.match(variant)
    if not m or (m.group(1) == "dense") != (m.group(2) == "") or m.group(2).startswith("0"):
        raise ConfigError(f"--variants {variant!r}: dense, ec<E> or tc<E> (E experts, e.g. ec8)")
    if m.group(1) == "dense":
        return FFNConfig()
    e = int(m.group(2))
    return sizes.expert_choice(e) if m.group(1) == "ec" else sizes.token_choice(e)


def resolve_size(text: str) -> SweepSize:
    """One ``--sizes`` entry (see the module docstring)."""
    if text in sizes.CPU_SIZES:
        return SweepSize(text, None)
    if text.endswith((".yaml", ".yml")) or "/" in text or Path(text).is_file():
        if not Path(text).is_file():
            raise ConfigError(f"--sizes {text!r}: no such card file; give {SIZE_FORMS}")
        cfg = load_model_config(text)
        return SweepSize(re.sub(r"[^A-Za-z0-9_.]", "_", Path(text).stem), cfg)
    try:
        target = sizes.parse_count(text)
    except ConfigError:
        raise ConfigError(f"--sizes {text!r}: not {SIZE_FORMS}") from None
    from ..config import FFNKind

    base = sizes.synthesise(target, kind=FFNKind.DENSE)
    return SweepSize(text.upper().replace("-", "_"), base)


def card_of(size: SweepSize, variant: str) -> ModelConfig:
    """The config a (size, variant) trains (before any --data shaping)."""
    if size.base is None:
        return sizes.get(f"{size.label}-{variant}")
    return dataclasses.replace(size.base, name=f"{size.label}-{variant}", ffn=variant_ffn(variant))


def card_arg(size: SweepSize, variant: str, out: str | Path) -> str:
    """What a launch is given for (size, variant): the registry name, or the path of the card
    ``write_cards`` writes."""
    if size.base is None:
        return f"{size.label}-{variant}"
    return str(Path(out) / "cards" / f"{size.label}-{variant}.yaml")


def write_cards(sizes_: tuple[SweepSize, ...], variants: tuple[str, ...], out: str | Path,
                data: str | None) -> None:
    """The YAML cards of the sizes that are not the ladder's (atomic writes), shaped for the
    prepared folder ``data`` where given; the same card is written again unchanged."""
    prepared = None
    if data is not None:
        from ..datasets.prepared import open_prepared

        prepared = open_prepared(data)
    for size in sizes_:
        if size.base is None:
            continue
        for v in variants:
            cfg = card_of(size, v)
            if prepared is not None:
                from ..datasets.prepared import card_for_data

                cfg = card_for_data(cfg, prepared)
            path = Path(card_arg(size, v, out))
            path.parent.mkdir(parents=True, exist_ok=True)
            save_model_config(cfg, path)
