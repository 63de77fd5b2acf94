"""What the DeepSpeed engine adds to a training step, op by op, on CPU: the trainer's engine
(``train.engine``: client torch optimizer, ``make_ds_config``) at ZeRO 0, 1 and 2, in fp32 and
in bf16 (DeepSpeed 0.19.8's CPU accelerator accepts bf16, so the GPU's bf16 ZeRO path runs
here too), world 1. One step is profiled (``torch.profiler``) and its aten
compute ops (``train.step_profile.summarize``'s definition: leaf ops other than views and
metadata) are counted; in one more step ``train.step_profile.ops_by_source`` attributes each
dispatched op to the innermost DeepSpeed / torch.optim frame that called it; the rest is the
model's forward and backward. On CPU a foreach op is one dispatched op but a loop of per-tensor ops
under the profiler; on CUDA it is one kernel per chunk of tensors.

    python bench/engine_ops.py                       # nano-dense, every stage, both precisions
    python bench/engine_ops.py --model nano-ec8 --zero 1 --precision bf16 --top 20
    # the engine as it was before (DeepSpeed's defaults and its per-tensor clipping norm):
    ENGINE_OPS_DEEPSPEED_NORM=1 python bench/engine_ops.py --set bf16.check_grad_overflow=true \
        zero_optimization.contiguous_gradients=true zero_optimization.overlap_comm=true

Each configuration runs in a process of its own (DeepSpeed keeps process-wide state). Prints
per configuration: aten compute ops per step, ops per parameter tensor, and the sources that
run once per parameter tensor (count >= parameter tensors).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_rank_engine(model: str, *, zero: int, precision: str, steps: int,
                    optimizer: str = "adamw", micro_batch: int = 2, ema: str = "none",
                    extra: dict | None = None, kernel: str | None = None):
    """The trainer's engine for one configuration at world 1 on DeepSpeed's CPU accelerator,
    in this process (DeepSpeed keeps process-wide state: one configuration per process):
    ``train.engine``'s torch optimizer and model, ``make_ds_config`` with ``extra`` overrides
    (``a.b``: value), the foreach clipping norm unless ``$ENGINE_OPS_DEEPSPEED_NORM`` is set;
    ``kernel="fused"`` gives the optimizer CUDA's update kernel on this CPU. Returns the
    worker-like rank (``s``, ``engine``, ``device``, ``rank``, ``cfg``) with the model (``net``)."""
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(29500 + os.getpid() % 1000), DS_ACCELERATOR="cpu")
    import types

    import deepspeed
    import deepspeed.ops
    import torch

    from ecdit_scale import sizes
    from ecdit_scale.train import engine as engine_mod
    from ecdit_scale.train.expert_parallel import create_groups, single_process
    from ecdit_scale.train.launch import make_ds_config
    from ecdit_scale.train.records import RunSettings

    torch.set_num_threads(1)
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = sizes.get(model)
    s = RunSettings.build(card=model, model_name=model, steps=steps, nodes=1, nproc_per_node=1,
                          ep=1, zero=zero, micro_batch=micro_batch, grad_accum=1,
                          dataset="shapes", data_limit=None, holdout=0, seed=0, lr=1e-3,
                          warmup_steps=0, optimizer=optimizer, precision=precision,
                          device="cpu", checkpoint_every=10**6, keep_checkpoints=1,
                          track_memory=False, ema=ema)
    if kernel == "fused":
        engine_mod.optimizer_kernels = lambda cls, device: {"fused": True}
    ep = create_groups(1) if cfg.ffn.is_moe else single_process()
    net = engine_mod.build_parallel_model(cfg, s, ep)
    ds_config = make_ds_config(s, cfg)
    for key, value in (extra or {}).items():  # --set a.b=value: a DeepSpeed config override
        *path, last = key.split(".")
        node = ds_config
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    eng, _, _, _ = deepspeed.initialize(model=net, optimizer=engine_mod.build_optimizer(net, s),
                                        config=ds_config)
    if not os.environ.get("ENGINE_OPS_DEEPSPEED_NORM"):  # as engine.setup does
        engine_mod.use_foreach_grad_norm(eng.optimizer)
    return types.SimpleNamespace(s=s, engine=eng, device=torch.device("cpu"), rank=0, cfg=cfg,
                                 net=net)


def measure(model: str, zero: int, precision: str, steps: int, extra: dict) -> dict:
    """One configuration, in this process: build the engine as the worker does, run ``steps``
    steps, profile the last."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ecdit_scale.train import worker
    from ecdit_scale.train.step_profile import ops_by_source, summarize

    r = one_rank_engine(model, zero=zero, precision=precision, steps=steps, extra=extra)
    eng, cfg, net = r.engine, r.cfg, r.net
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    c = torch.randn(2, cfg.text_tokens, cfg.text_dim, generator=g)
    losses = []
    for step in range(1, steps + 1):
        if step == steps:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                st = worker.train_step(r, step, x, c)
        else:
            st = worker.train_step(r, step, x, c)
        losses.append(float(st.sums[0]))
    summary = summarize(prof.events(), on_gpu=False)
    # one more step under a dispatch mode, for who called each op (the profiler's CPU events
    # carry no Python stack for ops run by autograd and hooks)
    by_op_source = ops_by_source(lambda: worker.train_step(r, steps + 1, x, c))
    by_source: collections.Counter = collections.Counter()
    for (src, _), v in by_op_source.items():
        by_source[src] += v
    n_params = sum(1 for p in net.parameters() if p.requires_grad)
    return {"model": model, "zero": zero, "precision": precision, "overrides": extra,
            "optimizer_class": type(eng.optimizer).__name__, "param_tensors": n_params,
            "aten_ops": summary["aten_ops"], "aten_compute_ops": summary["aten_compute_ops"],
            "accumulate_grad": summary["accumulate_grad"],
            "accumulate_grad_host_ms": summary["accumulate_grad_host_ms"], "losses": losses,
            "by_source": by_source.most_common(),
            "by_op_source": [[k[0], k[1], v] for k, v in by_op_source.most_common()]}


def report(res: dict, top: int) -> None:
    n = res["param_tensors"]
    engine_ops = sum(v for k, v in res["by_source"] if k != "model")
    dispatched = sum(v for _, v in res["by_source"])
    print(f"\n== {res['model']} zero {res['zero']} {res['precision']} "
          f"{res['overrides'] or ''} -> {res['optimizer_class']}: {n} param tensors")
    print(f"   aten ops {res['aten_ops']}, compute ops {res['aten_compute_ops']} "
          f"({res['aten_compute_ops'] / n:.1f} per param tensor); dispatched {dispatched}, outside "
          f"the model {engine_ops} ({engine_ops / n:.1f} per param tensor), AccumulateGrad "
          f"{res['accumulate_grad']} ({res['accumulate_grad_host_ms']:.1f} ms host, hooks "
          f"included); losses {[format(v, '.6f') for v in res['losses']]}")
    for src, op, count in res["by_op_source"][:top]:
        if count >= n // 2 or top > 12:
            print(f"   {count:6d}  {op:28s} {src}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="nano-dense")
    ap.add_argument("--zero", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--precision", nargs="*", default=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON",
                    help="DeepSpeed config overrides, e.g. bf16.check_grad_overflow=false")
    ap.add_argument("--json", type=Path, help="write all results here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a child: one configuration, JSON out
    a = ap.parse_args()
    extra = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in a.set)}
    if a.one:
        model, zero, precision = a.one.split(",")
        print("RESULT " + json.dumps(measure(model, int(zero), precision, a.steps, extra)))
        return
    results = []
    for precision in a.precision:
        for zero in a.zero:
            cmd = [sys.executable, __file__, "--one", f"{a.model},{zero},{precision}",
                   "--steps", str(a.steps), "--set", *a.set]
            env = dict(os.environ, OMP_NUM_THREADS="1")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                print(f"zero {zero} {precision}: failed\n{proc.stderr[-3000:]}")
                continue
            results.append(json.loads(line[0][7:]))
            report(results[-1], a.top)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
