"""What a training loop does besides stepping, and when: each says whether it is ``due`` at a
step, and does its work when asked. The worker's main loop and its cooldown branches run the
same ``worker.step``; these decide around it (torchtitan's ``Trainer.train`` keeps the same
split: one step body, checkpointer and validator objects that know their cadence).

- ``Checkpointing``: every ``every`` steps and at the last (or never: ``--no-checkpoints``);
- ``HeldOutScoring``: every ``every`` steps and at the last (``every`` 0: at the last only);
- ``DivergenceGuard``: after every step, a loss that is not finite or ``factor`` times the
  run's first stops the run (``Diverged``) before anything is saved;
- ``MemoryTracking``: CPU live-tensor counting on the first few steps of a launch, then every
  ``MEMORY_EVERY``-th (counting every op roughly doubles a small model's CPU step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .peak_memory import MEMORY_EVERY, PeakBytes
from .records import CHECKPOINT_TAG, COMPLETE_MARKER

FIRST_TRACKED = 3  # steps of a launch whose memory is always counted


def _every(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


@dataclass(frozen=True)
class Checkpointing:
    every: int
    last: int
    enabled: bool = True  # False: never, not even at the end (``--no-checkpoints``)

    def due(self, step: int) -> bool:
        return self.enabled and _every(step, self.every, self.last)

    @staticmethod
    def save(r: Any, step: int, first_loss: float | None = None) -> None:
        """Every rank saves its part; once all have (DeepSpeed's save ends in a barrier), rank 0
        marks the checkpoint complete and prunes the old ones."""
        import torch.distributed as dist

        rd, tag = r.rd, CHECKPOINT_TAG.format(step=step)
        if r.rank == 0:  # a checkpoint saved again (after a resume) is incomplete until marked
            (rd.checkpoints / tag / COMPLETE_MARKER).unlink(missing_ok=True)
        if r.ema is not None:  # before DeepSpeed's save, whose closing barrier then covers it
            dist.barrier()  # rank 0 has removed the old marker
            r.ema.save(rd.checkpoints / tag, r.rank)
        r.engine.save_checkpoint(str(rd.checkpoints), tag=tag,
                                 client_state={"step": step, "first_loss": first_loss})
        if r.rank == 0:
            rd.mark_complete(tag, step)
            rd.prune_checkpoints(r.s.keep_checkpoints, current=tag)


@dataclass(frozen=True)
class HeldOutScoring:
    scorer: Callable[..., dict] | None  # heldout.HeldOutLoss (None: no held-out samples)
    every: int  # 0: at the last step only
    last: int

    def due(self, step: int) -> bool:
        return self.scorer is not None and _every(step, self.every, self.last)

    def score(self, engine: Any) -> dict:
        return self.scorer(engine.module, bf16=engine.bfloat16_enabled())


@dataclass(frozen=True)
class MemoryTracking:
    tracker: PeakBytes | None  # None: not tracked (CUDA keeps its own peak; or not asked)
    start: int  # the step this launch started after

    def due(self, step: int) -> bool:
        return self.tracker is not None and (step - self.start <= FIRST_TRACKED
                                             or step % MEMORY_EVERY == 0)

    def after(self, step: int, r: Any) -> None:
        """Register the model states, as they stand after the launch's first update."""
        if self.due(step) and step == self.start + 1:
            self.tracker.register_states(r.engine, r.ema)


class Diverged(Exception):
    """A step's loss says the run diverged (the message says which step and why)."""


@dataclass
class DivergenceGuard:
    factor: float  # 0: only a non-finite loss stops the run
    first_loss: float | None = None  # the run's first step's (kept in its checkpoints)

    def check(self, step: int, loss: float) -> str | None:
        """Why step ``step``'s loss (the global mean, the same on every rank) means the run
        diverged, or None; the first loss seen is the reference when none is known."""
        if not math.isfinite(loss):
            return f"step {step}'s loss is {loss}"
        if self.first_loss is None:
            self.first_loss = loss
            return None
        if self.factor and loss > self.factor * self.first_loss:
            return (f"step {step}'s loss {loss:.4g} is {loss / self.first_loss:,.0f}x the first "
                    f"step's {self.first_loss:.4g} (--divergence-factor {self.factor:g})")
        return None
