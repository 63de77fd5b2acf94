"""Real small-end data: emoji rendering, the frozen text encoder, shapes, alignment, batches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ecdit_scale.datasets import DataError
from ecdit_scale.datasets.batches import batches, build_dataset
from ecdit_scale.datasets.captioned import CaptionedImages, to_uint8
from ecdit_scale.datasets.emoji import emoji_caption, emoji_sequences, load_emoji
from ecdit_scale.datasets.shapes import (
    TASKS,
    Relation,
    SceneSpec,
    ShapeGroup,
    SpecError,
    make_shapes,
    render_scene,
)
from ecdit_scale.datasets.text_encoder import TextEncoder
from ecdit_scale.evaluation.alignment import alignment_score, geneval_score


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ecdit-data")


@pytest.fixture(scope="module")
def encoder(cache):
    return TextEncoder(cache)


# ---------------------------------------------------------------------------------------------
# Emoji
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "codepoints, caption",
    [
        ([0x1F34E], "red apple"),
        ([0x1F431], "cat face"),
        ([0x1F1FA, 0x1F1F8], "flag us"),
        ([0x31, 0xFE0F, 0x20E3], "keycap 1"),
        ([0x1F44D, 0x1F3FF], "thumbs up sign: dark skin tone"),
        ([0x1F46E, 0x200D, 0x2640, 0xFE0F], "woman police officer"),
        ([0x1F3F4, 0xE0067, 0xE0062, 0xE0073, 0xE0063, 0xE0074, 0xE007F], "flag scotland"),
        ([0xE000], None),  # OpenMoji's private-use extras have no Unicode name
    ],
)
def test_emoji_caption(codepoints, caption):
    assert emoji_caption(codepoints) == caption


def test_emoji_render_coloured_and_cached(cache):
    images, captions = load_emoji(32, limit=24, cache_dir=cache)
    assert images.shape == (24, 32, 32, 3) and images.dtype == np.uint8
    assert len(captions) == 24 and all(c and c == c.lower() for c in captions)
    nonwhite = (images < 245).any(-1).mean((1, 2))
    assert (nonwhite > 0.05).all() and (images[:, 0, 0] > 245).all()  # content on a white corner
    chroma = images.max(-1).astype(int) - images.min(-1)
    assert ((chroma > 60).mean((1, 2)) > 0.02).mean() > 0.7  # most emoji are coloured
    assert len({im.tobytes() for im in images}) == 24
    files = list((cache / "emoji").glob("*.npz"))
    assert len(files) == 1
    again, captions_again = load_emoji(32, limit=24, cache_dir=cache)
    assert np.array_equal(again, images) and captions_again == captions


def test_emoji_sequences_cover_openmoji():
    seqs = emoji_sequences()
    assert len(seqs) > 3500
    assert ("1F34E", "red apple") in seqs


# ---------------------------------------------------------------------------------------------
# Text encoder
# ---------------------------------------------------------------------------------------------


def test_text_encoder_tokens_and_cache(encoder, cache):
    long = "a blue square to the left of a yellow triangle"
    captions = ["red apple", "cat face", "red apple", long]
    text, lengths = encoder.encode(captions, 8)
    assert text.shape == (4, 8, 384) and text.dtype == np.float32
    assert lengths.tolist()[:3] == [4, 4, 4] and lengths[3] == 8  # [CLS] red apple [SEP]; truncated
    assert not text[0, 4:].any() and (np.abs(text[0, :4]).sum(-1) > 0).all()  # zero padding
    assert np.array_equal(text[0], text[2])
    assert np.abs(text[0, 1:3] - text[1, 1:3]).mean() > 0.05
    assert encoder.model_loads == 1
    assert encoder.cache_path(sorted(set(captions)), 8).exists()

    fresh = TextEncoder(cache)
    text2, lengths2 = fresh.encode(captions, 8)
    assert fresh.model_loads == 0  # served from the cache file
    assert np.array_equal(text2, text) and np.array_equal(lengths2, lengths)


def test_text_encoder_rejects_bad_token_count(encoder):
    with pytest.raises(DataError, match="text_tokens"):
        encoder.encode(["cat"], 0)


# ---------------------------------------------------------------------------------------------
# Shapes and alignment
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [16, 32, 64])
def test_ground_truth_shapes_score_one(image_size):
    images, specs = make_shapes(120, image_size, seed=3)
    assert images.shape == (120, image_size, image_size, 3)
    assert {s.task for s in specs} == set(TASKS)
    assert geneval_score(images, specs) == 1.0


def test_shapes_deterministic_and_prefix_stable():
    a, sa = make_shapes(20, 32, seed=1)
    b, sb = make_shapes(30, 32, seed=1)
    c, _ = make_shapes(20, 32, seed=2)
    assert np.array_equal(a, b[:20]) and sa == sb[:20]
    assert not np.array_equal(a, c)


def test_captions_read_like_prompts():
    assert SceneSpec((ShapeGroup("red", "circle", 2),)).caption == "two red circles"
    assert SceneSpec((ShapeGroup("orange", "square"),)).caption == "an orange square"
    pair = (ShapeGroup("blue", "square"), ShapeGroup("yellow", "triangle"))
    spec = SceneSpec(pair, Relation.LEFT_OF)
    assert spec.caption == "a blue square to the left of a yellow triangle"
    spec = SceneSpec((ShapeGroup("green", "circle", 3), ShapeGroup("purple", "triangle")))
    assert spec.caption == "three green circles and a purple triangle"


def _render(spec, seed=0, size=32):
    return render_scene(spec, size, np.random.default_rng(seed))


def test_wrong_colour_count_shape_or_relation_scores_lower():
    spec = SceneSpec((ShapeGroup("red", "circle", 3),))
    assert alignment_score(_render(spec), spec).score == 1.0
    wrong_colour = alignment_score(_render(SceneSpec((ShapeGroup("green", "circle", 3),))), spec)
    assert not wrong_colour.colour_ok and wrong_colour.score < 1.0
    wrong_count = alignment_score(_render(SceneSpec((ShapeGroup("red", "circle", 2),))), spec)
    assert wrong_count.colour_ok and not wrong_count.count_ok and wrong_count.score < 1.0
    wrong_shape = alignment_score(_render(SceneSpec((ShapeGroup("red", "square", 3),))), spec)
    assert wrong_shape.count_ok and not wrong_shape.shape_ok and wrong_shape.score < 1.0

    pair = (ShapeGroup("blue", "square"), ShapeGroup("yellow", "triangle"))
    left = SceneSpec(pair, Relation.LEFT_OF)
    right = dataclasses.replace(left, relation=Relation.RIGHT_OF)
    good = alignment_score(_render(left), left)
    assert good.relation_ok and good.score == 1.0
    swapped = alignment_score(_render(right), left)
    assert swapped.relation_ok is False and swapped.score == 0.75


def test_blank_image_scores_zero():
    blank = np.full((32, 32, 3), 255, np.uint8)
    spec = SceneSpec((ShapeGroup("blue", "square"), ShapeGroup("red", "circle")), Relation.ABOVE)
    result = alignment_score(blank, spec)
    assert result.score == 0.0 and result.relation_ok is False
    assert geneval_score(blank[None], [spec]) == 0.0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ShapeGroup("pink", "circle"), "pink.*red"),
        (lambda: ShapeGroup("red", "star"), "star.*circle"),
        (lambda: ShapeGroup("red", "circle", 5), "count"),
        (lambda: SceneSpec((ShapeGroup("red", "circle"), ShapeGroup("red", "square"))), "distinct"),
        (lambda: SceneSpec((ShapeGroup("red", "circle", 2),), Relation.ABOVE), "relation"),
    ],
)
def test_bad_specs_raise(make, match):
    with pytest.raises(SpecError, match=match) as info:
        make()
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Dataset API and batches
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="imagenet"), "imagenet.*emoji, shapes"),
        (dict(image_size=8), "image_size = 8.*16..128"),
        (dict(image_size=256), "image_size = 256"),
        (dict(text_tokens=0), "text_tokens = 0"),
        (dict(limit=0), "limit = 0"),
    ],
)
def test_build_dataset_rejects_bad_arguments(kwargs, match, cache):
    args = dict(name="shapes", image_size=32, text_tokens=8, limit=4, seed=0, cache_dir=cache)
    args |= kwargs
    with pytest.raises(DataError, match=match) as info:
        build_dataset(args.pop("name"), **args)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_build_shapes_dataset(cache):
    ds = build_dataset(
        "shapes", image_size=32, text_tokens=12, limit=48, seed=0, cache_dir=cache
    )
    assert len(ds) == 48 and ds.images.shape == (48, 3, 32, 32) and ds.images.dtype == torch.float32
    assert ds.images.min() >= -1.0 and ds.images.max() == 1.0  # white background
    assert ds.text.shape == (48, 12, 384) and ds.text_len.shape == (48,)
    assert ds.captions == [s.caption for s in ds.specs]
    assert geneval_score(to_uint8(ds.images), ds.specs) == 1.0  # [-1, 1] round trip is exact


def test_build_emoji_dataset(cache):
    ds = build_dataset("emoji", image_size=16, text_tokens=8, limit=6, seed=0, cache_dir=cache)
    assert ds.images.shape == (6, 3, 16, 16) and ds.text.shape == (6, 8, 384) and ds.specs is None
    assert ds.images.min() >= -1.0 and ds.images.max() == 1.0


def _toy(n=10):
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    text = torch.arange(n, dtype=torch.float32).view(n, 1, 1).expand(n, 2, 384).contiguous()
    return CaptionedImages(images, text, torch.full((n,), 2), [str(i) for i in range(n)])


def _rows(batch):
    images, text = batch
    assert torch.equal(images[:, 0, 0, 0], text[:, 0, 0])  # images and text stay paired
    return images[:, 0, 0, 0].long().tolist()


def _take(it, k):
    return [_rows(next(it)) for _ in range(k)]


def test_batches_deterministic_and_resumable():
    ds = _toy()
    full = _take(batches(ds, 4, seed=7), 8)
    assert full == _take(batches(ds, 4, seed=7), 8)
    assert _take(batches(ds, 4, seed=7, start_step=5), 3) == full[5:]
    assert full != _take(batches(ds, 4, seed=8), 8)
    flat = sum(full, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # epochs


@pytest.mark.parametrize("world", [2, 4])
def test_batches_ranks_disjoint_slices_of_global_batch(world):
    ds = _toy(10)
    global_ = _take(batches(ds, 8, seed=1), 5)
    per_rank = [_take(batches(ds, 8, seed=1, rank=r, world=world), 5) for r in range(world)]
    for step in range(5):
        parts = [per_rank[r][step] for r in range(world)]
        assert all(len(p) == 8 // world for p in parts)
        assert sum(parts, []) == global_[step]


def test_batches_reject_bad_layout():
    with pytest.raises(DataError, match="batch_size = 6"):
        next(batches(_toy(), 6, seed=0, world=4))
    with pytest.raises(DataError, match="rank = 2"):
        next(batches(_toy(), 4, seed=0, rank=2, world=2))


# ---------------------------------------------------------------------------------------------
# Latents (the paper's latent-space cards)
# ---------------------------------------------------------------------------------------------


XL_8E_CUT = "depth=2"  # the paper's XL-8E (d = 1152, 8 experts, 77 x 1280 text) on 2 blocks


@pytest.fixture(scope="module")
def xl8e():
    from ecdit_scale import sizes
    from ecdit_scale.planner.cards import override_config

    return override_config(sizes.get("ecdit-xl-8e"), XL_8E_CUT)


@pytest.fixture(scope="module")
def xl8e_latents(xl8e, cache):
    from ecdit_scale.datasets.batches import build_dataset_for

    return build_dataset_for("latents", xl8e, limit=4, seed=3, cache_dir=cache)


def test_latents_feed_a_latent_card_and_are_deterministic_per_seed(xl8e, xl8e_latents, cache):
    from ecdit_scale.datasets.batches import build_dataset_for
    from ecdit_scale.datasets.latents import make_latents

    cfg, ds = xl8e, xl8e_latents
    assert ds.images.shape == (4, cfg.in_channels, cfg.input_size, cfg.input_size) == (4, 4, 32, 32)
    assert ds.images.dtype == torch.float32 and ds.specs is None
    assert ds.text.shape == (4, cfg.text_tokens, cfg.text_dim) == (4, 77, 1280)
    assert ds.text.dtype == torch.float32
    again = build_dataset_for("latents", cfg, limit=4, seed=3, cache_dir=cache)
    assert torch.equal(ds.images, again.images) and torch.equal(ds.text, again.text)
    other, other_captions = make_latents(5, cfg.image_size, seed=4)
    longer, captions = make_latents(5, cfg.image_size, seed=3)
    assert not np.array_equal(other[:4], ds.images.numpy()) and other_captions != captions
    assert np.array_equal(longer[:4], ds.images.numpy())  # sample i depends on (seed, i) only
    assert captions[:4] == ds.captions


def test_latents_have_unit_variance_and_spatial_correlation():
    from ecdit_scale.datasets.latents import make_latents

    x, _ = make_latents(64, 256, seed=0)
    assert abs(x.mean()) < 0.05 and abs(x.std() - 1) < 0.05  # like SD-VAE latents x 0.18215
    neighbour = np.mean(x[..., :, 1:] * x[..., :, :-1])  # correlation of adjacent latent pixels
    assert 0.6 < neighbour < 0.9  # sigma = 1 px Gaussian smoothing: exp(-1/4) = 0.78


def test_latents_captions_go_through_the_same_text_path(xl8e_latents, cache):
    """The latents' captions are the shapes dataset's for one seed, and their embeddings are
    MiniLM's (the same cached encoder output), mapped isometrically to the card's width."""
    shapes = build_dataset("shapes", image_size=16, text_tokens=77, limit=4, seed=3,
                           cache_dir=cache)
    native = build_dataset("latents", image_size=256, text_tokens=77, limit=4, seed=3,
                           cache_dir=cache)
    wide = xl8e_latents
    assert native.captions == shapes.captions == wide.captions
    assert torch.equal(native.text, shapes.text) and torch.equal(native.text_len, shapes.text_len)
    gram = torch.einsum("ntd,nsd->nts", native.text, native.text)
    torch.testing.assert_close(torch.einsum("ntd,nsd->nts", wide.text, wide.text), gram,
                               rtol=1e-4, atol=1e-3)


def test_pixel_data_for_a_latent_card_is_one_line():
    from ecdit_scale import sizes
    from ecdit_scale.datasets.kinds import check_dataset_fits

    with pytest.raises(DataError, match="'emoji' gives 3-channel images.*use 'latents'") as info:
        check_dataset_fits("emoji", sizes.get("ecdit-xl-8e"))
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="use 'emoji' or 'shapes'"):
        check_dataset_fits("latents", sizes.get("tiny-ec8"))
    check_dataset_fits("latents", sizes.get("ecdit-m-64e"))


def test_cut_down_xl_8e_trains_one_step_on_latents(xl8e, xl8e_latents):
    """The paper's architecture at full width (XL-8E cut to 2 blocks: one dense, one with 8
    expert-choice experts) takes one training step on the latent dataset at micro-batch 2;
    the activations it keeps are the planner's count (fp32 on CPU: within 1%; seen +0.06%)."""
    from ecdit_scale.config import Precision, Recompute
    from ecdit_scale.model import build_model, rectified_flow_loss
    from ecdit_scale.planner.activations import activation_bytes_per_sample
    from ecdit_scale.train.peak_memory import PeakBytes

    torch.manual_seed(0)
    model = build_model(xl8e).train()
    assert xl8e.num_moe_layers == 1 and model.moe_layers()[0].num_experts == 8
    images, text = next(batches(xl8e_latents, 2, seed=0))
    head = model.final_layer.linear.weight.detach().clone()
    mode = PeakBytes()
    mode.register([*model.parameters(), model.pos_embed])
    base = mode.current
    with mode:
        parts = rectified_flow_loss(model, images, text, generator=torch.Generator().manual_seed(1))
        kept = mode.current - base
    predicted = 2 * activation_bytes_per_sample(xl8e, Recompute.NONE,
                                                precision=Precision.FP32).total
    assert kept == pytest.approx(predicted, rel=0.01)
    parts.loss.backward()
    assert torch.isfinite(parts.loss)
    assert all(p.grad is not None for p in model.parameters())  # backward reached every weight
    # DiT init zeroes the output layer, so the first step's gradient reaches only that layer
    assert model.final_layer.linear.weight.grad.abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=1e-3).step()
    assert not torch.equal(model.final_layer.linear.weight, head)
