"""Alignment of a trained run: sample images for held-out shape captions from its last
checkpoint and score them with the GenEval-style checker (``alignment.geneval_score``).

The sweep records this score in its run table for the final budget of every shapes run.
"""

from __future__ import annotations

from ..train.records import RunDir
from .alignment import geneval_score
from .runs import load_run_model

HELD_OUT_SEED_OFFSET = 1_000_003  # scenes past the training set's (make_shapes is prefix-stable)
GUIDANCE = 4.0  # classifier-free guidance scale used for the score


def alignment_of_run(rd: RunDir, *, samples: int, sampling_steps: int, seed: int) -> float:
    """GenEval-style score in [0, 1] of ``samples`` images sampled with ``sampling_steps`` Euler
    steps from the run's last complete checkpoint, for held-out shape captions."""
    import torch

    from ..datasets.batches import build_dataset
    from ..datasets.captioned import to_uint8
    from ..model import sample

    cfg, _, model, _ = load_run_model(rd)
    ds = build_dataset("shapes", image_size=cfg.input_size, text_tokens=cfg.text_tokens,
                       limit=samples, seed=seed + HELD_OUT_SEED_OFFSET)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = sample(model, ds.text, steps=sampling_steps, guidance=GUIDANCE, generator=g)
    return float(geneval_score(to_uint8(x.clamp(-1, 1)), list(ds.specs)))
