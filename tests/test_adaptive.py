"""`ecdit-scale adaptive` on odd input: arguments out of range, and run directories that are
not runs, are dense, or hold a checkpoint that cannot be read. (The analysis of a real run is
tested in test_launch.py on the shared launched run.)"""

from __future__ import annotations

import json
import math

import pytest
from conftest import cli_here

from ecdit_scale.errors import ConfigError
from ecdit_scale.evaluation.adaptive import SAMPLES_RANGE, TIMESTEPS_RANGE, analyse, check_args


@pytest.mark.parametrize("samples, timesteps, bad", [
    (0, 8, "--samples 0"),
    (-1, 8, "--samples -1"),
    (SAMPLES_RANGE[1] + 1, 8, f"--samples {SAMPLES_RANGE[1] + 1}"),
    (True, 8, "--samples True"),
    (math.nan, 8, "--samples nan"),
    (32, 0, "--timesteps 0"),
    (32, -3, "--timesteps -3"),
    (32, 100_000_000, "--timesteps 100000000"),  # once tried to allocate 2.98 TiB
    (32, 8.5, "--timesteps 8.5"),
])
def test_arguments_out_of_range(samples, timesteps, bad):
    with pytest.raises(ConfigError) as info:
        check_args(samples=samples, timesteps=timesteps, seed=0)
    message = str(info.value)
    assert message.startswith(bad) and "must be an integer in" in message, message


def test_arguments_in_range_pass():
    check_args(samples=SAMPLES_RANGE[0], timesteps=TIMESTEPS_RANGE[1], seed=0)
    check_args(samples=SAMPLES_RANGE[1], timesteps=TIMESTEPS_RANGE[0], seed=3)
    with pytest.raises(ConfigError, match="seed -1"):
        check_args(samples=8, timesteps=8, seed=-1)


def test_cli_huge_timesteps_is_one_line_before_anything_loads(tmp_path):
    proc = cli_here("adaptive", str(tmp_path / "no-such-run"), "--timesteps", "100000000")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    lo, hi = TIMESTEPS_RANGE
    assert "100000000" in line and f"{lo}..{hi}" in line, line


def _run(tmp_path, model: str):
    from ecdit_scale import sizes
    from ecdit_scale.config import save_model_config
    from ecdit_scale.train.records import RunSettings

    run = tmp_path / model
    run.mkdir()
    save_model_config(sizes.get(model), run / "card.yaml")
    s = RunSettings.build(card=model, model_name=model, steps=6, nodes=1, nproc_per_node=1, ep=1,
                    zero=1, micro_batch=4, grad_accum=1, dataset="shapes", data_limit=64,
                    holdout=8, seed=0, lr=1e-3, warmup_steps=0, optimizer="adamw",
                    precision="fp32", device="cpu", checkpoint_every=3, keep_checkpoints=2,
                    track_memory=False)
    (run / "run.json").write_text(json.dumps(s.to_dict()))
    return run


def test_not_a_run_directory(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        analyse(tmp_path)


def test_dense_run_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is dense"):
        analyse(_run(tmp_path, "nano-dense"))


@pytest.mark.parametrize("content", [b"", b"not a torch file", b"PK\x03\x04truncated zip"])
def test_unreadable_checkpoint_names_its_folder(tmp_path, content):
    run = _run(tmp_path, "nano-ec8")
    tag = run / "checkpoints" / "step3"
    tag.mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step3")
    (tag / "mp_rank_00_model_states.pt").write_bytes(content)
    with pytest.raises(ConfigError) as info:
        analyse(run)
    message = str(info.value)
    assert message.startswith(f"{tag}: cannot read the checkpoint") and "\n" not in message


def test_missing_checkpoint_pointer(tmp_path):
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        analyse(_run(tmp_path, "nano-ec8"))
