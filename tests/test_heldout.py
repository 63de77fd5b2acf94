"""The held-out loss (train/heldout.py), the wsd schedule (engine.lr_at) and the shapes stream
(datasets/stream.py): fixed problems, an even collective split, data that never repeats."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ecdit_scale.datasets import stream
from ecdit_scale.datasets.captioned import to_unit_range
from ecdit_scale.datasets.shapes import all_scene_specs, sample_scene
from ecdit_scale.train.heldout import HeldOutLoss, pair_noise, rank_pairs, timestep_grid


def test_timestep_grid_and_pairs_split_evenly_over_ranks():
    assert timestep_grid(4).tolist() == [0.125, 0.375, 0.625, 0.875]
    whole = rank_pairs(64, rank=0, world=1, chunk=8)
    parts = [rank_pairs(64, rank=r, world=4, chunk=8) for r in range(4)]
    assert sorted(np.concatenate(parts).tolist()) == whole.tolist() == list(range(64))
    # 60 pairs, 2 ranks x chunks of 8: whole chunks only (24 each); fewer than one chunk per
    # rank: wrapped around so that every rank still runs one full forward
    assert [len(rank_pairs(60, rank=r, world=2, chunk=8)) for r in (0, 1)] == [24, 24]
    assert rank_pairs(6, rank=1, world=2, chunk=8).tolist() == [2, 3, 4, 5, 0, 1, 2, 3]


def test_the_noise_of_a_problem_is_fixed():
    a = pair_noise((3, 4, 4), 5, 2)
    torch.manual_seed(123)  # the global generator has no say
    assert torch.equal(a, pair_noise((3, 4, 4), 5, 2))
    assert not torch.equal(a, pair_noise((3, 4, 4), 5, 3))


class _Linear(torch.nn.Module):
    """v = W x + t: a stand-in model with the trainer's call signature."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))
        self.cond_seen = []

    def forward(self, x, t, c, mask):
        self.cond_seen.append(self.training)
        return self.w * x + t.view(-1, 1, 1, 1)


def test_held_out_loss_is_the_mean_over_levels_of_the_flow_loss():
    g = torch.Generator().manual_seed(0)
    images, text = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 2, 5, generator=g)
    model = _Linear().train()
    score = HeldOutLoss.build(images, text, levels=4, rank=0, world=1, chunk=8,
                              device=torch.device("cpu"))
    got = score(model)
    assert model.training and model.cond_seen and not any(model.cond_seen)  # eval, restored
    by_t = []
    for j, t in enumerate(timestep_grid(4)):
        losses = []
        for i in range(6):
            eps = pair_noise((3, 4, 4), i, j)
            x_t = (1 - t) * images[i] + t * eps
            v = 0.3 * x_t + t
            losses.append(((v - (eps - images[i])) ** 2).mean().item())
        by_t.append(np.mean(losses))
    assert got["heldout_loss_by_t"] == pytest.approx(by_t, rel=1e-5)
    assert got["heldout_loss"] == pytest.approx(np.mean(by_t), rel=1e-5)
    again = HeldOutLoss.build(images, text, levels=4, rank=0, world=1, chunk=4,
                              device=torch.device("cpu"))(model)  # other chunks, same problems
    assert again["heldout_loss"] == pytest.approx(got["heldout_loss"], rel=1e-6)


def test_wsd_schedule_warms_up_holds_and_cools_down():
    from ecdit_scale.train.engine import lr_at
    from ecdit_scale.train.records import RunSettings

    base = dict(card="nano-dense", model_name="nano-dense", steps=10, nodes=1, nproc_per_node=1,
                ep=1, zero=1, micro_batch=2, grad_accum=1, lr=1.0, warmup_steps=2,
                optimizer="adamw", precision="fp32", dataset="shapes-stream", data_limit=None,
                holdout=8, seed=0, device="cpu", checkpoint_every=5, keep_checkpoints=2,
                track_memory=False)
    wsd = RunSettings.build(**base, schedule="wsd", cooldown_fraction=0.2)
    assert [lr_at(wsd, k) for k in range(1, 11)] == pytest.approx(
        [0.5, 1, 1, 1, 1, 1, 1, 1, 2 / 3, 1 / 3])
    constant = RunSettings.build(**base)
    assert [lr_at(constant, k) for k in (1, 2, 10)] == [0.5, 1, 1]
    assert json.loads(json.dumps(wsd.to_dict()))["schedule"] == "wsd"
    assert RunSettings.from_dict(wsd.to_dict()) == wsd


def _stream(seed: int) -> stream.ShapesStream:
    """A stream whose caption table is one-hot rows (no text encoder needed)."""
    captions = sorted({s.caption for s in all_scene_specs()})
    s = object.__new__(stream.ShapesStream)
    s.seed, s.image_size, s.redraws, s._held_keys = seed, 32, 0, set()
    s.table = stream.CaptionTable(index={c: i for i, c in enumerate(captions)},
                                  text_CTD=np.eye(len(captions), dtype=np.float32)[:, None, :],
                                  lengths_C=np.ones(len(captions), np.int64))
    return s


def test_stream_positions_are_fixed_fresh_and_split_over_ranks():
    a = stream.render_at(3, 1500, 32)
    assert np.array_equal(a, stream.render_at(3, 1500, 32))  # a pure function of (seed, p)
    keys = {stream.image_key(stream.render_at(3, p, 32)) for p in range(40)}
    assert len(keys) > 35  # scenes differ from position to position
    other = {stream.image_key(stream.render_at(4, p, 32)) for p in range(40)}
    assert len(keys & other) < 5  # and from seed to seed
    s = _stream(3)
    x, c = s.batch(5, 8)  # global batch 5 = positions 40..47
    halves = [s.batch(5, 8, rank=r, world=2) for r in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), x)
    assert torch.equal(torch.cat([h[1] for h in halves]), c)
    assert torch.equal(x[:1], to_unit_range(np.stack([stream.render_at(3, 40, 32)])))
    assert int(c[1, 0].argmax()) == s.table.index[stream.spec_at(3, 41).caption]
    it = s.batches(8, start_step=5)
    assert torch.equal(next(it)[0], x)  # a resume at step 5 reads the same batch


def test_a_training_image_equal_to_a_held_out_one_is_drawn_again():
    s = object.__new__(stream.ShapesStream)  # the parts train_image reads (no text encoder)
    s.seed, s.image_size, s.redraws = 3, 32, 0
    s._held_keys = {stream.image_key(stream.render_at(3, 9, 32))}  # position 9 collides
    redrawn = s.train_image(9)
    assert s.redraws == 1 and stream.image_key(redrawn) not in s._held_keys
    assert np.array_equal(s.train_image(10), stream.render_at(3, 10, 32)) and s.redraws == 1


def test_the_caption_table_covers_every_scene_the_stream_draws():
    every = {s.caption for s in all_scene_specs()}
    rng = np.random.default_rng(0)
    assert len(every) == 2772 and all(sample_scene(rng).caption in every for _ in range(3000))
    short = stream.stream_captions(0, 40, 8)  # a short run: only what it and the held-out set use
    assert set(short) <= every and len(short) <= 48
    assert {stream.spec_at(stream.EVAL_STREAM_SEED, p).caption for p in range(8)} <= set(short)
    assert stream.stream_captions(0, stream.FULL_TABLE_AT, 8) == sorted(every)


def test_the_collective_score_of_an_ep2_run_is_the_single_device_score(ec_run):
    """The EC run (2 ranks, ep 2) scored its held-out set collectively at the last step; the
    single-device model loaded from its last checkpoint scores the same problems alike."""
    from ecdit_scale.evaluation.runs import held_out_samples, load_run_model
    from ecdit_scale.train.records import RunDir

    rd = RunDir(ec_run)
    summary = json.loads(rd.summary.read_text())
    last = rd.read_metrics()[-1]
    assert summary["heldout_loss"] == last["heldout_loss"] > 0
    assert len(last["heldout_loss_by_t"]) == len(summary["heldout_timesteps"]) == 8
    cfg, s, model, _ = load_run_model(rd)
    held = held_out_samples(s, cfg)
    again = HeldOutLoss.build(held.images, held.text, levels=s.eval_timesteps, rank=0, world=1,
                              chunk=s.micro_batch, device=torch.device("cpu"))(model)
    assert again["heldout_loss"] == pytest.approx(summary["heldout_loss"], rel=1e-5)


def test_a_prepared_full_caption_table_serves_short_runs_too(tmp_path):
    """On a machine without the text encoder (the GPU machines), bench/gpu_sweep.py carries
    the whole table; short runs must then read it instead of encoding their own few captions."""
    from ecdit_scale.datasets.text_encoder import TextEncoder

    assert stream.stream_captions(0, 40, 8, text_tokens=16, cache_dir=tmp_path) != \
        stream.all_captions()
    path = TextEncoder(tmp_path).cache_path(stream.all_captions(), 16)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")  # only its presence counts here
    assert stream.stream_captions(0, 40, 8, text_tokens=16, cache_dir=tmp_path) == \
        stream.all_captions()
    assert stream.stream_captions(0, 40, 8, text_tokens=77, cache_dir=tmp_path) != \
        stream.all_captions()  # another token count: another table
