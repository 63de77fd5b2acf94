"""The named ladder of sizes, and the rules that synthesise a config for any parameter target.

Three families:
- ``cpu``: pixel-space 32x32 RGB, patch 4, MiniLM text (384-d), trainable on a 2-core CPU.
- ``dit``: the original DiT sizes (Peebles & Xie 2023): class-conditional, adaLN-Zero,
  learned sigma, 32x32x4 latent, patch 2/4/8.
- ``ec-dit``: the EC-DiT paper's XL/XXL/3XL/M (Table 1 as reported), dense, with 8-64 experts
  (expert choice, f_c = 2) and GShard top-2 token-choice twins at equal activated compute.

Architecture choices for the paper sizes (the paper's own tables are not available; see
shared/reference/ec-dit-facts.md): per-block adaLN-Zero, grouped-query attention in self- and
cross-attention (6 KV heads, 12 for M), 4d GELU experts, MoE in odd blocks, a 0.67B frozen text
encoder (1280-d, 77 tokens) counted in totals. With these, M-64E has 97.9B total (+0.7% vs 97.21B)
and 8.9B activated (+7.6% vs 8.3B); XL/XXL/3XL-32E land within 1.3% of 6.08/13.47/32.15B.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

from .config import AdaLN, Conditioning, FFNConfig, FFNKind, ModelConfig
from .errors import ConfigError
from .params import count_params

# ---------------------------------------------------------------------------------------------
# Recipes: the fixed parts of each family
# ---------------------------------------------------------------------------------------------

PAPER_RECIPE = dict(
    family="ec-dit", input_size=32, in_channels=4, patch_size=2, vae_downsample=8,
    learn_sigma=False, adaln=AdaLN.ZERO, conditioning=Conditioning.TEXT, text_dim=1280,
    text_tokens=77, text_encoder_params=670_000_000, count_text_encoder=True, cond_dropout=0.1,
)
CPU_RECIPE = dict(
    family="cpu", input_size=32, in_channels=3, patch_size=4, vae_downsample=1,
    learn_sigma=False, adaln=AdaLN.ZERO, conditioning=Conditioning.TEXT, text_dim=384,
    text_tokens=16, text_encoder_params=22_713_216, count_text_encoder=False, cond_dropout=0.1,
)
DIT_RECIPE = dict(
    family="dit", input_size=32, in_channels=4, vae_downsample=8, learn_sigma=True,
    adaln=AdaLN.ZERO, conditioning=Conditioning.CLASS, num_classes=1000, cond_dropout=0.1,
)

EC_CAPACITY_FACTOR = 2.0  # EC-DiT: f_c = 2 matches top-2 token choice in compute
TC_TOP_K = 2
TC_CAPACITY_FACTOR = 1.0  # k*S*1.0/E slots per expert: exactly the compute of EC with f_c = 2


def expert_choice(num_experts: int) -> FFNConfig:
    return FFNConfig(kind=FFNKind.EXPERT_CHOICE, num_experts=num_experts,
                     capacity_factor=EC_CAPACITY_FACTOR)


def token_choice(num_experts: int) -> FFNConfig:
    return FFNConfig(kind=FFNKind.TOKEN_CHOICE, num_experts=num_experts, top_k=TC_TOP_K,
                     capacity_factor=TC_CAPACITY_FACTOR)


# ---------------------------------------------------------------------------------------------
# The named ladder
# ---------------------------------------------------------------------------------------------

# name: (hidden, depth, heads, kv_heads)
CPU_SIZES = {
    "nano": (64, 4, 2, 1),
    "micro": (96, 6, 3, 1),
    "tiny": (128, 6, 4, 2),
    "mini": (192, 8, 6, 2),
    "small": (256, 10, 8, 4),
    "base": (384, 12, 12, 4),
}
DIT_SIZES = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "xl": (1152, 28, 16)}
# name: (hidden, dense depth, MoE depth, heads, kv_heads)
PAPER_SIZES = {
    "xl": (1152, 28, 28, 18, 6),
    "xxl": (1536, 38, 38, 24, 6),
    "3xl": (2304, 42, 42, 36, 6),
    "m": (3072, 46, 38, 48, 12),
}
PAPER_EXPERTS = (8, 16, 32, 64)
CPU_EXPERTS = (8, 16)
# reported totals (text encoder included), for the cards and tests
PAPER_REPORTED_TOTALS = {
    "ecdit-xl": 1.47e9, "ecdit-xxl": 2.35e9, "ecdit-3xl": 4.50e9, "ecdit-m": 8.03e9,
    "ecdit-xl-32e": 6.08e9, "ecdit-xxl-32e": 13.47e9, "ecdit-3xl-32e": 32.15e9,
    "ecdit-m-64e": 97.21e9,
}
PAPER_REPORTED_ACTIVE = {"ecdit-m-64e": 8.3e9}


def _cpu(name: str, ffn: FFNConfig, note: str) -> ModelConfig:
    d, depth, heads, kv = CPU_SIZES[name]
    suffix = {FFNKind.DENSE: "dense", FFNKind.EXPERT_CHOICE: f"ec{ffn.num_experts}",
              FFNKind.TOKEN_CHOICE: f"tc{ffn.num_experts}"}[ffn.kind]
    return ModelConfig(name=f"{name}-{suffix}", hidden_size=d, depth=depth, num_heads=heads,
                       num_kv_heads=kv, ffn=ffn, notes=note, **CPU_RECIPE)


def _paper(size: str, ffn: FFNConfig) -> ModelConfig:
    d, dense_depth, moe_depth, heads, kv = PAPER_SIZES[size]
    if ffn.kind is FFNKind.DENSE:
        name, depth = f"ecdit-{size}", dense_depth
    else:
        tail = "" if ffn.kind is FFNKind.EXPERT_CHOICE else "-tc"
        name, depth = f"ecdit-{size}-{ffn.num_experts}e{tail}", moe_depth
    note = (
        f"EC-DiT-{size.upper()} as reported in Table 1. Choices that land it near the paper's "
        "totals: per-block adaLN-Zero; GQA in self- and cross-attention; full-size 4d GELU "
        "experts in odd blocks; 0.67B frozen text encoder (1280-d, 77 tokens) counted. "
        "Routing group = one image (256 tokens)."
    )
    if ffn.kind is FFNKind.TOKEN_CHOICE:
        note += " Token-choice twin: GShard top-2, capacity factor 1.0 = EC f_c=2 compute."
    return ModelConfig(name=name, hidden_size=d, depth=depth, num_heads=heads, num_kv_heads=kv,
                       ffn=ffn, notes=note, **PAPER_RECIPE)


def _dit(size: str, patch: int) -> ModelConfig:
    d, depth, heads = DIT_SIZES[size]
    return ModelConfig(
        name=f"dit-{size}-{patch}", hidden_size=d, depth=depth, num_heads=heads, patch_size=patch,
        notes=f"DiT-{size.upper()}/{patch} (Peebles & Xie 2023, Table 1). The fixed sin-cos "
        "position embedding is a buffer here, not a parameter: counts are (32/p)^2*d below "
        "the number DiT's train.py prints.",
        **DIT_RECIPE,
    )


def _build_registry() -> dict[str, ModelConfig]:
    reg: list[ModelConfig] = []
    for size in CPU_SIZES:
        reg.append(_cpu(size, FFNConfig(), "CPU ladder, dense baseline."))
        for e in CPU_EXPERTS:
            reg.append(_cpu(size, expert_choice(e),
                            f"CPU ladder, expert choice f_c=2, {e} experts."))
            reg.append(_cpu(size, token_choice(e), f"CPU ladder, GShard top-2 twin, {e} experts."))
    for size in DIT_SIZES:
        for patch in (2, 4, 8):
            reg.append(_dit(size, patch))
    for size in PAPER_SIZES:
        reg.append(_paper(size, FFNConfig()))
        for e in PAPER_EXPERTS:
            reg.append(_paper(size, expert_choice(e)))
            reg.append(_paper(size, token_choice(e)))
    return {cfg.name: cfg for cfg in reg}


REGISTRY: dict[str, ModelConfig] = _build_registry()


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> ModelConfig:
    try:
        return REGISTRY[name]
    except KeyError:
        close = [n for n in REGISTRY if name.lower() in n][:5]
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `ecdit-scale models list`"
        raise ConfigError(f"unknown model {name!r}{hint}") from None


# ---------------------------------------------------------------------------------------------
# Parameter targets: "97B", "1.5e9", "350M"
# ---------------------------------------------------------------------------------------------

_SUFFIX = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
# 50K: a width of 32 at depth 2 on the CPU recipe (~60K, most of it the text and timestep
# embeddings): the sizes below the CPU ladder that an IsoFLOP level of ~1e11 FLOPs needs
MIN_TARGET, MAX_TARGET = 50e3, 200e9


def parse_count(text: str | float | int) -> int:
    """Parse a parameter count like '97B', '350M', '1.2e9' (K/M/B/T suffixes)."""
    s = str(text).strip().upper()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:E[+-]?[0-9]+)?)\s*([KMBGT]?)", s)
    if not m:
        raise ConfigError(
            f"--params {text!r}: not a parameter count; write a positive number with an optional "
            "K/M/B/T suffix, e.g. 97B, 350M, 1.5e9"
        )
    value = float(m.group(1)) * _SUFFIX[m.group(2)]
    if not MIN_TARGET <= value <= MAX_TARGET:
        raise ConfigError(
            f"--params {text!r} = {value:.3g} parameters: targets must lie between 50K and 200B"
        )
    return int(value)


@dataclass(frozen=True, kw_only=True)
class Resolved:
    config: ModelConfig
    target: int
    active: bool  # the target counts activated parameters
    synthesised: bool
    achieved: int

    @property
    def relative_error(self) -> float:
        return self.achieved / self.target - 1.0


MATCH_TOLERANCE = 0.03  # a named config within 3% of the target is returned as is


def _measure(cfg: ModelConfig, active: bool) -> int:
    b = count_params(cfg)
    return b.active_params if active else b.total_params


def resolve(params: str | int | float, *, active: bool = False,
            kind: FFNKind | str = FFNKind.EXPERT_CHOICE) -> Resolved:
    """A named config near the target, or a synthesised one (rules in ``synthesise``)."""
    target = parse_count(params)
    kind = FFNKind(kind)
    family = "ec-dit" if target >= SMALL_LIMIT else "cpu"
    candidates = [c for c in REGISTRY.values() if c.family == family and c.ffn.kind is kind]
    if candidates:
        best = min(candidates, key=lambda c: abs(math.log(_measure(c, active) / target)))
        got = _measure(best, active)
        if abs(got / target - 1) <= MATCH_TOLERANCE:
            return Resolved(config=best, target=target, active=active, synthesised=False,
                            achieved=got)
    cfg = synthesise(target, active=active, kind=kind)
    return Resolved(config=cfg, target=target, active=active, synthesised=True,
                    achieved=_measure(cfg, active))


# ---------------------------------------------------------------------------------------------
# Synthesis rules (all of them live here)
# ---------------------------------------------------------------------------------------------

SMALL_LIMIT = 1e9  # below: the CPU recipe (trainable here); above: the paper's recipe
# (hidden, depth) anchors from DiT and EC-DiT; depth is interpolated in log(hidden) between them
DEPTH_ANCHORS = ((64, 4), (128, 6), (256, 10), (384, 12), (768, 12), (1024, 24), (1152, 28),
                 (1536, 38), (2304, 42), (3072, 46), (8192, 64))


def experts_for_target(target: float) -> int:
    """Expert count by scale, following the paper's ladder (XL-32E ~6B, M-64E ~97B)."""
    if target >= 50e9:
        return 64
    if target >= 5e9:
        return 32
    if target >= SMALL_LIMIT:
        return 16
    return 8


def depth_for_width(d: int) -> int:
    xs = [math.log(a) for a, _ in DEPTH_ANCHORS]
    x = math.log(d)
    if x <= xs[0]:
        return DEPTH_ANCHORS[0][1]
    for (x0, (_, y0)), (x1, (_, y1)) in zip(zip(xs, DEPTH_ANCHORS, strict=True),
                                            zip(xs[1:], DEPTH_ANCHORS[1:], strict=True),
                                            strict=False):
        if x <= x1:
            return max(2, round(y0 + (y1 - y0) * (x - x0) / (x1 - x0)))
    return DEPTH_ANCHORS[-1][1]


def _candidate(target: float, d: int, depth: int, kind: FFNKind, active: bool) -> ModelConfig:
    small = target < SMALL_LIMIT
    head_dim = 32 if small else 64
    heads = max(1, d // head_dim)
    kv = max(1, heads // (2 if small else 4))
    while heads % kv:
        kv -= 1
    experts = experts_for_target(target)
    ffn = {FFNKind.DENSE: FFNConfig(), FFNKind.EXPERT_CHOICE: expert_choice(experts),
           FFNKind.TOKEN_CHOICE: token_choice(experts)}[kind]
    recipe = CPU_RECIPE if small else PAPER_RECIPE
    label = "active" if active else "total"
    return ModelConfig(
        name=f"synth-{kind.value}-{_short(target)}-{label}", hidden_size=d, depth=depth,
        num_heads=heads, num_kv_heads=kv, ffn=ffn,
        notes=f"Synthesised for {_short(target)} {label} parameters by ecdit_scale.sizes rules: "
        f"{'CPU' if small else 'paper'} recipe, head dim {head_dim}, depth from the DiT/EC-DiT "
        f"width-depth anchors (adjusted to hit the target), experts by scale.",
        **{**recipe, "family": "synthesised"},
    )


SYNTH_TOLERANCE = 0.005


@functools.lru_cache(maxsize=64)
def synthesise(target: float, *, active: bool = False,
               kind: FFNKind = FFNKind.EXPERT_CHOICE) -> ModelConfig:
    """Search widths on a grid; for each, the depth near the anchor rule that best hits target.

    Every depth of a width is scored, but only ``2 * moe_every`` of them are built and counted:
    blocks repeat with the MoE period, so the count is affine in depth on each residue class
    of it. The brute-force search it replaced built every one: the same configs in 12x the
    time (``tests/test_sizes.py`` checks that both agree). Cached: the config is frozen."""
    small = target < SMALL_LIMIT
    step = 32 if small else 128
    best: tuple[float, float, int, int] | None = None
    for d in range(step if small else step * 2, (4096 if small else 16384) + 1, step):
        rule = depth_for_width(d)
        depths = range(max(2, rule // 2), rule * 3 // 2 + 1)
        try:
            counts = _depth_counts(target, d, depths[0], kind, active)
        except ConfigError:
            continue
        period = len(counts) // 2
        for depth in depths:
            k = depth - depths[0]
            r, q = k % period, k // period
            n = counts[r] + q * (counts[r + period] - counts[r])
            err = abs(math.log(n / target))
            shape = abs(math.log(depth / rule))
            score = (max(err, SYNTH_TOLERANCE), shape)  # within 0.5%, prefer the anchor's shape
            if best is None or score < best[:2]:
                best = (*score, d, depth)
    if best is None or best[0] > 0.25:
        raise ConfigError(f"--params {_short(target)}: no config of this recipe comes near it")
    return _candidate(target, best[2], best[3], kind, active)


def _depth_counts(target: float, d: int, depth0: int, kind: FFNKind, active: bool) -> list[int]:
    """Parameter counts at depths depth0 .. depth0 + 2p - 1 (p: the MoE period, 1 if dense)."""
    first = _candidate(target, d, depth0, kind, active)
    period = first.ffn.moe_every if first.ffn.is_moe else 1
    return [_measure(first, active)] + [
        _measure(_candidate(target, d, depth0 + k, kind, active), active)
        for k in range(1, 2 * period)]


def _short(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.4g}{unit}"
    return str(int(n))
