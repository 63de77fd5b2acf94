"""Rectified flow (Liu et al. 2023; Esser et al. 2024, SD3) with logit-normal timesteps.

x_t = (1 - t) x_0 + t eps; the network predicts the velocity v = eps - x_0. Sampling integrates
dx/dt = v from t = 1 (noise) to t = 0 with Euler steps and classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .dit import ECDiT

# Shape suffixes: a tensor named x0_BCHW has dims (B, C, H, W).
#   B images   C latent or pixel channels   H, W height and width


def logit_normal_timesteps(batch: int, *, mean: float = 0.0, std: float = 1.0,
                           generator: torch.Generator | None = None,
                           device: str | torch.device = "cpu") -> torch.Tensor:
    """t = sigmoid(n), n ~ N(mean, std^2): weights the middle of the path (SD3, Sec. 3.1)."""
    n = torch.randn(batch, generator=generator, device=device) * std + mean
    return torch.sigmoid(n)


@dataclass(frozen=True)
class LossParts:
    loss: torch.Tensor  # what to backpropagate: flow loss + MoE balancing loss
    flow_loss: torch.Tensor
    aux_loss: torch.Tensor
    t_B: torch.Tensor


def rectified_flow_loss(model: ECDiT, x0_BCHW: torch.Tensor, cond: torch.Tensor, *,
                        generator: torch.Generator | None = None,
                        text_mask_BT: torch.Tensor | None = None,
                        t_B: torch.Tensor | None = None) -> LossParts:
    B = x0_BCHW.shape[0]
    dev = x0_BCHW.device
    if t_B is None:
        t_B = logit_normal_timesteps(B, generator=generator, device=dev)
    eps = torch.randn(x0_BCHW.shape, generator=generator, device=dev, dtype=x0_BCHW.dtype)
    tt = t_B.view(B, 1, 1, 1).to(x0_BCHW.dtype)
    x_t = (1 - tt) * x0_BCHW + tt * eps
    cfg = model.cfg
    if cfg.cond_dropout > 0 and model.training:
        drop = torch.rand(B, generator=generator, device=dev) < cfg.cond_dropout
        cond = model.drop_condition(cond, drop)
    pred = model(x_t, t_B, cond, text_mask_BT)[:, : cfg.in_channels]  # learned sigma: ignored
    flow = F.mse_loss(pred.float(), (eps - x0_BCHW).float())
    aux = model.aux_loss()
    return LossParts(loss=flow + aux, flow_loss=flow.detach(), aux_loss=aux.detach(), t_B=t_B)


@torch.no_grad()
def sample(model: ECDiT, cond: torch.Tensor, *, steps: int = 20, guidance: float = 4.0,
           generator: torch.Generator | None = None,
           text_mask_BT: torch.Tensor | None = None) -> torch.Tensor:
    """Euler sampler with classifier-free guidance: v = v_u + w (v_c - v_u)."""
    cfg = model.cfg
    B = cond.shape[0]
    dev = model.pos_embed.device
    x = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, generator=generator,
                    device=dev)
    use_cfg = guidance != 1.0 and cfg.cond_dropout > 0
    null = model.null_condition(B).to(cond.dtype) if use_cfg else None
    mask = text_mask_BT
    if use_cfg and mask is not None:
        mask = torch.cat([mask, torch.ones_like(mask)])
    ts = torch.linspace(1.0, 0.0, steps + 1, device=dev)
    for t0, t1 in zip(ts[:-1], ts[1:], strict=True):
        t_B = t0.expand(B)
        if use_cfg:
            v = model(torch.cat([x, x]), torch.cat([t_B, t_B]), torch.cat([cond, null]), mask)
            v_c, v_u = v[:, : cfg.in_channels].chunk(2)
            v = v_u + guidance * (v_c - v_u)
        else:
            v = model(x, t_B, cond, mask)[:, : cfg.in_channels]
        x = x + (t1 - t0) * v
    return x
