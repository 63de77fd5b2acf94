"""What the DeepSpeed engine adds to a step, per parameter tensor, measured on this device.

The step-time model prices the model's kernels, autograd's per-tensor work and the optimizer
from the device profile; what DeepSpeed's engine does on top of that (ZeRO-1/2: gradient hooks,
bucket copies, the clipping norm; ZeRO-0 in bf16: its mixed-precision wrapper) depends on the
ZeRO stage and on the DeepSpeed version and settings. On an H200 the ZeRO-1 launches spent
~15 kernels per parameter tensor there, most of the step's 11-19k (bench/results/
h200-2026-11-26), which no other term of the profile saw.

So the profile measures it the way the trainer builds it: the trainer's DeepSpeed config
(``launch.make_ds_config``'s settings through ``planner.deepspeed_config``), its torch optimizer
(``engine.build_optimizer``) and clipping norm (``engine.use_foreach_grad_norm``), world 1, bf16
on CUDA and fp32 on CPU as the trainer trains; against the same model stepped by plain torch
(the same optimizer on fp32 weights, bf16 autocast on CUDA, so that the optimizer's bytes are
the engine's master weights' and the step-time model's optimizer term keeps them; no engine).
Two models, so that the engine's cost splits into a part per parameter tensor (hooks,
launches, Python per tensor; the trainer's own model at the host probe's size: the dense
nano card's 103 small tensors) and a part per
parameter (its passes over gradients and weights: bucket copies, the norm, casts; a toy of a
few large Linear layers):

    engine - plain = tensors x s_per_param_tensor + params x s_per_param

solved from the two, per ZeRO stage, one fresh process per stage (DeepSpeed keeps
process-wide state). Then again in each other setting a run can get (``ENGINE_SETTINGS``):
the trainer's DeepSpeed config turns contiguous gradients on for every MoE model, and
overlap_comm too with more than one data-parallel rank (``deepspeed_config.zero_section``), and
an MoE model's experts are a param group of their own. Timed in the dense one-rank settings
only, one-rank nano-ec16 and nano-tc16 runs were priced 27-39% fast at ZeRO-1/2 where
nano-dense was within 5% and plain torch's forward + backward of all three within 12%; the
profiled step of nano-ec16 at ZeRO-1 spent 456 engine kernels in its backward against
nano-dense's 108. So each setting has its own split: the small model of its kind (the
expert-choice nano card for an MoE setting) against the large toy under its ZeRO section, the
data-parallel ones in this world-1 engine (their per-tensor and per-byte work; their traffic
is the collectives' term). Where the profile has several processes (``profile --nproc N``), the
data-parallel settings are timed again on N ranks (``measure_ranks``), each engine step less
the time in its collectives, and those numbers are the settings' (the world-1 ones are kept
for the record): reducing among ranks adds bucket flattens and copies a world-1 engine skips,
and on a CPU host the ranks' passes over memory share its bandwidth (this VM, ZeRO-1: 3.05 ns
per parameter on 2 ranks against 2.33 in one). Not yet shown to price better: micro-tc16 at
micro-batch 4, ZeRO-1 on 2 ranks, timed the same way four times, added 21.8-26.8 ms over plain
torch; one full profile's 2-rank numbers priced that at 31.3 ms, its world-1 ones at 28.9
(bench/results/cpu-heldout-matrix-20 judges the two on 13 launches).

On this 2-core CPU the per-parameter part is ~4.5 ns at ZeRO-0 and ~10 ns at ZeRO-1/2 (fp32,
one thread): 1.4 s of a 132.9M-parameter model's step, which the per-tensor part alone priced
at under a millisecond.

Until 2026-12-06 the small model was a toy too, a chain of 128 Linear(32, 32) layers: 3.7-7.4 us
per tensor at ZeRO-1/2 on this CPU. The trainer's engine on the trainer's model spent 1.7-4x
what that priced (nano-dense at ZeRO-1: 4.7 ms over plain torch against 1.2 priced; 0.96-1.18x
at ZeRO-0): the toy's tensors were not the ones the engine's per-tensor Python meets. The toy's
split is still measured and kept in the profile's provenance (``engine_toy``).

    python -m ecdit_scale.evaluation.engine_probe --device cpu --zero 1 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from ..planner.device_profile import ENGINE_SETTINGS, setting_flags
from ..train.cpu_allocator import keep_large_allocations
from .collective_trace import CollectiveTrace

PROBE_WIDTH = 32
PROBE_LAYERS = {True: 48, False: 128}  # quick / full: 2 tensors (weight, bias) per layer
# the large toy: (layers, width), larger than the caches: ~16.8M parameters (67 MB) on a CPU,
# ~134M (268 MB in bf16) on a GPU
LARGE_TOY = {"cpu": (4, 2048), "cuda": (8, 4096)}
PROBE_BATCH = 4
STAGES = (0, 1, 2)
# the settings a run of several data-parallel ranks gets: timed on that many ranks where the
# profile has them (``measure_ranks``)
DP_SETTINGS = tuple(s for s in ENGINE_SETTINGS if setting_flags(s)[1])


def measure_stage(device: str, zero: int, quick: bool, world: int = 1, rank: int = 0,
                  port: int = 0) -> dict[str, Any]:
    """In this process: one engine at ``zero`` beside plain torch (see the module); world 1,
    or (``world`` > 1) this rank of ``world`` for the data-parallel settings
    (``measure_ranks``)."""
    import types

    import torch
    from torch import nn

    from ..train.process import free_port

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port or free_port()),
                      DS_ACCELERATOR=device)
    if device == "cpu":  # as launch runs the trainer there: nothing compiled, dynamo off
        os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    import deepspeed
    import deepspeed.ops

    from ..config import Optimizer, Precision, Recompute
    from ..planner.deepspeed_config import deepspeed_config, zero_section
    from ..train.engine import build_optimizer, use_foreach_grad_norm
    from ..train.expert_parallel import create_groups, single_process
    from ..train.records import Device

    if device == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        torch.set_num_threads(1)
    if device == "cuda":
        torch.cuda.set_device(rank)
    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")
    dev = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")
    bf16 = device == "cuda"
    s = types.SimpleNamespace(lr=1e-4, optimizer=Optimizer.ADAMW, device=Device(device))

    def toy(layers: int, width: int) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)]).to(dev)

    def engine_for(model: nn.Module, settings: Any, micro_batch: int, ga: int,
                   setting: str = "") -> Any:
        """``model`` in the trainer's DeepSpeed engine at this stage (world 1), with its
        optimizer and clipping norm, its ZeRO section as a run of ``setting`` gets it
        (``ENGINE_SETTINGS``; "": a dense model on one rank)."""
        moe, dp = setting_flags(setting)
        ds = deepspeed_config(micro_batch=micro_batch, grad_accum=ga, zero_stage=zero,
                              precision=Precision.BF16 if bf16 else Precision.FP32,
                              optimizer=Optimizer.ADAMW, lr=1e-4, warmup_steps=0, world=world,
                              client_optimizer=True, scheduler=False)
        # the setting's ZeRO section; in a world-1 engine a data-parallel setting's
        # (overlap_comm, contiguous gradients) gives its per-tensor and per-byte work, not
        # what reducing among ranks does (``measure_ranks``)
        ds["zero_optimization"] = zero_section(zero, world=max(world, 2) if dp else 1, moe=moe)
        ds.update(steps_per_print=10**9, wall_clock_breakdown=False)
        if not bf16:
            ds.pop("bf16", None)
        engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=build_optimizer(model, settings), config=ds)
        use_foreach_grad_norm(engine.optimizer)
        return engine

    def engine_vs_plain(engine: Any, plain: nn.Module, opt: Any, loss: Callable[..., Any],
                        inputs: tuple, ga: int, repeats: int) -> dict[str, float]:
        """``timed_pair`` of ``ga`` micro-steps of ``loss(model, *inputs)`` through the engine
        (it steps on the last) and through plain torch (autograd accumulates into .grad; bf16
        autocast on fp32 inputs where the engine runs bf16; the trainer's clipping norm), and
        ``plain``'s tensors and parameters."""
        plain_inputs = tuple(t.float() for t in inputs)
        # on several ranks, each engine's optimizer steps its 1/world partition (ZeRO-1/2)
        # where plain torch steps every parameter: plain's step less that share of its own
        # optimizer step, and the engine's less its collectives (the profile prices them)
        unstepped = (1.0 - 1.0 / world) if zero > 0 else 0.0
        trace = CollectiveTrace(timed=True)

        def engine_step() -> float:
            trace.calls.clear()
            with trace if world > 1 else contextlib.nullcontext():
                for _ in range(ga):
                    engine.backward(loss(engine, *inputs))
                    engine.step()
            return trace.seconds

        def plain_step() -> float:
            for _ in range(ga):
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    out = loss(plain, *plain_inputs)
                out.backward()
            torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0, foreach=True)
            sync()
            t0 = time.perf_counter()
            opt.step()
            sync()
            opt_s = time.perf_counter() - t0
            opt.zero_grad(set_to_none=True)
            return unstepped * opt_s

        params = list(plain.parameters())
        t_engine, t_plain, t_collectives = timed_pair(engine_step, plain_step, repeats)
        return {"tensors": len(params), "params": sum(p.numel() for p in params),
                "engine_step_s": t_engine, "plain_step_s": t_plain,
                "collectives_s": t_collectives}

    def measure(layers: int, width: int, repeats: int, ga: int = 1,
                setting: str = "") -> dict[str, float]:
        engine = engine_for(toy(layers, width), s, PROBE_BATCH, ga, setting)
        dtype = torch.bfloat16 if bf16 else torch.float32
        x = torch.randn(PROBE_BATCH, width, device=dev, dtype=dtype)
        plain = toy(layers, width)  # fp32 weights: the optimizer's bytes are the master's
        return engine_vs_plain(engine, plain, build_optimizer(plain, s),
                               lambda model, x: model(x).float().pow(2).mean(), (x,), ga,
                               repeats)

    def measure_model(repeats: int, ga: int = 1, setting: str = "") -> dict[str, float]:
        """The trainer's own model (``host_probe.probe_config``, built as the trainer builds
        it) through the engine and through plain torch: its tensors, hooks and modules as the
        engine meets them, at a size where its compute is small. The dense nano card, or the
        expert-choice one for an MoE ``setting`` (its experts in a param group of their
        own)."""
        from ..config import FFNKind
        from ..model.diffusion import rectified_flow_loss
        from ..train.engine import build_parallel_model
        from .host_probe import PROBE_IMAGES, probe_config

        cfg = probe_config(FFNKind.EXPERT_CHOICE if setting_flags(setting)[0]
                           else FFNKind.DENSE)
        ms = types.SimpleNamespace(**vars(s), seed=0, recompute=Recompute.NONE, tc_impl="ecdit",
                                   compile="none")
        engine = engine_for(build_parallel_model(cfg, ms, ep, device=dev), ms, PROBE_IMAGES, ga,
                            setting)
        dtype = torch.bfloat16 if bf16 else torch.float32
        x = torch.randn(PROBE_IMAGES, cfg.in_channels, cfg.input_size, cfg.input_size,
                        device=dev, dtype=dtype)
        cond = torch.randn(PROBE_IMAGES, cfg.text_tokens, cfg.text_dim, device=dev, dtype=dtype)
        gen = torch.Generator(device=dev)
        plain = build_parallel_model(cfg, ms, ep, device=dev)
        return engine_vs_plain(
            engine, plain, build_optimizer(plain, ms),
            lambda model, x, cond: rectified_flow_loss(model, x, cond,
                                                       generator=gen.manual_seed(0)).loss,
            (x, cond), ga, repeats)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def timed_pair(engine_fn, plain_fn, repeats: int) -> tuple[float, float, float]:
        """Median seconds of the engine's step and plain torch's (each less the seconds its
        function returns), and of what the engine's returned (its collectives), timed
        alternately: the difference is what the probe keeps, and a VM's speed drifts between
        two blocks of repeats (on this 2-core CPU a dense ZeRO-1 engine's per-tensor cost came
        out 0-15 us from one profile to the next when each side was timed in a block of its
        own; 10-21 us over the 13 profiles of bench/results/cpu-heldout-matrix-19, timed
        alternately)."""
        for _ in range(3):
            engine_fn()
            plain_fn()
        out: tuple[list[float], list[float], list[float]] = ([], [], [])
        for _ in range(repeats):
            for fn, times in ((engine_fn, out[0]), (plain_fn, out[1])):
                sync()
                t0 = time.perf_counter()
                less = fn()
                sync()
                times.append(time.perf_counter() - t0 - less)
                if fn is engine_fn:
                    out[2].append(less)
        return tuple(statistics.median(times) for times in out)

    repeats = 5 if quick else 15
    layers, width = LARGE_TOY[device]
    width = width // 2 if quick else width  # quick: a quarter (tests)
    large_repeats = 3 if quick else 9  # the further micro-step is a difference of two
    if world > 1:  # the data-parallel settings on this rank of ``world`` (every expert here)
        ep = create_groups(1)
        runs: list[dict[str, Any]] = []  # each timing, for the record

        def kept(fn: Callable[[int, str], dict]) -> Callable[[int, str], dict]:
            def timed(ga: int, setting: str) -> dict:
                runs.append({"ga": ga, "setting": setting, **fn(ga, setting)})
                return runs[-1]
            return timed

        settings = measure_settings(
            zero, None, None, kept(lambda ga, setting: measure_model(repeats, ga, setting)),
            kept(lambda ga, setting: measure(layers, width, large_repeats, ga, setting)),
            settings=DP_SETTINGS)
        return {"zero": zero, "device": device, "world": world,
                "precision": "bf16" if bf16 else "fp32", "deepspeed": deepspeed.__version__,
                "settings": settings, "runs": runs}
    ep = single_process()  # one process: every expert here, in the trainer's expert groups
    small = measure_model(repeats)
    large = measure(layers, width, large_repeats)
    per_tensor, per_param = split_engine_cost(small, large)
    # a step of two micro-steps: what the engine adds per further micro-step (ZeRO-2's hooks
    # reduce and copy gradients in every backward; ZeRO-0/1 only at the boundary)
    small2 = measure_model(repeats, ga=2)
    large2 = measure(layers, width, large_repeats, ga=2)
    micro_tensor, micro_param = split_engine_cost(*(further_micro_step(two, one) for two, one
                                                    in ((small2, small), (large2, large))))
    by_setting = measure_settings(
        zero, [per_tensor, per_param, micro_tensor, micro_param], (large, large2),
        lambda ga, setting: measure_model(repeats, ga, setting),
        lambda ga, setting: measure(layers, width, large_repeats, ga, setting))
    # the toy the probe used before 2026-12-06 (a chain of Linear(32, 32) layers), for the
    # record: on a CPU it priced the real model's engine 1.7-4x low at ZeRO-1/2
    chain, chain2 = (measure(PROBE_LAYERS[quick], PROBE_WIDTH, repeats, ga=g) for g in (1, 2))
    toy_split = split_engine_cost(chain, large) + split_engine_cost(
        *(further_micro_step(two, one) for two, one in ((chain2, chain), (large2, large))))
    return {"zero": zero, "device": device, "precision": "bf16" if bf16 else "fp32",
            "small": small, "large": large, "s_per_param_tensor": per_tensor,
            "s_per_param": per_param, "small_ga2": small2, "large_ga2": large2,
            "micro_s_per_param_tensor": micro_tensor, "micro_s_per_param": micro_param,
            "settings": by_setting,
            "toy": chain, "toy_split": list(toy_split), "deepspeed": deepspeed.__version__}


def measure_settings(zero: int, base: list[float] | None, large: tuple[dict, dict] | None,
                     measure_model: Callable[[int, str], dict],
                     measure_large: Callable[[int, str], dict],
                     settings: tuple[str, ...] = ENGINE_SETTINGS) -> dict[str, list[float]]:
    """{setting: [s per tensor, s per parameter, the same per further micro-step]} for each
    of ``settings``, solved as the dense one-rank ones (``base``) are, from the small
    model of that setting's kind (``measure_model(ga, setting)``) and the large toy under that
    setting's ZeRO section (``measure_large(ga, setting)``; ``large``: its times, one and two
    micro-steps, under the dense one-rank section). In a world-1 engine at ZeRO-0 there is no
    ZeRO section: the settings differ in the model only, "dp" is the dense one-rank engine
    and "moe-dp" the "moe" one. ``base`` and ``large`` None: an engine of several ranks
    (``measure_ranks``), where ZeRO-0 reduces the gradients too: every setting is timed."""
    out: dict[str, list[float]] = {}
    larges: dict[tuple[bool, bool], tuple[dict, dict]] = {}
    for setting in settings:
        moe, dp = setting_flags(setting)
        if zero == 0 and dp and base is not None:
            out[setting] = out["moe"] if moe else list(base)
            continue
        one, two = measure_model(1, setting), measure_model(2, setting)
        # the large toy (dense) under the setting's ZeRO section: MoE and data-parallel runs
        # both turn contiguous gradients on, only data-parallel ones overlap_comm
        flags = (dp, moe or dp)
        own_large = zero > 0 or large is None
        if own_large and flags not in larges:
            larges[flags] = (measure_large(1, setting), measure_large(2, setting))
        big, big2 = larges[flags] if own_large else large
        out[setting] = [*split_engine_cost(one, big),
                        *split_engine_cost(further_micro_step(two, one),
                                           further_micro_step(big2, big))]
    return out


def further_micro_step(two: dict[str, float], one: dict[str, float]) -> dict[str, float]:
    """The toy's times of one further micro-step (a step of two less a step of one), for
    ``split_engine_cost``: the engine's extra over plain torch there is what each further
    micro-step of an accumulating step adds."""
    return {**one, "engine_step_s": two["engine_step_s"] - one["engine_step_s"],
            "plain_step_s": two["plain_step_s"] - one["plain_step_s"]}


def split_engine_cost(small: dict[str, float], large: dict[str, float]) -> tuple[float, float]:
    """(s per parameter tensor, s per parameter) from the engine's extra time on two toys
    (``tensors``, ``params``, ``engine_step_s``, ``plain_step_s``): the 2x2 solve of
    extra = tensors x a + params x b, each part floored at 0 (noise can make one negative)."""
    d_s = small["engine_step_s"] - small["plain_step_s"]
    d_l = large["engine_step_s"] - large["plain_step_s"]
    t_s, p_s, t_l, p_l = small["tensors"], small["params"], large["tensors"], large["params"]
    det = t_s * p_l - t_l * p_s
    if det <= 0:
        raise ValueError("the large toy must have more parameters per tensor than the small")
    a = (d_s * p_l - d_l * p_s) / det
    b = (t_s * d_l - t_l * d_s) / det
    if a < 0:  # all of it per parameter
        a, b = 0.0, max(0.0, d_l / p_l)
    elif b < 0:  # all of it per tensor
        a, b = max(0.0, d_s / t_s), 0.0
    return a, b


def probe(device: str, *, quick: bool = False, stages: tuple[int, ...] = STAGES,
          timeout_s: float = 150.0, ranks: int = 1) -> dict[int, dict[str, tuple[float, ...]]]:
    """By ZeRO stage, each in a process of its own: {"": (seconds per parameter tensor,
    seconds per parameter) the engine adds to a step, then the same for each further
    micro-step, for a dense model on one rank; each of ``ENGINE_SETTINGS``: the same four in
    that setting; "toy": the same four as the toy of many Linear(32, 32) layers priced them
    (the probe before 2026-12-06, kept for the record)}. With ``ranks`` > 1 the data-parallel
    settings are timed again on that many ranks (``measure_ranks``) and those numbers are
    theirs; the world-1 ones stay under "world1:SETTING" (for the record). A stage that fails
    or times out is left out (the model then prices no engine term for it)."""
    out: dict[int, dict[str, tuple[float, ...]]] = {}
    for zero in stages:
        lines = _run_probe(_probe_cmd(device, zero, quick), timeout_s)
        if not lines:
            continue
        res = json.loads(lines[-1])
        out[zero] = {"": tuple(float(res[k]) for k in (
            "s_per_param_tensor", "s_per_param", "micro_s_per_param_tensor",
            "micro_s_per_param")), "toy": tuple(map(float, res["toy_split"])),
            **{k: tuple(map(float, v)) for k, v in res["settings"].items()}}
        if ranks > 1:
            dp = measure_ranks(device, zero, quick, ranks, timeout_s)
            for setting, costs in (dp or {}).get("settings", {}).items():
                out[zero][f"world1:{setting}"] = out[zero][setting]
                out[zero][setting] = tuple(map(float, costs))
    return out


def measure_ranks(device: str, zero: int, quick: bool, ranks: int,
                  timeout_s: float) -> dict[str, Any] | None:
    """``DP_SETTINGS``' four costs at ``zero`` ("settings": {setting: four}) from an engine of
    ``ranks`` ranks, one fresh process each (rank 0 reports; "runs": each timing), or None if
    it failed or timed out. What a world-1 engine
    cannot show: reducing among ranks (DeepSpeed's bucket flatten and copies around each
    reduce, its partition bookkeeping), and on a CPU host every rank's passes over memory at
    once. Each engine step is timed less the time spent in its collectives (the profile
    prices those from its link fit) and plain torch's less the part of its optimizer step a
    rank's ZeRO-1/2 partition does not take. On this 2-core CPU, micro-tc16 on 2 ranks at
    ZeRO-1 spent ~66 ms a step in the engine (less gloo) where the world-1 setting priced 30
    (bench/results/cpu-heldout-matrix-19)."""
    from ..train.process import free_port

    port = str(free_port())
    procs = [subprocess.Popen(_probe_cmd(device, zero, quick) + [
        "--world", str(ranks), "--rank", str(rank), "--port", port],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_probe_env())
        for rank in range(ranks)]
    try:
        stdout, _ = procs[0].communicate(timeout=timeout_s)
        for proc in procs[1:]:
            proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        stdout = ""
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if procs[0].returncode != 0 or not lines:
        return None
    return json.loads(lines[-1])


def _probe_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _probe_cmd(device: str, zero: int, quick: bool) -> list[str]:
    return [sys.executable, "-m", "ecdit_scale.evaluation.engine_probe", "--device", device,
            "--zero", str(zero), "--json"] + (["--quick"] if quick else [])


def _run_probe(cmd: list[str], timeout_s: float) -> list[str]:
    """The JSON lines of one probe process, or [] if it failed or timed out."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              env=_probe_env())
    except subprocess.TimeoutExpired:
        return []
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return lines if proc.returncode == 0 else []


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ecdit_scale.evaluation.engine_probe")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--zero", type=int, choices=STAGES, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--world", type=int, default=1,
                    help="one rank of an engine of this many (the data-parallel settings)")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--port", type=int, default=0, help="rank 0's port (--world > 1)")
    args = ap.parse_args(argv)
    if args.device == "cpu":  # as the trainer's ranks run (engine.setup)
        keep_large_allocations()
    res = measure_stage(args.device, args.zero, args.quick, args.world, args.rank, args.port)
    if args.rank == 0:
        print(json.dumps(res) if args.json else _describe(res), flush=True)
    os._exit(0)  # DeepSpeed's process group: no teardown to wait for


def _describe(res: dict[str, Any]) -> str:
    settings = "; ".join(f"{k}: {v[0] * 1e6:.1f} us per tensor + {v[1] * 1e9:.2f} ns per "
                         f"parameter" for k, v in res["settings"].items())
    if res.get("world", 1) > 1:
        return (f"ZeRO-{res['zero']} {res['precision']} on {res['device']}, "
                f"{res['world']} ranks: {settings}")
    return (f"ZeRO-{res['zero']} {res['precision']} on {res['device']}: "
            f"{res['s_per_param_tensor'] * 1e6:.1f} us per parameter tensor + "
            f"{res['s_per_param'] * 1e9:.2f} ns per parameter, and per further micro-step "
            f"{res['micro_s_per_param_tensor'] * 1e6:.1f} us + "
            f"{res['micro_s_per_param'] * 1e9:.2f} ns (engine / plain: the model "
            f"{res['small']['engine_step_s'] * 1e3:.2f} / {res['small']['plain_step_s'] * 1e3:.2f}"
            f" ms, large {res['large']['engine_step_s'] * 1e3:.1f} / "
            f"{res['large']['plain_step_s'] * 1e3:.1f} ms); {settings}")


if __name__ == "__main__":
    main()
