"""Single-device PyTorch EC-DiT. Importing this package imports torch; the planner never does."""

from .diffusion import LossParts, logit_normal_timesteps, rectified_flow_loss, sample
from .dit import ECDiT, build_model
from .moe import ExpertChoiceMoE, Experts, MoELayer, RoutingStats, TokenChoiceMoE

__all__ = ["ECDiT", "build_model", "rectified_flow_loss", "sample", "logit_normal_timesteps",
           "LossParts", "MoELayer", "ExpertChoiceMoE", "TokenChoiceMoE", "Experts", "RoutingStats"]
