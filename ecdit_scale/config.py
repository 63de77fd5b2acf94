"""Configs as data: frozen, keyword-only dataclasses validated on construction.

Everything a user can write in a YAML card lives here. Factories (``sizes``) return these
configs; the torch model, the planner and the launcher all read them.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .checks import check_int as _positive_int
from .checks import check_number as _number
from .checks import check_type as _typed
from .checks import short as _short
from .checks import string_keys as _string_keys
from .errors import ConfigError
from .files import atomic_write_text, dump_yaml, load_yaml_file, to_plain
from .integers import divisor_hint
from .zero import check_zero_stage

# ---------------------------------------------------------------------------------------------
# Enums
# ---------------------------------------------------------------------------------------------


DERIVED_CARD_KEYS = ("summary", "flops_per_image")


class FFNKind(str, enum.Enum):
    DENSE = "dense"
    TOKEN_CHOICE = "token-choice"
    EXPERT_CHOICE = "expert-choice"


class Conditioning(str, enum.Enum):
    TEXT = "text"  # cross-attention to text-encoder tokens (PixArt-alpha style)
    CLASS = "class"  # class-label embedding added to the timestep embedding (DiT)


class AdaLN(str, enum.Enum):
    ZERO = "zero"  # per-block adaLN-Zero MLP (DiT): Linear(d, 6d) in every block
    SINGLE = "single"  # one shared Linear(d, 6d) + a per-block (6, d) table (PixArt-alpha)


# Upper bounds for sizes: far above any real model, low enough that every derived number
# (divisors, parameter counts, FLOPs) stays quick and finite.
MAX_DEPTH = 4096
MAX_NOTES_CHARS = 10_000
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def _enum(cls: type[enum.Enum], value: Any, what: str) -> Any:
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except (ValueError, TypeError):
        valid = ", ".join(m.value for m in cls)
        raise ConfigError(f"{what}: {value!r} is not valid; choose one of {valid}") from None


# ---------------------------------------------------------------------------------------------
# FFN / MoE
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FFNConfig:
    """The feed-forward kind of the MoE blocks (the other blocks are dense FFNs).

    expert-choice: each expert takes its top-C tokens of a routing group,
    C = group_tokens * capacity_factor / num_experts (EC-DiT, Zhou et al. 2022).
    token-choice: GShard top-k; each expert keeps at most
    ceil(top_k * group_tokens * capacity_factor / num_experts) tokens, the rest are dropped;
    a load-balancing loss with weight aux_loss_coef.
    """

    kind: FFNKind = FFNKind.DENSE
    num_experts: int = 1
    capacity_factor: float = 2.0
    top_k: int = 2
    group_size: int | None = None  # tokens per routing group; None = one sample's image tokens
    moe_every: int = 2  # a MoE layer every n-th block ...
    moe_offset: int = 1  # ... starting at this block index (EC-DiT: odd blocks)
    aux_loss_coef: float = 0.01  # token choice only
    drop_tokens: bool = True  # token choice only

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _enum(FFNKind, self.kind, "ffn.kind"))
        _positive_int("ffn.num_experts", self.num_experts, maximum=2**16)
        _positive_int("ffn.top_k", self.top_k, maximum=2**16)
        _positive_int("ffn.moe_every", self.moe_every, maximum=MAX_DEPTH)
        _positive_int("ffn.moe_offset", self.moe_offset, minimum=0, maximum=MAX_DEPTH)
        if self.group_size is not None:
            _positive_int("ffn.group_size", self.group_size, maximum=2**40)
        object.__setattr__(self, "capacity_factor",
                           _number("ffn.capacity_factor", self.capacity_factor, maximum=2**16))
        object.__setattr__(self, "aux_loss_coef",
                           _number("ffn.aux_loss_coef", self.aux_loss_coef, inclusive=True))
        _typed("ffn.drop_tokens", self.drop_tokens, bool)
        if self.kind is FFNKind.DENSE and self.num_experts != 1:
            raise ConfigError(
                f"ffn.num_experts = {self.num_experts} with kind dense: a dense FFN has 1 expert; "
                "use kind expert-choice or token-choice for experts"
            )
        if self.kind is FFNKind.TOKEN_CHOICE and self.top_k > self.num_experts:
            raise ConfigError(
                f"ffn.top_k = {self.top_k} exceeds ffn.num_experts = {self.num_experts}"
            )

    @property
    def is_moe(self) -> bool:
        return self.kind is not FFNKind.DENSE

    def experts_per_token(self) -> float:
        """Average experts a token is processed by: f_c for expert choice, k for token choice."""
        if self.kind is FFNKind.EXPERT_CHOICE:
            return self.capacity_factor
        if self.kind is FFNKind.TOKEN_CHOICE:
            return float(self.top_k)
        return 1.0


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """An EC-DiT (or DiT) architecture. Units: sizes in elements, never bytes."""

    name: str
    family: str = "custom"
    # input: a latent (or pixel) grid input_size x input_size x in_channels, patchified by
    # patch_size
    input_size: int = 32
    in_channels: int = 4
    patch_size: int = 2
    vae_downsample: int = 8  # image pixels per latent pixel (1 = pixel space, no VAE)
    learn_sigma: bool = False  # DiT predicts a variance too: out channels = 2 * in_channels
    # transformer
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    num_kv_heads: int | None = None  # grouped-query attention; None = num_heads (MHA)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    adaln: AdaLN = AdaLN.ZERO
    # conditioning
    conditioning: Conditioning = Conditioning.TEXT
    text_dim: int = 384  # width of the text-encoder tokens
    text_tokens: int = 16  # text tokens per caption
    text_encoder_params: int = 0  # frozen text encoder size (not part of the torch model)
    count_text_encoder: bool = False  # include text_encoder_params in totals (the paper does)
    num_classes: int = 1000  # class conditioning only
    cond_dropout: float = 0.1  # classifier-free guidance: drop the condition with this prob.
    timestep_freq_dim: int = 256  # sinusoidal timestep features fed to the timestep MLP
    ffn: FFNConfig = field(default_factory=FFNConfig)
    notes: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ConfigError(f"name = {_short(self.name)}: must be 1-128 letters, digits, '.', "
                              "'_', '+' or '-' (it names files and folders)")
        _typed("family", self.family, str)
        if len(self.family) > 128:
            raise ConfigError(f"family = {_short(self.family)}: at most 128 characters")
        _typed("notes", self.notes, str)
        if len(self.notes) > MAX_NOTES_CHARS:
            raise ConfigError(f"notes: {len(self.notes):,} characters; at most "
                              f"{MAX_NOTES_CHARS:,} are allowed")
        for name in ("learn_sigma", "qkv_bias", "count_text_encoder"):
            _typed(name, getattr(self, name), bool)
        object.__setattr__(self, "adaln", _enum(AdaLN, self.adaln, "adaln"))
        object.__setattr__(
            self, "conditioning", _enum(Conditioning, self.conditioning, "conditioning")
        )
        if isinstance(self.ffn, dict):
            object.__setattr__(self, "ffn", _ffn_from_dict(self.ffn))
        elif not isinstance(self.ffn, FFNConfig):
            raise ConfigError(f"ffn = {_short(self.ffn)}: must be a mapping of ffn fields")
        for name in ("input_size", "in_channels", "patch_size", "vae_downsample", "hidden_size",
                     "num_heads", "text_dim", "text_tokens", "timestep_freq_dim"):
            _positive_int(name, getattr(self, name))
        _positive_int("depth", self.depth, maximum=MAX_DEPTH)
        _positive_int("num_classes", self.num_classes, maximum=2**24)
        _positive_int("text_encoder_params", self.text_encoder_params, minimum=0, maximum=10**13)
        kv = self.num_heads if self.num_kv_heads is None else self.num_kv_heads
        _positive_int("num_kv_heads", kv)
        object.__setattr__(self, "num_kv_heads", kv)
        object.__setattr__(self, "mlp_ratio", _number("mlp_ratio", self.mlp_ratio, maximum=2**10))
        object.__setattr__(self, "cond_dropout", _number("cond_dropout", self.cond_dropout,
                                                         inclusive=True, maximum=1.0))
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"num_heads = {self.num_heads} does not divide hidden_size = {self.hidden_size}; "
                f"pick heads among {divisor_hint(self.hidden_size)}"
            )
        if self.num_heads % kv:
            raise ConfigError(
                f"num_kv_heads = {kv} does not divide num_heads = {self.num_heads}; "
                f"pick among {divisor_hint(self.num_heads)}"
            )
        if self.input_size % self.patch_size:
            raise ConfigError(
                f"patch_size = {self.patch_size} does not divide input_size = {self.input_size}; "
                f"pick among {divisor_hint(self.input_size)}"
            )
        if self.timestep_freq_dim % 2:
            raise ConfigError(f"timestep_freq_dim = {self.timestep_freq_dim}: must be even")
        if not float(self.mlp_ratio * self.hidden_size).is_integer():
            raise ConfigError(
                f"mlp_ratio = {self.mlp_ratio}: mlp_ratio * hidden_size must be a positive integer"
            )
        ffn = self.ffn
        if ffn.is_moe:
            if ffn.moe_offset >= self.depth:
                raise ConfigError(
                    f"ffn.moe_offset = {ffn.moe_offset} >= depth = {self.depth}: no block would "
                    f"be MoE; use an offset in 0..{self.depth - 1}"
                )
            group = self.routing_group_tokens
            if ffn.kind is FFNKind.EXPERT_CHOICE and group * ffn.capacity_factor < ffn.num_experts:
                raise ConfigError(
                    f"expert-choice capacity C = {group} tokens x f_c {ffn.capacity_factor} / "
                    f"{ffn.num_experts} experts = {self.expert_capacity_raw:.3g} is below one "
                    f"token per expert; raise ffn.group_size or capacity_factor, or use fewer "
                    f"experts"
                )

    # ----- derived quantities (named for what they return) -----
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.num_kv_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_ratio * self.hidden_size)

    @property
    def tokens_per_image(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def image_size(self) -> int:
        return self.input_size * self.vae_downsample

    @property
    def has_cross_attention(self) -> bool:
        return self.conditioning is Conditioning.TEXT

    @property
    def routing_group_tokens(self) -> int:
        return self.ffn.group_size or self.tokens_per_image

    @property
    def expert_capacity_raw(self) -> float:
        return self.routing_group_tokens * self.ffn.capacity_factor / self.ffn.num_experts

    @property
    def expert_capacity(self) -> int:
        """Tokens each expert takes per routing group.

        Expert choice: C = S * f_c / E (rounded down, at least 1). Token choice (GShard):
        ceil(k * S * f / E).
        """
        ffn = self.ffn
        s = self.routing_group_tokens
        if ffn.kind is FFNKind.TOKEN_CHOICE:
            return max(1, math.ceil(ffn.top_k * s * ffn.capacity_factor / ffn.num_experts))
        return max(1, int(s * ffn.capacity_factor // ffn.num_experts))

    def is_moe_block(self, index: int) -> bool:
        ffn = self.ffn
        return (ffn.is_moe and index >= ffn.moe_offset
                and (index - ffn.moe_offset) % ffn.moe_every == 0)

    @functools.cached_property
    def moe_block_indices(self) -> tuple[int, ...]:
        """Computed once per config (a plan's search asks ~35,000 times)."""
        return tuple(i for i in range(self.depth) if self.is_moe_block(i))

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_block_indices)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ----- serialisation -----
    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "config") -> ModelConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of model fields, got "
                              f"{type(data).__name__}")
        _string_keys(data, source)
        data = dict(data)
        for derived in DERIVED_CARD_KEYS:  # cards carry derived numbers; recomputed, never read
            data.pop(derived, None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown field(s) {', '.join(unknown)}; valid fields: "
                f"{', '.join(sorted(known))}"
            )
        if "name" not in data:
            raise ConfigError(f"{source}: missing required field 'name'")
        try:
            if "ffn" in data:
                data["ffn"] = _ffn_from_dict(data["ffn"])
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def _ffn_from_dict(data: Any) -> FFNConfig:
    if isinstance(data, FFNConfig):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"ffn = {_short(data)}: must be a mapping of ffn fields "
                          f"({', '.join(f.name for f in fields(FFNConfig))})")
    _string_keys(data, "ffn")
    known = {f.name for f in fields(FFNConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown ffn field(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(known))}")
    return FFNConfig(**data)


def load_model_config(path: str | os.PathLike) -> ModelConfig:
    data = load_yaml_file(path, what="model card")
    if data is None:
        raise ConfigError(f"{path}: empty file; a model card is a mapping of model fields")
    if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
        data = data["model"]
    return ModelConfig.from_dict(data, source=str(path))


def save_model_config(cfg: ModelConfig, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, dump_yaml(cfg))


# ---------------------------------------------------------------------------------------------
# Training run, parallel layout and cluster
# ---------------------------------------------------------------------------------------------


class Recompute(str, enum.Enum):
    NONE = "none"  # keep every activation
    SELECTIVE = "selective"  # recompute attention scores/softmax and GELU; keep linear inputs
    FULL = "full"  # keep only each block's input; rerun the block forward in backward


class Optimizer(str, enum.Enum):
    ADAMW = "adamw"  # two fp32 moments
    RMSPROP = "rmsprop"  # RMSProp with momentum (the paper): square average + momentum buffer
    SGD = "sgd"  # momentum only


class Precision(str, enum.Enum):  # the math a run trains in (issue 19: each at its own rate)
    BF16 = "bf16"  # bf16 params/grads, fp32 master weights in the optimizer
    FP16 = "fp16"  # AMP fp16: as bf16 in memory (fp32 master weights), with loss scaling
    TF32 = "tf32"  # fp32 weights and activations, matmuls on TF32 tensor cores
    FP32 = "fp32"  # fp32 everywhere, matmuls on the fp32 units


class EMA(str, enum.Enum):
    """An exponential moving average of the weights, as DiT keeps (decay 0.9999), in fp32."""

    NONE = "none"
    REPLICATED = "replicated"  # every rank keeps the EMA of all the weights it holds
    SHARDED = "sharded"  # partitioned with the optimizer state (ZeRO >= 1), over the same group


class Schedule(str, enum.Enum):  # the learning rate after warm-up
    CONSTANT = "constant"  # the paper's: constant after the linear warm-up
    WSD = "wsd"  # warm-up, stable, then linear decay to 0 over the last cooldown_fraction


HALF_PRECISIONS = (Precision.BF16, Precision.FP16)  # 2-byte params, grads and activations
DIT_EMA_DECAY = 0.9999  # DiT (Peebles & Xie 2023): ema decay 0.9999, updated every step


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """A training run: the paper's is 256x256 images, global batch 4096, 800K steps."""

    global_batch: int = 4096
    steps: int = 800_000
    optimizer: Optimizer = Optimizer.RMSPROP
    precision: Precision = Precision.BF16
    lr: float = 1e-4
    warmup_steps: int = 20_000
    ema: EMA = EMA.NONE  # `ecdit-scale plan` asks for a replicated EMA by default (DiT's recipe)
    ema_decay: float = DIT_EMA_DECAY
    schedule: Schedule = Schedule.CONSTANT
    cooldown_fraction: float = 0.2  # wsd: the share of the steps spent decaying to 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", _enum(Optimizer, self.optimizer, "optimizer"))
        object.__setattr__(self, "schedule", _enum(Schedule, self.schedule, "schedule"))
        if not 0 < _number("cooldown_fraction", self.cooldown_fraction) <= 1:
            raise ConfigError(f"cooldown_fraction = {self.cooldown_fraction:g}: must be in (0, 1]")
        object.__setattr__(self, "precision", _enum(Precision, self.precision, "precision"))
        object.__setattr__(self, "ema", _enum(EMA, self.ema, "ema"))
        object.__setattr__(self, "ema_decay", _number("ema_decay", self.ema_decay,
                                                      inclusive=True, maximum=1.0))
        _positive_int("global_batch", self.global_batch, maximum=2**26)
        _positive_int("steps", self.steps, maximum=10**12)
        _positive_int("warmup_steps", self.warmup_steps, minimum=0, maximum=10**12)
        object.__setattr__(self, "lr", _number("lr", self.lr))


@dataclass(frozen=True, kw_only=True)
class ParallelLayout:
    """data x expert x tensor parallel; world = dp * tp and ep divides dp (DeepSpeed-MoE:
    experts are sharded over ep ranks inside the data-parallel group; expert-data-parallel
    size = dp / ep)."""

    dp: int = 1
    ep: int = 1
    tp: int = 1
    zero: int = 1
    micro_batch: int = 1
    recompute: Recompute = Recompute.NONE

    def __post_init__(self) -> None:
        object.__setattr__(self, "recompute", _enum(Recompute, self.recompute, "recompute"))
        for name in ("dp", "ep", "tp", "micro_batch"):
            _positive_int(name, getattr(self, name), maximum=2**30)
        check_zero_stage(self.zero)
        if self.dp % self.ep:
            raise ConfigError(
                f"ep = {self.ep} does not divide dp = {self.dp}: expert parallelism runs inside "
                "the data-parallel group"
            )

    @property
    def world(self) -> int:
        return self.dp * self.tp

    @property
    def expert_dp(self) -> int:
        return self.dp // self.ep


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    gpu: str = "h100-sxm"  # a key of the hardware catalog, or a name defined in a user YAML
    nodes: int = 64
    gpus_per_node: int = 8
    price_per_gpu_hour: float = 2.5  # USD; an assumption the user should override

    def __post_init__(self) -> None:
        _typed("gpu", self.gpu, str)
        _positive_int("nodes", self.nodes, maximum=2**17)
        _positive_int("gpus_per_node", self.gpus_per_node, maximum=1024)
        object.__setattr__(self, "price_per_gpu_hour", _number(
            "price_per_gpu_hour", self.price_per_gpu_hour, inclusive=True, maximum=1e6))

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node
