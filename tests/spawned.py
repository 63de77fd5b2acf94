"""Ranks a test starts in processes of its own, forked from a server that imported torch,
DeepSpeed and dynamo once per test process.

``start_method="spawn"`` starts a fresh interpreter per rank, and each imports torch,
DeepSpeed and dynamo again (~4 CPU s a rank: ~16 s for the 4-rank collective trace). A
forkserver imports them once (``PRELOAD``) and forks each rank from that state. The server
keeps the environment it starts with: DS_ACCELERATOR=cpu, so that DeepSpeed picks the CPU
accelerator at import even where CUDA is visible (the ranks train on CPU with gloo).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable

PRELOAD = ["torch", "torch._dynamo", "deepspeed", "deepspeed.moe.layer",
           "ecdit_scale.train.expert_parallel", "ecdit_scale.train.engine",
           "ecdit_scale.evaluation.collective_trace"]


def start_ranks(fn: Callable, args: tuple, nprocs: int) -> None:
    """``torch.multiprocessing.start_processes(fn, args, nprocs)``, joined, from the server."""
    import torch.multiprocessing as mp

    multiprocessing.set_forkserver_preload(PRELOAD)
    old = os.environ.get("DS_ACCELERATOR")
    os.environ["DS_ACCELERATOR"] = "cpu"  # read by the server when it starts (the first call)
    try:
        mp.start_processes(fn, args=args, nprocs=nprocs, join=True, start_method="forkserver")
    finally:
        if old is None:
            os.environ.pop("DS_ACCELERATOR", None)
        else:
            os.environ["DS_ACCELERATOR"] = old
