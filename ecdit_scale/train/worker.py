"""The training loop one rank runs under the ``deepspeed`` launcher.

    deepspeed --num_gpus N --no_local_rank --module ecdit_scale.train.worker --run-dir runs/X

Everything about the run is read from the run directory that ``launch`` prepared (run.json,
card.yaml, ds_config.json); this process writes metrics.jsonl, checkpoints, per-rank parameter
checksums and summary.json there. Determinism: the model is built from ``seed`` on every rank;
batch ``step`` is a pure function of (seed, step, rank) (``datasets.batches``); the noise and
timesteps of step ``step`` come from a generator seeded with (seed, step, rank, micro-step). So
a run resumed from a checkpoint at step k reproduces the uninterrupted run's losses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from ..config import FFNKind, ModelConfig
from ..model import build_model, rectified_flow_loss
from ..model.dit import ECDiT
from .records import CHECKPOINT_TAG, RunDir, RunSettings, append_jsonl, write_json

MEMORY_EVERY = 10  # CPU memory tracking: the first 3 steps of a launch, then every 10th

# ---------------------------------------------------------------------------------------------
# Memory: peak live tensor bytes (CPU), or the CUDA allocator's peak
# ---------------------------------------------------------------------------------------------

MEMORY_WHAT_CPU = (
    "peak bytes of live tensor storages on this rank during a step (the first 3 steps of a "
    "launch and every 10th; other steps are untracked and time the step): model states (parameters, "
    "gradients, optimizer state and DeepSpeed's ZeRO buffers, counted once as registered "
    "after the first step) plus every tensor an aten op allocates during forward, backward and "
    "the optimizer step (tracked with a TorchDispatchMode, freed when its storage dies); "
    "max over ranks")
MEMORY_WHAT_CUDA = "torch.cuda.max_memory_allocated per step, max over ranks"


class PeakBytes(TorchDispatchMode):
    """Live bytes of tensor storages, and their peak while the mode is active.

    Each storage an op returns is counted once (views share it) until it is garbage collected;
    ``register`` adds tensors that existed before (parameters, optimizer state). Like
    ``torch.cuda.max_memory_allocated`` but for any device and without allocator rounding.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._refs: list[weakref.ref] = []
        self.current = 0
        self.peak = 0

    def _add(self, t: torch.Tensor) -> None:
        if not isinstance(t, torch.Tensor) or t.is_meta or type(t) is not torch.Tensor and not \
                isinstance(t, nn.Parameter):
            return
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        if st in self._live:
            return
        nbytes = st.nbytes()
        self._live[st] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)

        def freed(_ref, n=nbytes, self_ref=weakref.ref(self)):
            me = self_ref()
            if me is not None:
                me.current -= n

        self._refs.append(weakref.ref(st, freed))
        if len(self._refs) > 4096:
            self._refs = [r for r in self._refs if r() is not None]

    def register(self, tensors) -> None:
        for t in tensors:
            self._add(t)

    def reset_peak(self) -> None:
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out


def tensors_in(obj: Any, depth: int = 4, _seen: set | None = None):
    """Tensors reachable from an object's attributes, lists and dicts (to register DeepSpeed's
    optimizer buffers, whose layout differs per ZeRO stage)."""
    seen = _seen if _seen is not None else set()
    if id(obj) in seen or depth < 0:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    if isinstance(obj, dict):
        items = obj.values()
    elif isinstance(obj, (list, tuple, set)):
        items = obj
    elif isinstance(obj, (torch.optim.Optimizer,)) or hasattr(obj, "__dict__") and \
            type(obj).__module__.startswith(("deepspeed", "torch.optim")):
        items = list(vars(obj).values())
        if isinstance(obj, torch.optim.Optimizer):
            items += [obj.state]
    else:
        return
    for v in items:
        yield from tensors_in(v, depth - 1, seen)


def model_state_bytes(engine) -> dict[str, int]:
    """Bytes of the tensors that persist across steps on this rank, by owner: the module's
    parameters and gradients, then each attribute of DeepSpeed's optimizer wrapper (flat
    bit16 groups, fp32 partitions, gradient buckets ``ipg_buffer`` ...) and the torch
    optimizer's state. Each storage is counted once, under the first owner that holds it."""
    seen: set[int] = set()
    out: dict[str, int] = {}

    def add(key: str, tensors) -> None:
        for t in tensors:
            try:
                st = t.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            if st.data_ptr() in seen or st.nbytes() == 0:
                continue
            seen.add(st.data_ptr())
            out[key] = out.get(key, 0) + st.nbytes()

    params = list(engine.module.parameters())
    add("params", params)
    add("grads", [p.grad for p in params if p.grad is not None])
    opt = engine.optimizer
    inner = getattr(opt, "optimizer", opt)
    add("optimizer_state", tensors_in(inner.state))
    if opt is not inner:
        for name, value in vars(opt).items():
            add(f"zero.{name}", tensors_in(value))
    return out


# ---------------------------------------------------------------------------------------------
# Model, optimizer, data
# ---------------------------------------------------------------------------------------------


def load_data(s: RunSettings, cfg: ModelConfig, *, split: str = "train"):
    from ..datasets.batches import build_dataset, holdout_rows, subset

    ds = build_dataset(s.dataset, image_size=cfg.image_size, text_tokens=cfg.text_tokens,
                       limit=s.data_limit, seed=s.seed)
    train, held = holdout_rows(len(ds), s.holdout, s.seed)
    return subset(ds, train if split == "train" else held)


def step_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


def lr_at(s: RunSettings, step: int) -> float:
    """Linear warm-up over ``warmup_steps`` updates, then constant (the paper's schedule)."""
    if s.warmup_steps <= 0:
        return s.lr
    return s.lr * min(1.0, step / s.warmup_steps)


def build_optimizer(model: nn.Module, s: RunSettings) -> torch.optim.Optimizer:
    """A plain torch optimizer (no JIT-compiled DeepSpeed op) over DeepSpeed-MoE param groups:
    expert params get their own group per expert group name, which DeepSpeed's ZeRO optimizer
    partitions over the expert-data-parallel group."""
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

    groups = split_params_into_different_moe_groups_for_optimizer(
        {"params": [p for p in model.parameters() if p.requires_grad], "name": "shared",
         "lr": s.lr, "weight_decay": 0.0})
    groups = [g for g in groups if g["params"]]
    if s.optimizer == "rmsprop":  # the paper: RMSProp with momentum
        return torch.optim.RMSprop(groups, lr=s.lr, alpha=0.999, eps=1e-8, momentum=0.9,
                                   foreach=False)
    return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                             foreach=False)


def build_parallel_model(cfg: ModelConfig, s: RunSettings, ep) -> nn.Module:
    """The single-device model, identical on every rank (same seed), made expert-parallel.

    Token choice: our ``TokenChoiceMoE`` (GShard top-2 per routing group, the same dispatch and
    all-to-all as expert choice), or with ``tc_impl = "deepspeed"`` DeepSpeed's own ``MoE``
    layer with its ``TopKGate`` (k = 2) in place of each MoE FFN.
    """
    from .expert_parallel import shard_experts

    torch.manual_seed(s.seed)
    model = build_model(cfg)
    if cfg.ffn.kind is FFNKind.TOKEN_CHOICE and s.tc_impl == "deepspeed":
        return use_deepspeed_topk(model, cfg, ep)
    return shard_experts(model, ep)


class DeepSpeedTopK(nn.Module):
    """A block's FFN as DeepSpeed's native ``MoE`` with its GShard ``TopKGate`` (k = top_k).

    Differences from ``TokenChoiceMoE``: DeepSpeed routes all tokens of a micro-batch as one
    group, its capacity is max(ceil(k * f * tokens / E), min_capacity = 4), and the second
    expert is sampled with Gumbel noise in training. Its balancing loss is kept in ``l_aux``
    and added to the loss by the worker (``ECDiT.aux_loss`` only sees our MoE layers).
    """

    def __init__(self, cfg: ModelConfig, ep):
        super().__init__()
        from deepspeed.moe.layer import MoE

        from ..model.layers import Mlp

        ffn = cfg.ffn
        self.coef = ffn.aux_loss_coef
        self.num_experts = ffn.num_experts
        self.moe = MoE(hidden_size=cfg.hidden_size, expert=Mlp(cfg.hidden_size, cfg.mlp_hidden),
                       num_experts=ffn.num_experts, ep_size=ep.ep_size, k=ffn.top_k,
                       capacity_factor=ffn.capacity_factor, eval_capacity_factor=ffn.capacity_factor,
                       min_capacity=4, drop_tokens=ffn.drop_tokens, use_rts=False)
        self.l_aux = None
        self.exp_counts = None

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        out, l_aux, counts = self.moe(x_BSD)
        self.l_aux, self.exp_counts = self.coef * l_aux, counts
        return out


def use_deepspeed_topk(model: ECDiT, cfg: ModelConfig, ep) -> nn.Module:
    for block in model.blocks:
        if block.is_moe:
            block.ffn = DeepSpeedTopK(cfg, ep)
    return model


def deepspeed_topk_layers(model: nn.Module) -> list[DeepSpeedTopK]:
    return [m for m in model.modules() if isinstance(m, DeepSpeedTopK)]


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StepStats:
    """What one rank accumulates over the micro-steps of one optimizer step."""

    loss: float = 0.0
    flow: float = 0.0
    aux: float = 0.0
    hist: torch.Tensor | None = None  # (E+1,) tokens processed by k experts, all MoE layers
    layer_sum: torch.Tensor | None = None  # (L,) experts-per-token sums per layer
    layer_tokens: torch.Tensor | None = None  # (L,) tokens per layer
    tokens_per_expert: torch.Tensor | None = None  # (L, E)
    dropped: int = 0


def collect_routing(model: nn.Module, st: StepStats, num_experts: int) -> None:
    stats = model.routing_stats() if hasattr(model, "routing_stats") else []
    ds_layers = deepspeed_topk_layers(model)
    if not stats and not ds_layers:
        return
    rows_h, rows_sum, rows_n, rows_tpe = [], [], [], []
    for s in stats:
        ept = s.experts_per_token.reshape(-1).cpu()
        rows_h.append(torch.bincount(ept, minlength=num_experts + 1)[: num_experts + 1])
        rows_sum.append(ept.sum())
        rows_n.append(torch.tensor(ept.numel()))
        rows_tpe.append(s.tokens_per_expert.cpu().long())
        st.dropped += int(s.dropped)
    for layer in ds_layers:  # DeepSpeed's gate reports tokens per expert only
        rows_tpe.append(layer.exp_counts.cpu().long())
    hist = torch.stack(rows_h).sum(0) if rows_h else torch.zeros(num_experts + 1, dtype=torch.long)
    tpe = torch.stack(rows_tpe)
    lsum = torch.stack(rows_sum) if rows_sum else torch.zeros(0, dtype=torch.long)
    lnum = torch.stack(rows_n) if rows_n else torch.zeros(0, dtype=torch.long)
    st.hist = hist if st.hist is None else st.hist + hist
    st.tokens_per_expert = tpe if st.tokens_per_expert is None else st.tokens_per_expert + tpe
    st.layer_sum = lsum if st.layer_sum is None else st.layer_sum + lsum
    st.layer_tokens = lnum if st.layer_tokens is None else st.layer_tokens + lnum


def reduce_stats(st: StepStats, world: int, micro_steps: int, peak: int,
                 device: torch.device) -> dict[str, Any]:
    """All-reduce one step's numbers; every rank gets the global values."""
    scalars = torch.tensor([st.loss, st.flow, st.aux, float(st.dropped)], dtype=torch.float64,
                           device=device)
    dist.all_reduce(scalars)
    peak_t = torch.tensor([peak], dtype=torch.float64, device=device)
    dist.all_reduce(peak_t, op=dist.ReduceOp.MAX)
    out: dict[str, Any] = {
        "loss": scalars[0].item() / (world * micro_steps),
        "flow_loss": scalars[1].item() / (world * micro_steps),
        "aux_loss": scalars[2].item() / (world * micro_steps),
        "peak_bytes": int(peak_t.item()) if peak_t.item() >= 0 else None,
        "memory_tracked": peak_t.item() >= 0,
    }
    if st.tokens_per_expert is not None:
        parts = [st.tokens_per_expert.reshape(-1)]
        if st.hist is not None:
            parts += [st.hist, st.layer_sum, st.layer_tokens]
        flat = torch.cat(parts).to(torch.float64).to(device)
        dist.all_reduce(flat)
        flat = flat.cpu().long()
        L, E = st.tokens_per_expert.shape
        out["tokens_per_expert"] = flat[: L * E].reshape(L, E).tolist()
        if st.hist is not None and st.layer_sum.numel():
            rest = flat[L * E:]
            hist = rest[: E + 1]
            nl = st.layer_sum.numel()
            lsum, lnum = rest[E + 1: E + 1 + nl], rest[E + 1 + nl:]
            ks = torch.arange(E + 1)
            nz = ks[hist > 0]
            out["experts_per_token"] = {
                "mean": float((hist * ks).sum() / hist.sum()),
                "min": int(nz.min()), "max": int(nz.max()),
                "hist": hist.tolist(),
                "per_layer_mean": (lsum.double() / lnum.clamp(min=1)).tolist(),
            }
        out["dropped"] = int(scalars[3].item())
    return out


def param_checksums(model: nn.Module) -> dict[str, Any]:
    """Per-parameter (sum, sum of squares) in float64, split into expert and shared params."""
    from .expert_parallel import is_expert_param

    out: dict[str, dict[str, list[float]]] = {"expert": {}, "shared": {}}
    for name, p in model.named_parameters():
        t = p.detach().double()
        out["expert" if is_expert_param(p) else "shared"][name] = [t.sum().item(),
                                                                   (t * t).sum().item()]
    return out


@dataclasses.dataclass
class Rank:
    """This process's part of the run: the DeepSpeed engine and where it sits."""

    rd: RunDir
    s: RunSettings
    cfg: ModelConfig
    engine: Any
    ep: Any  # expert_parallel.ExpertParallel
    counts: dict[str, int]
    device: torch.device
    rank: int
    world: int
    dp_rank: int

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


def setup(rd: RunDir) -> Rank:
    """Process group, expert-parallel groups, model, optimizer, DeepSpeed engine."""
    import deepspeed
    import deepspeed.ops
    from deepspeed.utils import groups

    from .expert_parallel import create_groups, param_counts, single_process

    s, cfg = rd.settings(), rd.model_config()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    if s.device == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        # DeepSpeed would JIT-compile its shared-memory all-reduce (minutes); gloo does it
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if s.device == "cuda" else "gloo")
    ep = create_groups(s.ep) if cfg.ffn.is_moe else single_process()
    model = build_parallel_model(cfg, s, ep)
    counts = param_counts(model, ep)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, s),
                                           config=json.loads(rd.ds_config.read_text()))
    return Rank(rd=rd, s=s, cfg=cfg, engine=engine, ep=ep, counts=counts, device=device,
                rank=dist.get_rank(), world=dist.get_world_size(),
                dp_rank=groups._get_data_parallel_rank())


def train_step(r: Rank, step: int, images: torch.Tensor, text: torch.Tensor) -> StepStats:
    """One optimizer step over ``grad_accum`` micro-batches of this rank's share."""
    s, engine = r.s, r.engine
    st = StepStats()
    for micro in range(s.grad_accum):
        rows = slice(micro * s.micro_batch, (micro + 1) * s.micro_batch)
        x, c = images[rows].to(r.device), text[rows].to(r.device)
        if engine.bfloat16_enabled():
            x, c = x.bfloat16(), c.bfloat16()
        gen = torch.Generator(device=r.device).manual_seed(step_seed(s.seed, step, r.rank, micro))
        parts = rectified_flow_loss(engine, x, c, generator=gen)
        loss, aux = parts.loss, parts.aux_loss.float()
        ds_aux = [m.l_aux.float() for m in deepspeed_topk_layers(engine.module)]
        if ds_aux:  # DeepSpeed's TopKGate keeps its balancing loss to itself
            extra = torch.stack(ds_aux).sum()
            loss, aux = loss + extra, aux + extra.detach()
        engine.backward(loss)
        engine.step()
        st.loss += float(loss.detach().float())
        st.flow += float(parts.flow_loss.float())
        st.aux += float(aux)
        collect_routing(engine.module, st, r.cfg.ffn.num_experts)
    return st


def run(run_dir: Path, *, resume: bool, stop_after: int | None) -> int:
    from ..datasets.batches import batches

    rd = RunDir(run_dir)
    r = setup(rd)
    s, engine = r.s, r.engine
    if r.rank == 0:
        rd.worker_pid.write_text(f"{os.getpid()}\n")
    start = 0
    latest = rd.latest_checkpoint() if resume else None
    if latest is not None:
        _, client = engine.load_checkpoint(str(rd.checkpoints), tag=latest[1])
        start = int(client["step"]) if client else latest[0]
    data = load_data(s, r.cfg)
    it = batches(data, s.global_batch, seed=s.seed, rank=r.dp_rank, world=r.world,
                 start_step=start)
    tracker = PeakBytes() if (s.track_memory and not r.on_gpu) else None
    state_bytes: dict[str, int] = {}
    t_run = time.perf_counter()
    if r.rank == 0:
        print(f"[worker] world {r.world}, ep {s.ep}, zero {s.zero}, steps {start + 1}..{s.steps}, "
              f"{r.counts['model_params']} params ({r.counts['rank_params']} on rank 0)",
              flush=True)

    for step in range(start + 1, s.steps + 1):
        lr = lr_at(s, step)
        for g in engine.optimizer.param_groups:
            g["lr"] = lr
        # counting every op roughly doubles a small model's CPU step: count a few steps only
        tracked = tracker is not None and (step - start <= 3 or step % MEMORY_EVERY == 0)
        if r.on_gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        images, text = next(it)  # this rank's share of global batch ``step - 1``
        if tracked:
            tracker.reset_peak()
            with tracker:
                st = train_step(r, step, images, text)
        else:
            st = train_step(r, step, images, text)
        if r.on_gpu:
            torch.cuda.synchronize()
        step_s = time.perf_counter() - t0
        if r.on_gpu:
            peak = torch.cuda.max_memory_allocated()
        elif tracked:
            if step == start + 1:  # model states, as they stand after the first update
                tracker.register(engine.module.parameters())
                tracker.register(p.grad for p in engine.module.parameters() if p.grad is not None)
                tracker.register(tensors_in(engine.optimizer))
            peak = tracker.peak
        else:
            peak = -1  # not measured this step
        if not state_bytes:
            state_bytes = model_state_bytes(engine)
        rec = reduce_stats(st, r.world, s.grad_accum, peak, r.device)
        if r.rank == 0:
            append_jsonl(rd.metrics, {"step": step, "lr": lr, "step_s": step_s,
                                      "images_per_s": s.global_batch / step_s, **rec})
        if stop_after is not None and stop_after <= step < s.steps:
            # test hook: every rank dies here, as a job killed after this step would
            dist.barrier()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(3)
        if step % s.checkpoint_every == 0 or step == s.steps:
            engine.save_checkpoint(str(rd.checkpoints), tag=CHECKPOINT_TAG.format(step=step),
                                   client_state={"step": step})
            if r.rank == 0:
                rd.prune_checkpoints(s.keep_checkpoints)
    finish(r, train_wall_s=time.perf_counter() - t_run, state_bytes=state_bytes,
           train_samples=len(data))
    return 0


def finish(r: Rank, *, train_wall_s: float, state_bytes: dict[str, int],
           train_samples: int) -> None:
    """Per-rank parameter checksums; rank 0 writes the summary."""
    import deepspeed

    rd, s = r.rd, r.s
    rd.checksums.mkdir(parents=True, exist_ok=True)
    local = list(r.ep.local_expert_range(r.cfg.ffn.num_experts)) if r.cfg.ffn.is_moe else []
    write_json(rd.checksums / f"rank{r.rank}.json",
               {"rank": r.rank, "ep_rank": r.ep.ep_rank, "dp_rank": r.dp_rank,
                "local_experts": local, **param_checksums(r.engine.module)})
    dist.barrier()
    if r.rank != 0:
        return
    recs = rd.read_metrics()
    untracked = [x for x in recs[2:] if not x.get("memory_tracked")]
    steady = [x["step_s"] for x in untracked or recs[2:] or recs]
    peaks = [x["peak_bytes"] for x in recs if x.get("peak_bytes")]
    rd.update_summary(
        status="completed", steps_done=s.steps,
        first_loss=recs[0]["loss"] if recs else None,
        final_loss=recs[-1]["loss"] if recs else None, train_wall_s=train_wall_s,
        mean_step_s=float(np.mean(steady)) if steady else None,
        median_step_s=float(np.median(steady)) if steady else None,
        step_time_from=("steps without memory tracking, after the first two" if untracked
                        else "all steps after the first two"),
        peak_bytes=max(peaks) if peaks else None,
        memory_measured=(MEMORY_WHAT_CUDA if r.on_gpu else
                         MEMORY_WHAT_CPU if s.track_memory else "not tracked"),
        model_state_bytes_rank0=state_bytes, params=r.counts, train_samples=train_samples,
        world=r.world, ep=s.ep, zero=s.zero, device=s.device, precision=s.precision,
        device_name=torch.cuda.get_device_name(r.device) if r.on_gpu else "cpu",
        torch_version=torch.__version__, deepspeed_version=deepspeed.__version__)
    rd.worker_pid.unlink(missing_ok=True)


def shutdown() -> None:
    """End a rank cleanly: gloo subgroups can abort in their destructors at interpreter exit."""
    try:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ecdit_scale.train.worker")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    code = 1
    try:
        code = run(args.run_dir, resume=args.resume, stop_after=args.stop_after)
    finally:
        if code == 0:
            shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
