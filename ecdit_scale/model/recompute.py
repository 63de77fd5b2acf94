"""Activation recomputation (``config.Recompute``), with torch.utils.checkpoint (non-reentrant).

- ``full``: each block keeps only its inputs; backward reruns the whole block forward
  (Chen et al. 2016), MoE routing and, under expert parallelism, both all-to-alls included.
  Every rank reruns the same blocks in the same order, so the collectives stay matched; the
  planner prices the second pair of all-to-alls (``planner.comm.forward_passes``).
- ``selective`` (Korthikanti et al. 2022, Sec. 5, adapted): regions that contain no
  communication are checkpointed *keeping every linear layer's output* (a selective-checkpoint
  policy: mm / addmm, and the experts' bmm / baddbmm, are cached; everything else is rerun in
  backward). So the backward reruns only LayerNorm, adaLN modulate, the attention core (QK^T,
  softmax, AV: the one matmul work redone, ``planner.flops.recompute_flops_per_image``) and
  GELU; no linear layer runs twice. The regions are: (1) norm1 -> modulate -> self-attention;
  (2) for a dense FFN, norm2 -> modulate -> fc1 -> GELU -> fc2; for an MoE FFN, norm2 -> modulate,
  and the experts on their slots (between the dispatch and combine all-to-alls, never across
  them).
  Cross-attention is not checkpointed: its SDPA output would be traded for its projection
  output, no memory gained. The bytes each policy keeps are ``planner.memory.block_activations``.
- ``none``: plain autograd.

A replay must not change what the forward left behind: MoE layers record their routing
statistics in ``last_stats`` (DeepSpeed's top-k layer in ``l_aux`` / ``exp_counts``), and the
trainer reads them after the step; ``replay_safe`` restores them after a recomputation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

# The matmuls whose outputs selective recomputation keeps. Linear layers reach the dispatcher
# as mm / addmm; batched experts as bmm / baddbmm. The attention products are deliberately
# absent: a fused SDPA kernel is one op, and the math fallback's bmm's are not in LINEAR_OPS, so
# the attention core is rerun either way.
LINEAR_OPS = frozenset({torch.ops.aten.mm, torch.ops.aten.addmm})
EXPERT_OPS = LINEAR_OPS | {torch.ops.aten.bmm, torch.ops.aten.baddbmm}


def _policy(keep: frozenset):
    def policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
        packet = getattr(op, "overloadpacket", op)
        return CheckpointPolicy.MUST_SAVE if packet in keep else CheckpointPolicy.PREFER_RECOMPUTE

    return functools.partial(create_selective_checkpoint_contexts, policy)


_CONTEXTS = {LINEAR_OPS: _policy(LINEAR_OPS), EXPERT_OPS: _policy(EXPERT_OPS)}


def checkpoint_keeping(fn: Callable, *args, keep: frozenset = LINEAR_OPS):
    """``fn(*args)``, keeping its inputs and the outputs of the ``keep`` ops for backward and
    rerunning the rest of it there (selective recompute). Plain call when autograd is off."""
    if not torch.is_grad_enabled():
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False, context_fn=_CONTEXTS[keep])


def checkpoint_all(fn: Callable, *args):
    """``fn(*args)``, keeping only its inputs and rerunning all of it in backward (full)."""
    if not torch.is_grad_enabled():
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False)


# attributes a forward leaves on a module for the trainer (MoE routing statistics)
REPLAY_STATE = ("last_stats", "l_aux", "exp_counts")


def replay_safe(module: nn.Module, fn: Callable) -> Callable:
    """``fn`` for a checkpoint region inside ``module``: its first call is the forward; later
    calls are replays in backward, after which every submodule's ``REPLAY_STATE`` attributes
    are what the forward left (the replay's copies would also pin their autograd graphs)."""
    calls = 0

    @functools.wraps(fn)
    def run(*args):
        nonlocal calls
        calls += 1
        if calls == 1:
            return fn(*args)
        kept = [(m, name, getattr(m, name)) for m in module.modules() for name in REPLAY_STATE
                if hasattr(m, name)]
        try:
            return fn(*args)
        finally:  # also when the replay stops early (checkpoint's early stop)
            for m, name, value in kept:
                setattr(m, name, value)

    return run
