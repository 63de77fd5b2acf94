"""Memory a rank uses: peak live tensor bytes on CPU (the CUDA allocator keeps its own peak),
and the bytes of the model states that persist across steps.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

MEMORY_EVERY = 10  # CPU memory tracking: the first 3 steps of a launch, then every 10th

MEMORY_WHAT_CPU = (
    "peak bytes of live tensor storages on this rank during a step (the first 3 steps of a "
    "launch and every 10th; other steps are untracked and time the step): model states "
    "(parameters, gradients, optimizer state, DeepSpeed's ZeRO buffers and the EMA, counted "
    "once as registered after the first step) plus every tensor an aten op allocates during "
    "forward, backward, the optimizer step and the EMA update (tracked with a "
    "TorchDispatchMode, freed when its storage dies); max over ranks")
MEMORY_WHAT_CUDA = "torch.cuda.max_memory_allocated per step, max over ranks"
PHASES = ("forward", "backward", "step", "ema")  # a step's phases, as the planner's peaks name them


class PhasePeaks:
    """The peak of each phase of a step (``PHASES``) and of the whole step: on CPU from a
    ``PeakBytes`` tracker (tracked steps only), on CUDA from the allocator's peak, which each
    phase resets at its start and end (host-side bookkeeping: no synchronisation). The step's
    peak is the largest of the phases' and of what ran between them."""

    def __init__(self, tracker: PeakBytes | None, cuda: bool) -> None:
        self.tracker, self.cuda = tracker, cuda
        self.by_phase: dict[str, int] = {}
        self.between = 0
        self.active = False

    def _peak(self) -> int:
        return int(torch.cuda.max_memory_allocated()) if self.cuda else self.tracker.peak

    def _reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self.tracker.reset_peak()

    def begin(self, active: bool = True) -> None:
        """A new step; ``active`` False: this step is not measured (CPU: untracked)."""
        self.by_phase, self.between = {}, 0
        self.active = active and (self.cuda or self.tracker is not None)
        if self.active:
            self._reset()

    @contextlib.contextmanager
    def measure(self, name: str):
        if not self.active:
            yield
            return
        self.between = max(self.between, self._peak())
        self._reset()
        try:
            yield
        finally:
            self.by_phase[name] = max(self.by_phase.get(name, 0), self._peak())
            self._reset()

    def end(self) -> tuple[int, list[int]]:
        """(the step's peak, each phase's peak in ``PHASES`` order, -1 where not measured);
        (-1, [...]) for a step that was not measured."""
        if not self.active:
            return -1, [-1] * len(PHASES)
        self.active = False
        overall = max([self.between, self._peak(), *self.by_phase.values()])
        return overall, [self.by_phase.get(n, -1) for n in PHASES]


class PeakBytes(TorchDispatchMode):
    """Live bytes of tensor storages, and their peak while the mode is active.

    Each storage an op returns is counted once (views share it) until it is garbage collected;
    ``register`` adds tensors that existed before (parameters, optimizer state). Like
    ``torch.cuda.max_memory_allocated`` but for any device and without allocator rounding.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._refs: list[weakref.ref] = []
        self.current = 0
        self.peak = 0

    def _add(self, t: torch.Tensor) -> None:
        if not isinstance(t, torch.Tensor) or t.is_meta or type(t) is not torch.Tensor and not \
                isinstance(t, nn.Parameter):
            return
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        if st in self._live:
            return
        nbytes = st.nbytes()
        self._live[st] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)

        def freed(_ref, n=nbytes, self_ref=weakref.ref(self)):
            me = self_ref()
            if me is not None:
                me.current -= n

        self._refs.append(weakref.ref(st, freed))
        if len(self._refs) > 4096:
            self._refs = [r for r in self._refs if r() is not None]

    def register(self, tensors) -> None:
        for t in tensors:
            self._add(t)

    def register_states(self, engine, ema=None) -> None:
        """The model states as they stand after an optimizer step: the module's parameters and
        any gradients left, DeepSpeed's optimizer buffers and state, and the EMA."""
        params = list(engine.module.parameters())
        self.register(params)
        self.register(p.grad for p in params if p.grad is not None)
        self.register(tensors_in(engine.optimizer))
        if ema is not None:
            self.register(ema.shadow.values())

    def reset_peak(self) -> None:
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out


def tensors_in(obj: Any, depth: int = 4, _seen: set | None = None):
    """Tensors reachable from an object's attributes, lists and dicts (to register DeepSpeed's
    optimizer buffers, whose layout differs per ZeRO stage). ``depth`` levels of containers are
    opened; one reached at the limit is left unmarked, so that a shorter path to it (DeepSpeed's
    bf16 ZeRO-0 wrapper shares its fp32 master list with the torch optimizer's param group)
    still finds its tensors."""
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return
    if isinstance(obj, torch.Tensor):
        seen.add(id(obj))
        yield obj
        return
    if depth <= 0:
        return
    seen.add(id(obj))
    if isinstance(obj, dict):
        items = obj.values()
    elif isinstance(obj, (list, tuple, set)):
        items = obj
    elif isinstance(obj, (torch.optim.Optimizer,)) or hasattr(obj, "__dict__") and \
            type(obj).__module__.startswith(("deepspeed", "torch.optim")):
        items = list(vars(obj).values())
        if isinstance(obj, torch.optim.Optimizer):
            items += [obj.state]
    else:
        return
    for v in items:
        yield from tensors_in(v, depth - 1, seen)


def model_state_bytes(engine) -> dict[str, int]:
    """Bytes of the tensors that persist across steps on this rank, by owner: the module's
    parameters and gradients, then each attribute of DeepSpeed's optimizer wrapper (flat
    bit16 groups, fp32 partitions, gradient buckets ``ipg_buffer`` ...) and the torch
    optimizer's state. Each storage is counted once, under the first owner that holds it."""
    seen: set[int] = set()
    out: dict[str, int] = {}

    def add(key: str, tensors) -> None:
        for t in tensors:
            try:
                st = t.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            if st.data_ptr() in seen or st.nbytes() == 0:
                continue
            seen.add(st.data_ptr())
            out[key] = out.get(key, 0) + st.nbytes()

    params = list(engine.module.parameters())
    add("params", params)
    add("grads", [p.grad for p in params if p.grad is not None])
    opt = engine.optimizer
    inner = getattr(opt, "optimizer", opt)
    add("optimizer_state", tensors_in(inner.state))
    if opt is not inner:
        for name, value in vars(opt).items():
            add(f"zero.{name}", tensors_in(value))
    return out
