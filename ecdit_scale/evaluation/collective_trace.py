"""A recorded trace of the collectives the real DeepSpeed engine issues in a training step, on
CPU/gloo, to check the planner's list (``planner.comm.comm_arrays``: calls per group).

``CollectiveTrace`` wraps torch.distributed's collectives (DeepSpeed's ``deepspeed.comm`` calls
them through ``torch.distributed`` at call time) and records each call: op, group size, dtype,
elements. ``trace_worker`` is one rank of a launch (``torch.multiprocessing``) that, for each
configuration (placement, ZeRO stage, dense or MoE), builds the engine as the trainer does and
records one optimizer step; rank 0 writes the calls and the losses as JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

INPUT_LAST = ("all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
              "all_to_all_single")
BACKEND_FUNCTIONS = {"all_gather_function": "all_gather_into_tensor",
                     "reduce_scatter_function": "reduce_scatter_tensor"}
TRACED_OPS = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
              "all_to_all_single", "broadcast", "reduce")


@dataclass(frozen=True)
class Call:
    op: str
    group_size: int
    dtype: str
    numel: int
    seconds: float = 0.0  # wall time in the call (``timed`` traces only)


class CollectiveTrace:
    """``with CollectiveTrace() as t:`` records every traced collective into ``t.calls``;
    ``timed``: each with the wall seconds it took, an asynchronous one waited for in the call
    (what a step spends in its collectives, ``seconds``)."""

    def __init__(self, timed: bool = False) -> None:
        self.calls: list[Call] = []
        self.timed = timed
        self._saved: dict[str, Any] = {}

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.calls)

    def __enter__(self) -> CollectiveTrace:
        import torch.distributed as dist

        for op in TRACED_OPS:
            if hasattr(dist, op):
                self._saved[op] = getattr(dist, op)
                setattr(dist, op, self._wrap(op, self._saved[op]))
        # DeepSpeed's torch backend keeps its own reference to the tensor-wise gathers
        backend = self._deepspeed_backend()
        for attr, op in BACKEND_FUNCTIONS.items():
            fn = getattr(backend, attr, None)
            if fn is not None:
                self._saved["backend." + attr] = fn
                setattr(backend, attr, self._wrap(op, fn))
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch.distributed as dist

        backend = self._deepspeed_backend()
        for name, fn in self._saved.items():
            if name.startswith("backend."):
                setattr(backend, name.removeprefix("backend."), fn)
            else:
                setattr(dist, name, fn)

    @staticmethod
    def _deepspeed_backend() -> Any:
        import sys

        comm = sys.modules.get("deepspeed.comm.comm")
        return getattr(comm, "cdb", None)

    def _wrap(self, op: str, fn: Any) -> Any:
        import torch
        import torch.distributed as dist

        def traced(*args: Any, **kwargs: Any) -> Any:
            group = kwargs.get("group")
            if group is None:
                group = next((a for a in args if isinstance(a, dist.ProcessGroup)), None)
            given = [a[0] if isinstance(a, (list, tuple)) and a else a
                     for a in (*args, *kwargs.values())]
            tensors = [t for t in given if isinstance(t, torch.Tensor)]
            # the local input: (output, input) ops list it second, in-place ops first
            tensor = tensors[-1] if op in INPUT_LAST and tensors else \
                (tensors[0] if tensors else None)
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            if self.timed and hasattr(result, "wait"):
                result.wait()  # an asynchronous call's work (waiting again later is a no-op)
            if tensor is not None:
                self.calls.append(Call(op=op, group_size=dist.get_world_size(group),
                                       dtype=str(tensor.dtype).removeprefix("torch."),
                                       numel=int(tensor.numel()),
                                       seconds=time.perf_counter() - t0 if self.timed else 0.0))
            return result

        return traced

    def counts(self, min_elements: int = 0) -> dict[tuple[str, int, str], int]:
        """(op, group size, dtype) -> calls of at least ``min_elements`` elements."""
        return dict(Counter((c.op, c.group_size, c.dtype) for c in self.calls
                            if c.numel >= min_elements))


def _build(cfg: Any, ep_size: int, placement: str, zero: int, world: int):
    """The engine as ``train.engine.setup`` builds it: DeepSpeed-MoE groups in ``placement``,
    the single-device model made expert-parallel, MoE param groups, the planner's ds_config."""
    import deepspeed
    import torch
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer
    from deepspeed.utils import groups

    from ..model import build_model
    from ..planner.deepspeed_config import deepspeed_config
    from ..planner.placement import data_before_expert
    from ..train.expert_parallel import create_groups, parallelize, single_process

    for registry in (groups._EXPERT_PARALLEL_GROUP, groups._EXPERT_PARALLEL_GROUP_RANKS,
                     groups._EXPERT_DATA_PARALLEL_GROUP, groups._EXPERT_DATA_PARALLEL_GROUP_RANKS):
        registry.clear()  # a new placement in this process (the groups themselves stay)
    moe = cfg.ffn.is_moe
    ep = create_groups(ep_size, placement) if moe else single_process()
    torch.manual_seed(0)
    model = parallelize(build_model(cfg), cfg, ep)
    param_groups = split_params_into_different_moe_groups_for_optimizer(
        {"params": list(model.parameters()), "name": "shared", "lr": 1e-3})
    optimizer = torch.optim.SGD([g for g in param_groups if g["params"]], lr=1e-3)
    ds_config = deepspeed_config(micro_batch=2, grad_accum=1, zero_stage=zero,
                                 precision="fp32", optimizer="sgd", lr=1e-3, warmup_steps=0,
                                 world=world, client_optimizer=True, scheduler=False, moe=moe,
                                 data_before_expert=data_before_expert(placement))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine, ep


def trace_worker(rank: int, world: int, port: int, out_dir: str,
                 configs: list[dict[str, Any]]) -> None:
    """One rank: for each config (``model``, ``ep``, ``placement``, ``zero``, ``steps``),
    train ``steps`` steps on this rank's fixed data, trace the last step's collectives."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DS_ACCELERATOR="cpu",
                      OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1")  # nothing compiles here
    import torch

    torch.set_num_threads(1)
    import deepspeed
    import deepspeed.ops
    import torch.distributed as dist
    from deepspeed.utils import groups

    from .. import sizes
    from ..model import rectified_flow_loss

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    results = []
    for c in configs:
        cfg = sizes.get(c["model"])
        engine, ep = _build(cfg, c["ep"], c["placement"], c["zero"], world)
        data = torch.Generator().manual_seed(1000 + rank)
        x = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size, generator=data)
        text = torch.randn(2, cfg.text_tokens, cfg.text_dim, generator=data)
        losses, trace = [], CollectiveTrace()
        for step in range(c["steps"]):
            gen = torch.Generator().manual_seed(step * 100 + rank)
            with (trace if step == c["steps"] - 1 else contextlib.nullcontext()):
                loss = rectified_flow_loss(engine, x, text, generator=gen).loss
                engine.backward(loss)
                engine.step()
            total = loss.detach().clone()
            dist.all_reduce(total)
            losses.append(float(total) / world)
        name = ep.group_name
        results.append({**c, "losses": losses,
                        "calls": [[c.op, c.group_size, c.dtype, c.numel] for c in trace.calls],
                        "ep_ranks": (list(groups._get_expert_parallel_group_ranks(name))
                                     if cfg.ffn.is_moe else None),
                        "edp_ranks": (list(groups._get_expert_data_parallel_group_ranks(name))
                                      if cfg.ffn.is_moe else None)})
        dist.barrier()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(results, fh)
    dist.barrier()
    dist.destroy_process_group()

