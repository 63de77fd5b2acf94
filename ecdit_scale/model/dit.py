"""The EC-DiT network (single device): patchify, N blocks, final layer, unpatchify.

Block (PixArt-alpha style, EC-DiT Sec. 3): x += gate * SelfAttn(adaLN(x)); x += CrossAttn(x, text);
x += gate * FFN-or-MoE(adaLN(x)). Class-conditional configs (the original DiT) have no
cross-attention and add the label embedding to the timestep embedding.
"""

from __future__ import annotations

# Shape suffixes (torchtitan's convention): a tensor named x_BSD has dims (B, S, D).
#   B images in the batch   S image tokens per image   T text tokens per caption
#   D model width           F FFN hidden width         H attention heads   K head dim
#   E experts               C tokens an expert picks per routing group ((S·f_c)/E)
#   G routing groups        N tokens (flattened)        P pixels of a patch (p·p·channels)
import torch
from torch import nn

from ..config import AdaLN, Conditioning, ModelConfig, Recompute
from .layers import Attention, Mlp, PatchEmbed, TimestepEmbedder, modulate, sincos_pos_embed_2d
from .moe import MoELayer, RoutingStats, make_ffn
from .recompute import checkpoint_all, checkpoint_keeping, replay_safe


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int, *, num_local_experts: int | None = None):
        super().__init__()
        d = cfg.hidden_size
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, cfg.num_heads, cfg.num_kv_heads, qkv_bias=cfg.qkv_bias)
        self.cross_attn = (Attention(d, cfg.num_heads, cfg.num_kv_heads, qkv_bias=cfg.qkv_bias)
                           if cfg.has_cross_attention else None)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.is_moe = cfg.is_moe_block(index)
        self.ffn = make_ffn(cfg, moe=self.is_moe, num_local_experts=num_local_experts)
        self.recompute = Recompute.NONE  # set with ECDiT.set_recompute
        if cfg.adaln is AdaLN.ZERO:
            self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        else:  # adaLN-single: a learned per-block offset to the shared modulation
            self.scale_shift_table = nn.Parameter(torch.zeros(6, d))

    def modulation(self, c_BD: torch.Tensor, shared_B6D: torch.Tensor | None) -> tuple:
        if shared_B6D is None:
            return self.adaln(c_BD).chunk(6, dim=-1)
        return (shared_B6D + self.scale_shift_table[None]).unbind(dim=1)

    def forward(self, x_BSD, c_BD, text_BTD=None, text_mask_BT=None, shared_B6D=None):
        if self.recompute is Recompute.FULL:
            return checkpoint_all(replay_safe(self, self._forward), x_BSD, c_BD, text_BTD,
                                  text_mask_BT, shared_B6D)
        return self._forward(x_BSD, c_BD, text_BTD, text_mask_BT, shared_B6D)

    def _forward(self, x_BSD, c_BD, text_BTD, text_mask_BT, shared_B6D):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c_BD, shared_B6D)
        x_BSD = x_BSD + gate1.unsqueeze(1) * self._self_attention(x_BSD, shift1, scale1)
        if self.cross_attn is not None:
            x_BSD = x_BSD + self.cross_attn(x_BSD, text_BTD, text_mask_BT)
        return x_BSD + gate2.unsqueeze(1) * self._ffn(x_BSD, shift2, scale2)

    def _attn_branch(self, x_BSD, shift, scale):
        return self.attn(modulate(self.norm1(x_BSD), shift, scale))

    def _ffn_input(self, x_BSD, shift, scale):
        return modulate(self.norm2(x_BSD), shift, scale)

    def _dense_branch(self, x_BSD, shift, scale):
        return self.ffn(self._ffn_input(x_BSD, shift, scale))

    def _self_attention(self, x_BSD, shift, scale):
        if self.recompute is Recompute.SELECTIVE:
            return checkpoint_keeping(self._attn_branch, x_BSD, shift, scale)
        return self._attn_branch(x_BSD, shift, scale)

    def _ffn(self, x_BSD, shift, scale):
        if self.recompute is not Recompute.SELECTIVE:
            return self._dense_branch(x_BSD, shift, scale)
        if isinstance(self.ffn, Mlp):
            return checkpoint_keeping(self._dense_branch, x_BSD, shift, scale)
        # MoE: only the LayerNorm/modulate here; the experts checkpoint themselves
        # (MoELayer.recompute_experts), never across the all-to-all
        return self.ffn(checkpoint_keeping(self._ffn_input, x_BSD, shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, p = cfg.hidden_size, cfg.patch_size
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(d, p * p * cfg.out_channels)
        if cfg.adaln is AdaLN.ZERO:
            self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        else:
            self.scale_shift_table = nn.Parameter(torch.zeros(2, d))

    def forward(self, x_BSD: torch.Tensor, c_BD: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "adaln"):
            shift, scale = self.adaln(c_BD).chunk(2, dim=-1)
        else:
            shift, scale = (self.scale_shift_table[None] + c_BD[:, None]).unbind(dim=1)
        return self.linear(modulate(self.norm(x_BSD), shift, scale))


class ECDiT(nn.Module):
    """``forward(x, t, cond)``: x (B, C, H, W); t (B,) in [0, 1]; cond is text tokens
    (B, T, text_dim) for text conditioning or labels (B,) for class conditioning. Returns the
    prediction (B, out_channels, H, W). MoE layers leave their RoutingStats in ``routing_stats()``.
    """

    def __init__(self, cfg: ModelConfig, *, num_local_experts: int | None = None):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.x_embedder = PatchEmbed(cfg.in_channels, d, cfg.patch_size)
        self.t_embedder = TimestepEmbedder(d, cfg.timestep_freq_dim)
        if cfg.conditioning is Conditioning.CLASS:
            self.y_embedder = nn.Embedding(cfg.num_classes + (cfg.cond_dropout > 0), d)
        else:
            self.y_embedder = Mlp(cfg.text_dim, d, d)  # caption projection (PixArt)
            if cfg.cond_dropout > 0:
                self.y_null = nn.Parameter(torch.randn(cfg.text_tokens, cfg.text_dim) * 0.02)
        if cfg.adaln is AdaLN.SINGLE:
            self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        grid = cfg.input_size // cfg.patch_size
        self.register_buffer("pos_embed", sincos_pos_embed_2d(d, grid)[None], persistent=False)
        self.blocks = nn.ModuleList(
            Block(cfg, i, num_local_experts=num_local_experts) for i in range(cfg.depth))
        self.final_layer = FinalLayer(cfg)
        if self.pos_embed.device.type != "meta":  # meta tensors hold no values to set
            self.initialize_weights()

    # ----- initialisation (DiT / PixArt): zero the gates so every block starts as identity ----
    def initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.t_embedder.fc1.weight, std=0.02)
        nn.init.normal_(self.t_embedder.fc2.weight, std=0.02)
        if isinstance(self.y_embedder, nn.Embedding):
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        for block in self.blocks:
            if hasattr(block, "adaln"):
                nn.init.zeros_(block.adaln[-1].weight)
                nn.init.zeros_(block.adaln[-1].bias)
            if block.cross_attn is not None:
                nn.init.zeros_(block.cross_attn.proj.weight)
                nn.init.zeros_(block.cross_attn.proj.bias)
            if isinstance(block.ffn, MoELayer):
                nn.init.normal_(block.ffn.router.weight, std=0.02)
        if hasattr(self, "t_block"):
            nn.init.zeros_(self.t_block[-1].weight)
            nn.init.zeros_(self.t_block[-1].bias)
        if hasattr(self.final_layer, "adaln"):
            nn.init.zeros_(self.final_layer.adaln[-1].weight)
            nn.init.zeros_(self.final_layer.adaln[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # ----- conditioning -------------------------------------------------------------------
    def null_condition(self, batch: int) -> torch.Tensor:
        if self.cfg.conditioning is Conditioning.CLASS:
            return torch.full((batch,), self.cfg.num_classes, dtype=torch.long,
                              device=self.pos_embed.device)
        return self.y_null[None].expand(batch, -1, -1)

    def drop_condition(self, cond: torch.Tensor, drop_B: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance training: replace the condition where drop_B is True."""
        null = self.null_condition(cond.shape[0]).to(cond.dtype)
        if cond.ndim == 1:
            return torch.where(drop_B, null, cond)
        return torch.where(drop_B[:, None, None], null, cond)

    # ----- forward ------------------------------------------------------------------------
    def forward(self, x_BCHW: torch.Tensor, t_B: torch.Tensor, cond: torch.Tensor,
                text_mask_BT: torch.Tensor | None = None) -> torch.Tensor:
        x_BSD = self.x_embedder(x_BCHW) + self.pos_embed.to(x_BCHW.dtype)
        c_BD = self.t_embedder(t_B * 1000.0)
        text_BTD = None
        if self.cfg.conditioning is Conditioning.CLASS:
            c_BD = c_BD + self.y_embedder(cond)
        else:
            text_BTD = self.y_embedder(cond.to(x_BSD.dtype))
        shared = None
        if hasattr(self, "t_block"):
            shared = self.t_block(c_BD).view(-1, 6, self.cfg.hidden_size)
        for block in self.blocks:
            x_BSD = block(x_BSD, c_BD, text_BTD, text_mask_BT, shared)
        return self.unpatchify(self.final_layer(x_BSD, c_BD))

    def unpatchify(self, x_BSP: torch.Tensor) -> torch.Tensor:
        p, c = self.cfg.patch_size, self.cfg.out_channels
        g = self.cfg.input_size // p
        x = x_BSP.reshape(x_BSP.shape[0], g, g, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(x_BSP.shape[0], c, g * p, g * p)

    def set_recompute(self, recompute: Recompute | str) -> ECDiT:
        """Activation recomputation for training (``model.recompute``); returns the model.
        Call it before or after ``train.expert_parallel.parallelize``: it is read per forward."""
        policy = Recompute(recompute)
        for block in self.blocks:
            block.recompute = policy
        for layer in self.modules():
            if isinstance(layer, MoELayer):
                layer.recompute_experts = policy is Recompute.SELECTIVE
        return self

    @property
    def recompute(self) -> Recompute:
        return self.blocks[0].recompute if len(self.blocks) else Recompute.NONE

    def moe_layers(self) -> list[MoELayer]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoELayer)]

    def routing_stats(self) -> list[RoutingStats]:
        return [m.last_stats for m in self.moe_layers() if m.last_stats is not None]

    def aux_loss(self) -> torch.Tensor:
        losses = [s.aux_loss for s in self.routing_stats()]
        return torch.stack(losses).sum() if losses else self.pos_embed.new_zeros(())


def build_model(cfg: ModelConfig, *, device: str | torch.device = "cpu",
                num_local_experts: int | None = None,
                recompute: Recompute | str = Recompute.NONE) -> ECDiT:
    """Build on any device; ``device="meta"`` allocates nothing (for counting 97B models).
    ``recompute``: none | selective | full activation recomputation (``model.recompute``)."""
    with torch.device(device):
        return ECDiT(cfg, num_local_experts=num_local_experts).set_recompute(recompute)
