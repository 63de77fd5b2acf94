"""`ecdit-scale launch`: real 2-rank DeepSpeed-MoE runs on CPU, bad input, kill and resume.

The launched runs are shared with test_expert_parallel.py and test_validate.py through the
session fixtures of conftest.py (made once, in the background: tests/session_runs.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import EVERY, SHORT_ARGS, STEPS, cli, cli_here, copy_run, metrics

# ---------------------------------------------------------------------------------------------
# A real run
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_expert_choice_ep2_zero2_loss_goes_down(ec_run):
    recs = metrics(ec_run)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    first = sum(r["loss"] for r in recs[:5]) / 5
    last = sum(r["loss"] for r in recs[-5:]) / 5
    assert last < first - 0.1, (first, last)


@pytest.mark.slow
def test_run_directory_records(ec_run):
    from ecdit_scale.config import load_model_config
    from ecdit_scale.params import count_params

    cfg = load_model_config(ec_run / "card.yaml")
    assert cfg.name == "nano-ec8"
    run = json.loads((ec_run / "run.json").read_text())
    assert (run["world"], run["ep"], run["zero"], run["global_batch"]) == (2, 2, 2, 8)
    ds = json.loads((ec_run / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2 and "optimizer" not in ds
    pred = json.loads((ec_run / "predictions.json").read_text())
    assert pred["params"]["model_params"] == count_params(cfg).model_params
    assert pred["flops"]["model_flops_per_step"] > 0 and pred["memory"]["total"] > 0
    summary = json.loads((ec_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_done"] == STEPS
    # two CPU ranks: forked from local_ranks after its one import of torch and DeepSpeed
    assert "[local_ranks] 2 ranks forked after importing" in (ec_run / "launch.log").read_text()
    assert summary["params"]["model_params"] == count_params(cfg).model_params
    assert summary["optimizer_impl"] == "foreach"  # under ZeRO-2, ep 2
    from ecdit_scale import __version__

    assert (summary["ecdit_scale_version"], summary["deepspeed_version"]) == (
        __version__, __import__("deepspeed").__version__)  # what trained it
    # where the start-up went, by phase, and the device named from the start
    assert set(summary["startup_s"]) >= {"process_groups", "model", "deepspeed_engine", "ema",
                                         "data"}
    assert all(v >= 0 for v in summary["startup_s"].values())
    assert summary["device_name"] == "cpu" and summary["deepspeed_version"]
    assert "ECDIT_SCALE_MALLOC=default" in summary["allocator"]  # the suite's (conftest)
    # ZeRO-2 laid the experts out in its flat buffer; their stack stays a view (no copy)
    assert summary["expert_stacking"] == "view"
    # achieved model FLOP/s per device: the planner's FLOPs of the global batch / world / step;
    # a CPU has no datasheet peak
    for r in metrics(ec_run):
        assert r["model_flops_per_s_per_device"] == pytest.approx(
            pred["flops"]["model_flops_per_step"] / 2 / r["step_s"])
        assert r["pct_of_peak"] is None
    assert summary["model_flops_per_step"] == pred["flops"]["model_flops_per_step"]
    assert summary["mean_model_flops_per_s_per_device"] > 0
    assert summary["mean_pct_of_peak"] is None and "n/a" in summary["peak_source"]
    rec = metrics(ec_run)[0]
    for key in ("loss", "flow_loss", "aux_loss", "lr", "step_s", "images_per_s",
                "tokens_per_expert", "experts_per_token", "peak_bytes"):
        assert key in rec
    # expert choice: every expert takes C = S f_c / E tokens of every image
    assert rec["tokens_per_expert"] == [[8 * cfg.expert_capacity] * 8] * cfg.num_moe_layers
    ept = rec["experts_per_token"]
    assert len(ept["hist"]) == 9 and ept["mean"] == pytest.approx(2.0)
    assert 0 <= ept["min"] <= 2 <= ept["max"] <= 8
    assert rec["peak_bytes"] > summary["params"]["rank_params"] * 4
    assert (ec_run / "checkpoints" / "latest").read_text().strip() == f"step{STEPS}"


@pytest.mark.slow
def test_adaptive_on_the_run(ec_run, tmp_path):
    proc = cli_here("adaptive", str(ec_run), "--out", str(tmp_path), "--samples", "8",
               "--timesteps", "3", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert len(res["by_layer"]) == 2 and len(res["by_timestep"]) == 3
    for row in res["by_layer"]:
        assert sum(row["hist"]) == 3 * 8 * 64 and row["mean"] == pytest.approx(2.0)
    assert "pearson_std" in res["caption_length"]
    for name in ("heatmap_samples.png", "layer_timestep_std.png", "histograms.png",
                 "summary.json"):
        assert (tmp_path / name).stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# Kill and resume
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_signals_and_kill_stop_every_rank_and_resume_finishes_the_curve(ec_run, interrupted_run):
    """One run interrupted three ways, each resumed where the last left off (the session run
    ``interrupted_run``, tests/interrupts.py): SIGTERM to the launch process alone (summary:
    interrupted, 143; the message prints the --resume command), Ctrl-C (SIGINT) to its job
    (130), then kill -9 of the job (the CLI alone; the launcher's guard ends the ranks). No rank
    outlives any of them, and the last resume finishes the same STEPS losses as the uninterrupted
    run."""
    obs = json.loads((interrupted_run / "observations.json").read_text())
    term, intr, kill, final = obs["sigterm"], obs["sigint"], obs["sigkill"], obs["final"]
    assert term["sent"] and term["returncode"] == 143, term
    assert term["result"]["status"] == "interrupted", term
    assert term["ranks_left"] == 0  # the launch process waited for the whole group
    assert (term["summary"]["status"], term["summary"]["returncode"]) == ("interrupted", 143)
    assert obs["resume_command"].endswith("--resume") and obs["resume_command"] in term["stderr"]

    assert intr["sent"] and intr["returncode"] == 130, intr
    # each resume goes on from the newest complete checkpoint the stop before it left
    assert term["checkpoint"] is not None and term["checkpoint"] >= EVERY, term
    assert intr["result"]["status"] == "interrupted"
    assert intr["result"]["resumed_from"] == term["checkpoint"], (intr["result"],
                                                                  term["checkpoint"])
    assert intr["ranks_left"] == 0 and intr["summary"]["returncode"] == 130
    assert "--resume" in intr["stderr"].splitlines()[-1]

    assert kill["sent"] and kill["ranks_left"] == 0, "ranks outlived a kill -9 of launch"
    assert kill["metrics_lines"] < STEPS

    assert final["returncode"] == 0, final["stderr"]
    assert final["result"]["status"] == "completed"
    assert final["result"]["resumed_from"] == kill["checkpoint"] >= intr["result"]["resumed_from"]
    resumed, reference = metrics(interrupted_run), metrics(ec_run)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(resumed, reference, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7), a["step"]
    # and the held-out loss of the last step (same weights, same fixed problems)
    assert resumed[-1]["heldout_loss"] == pytest.approx(reference[-1]["heldout_loss"], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input fails before anything starts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, words", [
    (("no-such-model", "--nproc", "1", "--steps", "2"), "unknown model"),
    (("cards/missing.yaml", "--nproc", "1", "--steps", "2"), "no such file"),
    (("nano-ec8", "--nproc", "2", "--ep", "3", "--steps", "2"), "--ep 3"),
    (("nano-ec8", "--nproc", "4096", "--steps", "2"), "--nproc 4096"),
    (("nano-ec8", "--nproc", "2", "--zero", "3", "--steps", "2"), "zero 3"),
    (("nano-dense", "--nproc", "1", "--ep", "2", "--steps", "2"), "dense"),
    (("nano-ec8", "--nproc", "1", "--steps", "2", "--dataset", "mnist"), "--dataset"),
    (("ecdit-xl-8e", "--nproc", "1", "--steps", "2"), "use 'latents'"),
    (("nano-dense", "--nproc", "1", "--steps", "20", "--cooldown-branches", "10"),
     "add --schedule wsd"),
    (("nano-dense", "--nproc", "1", "--steps", "20", "--schedule", "wsd",
      "--cooldown-branches", "10,x"), "comma-separated step counts"),
    (("nano-dense", "--nproc", "1", "--steps", "20", "--schedule", "wsd",
      "--cooldown-branches", "10,20"), "20 is not in 2..19"),
    (("nano-dense", "--nproc", "1", "--steps", "20", "--schedule", "wsd",
      "--cooldown-branches", "10,10"), "distinct"),
])
def test_bad_input_is_one_line_before_anything_starts(tmp_path, args, words):
    out = tmp_path / "run"
    proc = cli_here("launch", *args, "--out", str(out), cwd=tmp_path)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error:") and words.lower() in err.lower(), err
    assert not out.exists()  # nothing was written or started


@pytest.mark.slow
def test_resume_of_a_damaged_run_falls_back_and_loses_no_metric(short_run, tmp_path):
    """The review's three data-loss cases at once: a garbage line mid-metrics (resume used to
    cut every step after it), no checkpoints/latest (it used to restart from step 0), and the
    newest checkpoint's model states replaced by random bytes of the same size (an unpickling
    error in a rank; the checksum in its completion marker sees it now). The resume also
    extends the 6-step run to 8 steps. (Resuming from the newest checkpoint is the interrupted
    run's case.)"""
    out = copy_run(short_run, tmp_path / "damaged")
    (out / "checkpoints" / "latest").unlink()
    states = out / "checkpoints" / "step6" / "mp_rank_00_model_states.pt"
    states.write_bytes(os.urandom(states.stat().st_size))  # same size: only sha256 sees it
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[4] = "garbage"  # step 5's record
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")

    res = cli("launch", *SHORT_ARGS, "--steps", "8", "--out", str(out), "--resume", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout)
    assert result["status"] == "completed" and result["resumed_from"] == 4
    said = " ".join(result["notes"])
    assert "step6 is not intact (mp_rank_00_model_states.pt differs from what was saved" in said
    assert "latest is missing" in said and "resuming from step4" in said
    assert "metrics.rejected" in said and "note:" in res.stderr
    assert "line 5: garbage" in (out / "metrics.rejected").read_text()
    run = json.loads((out / "run.json").read_text())
    assert (run["steps"], run["checkpoint_every"], run["warmup_steps"]) == (8, 2, 0)
    # steps 5 and 6, trained again from step4, are the uninterrupted run's; 7 and 8 extend it
    resumed, reference = metrics(out), metrics(short_run)
    assert [r["step"] for r in resumed] == list(range(1, 9))
    for a, b in zip(resumed, reference, strict=False):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7), a["step"]
    # the EMA was restored with the weights: at step 6 it is the uninterrupted run's again
    import torch

    again, first = (torch.load(r / "checkpoints" / "step6" / "ema_rank0.pt", map_location="cpu")
                    for r in (out, short_run))
    assert (again["mode"], again["decay"]) == (first["mode"], first["decay"])
    assert again["shadow"].keys() == first["shadow"].keys() and again["shadow"]
    for name, t in again["shadow"].items():
        assert torch.allclose(t, first["shadow"][name], rtol=1e-6, atol=1e-7), name
    ema = [json.loads((r / "checksums" / "rank0.json").read_text())["ema"]
           for r in (out, short_run)]
    assert ema[0]["mode"] == "replicated" and ema[0]["checksum"] != ema[1]["checksum"]  # 6 -> 8


@pytest.mark.parametrize("change, words", [
    ({"optimizer": "lion"}, "--optimizer 'lion'"), ({"ema": "daily"}, "--ema 'daily'"),
    ({"precision": "fp8"}, "--precision 'fp8'"), ({"node_rank": 1}, "--node-rank 1"),
    ({"ema_decay": 1.5}, "--ema-decay"), ({"schedule": "cosine"}, "--schedule"),
    ({"cooldown_fraction": 1.5}, "--cooldown"), ({"eval_timesteps": 0}, "--eval-timesteps"),
    ({"eval_every": -1}, "--eval-every"),
    ({"dataset": "shapes-stream", "data_limit": 100}, "--limit 100"),
])
def test_bad_training_options_are_one_line(tmp_path, change, words):
    """The same checks as the CLI's, in process (no interpreter start per case)."""
    from ecdit_scale.errors import ConfigError
    from ecdit_scale.train.request import LaunchRequest, check_request

    req = LaunchRequest(card="nano-ec8", nproc=1, steps=2, device="cpu",
                        out=str(tmp_path / "r"), **change)
    with pytest.raises(ConfigError, match=words) as exc:
        check_request(req)
    assert "\n" not in str(exc.value) and not (tmp_path / "r").exists()


def test_recompute_reaches_the_settings_or_is_refused(tmp_path):
    """A policy goes to run.json (and the worker's build_model) where the model implements
    recompute; elsewhere it is one line before anything starts."""
    from ecdit_scale.errors import ConfigError
    from ecdit_scale.train.request import LaunchRequest, check_request, recompute_supported

    req = LaunchRequest(card="nano-ec8", nproc=1, steps=2, recompute="full", device="cpu",
                        out=str(tmp_path / "r"))
    if recompute_supported():
        assert check_request(req).settings.recompute.value == "full"
    else:
        with pytest.raises(ConfigError, match="--recompute full: not implemented"):
            check_request(req)
    assert not (tmp_path / "r").exists()


def test_resume_needs_a_run(tmp_path):
    proc = cli_here("launch", "nano-ec8", "--nproc", "1", "--steps", "2", "--resume", "--out",
                    str(tmp_path / "nothing"))
    assert proc.returncode != 0 and "no run to resume" in proc.stderr


def test_a_refused_launch_prints_its_line_and_nothing_else(tmp_path):
    """The progress bar appears with the first report from the ranks: a request refused before
    that leaves stderr with its one error line (no blank line from an empty bar)."""
    proc = cli("launch", "nano-ec8", "--ep", "3", "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: --ep 3") and proc.stderr.count("\n") == 1, proc.stderr


def kill_after_step_4(out: Path) -> None:
    """What a job killed right after step 4's record leaves: records 1-4, the checkpoint of
    step 2 (step 4's save not begun), no branch, no summary of an end."""
    import shutil

    for step in range(4, 13, 2):
        shutil.rmtree(out / "checkpoints" / f"step{step}", ignore_errors=True)
    shutil.rmtree(out / "branches")
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(lines[:4]))
    (out / "summary.json").unlink()


@pytest.mark.slow
def test_a_cooldown_branch_is_the_shorter_run_even_across_a_resume(tmp_path):
    """``--cooldown-branches 6``: the 6-step wsd run annealed off the 12-step run's stable
    phase (after step 4; ceil(0.2 x 6) = 2 cooldown steps). The run is then cut back to what a
    job killed right after step 4 leaves (records of steps 1-4, the checkpoint of step 2, no
    branch) and resumed from step 2: the branch's losses, learning rates and held-out loss are
    those the uninterrupted run wrote, and it is written once, whole. That a branch is the
    separate shorter run, step by step, is tests/test_sweep.py (wsd-branch against separate
    wsd runs): two launches here instead of three."""
    common = ("nano-dense", "--nproc", "1", "--micro-batch", "2", "--dataset", "shapes-stream",
              "--holdout", "8", "--schedule", "wsd", "--warmup", "2", "--no-track-memory",
              "--checkpoint-every", "2", "--zero", "0", "--json")  # (one rank: ZeRO-0)
    out = tmp_path / "branched"
    first = cli(*("launch", *common, "--steps", "12", "--cooldown-branches", "6",
                  "--keep-checkpoints", "12", "--out", str(out)))
    assert json.loads(first.stdout)["status"] == "completed", first.stderr[-2000:]
    whole = [json.loads(x) for x in (out / "branches" / "b6.jsonl").read_text().splitlines()]
    whole_metrics = metrics(out)
    kill_after_step_4(out)
    resumed = cli("launch", *common, "--steps", "12", "--cooldown-branches", "6", "--out",
                  str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["resumed_from"] == 2  # step 4's save was "cut"
    branch = [json.loads(x) for x in (out / "branches" / "b6.jsonl").read_text().splitlines()]
    assert [r["step"] for r in whole] == [r["step"] for r in branch] == [5, 6]
    assert [r["loss"] for r in branch] == [r["loss"] for r in whole]
    assert [r["lr"] for r in branch] == [r["lr"] for r in whole]
    assert branch[-1]["lr"] < whole_metrics[4]["lr"]  # annealed: below the stable phase
    assert branch[-1]["heldout_loss"] == whole[-1]["heldout_loss"] is not None
    resumed_metrics = metrics(out)
    assert [r["step"] for r in resumed_metrics] == list(range(1, 13))
    assert [r["loss"] for r in resumed_metrics] == [r["loss"] for r in whole_metrics]
    run = json.loads((out / "run.json").read_text())
    assert run["cooldown_branches"] == [6] and run["schedule"] == "wsd"
    # the printed resume command repeats the branches
    from ecdit_scale.train.request import LaunchRequest, resume_command

    cmd = resume_command(LaunchRequest(card="nano-dense", nproc=1, steps=40, schedule="wsd",
                                       cooldown_branches=(10, 20)), out)
    assert "--cooldown-branches 10,20" in cmd and cmd.endswith("--resume")


# ---------------------------------------------------------------------------------------------
# The rendezvous port
# ---------------------------------------------------------------------------------------------


def test_picked_ports_bind_and_avoid_the_ephemeral_range():
    import socket

    from ecdit_scale.train.process import ephemeral_range, free_port

    lo, hi = ephemeral_range()
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 10 and not any(lo <= p <= hi for p in ports)
    with socket.socket() as sock:  # free when returned
        sock.bind(("127.0.0.1", ports.pop()))


def test_a_taken_rendezvous_port_is_retried_on_another(tmp_path, monkeypatch):
    """Rank 0 found the port this process picked taken (EADDRINUSE, no step done): launch
    starts again on another port; the same failure with a port the user named is reported."""
    import subprocess
    import sys

    from ecdit_scale.train import launch as L
    from ecdit_scale.train.request import LaunchRequest

    started: list[str] = []

    def fake_start(cmd, *, log, env, cwd):
        started.append(env["MASTER_PORT"])
        if len(started) == 1:  # as torch's TCPStore says it
            log.write("torch.distributed.DistNetworkError: The server socket has failed to "
                      "listen on any local network address. code: -98, name: EADDRINUSE\n")
            log.flush()
            return subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
        with open(Path(cmd[cmd.index("--run-dir") + 1]) / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": 2, "loss": 1.0}) + "\n")
        return subprocess.Popen([sys.executable, "-c", "pass"])

    monkeypatch.setattr(L, "start_group", fake_start)
    monkeypatch.setattr(L, "end_group", lambda proc: proc.wait())
    monkeypatch.setattr(L, "warm_data_cache", lambda cfg, s: None)
    res = L.launch(LaunchRequest(card="nano-dense", steps=2, out=str(tmp_path / "run"),
                                 checkpoints=False))
    assert res.ok and len(started) == 2 and started[0] != started[1]
    assert any("rendezvous port was taken" in n for n in res.notes)

    started.clear()
    res = L.launch(LaunchRequest(card="nano-dense", steps=2, out=str(tmp_path / "pinned"),
                                 checkpoints=False, master_port=29999))
    assert not res.ok and len(started) == 1 and "--master-port 29999 is in use" in res.message


# ---------------------------------------------------------------------------------------------
# The ranks of a one-node run (train/local_ranks.py)
# ---------------------------------------------------------------------------------------------


def _ranks_script(tmp_path: Path, body: str) -> list[str]:
    import sys

    script = tmp_path / "rank.py"
    script.write_text("import json, os, sys, time\nrank = int(os.environ['RANK'])\n" + body)
    return [sys.executable, str(script)]


def test_each_rank_gets_the_launchers_environment(tmp_path):
    from ecdit_scale.train.local_ranks import run

    keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "CROSS_RANK", "CROSS_SIZE",
            "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES"]
    cmd = _ranks_script(tmp_path, f"json.dump({{k: os.environ.get(k) for k in {keys}}}, "
                                  f"open(r'{tmp_path}/env%d.json' % rank, 'w'))\n")
    assert run(cmd, nproc=3, master_addr="127.0.0.1", master_port=23456, devices="4,5,6") == 0
    for rank in range(3):
        env = json.loads((tmp_path / f"env{rank}.json").read_text())
        assert env == {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "3",
                       "LOCAL_SIZE": "3", "CROSS_RANK": "0", "CROSS_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "23456",
                       "CUDA_VISIBLE_DEVICES": "4,5,6"}


def test_a_failed_rank_ends_the_others_and_gives_its_code(tmp_path):
    import time

    from ecdit_scale.train.local_ranks import run

    cmd = _ranks_script(tmp_path, "if rank == 1:\n    sys.exit(7)\ntime.sleep(60)\n")
    t0 = time.monotonic()
    assert run(cmd, nproc=3, master_addr="127.0.0.1", master_port=23456, devices=None) == 7
    assert time.monotonic() - t0 < 30  # the sleeping ranks were ended, not waited for


def test_a_signal_to_the_rank_launcher_ends_every_rank(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    cmd = _ranks_script(tmp_path, f"open(r'{tmp_path}/up' + str(rank), 'w').close()\n"
                                  "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-m", "ecdit_scale.train.local_ranks", "--nproc",
                             "2", "--master-port", "23456", "--", *cmd])
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("up*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM


class _FakeWorker:
    """What ``local_ranks.fork_rank`` needs of the worker module: a file and ``main``."""
    __file__ = "fake_worker.py"

    def __init__(self, body):
        self.main = body


def test_a_forked_rank_gets_its_environment_argv_and_default_signals(tmp_path):
    import signal

    from ecdit_scale.train.local_ranks import fork_rank

    def body(args):
        import sys

        out = {"env": dict(os.environ), "argv": sys.argv, "args": args,
               "term": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
               "int": signal.getsignal(signal.SIGINT) is signal.default_int_handler}
        (tmp_path / "seen.json").write_text(json.dumps(out))
        os._exit(0)

    old = signal.signal(signal.SIGTERM, lambda *_: None)  # what local_ranks has set
    try:
        rank = fork_rank(_FakeWorker(body), ["--run-dir", "x"], {"RANK": "1", "A": "b"})
    finally:
        signal.signal(signal.SIGTERM, old)
    assert rank.wait() == 0
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["env"] == {"RANK": "1", "A": "b"} and seen["args"] == ["--run-dir", "x"]
    assert seen["argv"] == ["fake_worker.py", "--run-dir", "x"] and seen["term"] and seen["int"]


def _exit_7(args):
    raise SystemExit(7)


def _raise(args):
    raise ValueError("boom")


def _terminated(args):
    import signal

    os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("main, code", [(_exit_7, 7), (_raise, 1), (_terminated, -15)])
def test_a_forked_rank_ends_with_its_code(main, code):
    from ecdit_scale.train.local_ranks import fork_rank

    rank = fork_rank(_FakeWorker(main), [], dict(os.environ))
    assert rank.wait() == code and rank.poll() == code


def test_only_a_cpu_worker_command_is_forked(monkeypatch):
    import sys

    from ecdit_scale.planner import deepspeed_config
    from ecdit_scale.train.local_ranks import WORKER_MODULE, worker_args

    assert WORKER_MODULE == deepspeed_config.WORKER_MODULE  # one name, kept in two places
    cmd = [sys.executable, "-u", "-m", WORKER_MODULE, "--run-dir", "r"]
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    assert worker_args(cmd) == ["--run-dir", "r"]
    assert worker_args(["/other/python", *cmd[1:]]) is None
    assert worker_args([sys.executable, "script.py"]) is None
    monkeypatch.delenv("DS_ACCELERATOR")  # a GPU run: its ranks start as processes of their own
    assert worker_args(cmd) is None
