"""Expert parallelism, applied in one place: DeepSpeed-MoE's process groups, the all-to-all
that moves expert slots between ranks, and the expert parameters as DeepSpeed sees them.

The model (``ecdit_scale.model``) is single-device code. Its MoE layers lay tokens out
expert-major, x_ECD (experts, slots, d), and hand them to ``layer.exchange``; ``shard_experts``
plugs in an ``AllToAllExchange`` and keeps on each rank only its E/ep experts:

    rank r of the expert-parallel group owns experts [r*E/ep, (r+1)*E/ep)
    dispatch: (E, N, d) on every rank -> all-to-all -> (E/ep, ep*N, d): the owner's experts
              with the slots of every rank in the group
    combine:  the inverse all-to-all, back to (E, N, d) on the rank the tokens came from

Process groups come from DeepSpeed (``deepspeed.utils.groups._create_expert_and_data_parallel``,
a private helper: deepspeed is pinned). For expert-parallel size ep and world W, DeepSpeed makes
expert-parallel groups of consecutive ranks [0..ep), [ep..2ep), ... (all-to-all) and
expert-data-parallel groups of stride ep (gradient all-reduce and ZeRO partitions of expert
parameters); the group name is ``ep_size_{ep}``.

DeepSpeed's engine recognises MoE by ``isinstance(module, deepspeed.moe.layer.MoE)``: only then
does it reduce expert gradients over the expert-data-parallel group, give ZeRO-1/2 its MoE
param groups, and checkpoint experts one file per expert. ``DeepSpeedExperts`` is therefore a
subclass of that ``MoE`` that holds our experts (not DeepSpeed's gate or dispatch) under the
key path DeepSpeed's checkpointing parses, ``deepspeed_moe.experts.deepspeed_experts.<i>``,
with ``param.allreduce = False`` and ``param.group_name`` set as DeepSpeed's own ``Experts`` does.
"""

from __future__ import annotations

# Shape suffixes (torchtitan's convention): a tensor named x_BSD has dims (B, S, D).
#   B images in the batch   S image tokens per image   T text tokens per caption
#   D model width           F FFN hidden width         H attention heads   K head dim
#   E experts               C tokens an expert picks per routing group ((S·f_c)/E)
#   G routing groups        N tokens (flattened)        P pixels of a patch (p·p·channels)
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F


def name_deepspeed_accelerator() -> str:
    """Name DeepSpeed's accelerator before its first import, or it prints a detection warning
    on stdout (where --json output goes). Every import of deepspeed in this package comes after
    this module's, which calls it."""
    return os.environ.setdefault("DS_ACCELERATOR",
                                 "cuda" if torch.cuda.is_available() else "cpu")


name_deepspeed_accelerator()

from deepspeed.moe.layer import MoE as _DeepSpeedMoE  # noqa: E402
from torch import nn  # noqa: E402

from ..config import FFNKind, ModelConfig  # noqa: E402
from ..model.layers import Mlp  # noqa: E402
from ..model.moe import Experts, LocalExchange, MoELayer, expert_ffn  # noqa: E402
from ..planner.placement import Placement, data_before_expert, expert_group_ranks  # noqa: E402


def group_name(ep_size: int) -> str:
    """DeepSpeed's name for the expert-parallel / expert-data-parallel groups of size ep."""
    return f"ep_size_{ep_size}"


@dataclass(frozen=True)
class ExpertParallel:
    """This rank's place in the expert-parallel layout."""

    ep_size: int
    ep_rank: int  # rank inside the expert-parallel group: owns experts [ep_rank*E/ep, ...)
    expert_dp_size: int  # world / ep: replicas of each expert
    group_name: str
    group: object | None  # the expert-parallel ProcessGroup (all-to-all); None without dist

    def local_expert_range(self, num_experts: int) -> range:
        n = num_experts // self.ep_size
        return range(self.ep_rank * n, (self.ep_rank + 1) * n)


def create_groups(ep_size: int,
                  placement: Placement | str = Placement.EXPERT_BEFORE_DATA) -> ExpertParallel:
    """Create (once) DeepSpeed's expert-parallel and expert-data-parallel groups of size ep,
    in the rank order ``placement`` names (``planner.placement``: the groups the plan prices;
    DeepSpeed's own lists are checked against them).

    Needs an initialised process group (``deepspeed.init_distributed``). Every rank must call it.
    """
    from deepspeed.utils import groups

    world = dist.get_world_size()
    if ep_size < 1 or world % ep_size:
        raise ValueError(f"expert-parallel size {ep_size} must divide the world size {world}")
    name = group_name(ep_size)
    if name not in groups._get_expert_parallel_group_dict():
        groups._create_expert_and_data_parallel(
            ep_size, use_data_before_expert_parallel_=data_before_expert(placement))
    ep_groups, edp_groups = expert_group_ranks(world, ep_size, placement)
    rank = dist.get_rank()
    want = (next(g for g in ep_groups if rank in g), next(g for g in edp_groups if rank in g))
    have = (list(groups._get_expert_parallel_group_ranks(name)),
            list(groups._get_expert_data_parallel_group_ranks(name)))
    if have != want:
        raise RuntimeError(f"rank {rank}: DeepSpeed's {name} groups (expert-parallel, "
                           f"expert-data-parallel) are {have}, {Placement(placement).value} "
                           f"names {want} (made earlier in another order?)")
    return ExpertParallel(
        ep_size=ep_size,
        ep_rank=groups._get_expert_parallel_rank(name),
        expert_dp_size=groups._get_expert_data_parallel_world_size(name),
        group_name=name,
        group=groups._get_expert_parallel_group(name),
    )


def single_process() -> ExpertParallel:
    """No expert parallelism (validation, analysis): every expert on this process."""
    return ExpertParallel(ep_size=1, ep_rank=0, expert_dp_size=1, group_name=group_name(1),
                          group=None)


# ---------------------------------------------------------------------------------------------
# The all-to-all
# ---------------------------------------------------------------------------------------------


class _AllToAll(torch.autograd.Function):
    """Equal-split all-to-all along dim 0 over ``group``, differentiable.

    With equal splits the exchange is its own transpose: chunk j of rank i goes to chunk i of
    rank j, so the backward pass is the same all-to-all applied to the gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _AllToAll.apply(grad, ctx.group), None


def all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    return _AllToAll.apply(x, group)


class AllToAllExchange(nn.Module):
    """``MoELayer.exchange`` for expert parallelism: send each expert's slots to its owner."""

    # kept out of compiled regions (``regional_compile``): the collective runs eagerly
    EAGER_METHODS = ("dispatch", "combine")

    def __init__(self, ep: ExpertParallel):
        super().__init__()
        self.ep_size = ep.ep_size
        self.group = ep.group

    def dispatch(self, x_ECD: torch.Tensor) -> torch.Tensor:
        E, N, D = x_ECD.shape
        ep = self.ep_size
        # chunk r of dim 0 (experts of rank r) goes to rank r; we receive (src rank, local e)
        y = all_to_all(x_ECD, self.group).reshape(ep, E // ep, N, D)
        return y.transpose(0, 1).reshape(E // ep, ep * N, D)

    def combine(self, y_ECD: torch.Tensor) -> torch.Tensor:
        El, epN, D = y_ECD.shape
        ep = self.ep_size
        x = y_ECD.reshape(El, ep, epN // ep, D).transpose(0, 1).reshape(ep * El, epN // ep, D)
        return all_to_all(x, self.group)


# ---------------------------------------------------------------------------------------------
# Experts as DeepSpeed-MoE sees them
# ---------------------------------------------------------------------------------------------


class ExpertFFN(nn.Module):
    """One expert: the same GELU FFN as one slice of ``model.moe.Experts``."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.w_in_DF = nn.Parameter(torch.empty(d, hidden))
        self.b_in_F = nn.Parameter(torch.zeros(hidden))
        self.w_out_FD = nn.Parameter(torch.empty(hidden, d))
        self.b_out_D = nn.Parameter(torch.zeros(d))

    def forward(self, x_ND: torch.Tensor) -> torch.Tensor:
        h = F.gelu(torch.addmm(self.b_in_F, x_ND, self.w_in_DF), approximate="tanh")
        return torch.addmm(self.b_out_D, h, self.w_out_FD)


# per-expert parameter name -> the batched ``Experts`` parameter it is a slice of
_BATCHED = {"w_in_DF": "w_in_EDF", "b_in_F": "b_in_EF", "w_out_FD": "w_out_EFD",
            "b_out_D": "b_out_ED"}


class _Path(nn.Module):
    """An empty container: DeepSpeed's checkpoint code parses the key path of expert tensors."""


class _StridedStack(torch.autograd.Function):
    """``torch.stack`` of equal tensors that lie ``step`` elements apart in one storage,
    without the copy: the stacked tensor is a strided view of that storage, and the backward
    hands each tensor its slice of the gradient (as ``stack``'s backward does)."""

    @staticmethod
    def forward(ctx, step: int, *tensors: torch.Tensor) -> torch.Tensor:
        t0 = tensors[0]
        return t0.as_strided((len(tensors), *t0.shape), (step, *t0.stride()),
                             t0.storage_offset())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (None, *grad.unbind(0))


def evenly_spaced(tensors: list[torch.Tensor]) -> int | None:
    """Elements between consecutive tensors of ``tensors`` (equal shapes and dtypes, each
    contiguous) where they sit at one step in one storage, without overlapping; else None."""
    t0 = tensors[0]
    if len(tensors) == 1:
        return t0.numel()
    if not t0.is_contiguous():
        return None
    size = t0.element_size()
    first = t0.data_ptr()
    step = tensors[1].data_ptr() - first
    if step < t0.numel() * size or step % size:
        return None
    if any(t.data_ptr() != first + i * step for i, t in enumerate(tensors)):
        return None
    if tensors[-1].untyped_storage().data_ptr() != t0.untyped_storage().data_ptr():
        return None
    return step // size


def owns_its_storage(t: torch.Tensor) -> bool:
    return t.untyped_storage().nbytes() == t.numel() * t.element_size()


def lay_out_contiguously(experts: nn.ModuleList) -> None:
    """Put every parameter of ``experts`` into one buffer, expert after expert (each expert's
    tensors in registration order, the order DeepSpeed flattens a param group in), each
    parameter a view of it: the same tensor of consecutive experts then sits one expert's
    size apart, and ``DeepSpeedExperts.forward`` stacks them without a copy."""
    params = list(experts.parameters())
    flat = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype,
                       device=params[0].device)
    offset = 0
    with torch.no_grad():
        for p in params:
            view = flat[offset:offset + p.numel()].view_as(p)
            view.copy_(p)
            p.data = view
            offset += p.numel()


class DeepSpeedExperts(_DeepSpeedMoE):
    """This rank's E/ep experts of one MoE layer, registered as a DeepSpeed ``MoE``.

    Replaces ``MoELayer.experts``; forward maps (E/ep, N, d) -> (E/ep, N, d). Parameters live at
    ``deepspeed_moe.experts.deepspeed_experts.<local id>.*`` (DeepSpeed turns local ids into
    global ids ep_rank*E/ep + i in checkpoint files and back on load). Routing, dispatch and
    combine stay in our ``MoELayer``; DeepSpeed's gate is not used.
    """

    def __init__(self, experts: Experts, *, num_experts: int, ep: ExpertParallel):
        nn.Module.__init__(self)  # not MoE.__init__: it would build DeepSpeed's gate and experts
        if num_experts % ep.ep_size:
            raise ValueError(f"{num_experts} experts do not split over expert-parallel size "
                             f"{ep.ep_size}")
        self.num_experts = num_experts
        self.ep_size = ep.ep_size
        self.num_local_experts = num_experts // ep.ep_size
        self.expert_group_name = ep.group_name
        self.use_residual = False
        self.enable_expert_tensor_parallelism = False
        d, hidden = experts.w_in_EDF.shape[1], experts.w_in_EDF.shape[2]
        local = nn.ModuleList(ExpertFFN(d, hidden) for _ in range(self.num_local_experts))
        first = ep.local_expert_range(num_experts).start
        have = experts.w_in_EDF.shape[0]
        offset = first if have == num_experts else 0  # full set given: take our slice
        with torch.no_grad():
            for i, expert in enumerate(local):
                for name, batched in _BATCHED.items():
                    getattr(expert, name).copy_(getattr(experts, batched)[offset + i])
        lay_out_contiguously(local)
        self.deepspeed_moe = _Path()
        self.deepspeed_moe.experts = _Path()
        self.deepspeed_moe.experts.deepspeed_experts = local
        for p in local.parameters():
            p.allreduce = False  # DeepSpeed: reduce over the expert-data-parallel group instead
            p.group_name = ep.group_name

    @property
    def local_experts(self) -> nn.ModuleList:
        return self.deepspeed_moe.experts.deepspeed_experts

    def forward(self, x_END: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """The local experts as two batched matmuls (``model.moe.expert_ffn``) over their
        weights stacked for this call (``stacked_weights``): a stack per weight instead of three
        kernels per expert (E = 32: ~100 launches down to ~7 per forward)."""
        return expert_ffn(x_END, *self.stacked_weights())

    # kept out of compiled regions (``regional_compile``): the view is built eagerly, and the
    # compiled graph takes it as an input (a copy inside the graph would be a real one)
    EAGER_METHODS = ("stacked_weights",)

    def stacked_weights(self) -> list[torch.Tensor]:
        """Each weight of the local experts stacked, (E/ep, ...), copying nothing where the
        experts' tensors lie evenly spaced in one buffer, as ``lay_out_contiguously`` puts
        them and DeepSpeed's ZeRO-1/2, bf16 and fp16 optimizers keep them (their flat buffer
        holds a param group in module order): a strided view then (``_StridedStack``)."""
        return [self._stack(self.expert_tensors(name)) for name in _BATCHED]

    def expert_tensors(self, name: str) -> list[torch.Tensor]:
        """The local experts' tensors of one weight (a key of ``_BATCHED``), expert by expert."""
        return [getattr(e, name) for e in self.local_experts]

    def _stack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        step = evenly_spaced(tensors)
        if step is None and all(owns_its_storage(p) for p in self.local_experts.parameters()):
            lay_out_contiguously(self.local_experts)  # moved one by one (``.to``): again
            step = evenly_spaced(tensors)
        if step is None:
            return torch.stack(tensors)
        return _StridedStack.apply(step, *tensors)

    def set_deepspeed_parallelism(self, use_data_before_expert_parallel_: bool = False) -> None:
        """Called by ``deepspeed.initialize``; the groups already exist (``create_groups``)."""
        from deepspeed.utils import groups

        if self.expert_group_name not in groups._get_expert_parallel_group_dict():
            groups._create_expert_and_data_parallel(
                self.ep_size, use_data_before_expert_parallel_=use_data_before_expert_parallel_)


def expert_stacking(model: nn.Module) -> str | None:
    """How the model's expert layers stack their local experts' weights as it now holds
    them (after DeepSpeed laid its parameters out): "view" where every layer's stack copies
    nothing, "copy" where one would copy; None without such layers."""
    layers = [m for m in model.modules() if isinstance(m, DeepSpeedExperts)]
    if not layers:
        return None
    even = all(evenly_spaced(layer.expert_tensors(name)) is not None
               for layer in layers for name in _BATCHED)
    return "view" if even else "copy"


def shard_experts(model: nn.Module, ep: ExpertParallel) -> nn.Module:
    """Make every MoE layer of ``model`` expert-parallel (in place) and return the model.

    The model must hold all E experts (built identically on every rank, same seed), so the
    expert-parallel model computes the same function as the single-device one. Each rank keeps
    its E/ep experts; with ep > 1 the layer's exchange becomes the all-to-all.
    """
    for layer in model.modules():
        if isinstance(layer, MoELayer):
            layer.experts = DeepSpeedExperts(layer.experts, num_experts=layer.num_experts, ep=ep)
            layer.exchange = AllToAllExchange(ep) if ep.ep_size > 1 else LocalExchange()
    return model


# ---------------------------------------------------------------------------------------------
# The one place a launched run's FFN layers change
# ---------------------------------------------------------------------------------------------


class DeepSpeedTopK(nn.Module):
    """A block's FFN as DeepSpeed's native ``MoE`` with its GShard ``TopKGate`` (k = top_k).

    Differences from ``TokenChoiceMoE``: DeepSpeed routes all tokens of a micro-batch as one
    group, its capacity is max(ceil(k * f * tokens / E), min_capacity = 4), and the second
    expert is sampled with Gumbel noise in training. Its balancing loss is kept in ``l_aux``
    and added to the loss by the worker (``ECDiT.aux_loss`` only sees our MoE layers).
    """

    # DeepSpeed's gate reads counts back to the host and its dispatch is a collective: the
    # whole layer stays out of compiled regions (``regional_compile``)
    EAGER_METHODS = ("forward",)

    def __init__(self, cfg: ModelConfig, ep):
        super().__init__()
        ffn = cfg.ffn
        self.coef = ffn.aux_loss_coef
        self.num_experts = ffn.num_experts
        self.moe = _DeepSpeedMoE(hidden_size=cfg.hidden_size,
                                 expert=Mlp(cfg.hidden_size, cfg.mlp_hidden),
                                 num_experts=ffn.num_experts, ep_size=ep.ep_size, k=ffn.top_k,
                                 capacity_factor=ffn.capacity_factor,
                                 eval_capacity_factor=ffn.capacity_factor,
                                 min_capacity=4, drop_tokens=ffn.drop_tokens, use_rts=False)
        self.l_aux = None
        self.exp_counts = None

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        out, l_aux, counts = self.moe(x_BSD)
        self.l_aux, self.exp_counts = self.coef * l_aux, counts
        return out


def deepspeed_topk_layers(model: nn.Module) -> list[DeepSpeedTopK]:
    return [m for m in model.modules() if isinstance(m, DeepSpeedTopK)]


def parallelize(model: nn.Module, cfg: ModelConfig, ep: ExpertParallel, *,
                tc_impl: str = "ecdit") -> nn.Module:
    """The single-device model (``model.build_model``, its FFNs from ``model.moe.make_ffn``)
    as a launched run trains it, changed in place and returned.

    Token choice with ``tc_impl = "deepspeed"``: each MoE FFN becomes DeepSpeed's own ``MoE``
    layer with its ``TopKGate`` (``DeepSpeedTopK``). Otherwise (our ``ExpertChoiceMoE`` and
    ``TokenChoiceMoE``): ``shard_experts``.
    """
    if cfg.ffn.kind is FFNKind.TOKEN_CHOICE and tc_impl == "deepspeed":
        for block in model.blocks:
            if block.is_moe:
                block.ffn = DeepSpeedTopK(cfg, ep)
        return model
    return shard_experts(model, ep)


def is_expert_param(p: torch.Tensor) -> bool:
    return getattr(p, "allreduce", True) is False


def param_counts(model: nn.Module, ep: ExpertParallel) -> dict[str, int]:
    """Parameters on this rank, and the model total they stand for (experts x ep)."""
    expert = sum(p.numel() for p in model.parameters() if is_expert_param(p))
    shared = sum(p.numel() for p in model.parameters() if not is_expert_param(p))
    return {"rank_params": expert + shared, "rank_expert_params": expert,
            "shared_params": shared, "model_params": shared + expert * ep.ep_size}


# ---------------------------------------------------------------------------------------------
# Checkpoints -> a single-device state dict
# ---------------------------------------------------------------------------------------------

_EXPERT_KEY = re.compile(
    r"^(?P<layer>.+)\.experts\.deepspeed_moe\.experts\.deepspeed_experts\.(?P<e>\d+)\.(?P<p>\w+)$")


def consolidate_checkpoint(tag_dir: str | Path) -> dict[str, torch.Tensor]:
    """Merge one DeepSpeed checkpoint tag (model states + one file per expert) into the state
    dict of the single-device model (``build_model(cfg)``, batched ``Experts``)."""
    tag_dir = Path(tag_dir)
    model_files = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
    if not model_files:
        raise FileNotFoundError(f"{tag_dir}: no mp_rank_*_model_states.pt (not a checkpoint)")
    state = dict(torch.load(model_files[0], map_location="cpu", weights_only=False)["module"])
    slices: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for f in sorted(tag_dir.glob("layer_*_expert_*_mp_rank_*_model_states.pt")):
        for key, t in torch.load(f, map_location="cpu", weights_only=False).items():
            m = _EXPERT_KEY.match(key)
            if m is None:
                continue
            slices.setdefault((m["layer"], m["p"]), {})[int(m["e"])] = t
    for (layer, pname), by_e in slices.items():
        state[f"{layer}.experts.{_BATCHED[pname]}"] = torch.stack([by_e[e] for e in sorted(by_e)])
    return state
