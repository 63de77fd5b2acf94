"""`data prepare`: ImageFolder and WebDataset sources, pixels and a tiny VAE's latents, a tiny
text encoder, damaged items, resuming, and the prepared folder as the trainer's batches.

Everything is made here in temporary folders: tiny randomly initialised encoders saved with
save_pretrained, images drawn with Pillow. Nothing comes from a hub.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_here
from safetensors.numpy import load_file

from ecdit_scale import sizes
from ecdit_scale.datasets import DataError
from ecdit_scale.datasets.prepare import (
    PrepareRequest,
    load_image,
    prepare,
    shard_header,
    shard_path,
)
from ecdit_scale.datasets.prepared import card_for_data, open_prepared, prepared_splits
from ecdit_scale.datasets.sources import count_items, open_source
from ecdit_scale.errors import ConfigError
from ecdit_scale.params import count_params
from ecdit_scale.train.request import LaunchRequest, check_request, resume_command

os.environ["HF_HUB_OFFLINE"] = "1"
WORDS = "[PAD] [UNK] [CLS] [SEP] [MASK] a red green blue cat dog square circle on the".split()
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 40, 230), (240, 240, 20), (20, 220, 220),
           (200, 30, 200), (120, 120, 120)]


def _image_bytes(colour, size=(24, 20), fmt="PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def text_encoder_dir(tmp_path_factory):
    """A 1-layer, 16-d BERT with a 15-word vocabulary (transformers folder)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-text")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(path)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=80)
    BertModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A 2-level AutoencoderKL (downsampling 2, 4 latent channels)."""
    from diffusers import AutoencoderKL

    path = tmp_path_factory.mktemp("tiny-vae")
    AutoencoderKL(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4,
                  norm_num_groups=4, sample_size=16,
                  down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained(path)
    return path


@pytest.fixture
def image_folder(tmp_path):
    """6 good images (metadata.jsonl), one that does not decode, one without a caption."""
    root = tmp_path / "images"
    (root / "train").mkdir(parents=True)
    rows = []
    for i, colour in enumerate(COLOURS[:6]):
        (root / "train" / f"{i}.png").write_bytes(_image_bytes(colour))
        rows.append({"file_name": f"{i}.png", "text": f"a {WORDS[6 + i % 3]} cat"})
    (root / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows.insert(2, {"file_name": "broken.png", "text": "a red dog"})
    (root / "train" / "quiet.png").write_bytes(_image_bytes(COLOURS[6]))
    rows.append({"file_name": "quiet.png"})
    (root / "train" / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


def _tar(path, samples) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards(tmp_path):
    """Two img2dataset-style shards: jpg+txt, png+json, webp+txt; one damaged jpg."""
    folder = tmp_path / "wds"
    folder.mkdir()
    _tar(folder / "00000.tar", [
        ("000000000.jpg", _image_bytes(COLOURS[0], fmt="JPEG")), ("000000000.txt", b"a red square"),
        ("000000001.png", _image_bytes(COLOURS[1])),
        ("000000001.json", json.dumps({"caption": "a green circle", "url": "x"}).encode()),
        ("000000002.jpg", b"\xff\xd8\xff broken"), ("000000002.txt", b"a blue dog")])
    _tar(folder / "00001.tar", [
        ("000000003.webp", _image_bytes(COLOURS[2], fmt="WEBP")), ("000000003.txt", b"a blue cat"),
        ("000000004.png", _image_bytes(COLOURS[3], size=(16, 40))),
        ("000000004.txt", b"the dog on a square")])
    return folder


def _request(src, out, **kw) -> PrepareRequest:
    return PrepareRequest(source=str(src), out=str(out), device="cpu", **kw)


def test_resize_and_centre_crop_keep_the_middle():
    from PIL import Image

    img = Image.new("RGB", (48, 16), COLOURS[0])
    img.paste(Image.new("RGB", (16, 16), COLOURS[1]), (16, 0))
    img.paste(Image.new("RGB", (16, 16), COLOURS[2]), (32, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = load_image(buf.getvalue(), 8)  # 48x16 -> 24x8 -> the middle 8x8: the green stripe
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert np.abs(out[:, 2:6].astype(int) - COLOURS[1]).max() <= 2
    rgba = io.BytesIO()
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(rgba, format="PNG")
    assert (load_image(rgba.getvalue(), 4) == 255).all()  # transparent -> white, not black


def test_image_folder_to_pixels_to_the_models_batches(image_folder, text_encoder_dir, tmp_path):
    import torch

    from ecdit_scale.datasets.batches import batches
    from ecdit_scale.model.diffusion import rectified_flow_loss
    from ecdit_scale.model.dit import build_model

    out = tmp_path / "prepared"
    res = prepare(_request(image_folder, out, resolution=16, text_encoder=str(text_encoder_dir),
                           shard_size=3, text_tokens=8))
    m = res.manifest
    assert m["counts"] == {"source_items": 8, "prepared": 6, "skipped": 2,
                           "skipped_by_reason": {"damaged image": 1, "no caption": 1}}
    assert [s["key"] for s in m["skipped"]] == ["train/broken.png", "train/quiet.png"]
    assert m["skipped"][1]["reason"] == 'no caption (no "text" in train/metadata.jsonl:8)'
    assert m["inputs"] == {"array": "pixels", "channels": 3, "size": 16, "vae_downsample": 1,
                           "dtype": "uint8", "layout": "NHWC"}
    assert m["text"]["name"] == text_encoder_dir.name and m["text"]["dim"] == 16
    assert len(m["text"]["sha256"]) == 64 and len(m["shards"]) == 3
    assert (res.shards_written, res.shards_kept) == (3, 0)

    data = open_prepared(out)
    cfg = card_for_data(sizes.get("nano-ec8"), data)  # 32x32 card -> the data's 16x16
    assert (cfg.in_channels, cfg.input_size, cfg.vae_downsample, cfg.text_dim) == (3, 16, 1, 16)
    split = prepared_splits(data, cfg, holdout=2, seed=0)
    assert (len(split.train), len(split.held)) == (4, 2) and len(split.held_keys) == 2
    assert set(split.held_keys) < {f"train/{i}.png" for i in range(6)}
    # the stored pixels are the source image, in [-1, 1]: image 0 is one colour
    first = [c for c in split.train.captions + split.held.captions]
    assert len(first) == 6
    assert split.train.text.shape == (4, cfg.text_tokens, 16)
    assert int(split.train.text_len.max()) <= cfg.text_tokens
    images, text = next(batches(split.train, 2, seed=0))
    assert images.shape == (2, 3, 16, 16) and text.shape == (2, 16, 16)
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0
    torch.manual_seed(0)
    loss = rectified_flow_loss(build_model(cfg), images, text).loss
    assert torch.isfinite(loss)
    wide = dataclasses.replace(cfg, text_dim=384)  # a card file's own width: rows mapped to it
    held = prepared_splits(data, card_for_data(wide, data, strict=True), holdout=2, seed=0).held
    assert held.text.shape == (2, 16, 384) and held.captions == split.held.captions
    few = prepared_splits(data, cfg, holdout=1, seed=0, limit=3)  # --limit: the first 3 items
    assert sorted(few.train.captions + few.held.captions) == sorted(
        ["a red cat", "a green cat", "a blue cat"])
    assert len(data.describe()["manifest_sha256"]) == 64
    norms = held.text.norm(dim=-1), split.held.text.norm(dim=-1)  # an isometry keeps norms
    assert torch.allclose(*norms, atol=1e-4)


def test_webdataset_shards_to_vae_latents(shards, text_encoder_dir, vae_dir, tmp_path):
    import torch
    from diffusers import AutoencoderKL

    one, brace = open_source(str(shards / "00000.tar")), open_source(str(shards / "0000{0,1}.tar"))
    assert (count_items(one), count_items(brace),
            count_items(open_source(str(shards)))) == (3, 5, 5)
    out = tmp_path / "latents"
    m = prepare(_request(shards / "0000{0,1}.tar", out, resolution=16, vae=str(vae_dir),
                         text_encoder=str(text_encoder_dir), shard_size=4)).manifest
    assert m["counts"]["prepared"] == 4 and m["skipped"] == [
        {"key": "00000.tar/000000002", "reason": m["skipped"][0]["reason"]}]
    assert m["skipped"][0]["reason"].startswith("damaged image")
    assert m["inputs"]["array"] == "latents" and m["inputs"]["channels"] == 4
    assert (m["inputs"]["size"], m["inputs"]["vae_downsample"]) == (8, 2)
    assert m["vae"]["scaling_factor"] == 0.18215 and len(m["vae"]["sha256"]) == 64

    data = open_prepared(out)
    cfg = card_for_data(sizes.get("nano-ec8"), data)
    assert (cfg.in_channels, cfg.input_size, cfg.tokens_per_image) == (4, 8, 4)
    split = prepared_splits(data, cfg, holdout=1, seed=0)
    everything = torch.cat([split.train.images, split.held.images])
    captions = split.train.captions + split.held.captions
    row = captions.index("a green circle")
    vae = AutoencoderKL.from_pretrained(str(vae_dir))
    x = torch.tensor(load_image(_image_bytes(COLOURS[1]), 16)).permute(2, 0, 1)[None]
    with torch.no_grad():
        want = vae.encode(x.float() / 127.5 - 1).latent_dist.mean * 0.18215
    assert torch.allclose(everything[row], want[0], atol=1e-5)


def test_interrupted_prepare_resumes_and_loses_nothing(image_folder, text_encoder_dir, tmp_path):
    kw = dict(resolution=8, text_encoder=str(text_encoder_dir), shard_size=3)
    whole = prepare(_request(image_folder, tmp_path / "whole", **kw))

    def stop_after_first_shard(done, total):
        if done >= 3:
            raise KeyboardInterrupt

    out = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):  # resumed below with 3 decoding threads
        prepare(_request(image_folder, out, **kw), progress=stop_after_first_shard)
    assert shard_path(out, 0).is_file() and not shard_path(out, 1).exists()
    assert not (out / "manifest.json").exists()
    with pytest.raises(DataError, match="did not finish"):
        open_prepared(out)
    first = shard_path(out, 0).stat().st_ino
    again = prepare(_request(image_folder, out, workers=3, **kw))
    assert (again.shards_kept, again.shards_written) == (1, 2)
    assert shard_path(out, 0).stat().st_ino == first  # kept, not rewritten
    for k in range(3):  # the same arrays and header as the uninterrupted preparation
        got, want = shard_path(out, k), shard_path(tmp_path / "whole", k)
        assert shard_header(got) == shard_header(want)
        a, b = load_file(str(got)), load_file(str(want))
        assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)
    assert again.manifest["counts"] == whole.manifest["counts"]
    assert prepare(_request(image_folder, out, **kw)).shards_written == 0  # complete: nothing
    with pytest.raises(DataError, match="other settings.*resolution 8 -> 16"):
        prepare(_request(image_folder, out, **{**kw, "resolution": 16}))


def test_bad_sources_and_cards_are_refused_in_one_line(image_folder, text_encoder_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli_here("data", "prepare", str(empty), "--out", str(tmp_path / "o"), "--resolution", "16")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "is empty" in r.stderr and not (tmp_path / "o").exists()
    r = cli_here("data", "prepare", str(image_folder), "--out", str(tmp_path / "o"),
                 "--resolution", "3")
    assert r.returncode == 2 and "--resolution 3: must be an integer in 8..4096" in r.stderr
    r = cli_here("data", "prepare", str(image_folder), "--out", str(tmp_path / "o"),
                 "--resolution", "16", "--vae", str(empty))
    assert r.returncode == 2 and "not a folder with config.json" in r.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="did not write"):
        prepare(_request(image_folder, tmp_path / "mine", resolution=8,
                         text_encoder=str(text_encoder_dir)))

    out = tmp_path / "p"  # through the CLI: the progress bar, the table, the skipped items
    r = cli_here("data", "prepare", str(image_folder), "--out", str(out), "--resolution", "18",
                 "--text-encoder", str(text_encoder_dir), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "6 prepared of 8; 2 skipped" in r.stdout and "1 damaged image" in r.stdout
    assert "skipped train/broken.png: damaged image (UnidentifiedImageError" in r.stdout
    data = open_prepared(out)
    with pytest.raises(DataError, match="patch_size 4 does not divide the data's 18x18"):
        card_for_data(sizes.get("nano-ec8"), data)
    with pytest.raises(DataError, match="conditioned on class, not text"):
        card_for_data(sizes.get("dit-s-2"), data)
    with pytest.raises(DataError, match="takes 3-channel 32x32 inputs"):
        card_for_data(sizes.get("nano-ec8"), data, strict=True)


def test_sources_side_car_captions_truncated_shards_and_bad_patterns(shards, tmp_path):
    from ecdit_scale.datasets.sources import iter_items

    side = tmp_path / "side"
    side.mkdir()
    for name in ("b", "a"):
        (side / f"{name}.png").write_bytes(_image_bytes(COLOURS[0]))
    (side / "a.txt").write_text("a red cat\n")
    items = [item for _, item in iter_items(open_source(str(side)))]
    assert [(i.key, i.caption) for i in items] == [("a.png", "a red cat"), ("b.png", None)]
    assert items[1].problem == "no caption (no side-car .txt)"
    (side / "metadata.csv").write_text('file_name,text\nb.png,"a cat, blue"\nc.png,a dog\n')
    items = [item for _, item in iter_items(open_source(str(side)))]  # the metadata rules
    assert [(i.key, i.caption, i.problem) for i in items] == [
        ("b.png", "a cat, blue", ""), ("c.png", "a dog", "missing image file")]

    whole = (shards / "00001.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    with tarfile.open(shards / "00001.tar") as tar:
        end = tar.getmember("000000004.png").offset_data + 20
    cut.write_bytes(whole[:end])  # the last sample's image is cut off
    assert count_items(open_source(str(cut))) == 2
    got = [item for _, item in iter_items(open_source(str(cut)))]
    assert [i.key for i in got] == ["cut.tar/000000003", "cut.tar/000000004"]
    assert got[0].caption == "a blue cat" and got[1].image is None
    assert got[1].problem == "damaged image (the tar shard ends inside this sample)"
    # a resumed preparation skips items without reading them
    assert [item for _, item in iter_items(open_source(str(shards)), lambda i: i == 3)][3:] == [
        next(item for _, item in iter_items(open_source(str(shards / "00001.tar")))), None]

    with pytest.raises(DataError, match="00002.tar does not exist"):
        open_source(str(shards / "0000{0..2}.tar"))
    with pytest.raises(DataError, match="no such file or folder"):
        open_source(str(tmp_path / "nowhere"))
    (tmp_path / "x.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="must be a WebDataset .tar shard"):
        open_source(str(tmp_path / "x.zip"))


# ---------------------------------------------------------------------------------------------
# launch --data / sweep --data: a prepared folder reaches the trainer (in-process, but for one
# 2-rank expert-parallel launch, slow); here to share the tiny encoders built above
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def pixels(image_folder, text_encoder_dir, tmp_path):
    """6 items, 16x16 pixels, 16-d token rows."""
    out = tmp_path / "pixels"
    prepare(_request(image_folder, out, resolution=16, text_encoder=str(text_encoder_dir)))
    return out


def test_launch_data_shapes_the_card_and_refuses_one_that_does_not_fit(pixels, tmp_path):
    req = LaunchRequest(card="nano-ec8", data=str(pixels), nproc=1, holdout=2, steps=4,
                        out=str(tmp_path / "run"), device="cpu")
    checked = check_request(req)
    cfg, s = checked.cfg, checked.settings
    # the registry card takes the data's shape: 16x16 RGB, (16 / 4)^2 tokens, 16-d text
    assert (cfg.in_channels, cfg.input_size, cfg.tokens_per_image, cfg.text_dim) == (3, 16, 16, 16)
    assert s.data == str(pixels.resolve()) and s.dataset == "prepared"
    assert s.to_dict()["data"] == str(pixels.resolve())  # run.json keeps it; a resume must too
    assert "--data" in resume_command(req, tmp_path / "run")

    card = tmp_path / "mine.yaml"  # a card the user wrote keeps its own shape: refused
    card.write_text((Path(__file__).parents[1] / "models" /
                     "nano-ec8.yaml").read_text())
    r = cli_here("launch", str(card), "--data", str(pixels), "--out", str(tmp_path / "r2"),
                 "--device", "cpu")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "takes 3-channel 32x32 inputs" in r.stderr and "holds 3-channel 16x16" in r.stderr
    assert not (tmp_path / "r2").exists()
    r = cli_here("launch", "nano-ec8", "--data", str(tmp_path), "--out", str(tmp_path / "r3"))
    assert r.returncode == 2 and "not a prepared folder (no manifest.json)" in r.stderr
    with pytest.raises(ConfigError, match="--limit 99: --data .* holds 6 items"):
        check_request(LaunchRequest(card="nano-ec8", data=str(pixels), data_limit=99,
                                    holdout=1, out=str(tmp_path / "r4"), device="cpu"))


def test_webdataset_latents_feed_a_run_split_by_item(shards, text_encoder_dir, vae_dir, tmp_path):
    """The tiny VAE's latents through what a worker and `adaptive` load: the same held-out
    items, named in the record; a training step of the reshaped card on a batch of them."""
    import torch

    from ecdit_scale.datasets.batches import batches
    from ecdit_scale.evaluation.runs import held_out_samples
    from ecdit_scale.model.diffusion import rectified_flow_loss
    from ecdit_scale.model.dit import build_model
    from ecdit_scale.train.run_data import load_run_data

    out = tmp_path / "latents"
    prepare(_request(shards, out, resolution=16, vae=str(vae_dir),
                     text_encoder=str(text_encoder_dir)))
    checked = check_request(LaunchRequest(card="nano-dense", data=str(out), holdout=1,
                                          out=str(tmp_path / "run"), device="cpu"))
    cfg, s = checked.cfg, checked.settings
    assert (cfg.in_channels, cfg.input_size, cfg.vae_downsample) == (4, 8, 2)
    train, held, record = load_run_data(s, cfg)
    assert (len(train), len(held)) == (3, 1)
    keys = [k for shard in open_prepared(out).manifest["shards"]
            for k in shard_header(out / shard["file"])[0]["keys"]]
    assert record["items"] == 4 and record["train_items"] == 3
    assert len(record["held_out_items"]) == 1 and record["held_out_items"][0] in keys
    assert record["vae"]["name"] and len(record["manifest_sha256"]) == 64
    again = held_out_samples(s, cfg)
    assert torch.equal(again.images, held.images) and again.captions == held.captions
    json.dumps(record)  # what data.json holds

    torch.manual_seed(0)
    model = build_model(cfg)
    images, text = next(batches(train, 2, seed=0))
    loss = rectified_flow_loss(model, images, text).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_sweep_sizes_cards_and_targets_shaped_for_the_data(pixels, tmp_path):
    from ecdit_scale.config import load_model_config
    from ecdit_scale.train.sweep import SweepSpec, launch_request, run_sweep  # noqa: F401
    from ecdit_scale.train.sweep_cards import write_cards
    from ecdit_scale.train.sweep_slots import Slot, local_slots

    card = tmp_path / "my-card.yaml"
    card.write_text((Path(__file__).parents[1] / "models" /
                     "micro-dense.yaml").read_text())
    spec = SweepSpec(sizes=("nano", "2M", str(card)), variants=("dense", "ec8"), steps=10,
                     budgets=(1.0,), seeds=(0,), data=str(pixels), out=str(tmp_path / "sw"))
    runs = spec.runs()
    assert [r.card for r in runs] == ["nano-dense", "nano-ec8", "2M-dense", "2M-ec8",
                                      "my_card-dense", "my_card-ec8"]
    assert runs[0].card_path == "nano-dense"  # the registry's; launch shapes it
    write_cards(spec.resolved_sizes, spec.variants, spec.out, spec.data)
    two = load_model_config(runs[3].card_path)  # the synthesised backbone, its ec8 variant
    assert (two.in_channels, two.input_size, two.text_dim) == (3, 16, 16)
    assert two.ffn.num_experts == 8
    # 2M: the dense backbone synthesised for 2M parameters (sizes.synthesise: the best on
    # its width x depth grid, 7% over at this scale), before the data's 16-d text
    assert 1.8e6 < count_params(spec.resolved_sizes[1].base).total_params < 2.2e6
    mine = load_model_config(runs[4].card_path)
    assert mine.hidden_size == load_model_config(str(card)).hidden_size
    req = launch_request(spec, runs[3], resume=False, slot=Slot(devices="2,3"))
    assert req.data == str(pixels) and req.devices == "2,3" and req.card == runs[3].card_path
    check_request(req.__class__(**{**req.__dict__, "devices": None, "device": "cpu"}))

    with pytest.raises(ConfigError, match="--sizes '7 apples'"):
        SweepSpec(sizes=("7 apples",))
    assert [s.devices for s in local_slots(2, 2, 4)] == ["0,1", "2,3"]  # one group each
    assert [s.devices for s in local_slots(3, 1, 2)] == ["0", "1", "0"]  # then shared in turn
    with pytest.raises(ConfigError, match="--nproc 2: this machine has 1 CUDA devices"):
        local_slots(1, 2, 1)


def test_launcher_places_a_run_on_its_devices_and_host(tmp_path):
    from ecdit_scale.planner.deepspeed_config import deepspeed_launch_command

    cmd = deepspeed_launch_command(num_gpus=2, run_dir="r", include="localhost:2,3")
    assert "--include" in cmd and "--num_gpus" not in cmd  # DeepSpeed takes one of them
    cmd = deepspeed_launch_command(num_gpus=1, run_dir="r", hostfile="h", include="node2:0",
                                   num_nodes=1, force_multi=True)
    assert cmd[cmd.index("--include") + 1] == "node2:0" and "--force_multi" in cmd
    assert "--num_nodes" not in cmd
    from deepspeed.launcher.runner import parse_args  # DeepSpeed reads it as meant

    args = parse_args(cmd[1:cmd.index("--module")] + ["--module", "m"])
    assert ((args.include, args.num_nodes, args.num_gpus, args.force_multi)
            == ("node2:0", -1, -1, True))


@pytest.mark.slow
def test_two_rank_expert_choice_launch_on_a_prepared_image_folder(pixels, tmp_path):
    _two_rank_launch(pixels, tmp_path / "run", items=6, array="pixels", vae=False)


@pytest.mark.slow
def test_two_rank_expert_choice_launch_on_webdataset_shards_as_latents(
        shards, text_encoder_dir, vae_dir, tmp_path):
    """The WebDataset shard through the tiny VAE: the EC card takes its 4-channel latents."""
    out = tmp_path / "latents"
    prepare(_request(shards, out, resolution=16, vae=str(vae_dir),
                     text_encoder=str(text_encoder_dir)))
    _two_rank_launch(out, tmp_path / "run", items=4, array="latents", vae=True)


def _two_rank_launch(data: Path, run: Path, *, items: int, array: str, vae: bool) -> None:
    from ecdit_scale.train.launch import launch

    res = launch(LaunchRequest(card="nano-ec8", data=str(data), nproc=2, ep=2, steps=3,
                               micro_batch=2, holdout=2, out=str(run), device="cpu"))
    assert res.ok, res.message
    record = json.loads((run / "data.json").read_text())
    assert record["train_items"] == items - 2 and len(record["held_out_items"]) == 2
    assert record["inputs"]["array"] == array and (record["vae"] is not None) == vae
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_samples"] == items - 2 and summary["ep"] == 2
    assert summary["world"] == 2 and summary["heldout_loss"] is not None
