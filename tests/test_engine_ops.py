"""The DeepSpeed engine adds few ops per gradient tensor to a step (bench/engine_ops.py measures
it in full): the trainer's engine (``make_ds_config`` + ``engine.use_foreach_grad_norm``)
against DeepSpeed's defaults (overflow check, contiguous gradients, overlap, per-tensor norm),
both in one spawned rank of world 1, on CPU, in bf16 (the GPU's ZeRO path; DeepSpeed 0.19.8's
CPU accelerator takes bf16) and fp32: the same losses and weights, far fewer ops."""

from __future__ import annotations

import json

import pytest
from spawned import start_ranks

from ecdit_scale.train.process import free_port

pytest.importorskip("deepspeed")

STEPS = 3
CLIP = 0.1  # below these models' gradient norms (~0.34), so that clipping acts (launch: 1.0)
CASES = [("nano-dense", 1, "bf16"), ("nano-dense", 2, "bf16"), ("nano-dense", 1, "fp32"),
         ("nano-ec8", 2, "bf16")]


def _legacy(ds_config: dict) -> dict:
    """The config as launch wrote it before (``ECDIT_SCALE_ENGINE=deepspeed-defaults``)."""
    from ecdit_scale.planner.deepspeed_config import deepspeed_defaults

    return deepspeed_defaults(ds_config)


def _worker(rank: int, port: int, out: str, ckpt: str) -> None:
    import os
    import types

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu",
                      TORCHDYNAMO_DISABLE="1")  # as launch sets it for a run that compiles nothing
    import torch

    torch.set_num_threads(1)
    import deepspeed
    import deepspeed.ops
    import torch.distributed as dist

    from ecdit_scale import sizes
    from ecdit_scale.train import engine as engine_mod
    from ecdit_scale.train import worker
    from ecdit_scale.train.expert_parallel import create_groups, single_process
    from ecdit_scale.train.launch import make_ds_config
    from ecdit_scale.train.records import RunSettings
    from ecdit_scale.train.step_profile import ops_by_source

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")

    def checksum(module) -> list[float]:
        ps = [p.detach().double() for p in module.parameters()]
        return [float(sum(p.sum() for p in ps)), float(sum((p * p).sum() for p in ps))]

    results = []
    for name, zero, precision in CASES:
        cfg = sizes.get(name).replace(depth=2)
        s = RunSettings.build(card=name, model_name=name, steps=STEPS, nodes=1,
                              nproc_per_node=1, ep=1, zero=zero, micro_batch=2, grad_accum=1,
                              dataset="shapes", data_limit=None, holdout=0, seed=0, lr=1e-3,
                              warmup_steps=0, optimizer="adamw", precision=precision,
                              device="cpu", checkpoint_every=10**6, keep_checkpoints=1,
                              track_memory=False)
        ep = create_groups(1) if cfg.ffn.is_moe else single_process()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
        c = torch.randn(2, cfg.text_tokens, cfg.text_dim, generator=g)
        def build(variant, cfg=cfg, s=s, ep=ep):
            net = engine_mod.build_parallel_model(cfg, s, ep)
            ds_config = make_ds_config(s, cfg)
            assert ds_config["gradient_clipping"] == 1.0
            ds_config["gradient_clipping"] = CLIP
            if variant != "trainer":
                ds_config = _legacy(ds_config)
            eng, _, _, _ = deepspeed.initialize(
                model=net, optimizer=engine_mod.build_optimizer(net, s), config=ds_config)
            patched = variant == "trainer" and engine_mod.use_foreach_grad_norm(eng.optimizer)
            return eng, patched, types.SimpleNamespace(s=s, engine=eng, rank=0, cfg=cfg,
                                                       device=torch.device("cpu"))

        for variant in ("trainer", "deepspeed defaults"):
            eng, patched, r = build(variant)
            losses = [float(worker.train_step(r, step, x, c).sums[0])
                      for step in range(1, STEPS)]
            tag = f"{name}-{zero}-{precision}"
            if variant == "trainer":  # the last step again, from a checkpoint
                eng.save_checkpoint(ckpt, tag=tag)
            ops = ops_by_source(lambda losses=losses, r=r, x=x, c=c: losses.append(
                float(worker.train_step(r, STEPS, x, c).sums[0])))
            resumed = None
            if variant == "trainer":
                eng2, _, r2 = build(variant)
                eng2.load_checkpoint(ckpt, tag=tag)
                resumed = [float(worker.train_step(r2, STEPS, x, c).sums[0]),
                           checksum(eng2.module)]
            params = list(eng.module.parameters())
            results.append({
                "case": [name, zero, precision], "variant": variant, "patched": patched,
                "losses": losses, "resumed_loss": resumed, "tensors": len(params),
                "weights": checksum(eng.module),
                "engine_ops": sum(v for (src, _), v in ops.items() if src != "model"),
                "model_ops": sum(v for (src, _), v in ops.items() if src == "model"),
                "overflow_check_ops": sum(v for (src, _), v in ops.items()
                                          if "has_inf_or_nan" in src),
                "clip_norm": float(eng.get_global_grad_norm()),
            })
    with open(out, "w") as f:
        json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("engine_ops") / "results.json"
    ckpt = tmp_path_factory.mktemp("engine_ops_checkpoints")
    start_ranks(_worker, (free_port(), str(out), str(ckpt)), 1)
    rows = json.loads(out.read_text())
    return {(tuple(r["case"]), r["variant"]): r for r in rows}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-zero{c[1]}-{c[2]}")
def test_trainer_engine_trains_the_same_as_deepspeed_defaults(engines, case):
    """Bitwise on CPU: the settings and the foreach norm change how, not what, is computed
    (clipping included: the global norm is the same number, and it clips). A checkpoint of the
    trainer's engine resumes to the same next loss and weights (optimizer state included)."""
    ours, theirs = engines[(case, "trainer")], engines[(case, "deepspeed defaults")]
    assert ours["patched"]
    assert ours["losses"] == theirs["losses"]
    assert ours["resumed_loss"] == [ours["losses"][-1], ours["weights"]]
    assert ours["weights"] == theirs["weights"]
    assert ours["clip_norm"] == theirs["clip_norm"] > CLIP  # the step was clipped


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-zero{c[1]}-{c[2]}")
def test_trainer_engine_runs_few_ops_per_gradient_tensor(engines, case):
    """DeepSpeed's defaults: >= 3.5 ops per gradient tensor outside the model (bf16: ~17,
    13 of them the serial overflow check); the trainer's: one copy per tensor (an MoE model
    keeps contiguous gradients: two) and ~100 per step. The model's own ops are the same."""
    ours, theirs = engines[(case, "trainer")], engines[(case, "deepspeed defaults")]
    n, copies = ours["tensors"], 2 if case[0].endswith("ec8") else 1
    assert ours["model_ops"] == theirs["model_ops"]
    assert theirs["engine_ops"] >= 3.5 * n
    assert ours["engine_ops"] <= copies * n + 120
    assert ours["overflow_check_ops"] == 0
    if case[2] == "bf16":
        assert theirs["overflow_check_ops"] >= 10 * n
