"""Batches on the device one step ahead, so that the data path never holds a GPU step up.

On CUDA, batch k+1 is copied while step k computes: from pinned (page-locked) host memory, on a
stream of its own, cast there to the dtype the model trains in (one copy and one cast per
tensor, none on the compute stream); the compute stream waits for that copy only when it takes
the batch. A pageable ``.to(device)`` instead blocks the host for the copy each step, and the
host is what a small-kernel training step is short of. On CPU the batches pass through as they
are: there is nothing to overlap.

The batches are the same tensors in the same order (``datasets.batches`` decides them), so
determinism and resume are untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch


class DeviceFeed:
    """Iterator of (images, text) on ``device`` in ``dtype``, prefetched one batch ahead."""

    def __init__(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 device: torch.device, dtype: torch.dtype | None = None):
        self._it: Iterator = iter(batches)
        self._device, self._dtype = device, dtype
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._next = self._load() if self._stream is not None else None

    def _load(self) -> tuple[torch.Tensor, ...]:
        batch = next(self._it)
        with torch.cuda.stream(self._stream):
            return tuple(t.pin_memory().to(self._device, non_blocking=True)
                         .to(self._dtype or t.dtype) for t in batch)

    def __iter__(self) -> DeviceFeed:
        return self

    def __next__(self) -> tuple[torch.Tensor, ...]:
        if self._stream is None:
            return next(self._it)
        batch = self._next
        compute = torch.cuda.current_stream(self._device)
        compute.wait_stream(self._stream)
        for t in batch:  # its memory is the compute stream's from here on
            t.record_stream(compute)
        self._next = self._load()  # the next copy overlaps this step
        return batch


def device_feed(batches: Iterable, r) -> Iterable:
    """The batches of a rank's run (``engine.Rank``), on its device in its training dtype."""
    if not r.on_gpu:
        return batches
    dtype = torch.bfloat16 if r.engine.bfloat16_enabled() else None
    return DeviceFeed(batches, r.device, dtype)
