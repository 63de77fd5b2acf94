"""A measured device profile (``ecdit-scale profile``): what one device sustains, operator class by
operator class, read by the step-time model (no torch here; the measuring is in
``ecdit_scale.evaluation.profile``).

YAML, under an accelerator's ``profile:`` key (every part optional; a missing part falls back to
the datasheet and the plan says so):

    dtype: bf16                      # the precision the GEMMs/SDPA were timed in
    gemm: {m: [...], n: [...], k: [...], flops_per_s: [...]}   # full grid, m-major, flat
    bmm: {m: [...], n: [...], k: [...], batch: [...], flops_per_s: [...]}   # torch.bmm of
                                     # batch[i] (M, K) x (K, N) problems at each m[i], FLOP/s
                                     # of the whole call (the experts' batched matmuls)
    sdpa: {flops: [...], forward_flops_per_s: [...], backward_flops_per_s: [...],
           head_dim: 64}             # head_dim: what it was timed at
    memory_bw_bytes_per_s: 3.0e12    # large copy: (read + write) bytes / s
    memory_ops: {copy: ..., elementwise: ..., activation: ..., norm: ...}  # bytes / s by kind,
                                     # at activation-sized tensors (MEMORY_KINDS)
    memory_ops_tensor_bytes: 524288  # the input tensor they were timed on: an op that moves
                                     # more per kernel than its kind's call did runs at no
                                     # more than memory_bw_bytes_per_s
    launch: {seconds: 6.0e-6, mode: async}   # host seconds per counted kernel (a tiny module
                                     # network's forward + backward / its kernels as
                                     # operators.py counts them); serial = host runs it (CPU)
    host: {dense: {none: 8e-6, selective: 3.8e-5, full: 2.3e-5},   # host seconds per counted
           expert-choice: {...}, token-choice: {...}}   # kernel of the model's own code, by
                                     # FFN kind and recompute policy (evaluation.host_probe);
                                     # in place of launch's where present
    trainer_s_per_kernel: {1: 1.2e-5, 2: 2.6e-5}   # host seconds per counted kernel the
                                     # trainer's own launches took over all else here, by
                                     # ranks (evaluation.trainer_probe); added to host's
    optimizer: {s_per_byte: ..., s_per_tensor: ...,     # bytes as step_time counts them
                by_size: {elements: [...], adamw: [...], rmsprop: [...], sgd: [...]},
                kernels: foreach}                  # seconds per byte at each tensor size
    engine_s_per_param_tensor: 2.0e-5  # autograd / engine work per parameter tensor per pass
    deepspeed_engine: {0: 1.5e-5, 1: 2.0e-6, 2: 3.0e-5}   # seconds per parameter tensor
                                     # DeepSpeed's engine adds to a step, by ZeRO stage
    deepspeed_engine_per_param: {0: 4e-9, 1: 1e-8, 2: 1e-8}  # and per parameter
                                     # (evaluation.engine_probe: the trainer's engine vs
                                     # plain torch on a many-small-layer and a
                                     # few-large-layer toy model)
    deepspeed_engine_micro: {0: 1e-6, 1: 1e-6, 2: 2.5e-5}  # seconds per parameter tensor,
    deepspeed_engine_micro_per_param: {2: 5e-9}   # and per parameter, each further
                                     # micro-step of an accumulating step adds (ZeRO-2's
                                     # hooks reduce in every backward; the probe at 2 vs 1)
    deepspeed_engine_by_setting: {moe: {deepspeed_engine: {...}, ...}, dp: {...},
                                  moe-dp: {...}}   # the same four where a run gets other
                                     # ZeRO settings than a dense model on one rank: an MoE
                                     # model, several data-parallel ranks, both (absent: the
                                     # dense one-rank numbers, profiles before 2026-12-06)
    collectives: {nproc: 2, backend: nccl, all_reduce: {latency_s, bw_bytes_per_s, half_bytes},
                  all_to_all: {...}, all_gather: {...}}   # all_gather: into one tensor, as
                                     # DeepSpeed's ZeRO gathers run (absent: priced as the
                                     # all-reduce's link, the profiles before 2026-12-06)
    provenance: {device: ..., torch: ..., date: ..., settings: ...}

GEMM rate at (M, N, K): trilinear interpolation of the measured grid in log2 space, clamped at
the grid's edges; the batched-GEMM rate at one problem's (M, N, K) likewise over the bmm grid.
SDPA rate: linear interpolation in log(FLOPs per call), clamped.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..checks import short
from ..config import Optimizer
from ..errors import ConfigError
from .interpolation import log_grid, log_log, trilinear
from .link_fit import COLLECTIVES, LinkFit, timed_links
from .profile_fields import (
    aligned_lists,
    by_kind_and_policy,
    by_ranks,
    mapping,
    mnk_grid,
    number,
    numbers,
    optional_number,
    zero_stages,
)
from .rank_sync import SyncFit

LAUNCH_MODES = ("async", "serial")
FFN_KINDS = ("dense", "expert-choice", "token-choice")  # config.FFNKind's values
RECOMPUTE_POLICIES = ("none", "selective", "full")  # memory.RECOMPUTE_ORDER's, in its order
# memory-bound operator kinds, each with its measured throughput (``operators.MemoryOp.kind``)
MEMORY_KINDS = ("copy", "elementwise", "activation", "norm")
# bytes each kind's timed call moves, per byte of its input tensor (profile.measure_memory_kinds)
MEMORY_KIND_TRAFFIC = {"copy": 2.0, "elementwise": 3.0, "activation": 2.0, "norm": 2.0}
OPTIMIZER_NAMES = tuple(o.value for o in Optimizer)
OPTIMIZER_KERNELS = ("fused", "foreach", "for-loop")
# DeepSpeed's engine cost by ZeRO stage: the YAML key and the field (per tensor and per
# parameter a step adds, then each further micro-step of an accumulating step)
ENGINE_FIELDS = (("deepspeed_engine", "deepspeed_engine_s"),
                 ("deepspeed_engine_per_param", "deepspeed_engine_s_per_param"),
                 ("deepspeed_engine_micro", "deepspeed_micro_s"),
                 ("deepspeed_engine_micro_per_param", "deepspeed_micro_s_per_param"))
# the engine's settings a run gets besides a dense model's on one rank (``deepspeed_config.
# zero_section``): an MoE model (contiguous gradients; its experts in a param group of their
# own), several data-parallel ranks (contiguous gradients and overlap_comm), both
ENGINE_SETTINGS = ("moe", "dp", "moe-dp")
ENGINE_SETTING_NAMES = {"moe": "MoE model, one rank", "dp": "dense model, data-parallel ranks",
                        "moe-dp": "MoE model, data-parallel ranks"}


def setting_flags(setting: str) -> tuple[bool, bool]:
    """(an MoE model, several data-parallel ranks) of an engine setting ("" = neither)."""
    if setting and setting not in ENGINE_SETTINGS:
        raise ValueError(f"engine setting {setting!r}: choose one of {ENGINE_SETTINGS}")
    return setting.startswith("moe"), setting.endswith("dp")


def engine_setting(moe: bool, data_parallel: bool) -> str:
    """The engine setting of a run: an MoE model or not, more than one data-parallel rank or
    not ("" = a dense model on one rank)."""
    return "-".join(["moe"] * moe + ["dp"] * data_parallel)


@dataclass(frozen=True, kw_only=True, eq=False)
class DeviceProfile:
    """Compared and hashed by identity (it holds dicts), so that an accelerator carrying it
    stays hashable and the priced operators can be cached per (config, accelerator)."""

    dtype: str = "bf16"
    gemm_m: tuple[float, ...] = ()
    gemm_n: tuple[float, ...] = ()
    gemm_k: tuple[float, ...] = ()
    gemm_flops_per_s: tuple[float, ...] = ()
    # torch.bmm over the same kind of grid, (M, N, K) being one problem's shape; bmm_batch: the
    # problems per call at each M (profile.measure_bmm)
    bmm_m: tuple[float, ...] = ()
    bmm_n: tuple[float, ...] = ()
    bmm_k: tuple[float, ...] = ()
    bmm_batch: tuple[float, ...] = ()
    bmm_flops_per_s: tuple[float, ...] = ()
    sdpa_flops: tuple[float, ...] = ()
    sdpa_forward_flops_per_s: tuple[float, ...] = ()
    sdpa_backward_flops_per_s: tuple[float, ...] = ()
    sdpa_head_dim: float | None = None  # the head dim SDPA was timed at
    memory_bw_bytes_per_s: float | None = None
    memory_kind_bw: dict[str, float] = field(default_factory=dict)
    memory_ops_tensor_bytes: float | None = None  # the tensor the kinds were timed on
    launch_s: float | None = None
    launch_mode: str = "async"
    # host seconds per counted kernel of the model's own code, {FFN kind: {recompute: s}}
    host_s_per_kernel: dict[str, dict[str, float]] = field(default_factory=dict)
    # what the trainer's own steps took over everything else this profile prices, per counted
    # kernel, {ranks: s} (``evaluation.trainer_probe``: the trainer launched at the host
    # probe's size on one rank and on the profile's nproc)
    trainer_s_per_kernel: dict[int, float] = field(default_factory=dict)
    optimizer_s_per_byte: float | None = None  # AdamW's (the one profiles before 2026-12-06 have)
    optimizer_s_per_tensor: float | None = None
    # seconds per byte (as ``step_time.optimizer_bytes`` counts them) of each optimizer as the
    # trainer runs it (``train.engine.torch_optimizer``: foreach on CPU, fused on CUDA), at
    # each size of ``optimizer_elements`` (fp32 elements a step updates: one that stays in
    # cache runs faster per byte than one that streams from memory)
    optimizer_elements: tuple[float, ...] = ()
    optimizer_s_per_byte_by: dict[str, tuple[float, ...]] = field(default_factory=dict)
    optimizer_kernels: str | None = None  # "foreach" / "fused" / "for-loop": what was timed
    engine_s_per_param_tensor: float | None = None
    deepspeed_engine_s: dict[int, float] = field(default_factory=dict)  # by ZeRO stage
    # what the engine's passes over gradients and weights add, per parameter, by ZeRO stage
    deepspeed_engine_s_per_param: dict[int, float] = field(default_factory=dict)
    # what each further micro-step of an accumulating step adds (per tensor, per parameter)
    deepspeed_micro_s: dict[int, float] = field(default_factory=dict)
    deepspeed_micro_s_per_param: dict[int, float] = field(default_factory=dict)
    # the same four in each other setting a run can get ({setting: {field: {stage: s}}}, the
    # fields' names as above): an MoE model's, a data-parallel run's (``ENGINE_SETTINGS``)
    deepspeed_engine_by_setting: dict[str, dict[str, dict[int, float]]] = field(
        default_factory=dict)
    collective_nproc: int | None = None
    collective_backend: str | None = None
    links: dict[str, LinkFit] = field(default_factory=dict)
    sync: SyncFit | None = None  # measured on a CPU's ranks (collective_nproc of them)
    provenance: dict[str, Any] = field(default_factory=dict)

    def optimizer_rate(self, optimizer: Any, elements: Any = None) -> Any:
        """Seconds per byte of ``optimizer`` (an ``Optimizer`` or its value) stepping
        ``elements`` fp32 elements: its own curve where the profile has one (log-log interpolation,
        clamped to the measured sizes), else AdamW's single rate (None: not measured)."""
        name = getattr(optimizer, "value", optimizer)
        curve = self.optimizer_s_per_byte_by.get(name)
        if curve is None or elements is None:
            return self.optimizer_s_per_byte
        return log_log(elements, self.optimizer_elements, curve)

    def engine_costs(self, setting: str) -> dict[str, dict[int, float]]:
        """{field: {ZeRO stage: seconds}} of DeepSpeed's engine in ``setting``
        (``engine_setting``) for each of ``ENGINE_FIELDS``' fields: that setting's where the
        profile measured it, else the dense one-rank engine's (every profile before
        2026-12-06)."""
        setting_flags(setting)
        own = self.deepspeed_engine_by_setting.get(setting, {})
        return {attr: {**getattr(self, attr), **own.get(attr, {})}
                for _, attr in ENGINE_FIELDS}

    def kernel_host_s(self, ffn_kind: str, recompute_code: Any) -> Any:
        """Host seconds per counted kernel for a model of ``ffn_kind`` at each recompute policy
        of ``recompute_code`` (indices into ``RECOMPUTE_POLICIES``; a number or an array over
        layouts): the model's own code where the profile timed it (``host``), else the launch
        probe's (0 where neither was measured)."""
        launch = self.launch_s or 0.0
        per_policy = self.host_s_per_kernel.get(ffn_kind, {})
        table = np.array([per_policy.get(p, launch) for p in RECOMPUTE_POLICIES])
        return table[np.asarray(recompute_code, dtype=int)]

    def trainer_host_s(self, world: Any) -> Any:
        """The trainer's host seconds per counted kernel over the rest of the profile's price
        at ``world`` ranks (a number or an array over layouts): the value measured at the
        largest rank count not above it, else at the smallest measured (0 where the profile
        did not launch the trainer)."""
        if not self.trainer_s_per_kernel:
            return 0.0 * np.asarray(world)
        ranks = np.array(sorted(self.trainer_s_per_kernel), dtype=float)
        values = np.array([self.trainer_s_per_kernel[int(r)] for r in ranks])
        i = np.searchsorted(ranks, np.asarray(world, dtype=float), side="right") - 1
        return values[np.clip(i, 0, len(ranks) - 1)]

    # ---- what was measured ------------------------------------------------------------------
    @property
    def has_gemm(self) -> bool:
        return bool(self.gemm_flops_per_s)

    @property
    def has_bmm(self) -> bool:
        return bool(self.bmm_flops_per_s)

    @property
    def has_sdpa(self) -> bool:
        return bool(self.sdpa_flops)

    @property
    def pads_flash_head_dim(self) -> bool:
        """A GPU's profile (launches run ahead of the device: CUDA's, and every profile derived
        from the H200's): torch's flash SDPA kernel pads the head dim there
        (``compute.flash_head_dim``); a CPU's SDPA does not."""
        return self.launch_mode == "async"

    def measured(self) -> dict[str, bool]:
        """Each term the step-time model can price from this profile: measured or not."""
        return {"gemm": self.has_gemm, "batched_gemm": self.has_bmm,
                "attention": self.has_sdpa,
                "memory_bandwidth": self.memory_bw_bytes_per_s is not None,
                "memory_ops": bool(self.memory_kind_bw),
                "launch": self.launch_s is not None,
                "host": bool(self.host_s_per_kernel),
                "trainer": bool(self.trainer_s_per_kernel),
                "optimizer": self.optimizer_s_per_byte is not None,
                "engine": self.engine_s_per_param_tensor is not None,
                "deepspeed_engine": bool(self.deepspeed_engine_s),
                **{f"deepspeed_engine_{setting}": setting in self.deepspeed_engine_by_setting
                   for setting in ENGINE_SETTINGS},
                **{c: c in self.links for c in COLLECTIVES}, "sync": self.sync is not None}

    # ---- rates ------------------------------------------------------------------------------
    @functools.cached_property
    def _gemm_grid(self) -> tuple[list[np.ndarray], np.ndarray]:
        """log2 axes and log rates of the GEMM grid, computed once (a plan prices ~1,000
        inventories against it)."""
        return log_grid(self.gemm_m, self.gemm_n, self.gemm_k, self.gemm_flops_per_s)

    @functools.cached_property
    def _bmm_grid(self) -> tuple[list[np.ndarray], np.ndarray]:
        return log_grid(self.bmm_m, self.bmm_n, self.bmm_k, self.bmm_flops_per_s)

    def gemm_rate_memo(self, m: np.ndarray, n: np.ndarray, k: np.ndarray, *,
                       batched: bool = False) -> np.ndarray:
        """``gemm_rate`` (``bmm_rate`` where ``batched``) of 1-d shape arrays, memoised per
        (M, N, K): a plan's search prices the same shapes for many layouts (a pure cache; the
        profile's numbers never change)."""
        cache = self.__dict__.setdefault("_bmm_rate_cache" if batched else "_gemm_rate_cache",
                                         {})
        keys = list(zip(np.asarray(m, dtype=float).tolist(), np.asarray(n, dtype=float).tolist(),
                        np.asarray(k, dtype=float).tolist(), strict=True))
        miss = [key for key in dict.fromkeys(keys) if key not in cache]
        if miss:
            cols = [np.array(c) for c in zip(*miss, strict=True)]
            rate = self.bmm_rate if batched else self.gemm_rate
            cache.update(zip(miss, rate(*cols).tolist(), strict=True))
        return np.array([cache[key] for key in keys])

    def gemm_rate(self, m: Any, n: Any, k: Any) -> np.ndarray:
        """FLOP/s of (M, N, K) GEMMs: trilinear in log2 over the measured grid, clamped."""
        return trilinear(*self._gemm_grid, m, n, k)

    def bmm_rate(self, m: Any, n: Any, k: Any) -> np.ndarray:
        """FLOP/s of a batched GEMM whose every problem is (M, N, K): trilinear in log2 over the
        measured bmm grid, clamped."""
        return trilinear(*self._bmm_grid, m, n, k)

    def sdpa_rate(self, flops: Any, *, backward: bool = False) -> np.ndarray:
        """FLOP/s of an SDPA call of ``flops`` (forward products), forward or backward."""
        return log_log(flops, self.sdpa_flops, self.sdpa_backward_flops_per_s if backward
                        else self.sdpa_forward_flops_per_s)

    # ---- YAML -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dtype": self.dtype}
        if self.has_gemm:
            out["gemm"] = {"m": list(self.gemm_m), "n": list(self.gemm_n), "k": list(self.gemm_k),
                           "flops_per_s": list(self.gemm_flops_per_s)}
        if self.has_bmm:
            out["bmm"] = {"m": list(self.bmm_m), "n": list(self.bmm_n), "k": list(self.bmm_k),
                          "batch": list(self.bmm_batch),
                          "flops_per_s": list(self.bmm_flops_per_s)}
        if self.has_sdpa:
            out["sdpa"] = {"flops": list(self.sdpa_flops),
                           "forward_flops_per_s": list(self.sdpa_forward_flops_per_s),
                           "backward_flops_per_s": list(self.sdpa_backward_flops_per_s)}
            if self.sdpa_head_dim is not None:
                out["sdpa"]["head_dim"] = self.sdpa_head_dim
        if self.memory_bw_bytes_per_s is not None:
            out["memory_bw_bytes_per_s"] = self.memory_bw_bytes_per_s
        if self.memory_kind_bw:
            out["memory_ops"] = dict(self.memory_kind_bw)
        if self.memory_ops_tensor_bytes is not None:
            out["memory_ops_tensor_bytes"] = self.memory_ops_tensor_bytes
        if self.launch_s is not None:
            out["launch"] = {"seconds": self.launch_s, "mode": self.launch_mode}
        if self.host_s_per_kernel:
            out["host"] = {k: dict(v) for k, v in self.host_s_per_kernel.items()}
        if self.trainer_s_per_kernel:
            out["trainer_s_per_kernel"] = {int(k): v for k, v in
                                           sorted(self.trainer_s_per_kernel.items())}
        if self.optimizer_s_per_byte is not None:
            out["optimizer"] = {"s_per_byte": self.optimizer_s_per_byte,
                                "s_per_tensor": self.optimizer_s_per_tensor or 0.0}
            if self.optimizer_s_per_byte_by:
                out["optimizer"]["by_size"] = {
                    "elements": list(self.optimizer_elements),
                    **{k: list(v) for k, v in sorted(self.optimizer_s_per_byte_by.items())}}
            if self.optimizer_kernels:
                out["optimizer"]["kernels"] = self.optimizer_kernels
        if self.engine_s_per_param_tensor is not None:
            out["engine_s_per_param_tensor"] = self.engine_s_per_param_tensor
        for key, attr in ENGINE_FIELDS:
            if getattr(self, attr):
                out[key] = {int(k): v for k, v in sorted(getattr(self, attr).items())}
        if self.deepspeed_engine_by_setting:
            out["deepspeed_engine_by_setting"] = {
                setting: {key: {int(k): v for k, v in sorted(fields[attr].items())}
                          for key, attr in ENGINE_FIELDS if fields.get(attr)}
                for setting, fields in self.deepspeed_engine_by_setting.items()}
        if self.links:
            out["collectives"] = {"nproc": self.collective_nproc,
                                  "backend": self.collective_backend,
                                  **{k: v.to_dict() for k, v in self.links.items()}}
        if self.sync is not None:
            out["sync"] = self.sync.to_dict()
        out["measured"] = self.measured()
        if self.provenance:
            out["provenance"] = dict(self.provenance)
        return out

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "profile") -> DeviceProfile:
        data = mapping(data, where)
        known = {"dtype", "gemm", "bmm", "sdpa", "memory_bw_bytes_per_s", "memory_ops",
                 "memory_ops_tensor_bytes", "launch", "host", "trainer_s_per_kernel",
                 "optimizer",
                 "engine_s_per_param_tensor", *(key for key, _ in ENGINE_FIELDS),
                 "deepspeed_engine_by_setting", "collectives", "sync", "measured",
                 "provenance"}
        unknown = sorted(map(str, set(data) - known))
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; valid fields: "
                              f"{', '.join(sorted(known))}")
        kw: dict[str, Any] = {}
        dtype = data.get("dtype", "bf16")
        if dtype not in ("bf16", "fp32", "fp16"):
            raise ConfigError(f"{where}.dtype = {short(dtype)}: choose bf16, fp16 or fp32")
        kw["dtype"] = dtype
        for key in ("gemm", "bmm"):
            kw.update({f"{key}_{f}": v for f, v in mnk_grid(data, key, where).items()})
        sdpa = mapping(data.get("sdpa"), f"{where}.sdpa")
        parts = aligned_lists(data, "sdpa", ("flops", "forward_flops_per_s",
                                             "backward_flops_per_s"), where)
        if parts:
            kw.update(sdpa_flops=parts[0], sdpa_forward_flops_per_s=parts[1],
                      sdpa_backward_flops_per_s=parts[2])
            # the head dim it was timed at: its own key, else the settings the profile records
            settings = mapping(data.get("provenance"), f"{where}.provenance").get("settings")
            recorded = settings.get("head_dim") if isinstance(settings, dict) else None
            head_dim = sdpa.get("head_dim", recorded)
            if head_dim is not None:
                kw["sdpa_head_dim"] = number(f"{where}.sdpa.head_dim", head_dim)
        kw["memory_bw_bytes_per_s"] = optional_number(data, "memory_bw_bytes_per_s", where)
        kinds = mapping(data.get("memory_ops"), f"{where}.memory_ops")
        bad = sorted(map(str, set(kinds) - set(MEMORY_KINDS)))
        if bad:
            raise ConfigError(f"{where}.memory_ops: unknown kind(s) {', '.join(bad)}; valid: "
                              f"{', '.join(MEMORY_KINDS)}")
        kw["memory_kind_bw"] = {k: number(f"{where}.memory_ops.{k}", v) for k, v in kinds.items()}
        kw["memory_ops_tensor_bytes"] = optional_number(data, "memory_ops_tensor_bytes", where)
        launch = mapping(data.get("launch"), f"{where}.launch")
        if launch:
            kw["launch_s"] = optional_number(launch, "seconds", f"{where}.launch")
            mode = launch.get("mode", "async")
            if mode not in LAUNCH_MODES:
                raise ConfigError(f"{where}.launch.mode = {short(mode)}: choose "
                                  f"{' or '.join(LAUNCH_MODES)}")
            kw["launch_mode"] = mode
        kw["host_s_per_kernel"] = by_kind_and_policy(data.get("host"), f"{where}.host",
                                                     FFN_KINDS, RECOMPUTE_POLICIES)
        kw["trainer_s_per_kernel"] = by_ranks(data.get("trainer_s_per_kernel"),
                                               f"{where}.trainer_s_per_kernel")
        opt = mapping(data.get("optimizer"), f"{where}.optimizer")
        if opt:
            kw["optimizer_s_per_byte"] = optional_number(opt, "s_per_byte", f"{where}.optimizer")
            kw["optimizer_s_per_tensor"] = optional_number(
                opt, "s_per_tensor", f"{where}.optimizer", positive=False)
            by = dict(mapping(opt.get("by_size"), f"{where}.optimizer.by_size"))
            if by:
                w = f"{where}.optimizer.by_size"
                elements = numbers(f"{w}.elements", by.pop("elements", None))
                if list(elements) != sorted(set(elements)):
                    raise ConfigError(f"{w}.elements must be strictly increasing")
                bad = sorted(map(str, set(by) - set(OPTIMIZER_NAMES)))
                if bad:
                    raise ConfigError(f"{w}: unknown optimizer(s) {', '.join(bad)}; valid: "
                                      f"elements, {', '.join(OPTIMIZER_NAMES)}")
                curves = {k: numbers(f"{w}.{k}", v) for k, v in by.items()}
                for k, v in curves.items():
                    if len(v) != len(elements):
                        raise ConfigError(f"{w}.{k} has {len(v)} rates for "
                                          f"{len(elements)} sizes")
                kw["optimizer_elements"] = elements
                kw["optimizer_s_per_byte_by"] = curves
            kernels = opt.get("kernels")
            if kernels is not None and kernels not in OPTIMIZER_KERNELS:
                raise ConfigError(f"{where}.optimizer.kernels = {short(kernels)}: choose "
                                  f"{', '.join(OPTIMIZER_KERNELS)}")
            kw["optimizer_kernels"] = kernels
        kw["engine_s_per_param_tensor"] = optional_number(data, "engine_s_per_param_tensor", where,
                                               positive=False)
        for name, attr in ENGINE_FIELDS:
            kw[attr] = zero_stages(data, name, where)
        by_setting = mapping(data.get("deepspeed_engine_by_setting"),
                              f"{where}.deepspeed_engine_by_setting")
        kw["deepspeed_engine_by_setting"] = {}
        for setting, fields in by_setting.items():
            w = f"{where}.deepspeed_engine_by_setting.{setting}"
            if setting not in ENGINE_SETTINGS:
                raise ConfigError(f"{where}.deepspeed_engine_by_setting: setting "
                                  f"{short(setting)}; valid: {', '.join(ENGINE_SETTINGS)}")
            fields = mapping(fields, w)
            unknown = sorted(map(str, set(fields) - {key for key, _ in ENGINE_FIELDS}))
            if unknown:
                raise ConfigError(f"{w}: unknown field(s) {', '.join(unknown)}; valid fields: "
                                  f"{', '.join(key for key, _ in ENGINE_FIELDS)}")
            kw["deepspeed_engine_by_setting"][setting] = {
                attr: zero_stages(fields, key, w) for key, attr in ENGINE_FIELDS if key in fields}
        coll = mapping(data.get("collectives"), f"{where}.collectives")
        if coll:
            links = {}
            for name in COLLECTIVES:
                part = mapping(coll.get(name), f"{where}.collectives.{name}")
                if part:
                    w = f"{where}.collectives.{name}"
                    links[name] = LinkFit(latency_s=number(f"{w}.latency_s", part.get("latency_s"),
                                                         positive=False),
                                          bw_bytes_per_s=number(f"{w}.bw_bytes_per_s",
                                                              part.get("bw_bytes_per_s")),
                                          half_bytes=number(f"{w}.half_bytes",
                                                            part.get("half_bytes"),
                                                            positive=False))
            kw["links"] = links
            n = coll.get("nproc")
            kw["collective_nproc"] = (int(n) if isinstance(n, int) and not isinstance(n, bool)
                                      else None)
            kw["collective_backend"] = str(coll.get("backend")) if coll.get("backend") else None
        parts = aligned_lists(data, "sync", ("segment_s", "excess_s", "wait_s"), where)
        if parts:
            kw["sync"] = SyncFit(segment_s=parts[0], excess_s=parts[1], wait_s=parts[2])
        kw["provenance"] = mapping(data.get("provenance"), f"{where}.provenance")
        if kw.get("links"):
            kw["links"] = timed_links(kw["links"], kw["provenance"], kw.get("collective_nproc"),
                                      f"{where}.provenance")
        return cls(**kw)
