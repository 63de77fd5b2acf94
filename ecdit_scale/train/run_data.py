"""A run's data as its ranks load it: from its settings (run.json) and its card, without
DeepSpeed or torch.distributed (``evaluation`` and tests load it the same way)."""

from __future__ import annotations

from ..config import ModelConfig
from .records import RunSettings


def load_run_data(s: RunSettings, cfg: ModelConfig):
    """(training data, held-out samples or None when the run keeps none, what the run record
    keeps about a prepared folder or None), from one load of the dataset: a CaptionedImages
    split in two, or for a stream the ShapesStream of steps x global batch positions and its
    fixed held-out set. A prepared folder (``launch --data``) is split by item; its record is
    ``PreparedData.describe()`` with the held-out items by name (rank 0 writes data.json)."""
    from ..datasets.kinds import STREAMS

    if s.data is not None:  # a prepared folder (``launch --data``), split by item
        from ..datasets.prepared import open_prepared, prepared_splits

        data = open_prepared(s.data)
        split = prepared_splits(data, cfg, holdout=s.holdout, seed=s.seed, limit=s.data_limit)
        record = {**data.describe(), "limit": s.data_limit, "train_items": len(split.train),
                  "held_out_items": split.held_keys,
                  "split": "by item: datasets.batches.holdout_rows(items, holdout, seed)"}
        return split.train, split.held if s.holdout else None, record
    if s.dataset in STREAMS:
        from ..datasets.stream import ShapesStream

        data = ShapesStream(cfg, seed=s.seed, positions=s.steps * s.global_batch,
                            holdout=s.holdout)
        return data, data.held_out() if s.holdout else None, None
    from ..datasets.batches import run_splits

    train, held = run_splits(s.dataset, cfg, limit=s.data_limit, seed=s.seed, holdout=s.holdout)
    return train, held if s.holdout else None, None
