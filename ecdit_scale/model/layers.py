"""Building blocks of a (EC-)DiT block: embedders, grouped-query attention, adaLN, dense MLP."""

from __future__ import annotations

# Shape suffixes (torchtitan's convention): a tensor named x_BSD has dims (B, S, D).
#   B images in the batch   S image tokens per image   T text tokens per caption
#   D model width           F FFN hidden width         H attention heads   K head dim
#   E experts               C tokens an expert picks per routing group ((S·f_c)/E)
#   G routing groups        N tokens (flattened)        P pixels of a patch (p·p·channels)
import math

import torch
import torch.nn.functional as F
from torch import nn


def modulate(x_BSD: torch.Tensor, shift_BD: torch.Tensor, scale_BD: torch.Tensor) -> torch.Tensor:
    return x_BSD * (1 + scale_BD.unsqueeze(1)) + shift_BD.unsqueeze(1)


def timestep_features(t_B: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of the timestep (DiT's TimestepEmbedder; t in [0, 1000])."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t_B.device) / half)
    args = t_B.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding (MAE/DiT), shape (grid*grid, dim)."""
    def one_axis(d: int, pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1, 1).double() * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    coords = torch.arange(grid, dtype=torch.float64)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    half = dim // 2
    emb = torch.cat([one_axis(half - half % 2, gy), one_axis(dim - (half - half % 2), gx)], dim=1)
    return emb.float()


class Mlp(nn.Module):
    """Linear -> GELU(tanh) -> Linear, with biases."""

    def __init__(self, d_in: int, hidden: int, d_out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out or d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TimestepEmbedder(nn.Module):
    def __init__(self, d: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.fc1 = nn.Linear(freq_dim, d)
        self.fc2 = nn.Linear(d, d)

    def forward(self, t_B: torch.Tensor) -> torch.Tensor:
        feats = timestep_features(t_B, self.freq_dim).to(self.fc1.weight.dtype)
        return self.fc2(F.silu(self.fc1(feats)))


class Attention(nn.Module):
    """Grouped-query attention; self-attention when ``context`` is None, else cross-attention.

    q/out: d x d; k/v: d x (kv_heads * head_dim). Keys/values of the context are projected
    from its d-wide embedding (the caption projection maps text to d first, as in PixArt).
    """

    def __init__(self, d: int, heads: int, kv_heads: int, *, qkv_bias: bool = True):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, d // heads
        kv_dim = kv_heads * self.head_dim
        self.q = nn.Linear(d, d, bias=qkv_bias)
        self.k = nn.Linear(d, kv_dim, bias=qkv_bias)
        self.v = nn.Linear(d, kv_dim, bias=qkv_bias)
        self.proj = nn.Linear(d, d)

    def forward(self, x_BSD: torch.Tensor, context_BTD: torch.Tensor | None = None,
                mask_BT: torch.Tensor | None = None) -> torch.Tensor:
        B, S, D = x_BSD.shape
        ctx = x_BSD if context_BTD is None else context_BTD
        T = ctx.shape[1]
        q = self.q(x_BSD).view(B, S, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(ctx).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(ctx).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        attn_mask = None if mask_BT is None else mask_BT[:, None, None, :]
        out = grouped_query_attention(q, k, v, attn_mask)
        return self.proj(out.transpose(1, 2).reshape(B, S, D))


# torch >= 2.5 shares each KV head across its query heads inside SDPA (``enable_gqa``)
NATIVE_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


def grouped_query_attention(q_BHSK: torch.Tensor, k_BGTK: torch.Tensor, v_BGTK: torch.Tensor,
                            attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA with G = H / rep key/value heads; query head h reads KV head h // rep.

    Without a mask, SDPA shares the KV heads itself (``enable_gqa``): no H-wide copy of K and V
    is written in forward and reduced again in backward. With a mask, or a torch before 2.5, K
    and V are repeated first: CUDA's memory-efficient kernel (the one that takes a mask) does
    not share KV heads, and SDPA would fall back to the slow math kernel.
    """
    H, G = q_BHSK.shape[1], k_BGTK.shape[1]
    if G == H:
        return F.scaled_dot_product_attention(q_BHSK, k_BGTK, v_BGTK, attn_mask=attn_mask)
    if NATIVE_GQA and attn_mask is None:
        return F.scaled_dot_product_attention(q_BHSK, k_BGTK, v_BGTK, enable_gqa=True)
    rep = H // G
    k_BHTK, v_BHTK = k_BGTK.repeat_interleave(rep, dim=1), v_BGTK.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q_BHSK, k_BHTK, v_BHTK, attn_mask=attn_mask)


class PatchEmbed(nn.Module):
    """p x p patches -> d, as a strided convolution (DiT / timm PatchEmbed)."""

    def __init__(self, in_channels: int, d: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, d, kernel_size=patch, stride=patch)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.proj(x_BCHW).flatten(2).transpose(1, 2)
