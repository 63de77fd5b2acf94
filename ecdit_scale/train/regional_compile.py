"""Regional ``torch.compile``: each transformer block's forward is compiled on its own.

Why a block, not the model: every block runs the same code, so the blocks share one compiled
graph (one per block kind: dense FFN or MoE) and compiling an XL model costs what compiling one
block does, while the fused kernels (LayerNorm + modulate, GELU, residual gates, routing
softmax/top-k) remove most of a step's small kernel launches.

What is compiled is ``Block._forward`` (an instance attribute; the module and its parameter
names stay as they are, so checkpoints and resume see the eager model's state_dict keys, with
no ``_orig_mod.`` prefix). Activation recomputation wraps ``_forward`` from outside
(``Block.forward``), so a full recompute reruns the compiled region; selective recompute's
checkpoints sit inside it and compile with it. The expert-parallel all-to-all
(``expert_parallel.AllToAllExchange``) is excluded from the compiled region: dynamo breaks the
graph there and the collective runs eagerly, in the same order on every rank.

Not with CPU memory tracking: a step run under ``peak_memory.PeakBytes`` (a TorchDispatchMode)
makes dynamo give up on the compiled frames for good, so a compiled CPU run does not track
memory (``request.run_track_memory``); on CUDA the allocator keeps the peak, no mode is used.

Backend: inductor, or ``$ECDIT_SCALE_COMPILE_BACKEND`` (e.g. ``aot_eager``: the same graph
capture without code generation, for CPU tests: inductor spends ~45 s compiling even a 4-block
nano model on these 2-core machines).
"""

from __future__ import annotations

import enum
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where something is compiled: request.py imports Compile
    from torch import nn


class Compile(str, enum.Enum):
    """``launch --compile`` (run.json's ``compile``): nothing, or each block's forward."""

    NONE = "none"
    BLOCK = "block"


BACKEND_ENV = "ECDIT_SCALE_COMPILE_BACKEND"
DEFAULT_BACKEND = "inductor"


def compile_backend(mode: Compile | str) -> str | None:
    """The backend a run with ``mode`` compiles with (None: nothing is compiled)."""
    if Compile(mode) is Compile.NONE:
        return None
    return os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND


def compile_region(module: nn.Module, method: str, backend: str) -> None:
    """Compile ``module.<method>`` in place, as an instance attribute (parameter names do not
    change). Methods that modules inside it list in ``EAGER_METHODS`` (the all-to-all, the
    expert weights' strided view) are wrapped in ``torch.compiler.disable`` first: dynamo breaks
    the graph there. Done here, not with a decorator, so that a run without compile never
    imports dynamo (~2 s per rank)."""
    import torch

    for m in module.modules():
        for name in getattr(m, "EAGER_METHODS", ()):
            if name not in vars(m):
                setattr(m, name, torch.compiler.disable(getattr(m, name)))
    # default dynamic shapes: token choice's kept slots vary from step to step
    setattr(module, method, torch.compile(getattr(module, method), backend=backend))


def compile_blocks(model: nn.Module, mode: Compile | str, *,
                   backend: str | None = None) -> int:
    """Compile each block's forward of ``model`` (an ``ECDiT``, perhaps expert-parallel) in
    place; returns how many were wrapped (0 for ``Compile.NONE``). Call it before DeepSpeed
    wraps the model: the compiled function holds the block, not a copy."""
    backend = backend or compile_backend(mode)
    if backend is None:
        return 0
    blocks = list(getattr(model, "blocks", ()))
    for block in blocks:
        compile_region(block, "_forward", backend)
    return len(blocks)


def is_compiled(block: nn.Module) -> bool:
    return "_forward" in vars(block)
