"""The setup a user states, priced (issue 19): attention kernel, frozen encoders in the loop,
compiled or eager. (DDP or ZeRO is the layout's ZeRO stage: DDP prices as ZeRO-0's all-reduce.)

A ``RunSetup`` rides on the accelerator (``Accelerator.setup``: the device as this run's stack
drives it), so that every caller of the step-time model prices it without new arguments.
``compute.micro_batch_terms`` applies it:

- attention ``flash`` / ``mem-efficient``: SDPA at the profile's measured rate (torch picks the
  kernel it measured); ``math``: the scores materialised, as timm's / DiT's ``Attention`` does:
  QK^T and AV as batched GEMMs of (q_len, kv_len, head_dim) shapes priced on the GEMM grid, plus
  the scale and softmax over the (B, H, S, S) scores as memory-bound bytes (backward: 2x);
- ``vae_in_loop``: the Stable Diffusion VAE encoder (``vae_encoder_ops``) runs forward only, no
  grad, once per image (``frames`` per sample), its convolutions as implicit GEMMs
  (M = output pixels, N = out channels, K = in channels x 3 x 3) on the GEMM grid, GroupNorm and
  SiLU as memory-bound bytes;
- ``text_encoder`` ``t5-xxl``: the T5-XXL encoder (PixArt's, 120 tokens) forward only, no grad;
- ``compiled``: torch.compile fuses the elementwise chains between GEMMs: memory-bound bytes and
  kernel launches x ``COMPILE_FUSION`` (an ASSUMPTION, labelled in the plan's notes).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ConfigError
from .operators import AttentionCall, Gemm, MemoryOp, OperatorInventory

# ASSUMPTION, not a measurement: the share of memory-bound bytes and launches left after
# torch.compile fuses elementwise chains (norm + modulate, GELU, gate + residual)
COMPILE_FUSION = 0.5

# Stable Diffusion's KL-f8 VAE (diffusers AutoencoderKL, sd-vae-ft-ema / -mse, as DiT and
# PixArt use): block_out_channels (128, 256, 512, 512), layers_per_block 2, 3 -> 8 channels
VAE_CHANNELS = (128, 256, 512, 512)
VAE_LAYERS_PER_BLOCK = 2
# T5 v1.1 XXL encoder (google/t5-v1_1-xxl config.json): 24 layers, d_model 4096, d_ff 10240
# (gated GELU: wi_0, wi_1, wo), 64 heads x 64; PixArt-alpha feeds 120 tokens
T5_XXL = {"layers": 24, "d_model": 4096, "d_ff": 10240, "heads": 64, "head_dim": 64}
PIXART_TEXT_TOKENS = 120


class AttentionKernel(str, enum.Enum):
    FLASH = "flash"
    MEM_EFFICIENT = "mem-efficient"
    MATH = "math"


class TextEncoder(str, enum.Enum):
    NONE = "none"
    T5_XXL = "t5-xxl"


def _enum(cls: type, value: Any, name: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        raise ConfigError(f"{name} = {value!r}: choose one of "
                          f"{', '.join(m.value for m in cls)}") from None


@dataclass(frozen=True, kw_only=True)
class RunSetup:
    attention: AttentionKernel = AttentionKernel.FLASH
    vae_in_loop: bool = False
    text_encoder: TextEncoder = TextEncoder.NONE
    compiled: bool = False
    frames: int = 1  # images the VAE encodes per sample (a video sample: its frames)
    vae_resolution: int | None = None  # pixels per side the VAE encodes (None: the config's)
    text_tokens: int = PIXART_TEXT_TOKENS

    def __post_init__(self) -> None:
        object.__setattr__(self, "attention", _enum(AttentionKernel, self.attention, "attention"))
        object.__setattr__(self, "text_encoder",
                           _enum(TextEncoder, self.text_encoder, "text encoder"))
        for name in ("frames", "text_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} = {v!r}: must be a positive integer")
        r = self.vae_resolution
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 8 or r % 8):
            raise ConfigError(f"vae resolution = {r!r}: must be a positive multiple of 8")

    @property
    def is_default(self) -> bool:
        return self == RunSetup()

    def describe(self) -> str:
        parts = [f"attention {self.attention.value}",
                 "VAE in the loop" if self.vae_in_loop else "pre-extracted latents",
                 (f"{self.text_encoder.value} in the loop" if self.text_encoder
                  is not TextEncoder.NONE else "no text encoder in the loop"),
                 "compiled" if self.compiled else "eager"]
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"attention": self.attention.value, "vae_in_loop": self.vae_in_loop,
                "text_encoder": self.text_encoder.value, "compiled": self.compiled,
                "frames": self.frames, "vae_resolution": self.vae_resolution,
                "text_tokens": self.text_tokens}


def apply_kernels(inv: OperatorInventory, setup: RunSetup | None, *,
                  dtype_bytes: int) -> OperatorInventory:
    """The trained model's operators as ``setup``'s kernels run them (math attention, fusion)."""
    if setup is None:
        return inv
    gemms, attn, mem = list(inv.gemms), list(inv.attention), list(inv.memory_ops)
    if setup.attention is AttentionKernel.MATH:
        gemms += [g for a in attn for g in _math_attention_gemms(a)]
        mem += [_scores_op(a, dtype_bytes) for a in attn]
        attn = []
    if setup.compiled:
        mem = [replace(m, bytes=m.bytes * COMPILE_FUSION, kernels=m.kernels * COMPILE_FUSION)
               for m in mem]
    return replace(inv, gemms=tuple(gemms), attention=tuple(attn), memory_ops=tuple(mem))


def _math_attention_gemms(a: AttentionCall) -> list[Gemm]:
    """One batched matmul per layer for QK^T and one for AV: priced as a GEMM whose rows are
    all (batch x heads x q_len) rows of the batch (one kernel, not batch x heads small ones)."""
    rows = a.batch * a.heads * a.q_len
    return [Gemm(f"{a.name}_qk", rows, a.kv_len, a.head_dim, count=a.count, block=a.block,
                 selective=a.selective),
            Gemm(f"{a.name}_av", rows, a.head_dim, a.kv_len, count=a.count, block=a.block,
                 selective=a.selective)]


def _scores_op(a: AttentionCall, dtype_bytes: int) -> MemoryOp:
    """Scale and softmax over the materialised (B, H, Sq, Skv) scores: each reads and writes
    them once (4 x their bytes)."""
    scores = a.batch * a.heads * a.q_len * a.kv_len * dtype_bytes * a.count
    return MemoryOp(f"{a.name}_scores_softmax", 4 * scores, 2 * a.count, block=a.block,
                    selective=a.selective, kind="activation")


def frozen_inventory(setup: RunSetup | None, *, images: int, resolution: int,
                     dtype_bytes: int) -> OperatorInventory | None:
    """Forward-only operators of the frozen encoders ``setup`` runs in the loop for ``images``
    samples (None: nothing runs in the loop)."""
    if setup is None or not (setup.vae_in_loop or setup.text_encoder is not TextEncoder.NONE):
        return None
    gemms: list[Gemm] = []
    mem: list[MemoryOp] = []
    if setup.vae_in_loop:
        r = setup.vae_resolution or resolution
        g, m = vae_encoder_ops(images * setup.frames, r, dtype_bytes=dtype_bytes)
        gemms += g
        mem += m
    if setup.text_encoder is TextEncoder.T5_XXL:
        g, m = t5_encoder_ops(images, setup.text_tokens, dtype_bytes=dtype_bytes)
        gemms += g
        mem += m
    return OperatorInventory(images=images, tp=1, gemms=tuple(gemms), attention=(),
                             memory_ops=tuple(mem), param_tensors=0)


def vae_encoder_ops(images: float, resolution: int, *,
                    dtype_bytes: int) -> tuple[list[Gemm], list[MemoryOp]]:
    """The SD VAE encoder at ``resolution`` px: conv_in, per level 2 ResNet blocks (GroupNorm,
    SiLU, conv 3x3, twice; a 1x1 shortcut where channels change) and a stride-2 downsample but
    at the last level, the mid block (2 ResNets around one single-head attention), conv_out to
    the 8 moment channels and the 1x1 quant_conv."""
    gemms: list[Gemm] = []
    mem: list[MemoryOp] = []
    a = float(dtype_bytes)

    def conv(name: str, px: float, c_in: int, c_out: int, k: int = 3) -> None:
        gemms.append(Gemm(name, images * px, c_out, c_in * k * k, input_grad=False, block=False))

    def resnet(name: str, px: float, c_in: int, c_out: int) -> None:
        conv(f"{name}_conv1", px, c_in, c_out)
        conv(f"{name}_conv2", px, c_out, c_out)
        if c_in != c_out:
            conv(f"{name}_shortcut", px, c_in, c_out, k=1)
        elems = images * px * (c_in + c_out)  # GroupNorm + SiLU before each conv
        mem.append(MemoryOp(f"{name}_norm", 2 * elems * a, 2, block=False, kind="norm"))
        mem.append(MemoryOp(f"{name}_silu_add", 2 * elems * a + 3 * images * px * c_out * a, 3,
                            block=False, kind="activation"))

    side = resolution
    conv("vae_conv_in", side * side, 3, VAE_CHANNELS[0])
    c_prev = VAE_CHANNELS[0]
    for level, c in enumerate(VAE_CHANNELS):
        px = side * side
        for j in range(VAE_LAYERS_PER_BLOCK):
            resnet(f"vae_l{level}_r{j}", px, c_prev if j == 0 else c, c)
        c_prev = c
        if level < len(VAE_CHANNELS) - 1:
            side //= 2
            conv(f"vae_l{level}_down", side * side, c, c)
    px, c = side * side, VAE_CHANNELS[-1]
    resnet("vae_mid_r0", px, c, c)
    gemms += [Gemm("vae_mid_attn_qkv", images * px, 3 * c, c, input_grad=False, block=False),
              Gemm("vae_mid_attn_scores", images * px, px, c, block=False),
              Gemm("vae_mid_attn_av", images * px, c, px, block=False),
              Gemm("vae_mid_attn_proj", images * px, c, c, block=False)]
    resnet("vae_mid_r1", px, c, c)
    conv("vae_conv_out", px, c, 8)
    conv("vae_quant_conv", px, 8, 8, k=1)
    return gemms, mem


def t5_encoder_ops(images: float, tokens: int, *,
                   dtype_bytes: int) -> tuple[list[Gemm], list[MemoryOp]]:
    """T5-XXL encoder over ``tokens`` per sample: per layer q, k, v, o projections, the
    attention products, the gated-GELU FFN (wi_0, wi_1, wo); RMSNorm, GELU, gate and residual
    as memory-bound bytes."""
    t = T5_XXL
    L, d, ff, h, hd = t["layers"], t["d_model"], t["d_ff"], t["heads"], t["head_dim"]
    rows = images * tokens
    inner = h * hd
    gemms = [Gemm("t5_qkv", rows, 3 * inner, d, count=L, input_grad=False, block=False),
             Gemm("t5_scores", rows * h, tokens, hd, count=L, block=False),  # batched
             Gemm("t5_av", rows * h, hd, tokens, count=L, block=False),
             Gemm("t5_o", rows, d, inner, count=L, block=False),
             Gemm("t5_wi", rows, 2 * ff, d, count=L, block=False),
             Gemm("t5_wo", rows, d, ff, count=L, block=False)]
    a = float(dtype_bytes)
    x = rows * d * a
    mem = [MemoryOp("t5_norms_residuals", 10 * x * L, 6 * L, block=False, kind="elementwise"),
           MemoryOp("t5_gelu_gate", 5 * rows * ff * a * L, 2 * L, block=False,
                    kind="activation"),
           MemoryOp("t5_softmax", 4 * images * h * tokens * tokens * a * L, 2 * L, block=False,
                    kind="activation")]
    return gemms, mem
