"""`plan --fit FIT --flops C` (or `--gpu-hours H`): a training run sized by the fitted law.

The headline law of the fit allocates C between activated parameters and tokens
(`allocation`); the config for that activated-parameter target comes from the ladder or the
synthesis rules (`sizes.resolve`), and the steps are the tokens over the tokens of one global
batch. The planner then lays the run out and times it as for any other plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .. import sizes
from ..config import FFNKind
from ..errors import ConfigError
from .allocation import EXTRAPOLATION_FACTOR, Allocation, allocate
from .fit_file import load_fit
from .runlevel import kind_of


@dataclass(frozen=True)
class BudgetRun:
    allocation: Allocation
    fit_variant: str  # the fit's variant whose law was spent
    params_target: int  # activated parameters the config is built for
    steps: int
    global_batch: int
    tokens_per_image: int
    loss_label: str
    measured_compute_flops: tuple[float, float]

    @property
    def images(self) -> int:
        return self.steps * self.global_batch

    def lines(self) -> list[str]:
        """What to print: the allocation with its intervals, and the loss or the warning."""
        a = self.allocation

        def iv(i, fmt):
            return f" (95% CI {fmt(i.lo)}-{fmt(i.hi)})" if i is not None else ""

        def g(x):
            return f"{x:.3g}"
        lo, hi = self.measured_compute_flops
        out = [f"compute-optimal allocation of {a.compute_flops:.3g} FLOPs by the fitted law "
               f"({self.fit_variant}, C = {a.flops_per_param_token:.3g}·N·D measured on the "
               f"table) [estimated]: activated parameters {a.active_params:.3g}"
               f"{iv(a.params_interval, g)}, tokens {a.tokens:.3g}{iv(a.tokens_interval, g)} "
               f"= {self.steps:,} steps x {self.global_batch} images x "
               f"{self.tokens_per_image} tokens"]
        if a.extrapolated:
            out.append(f"warning: {a.compute_flops:.3g} FLOPs is {a.beyond_measured:.3g}x beyond "
                       f"the largest measured run ({hi:.3g} FLOPs); this allocation extrapolates "
                       f"the fitted law, and no loss is quoted beyond {EXTRAPOLATION_FACTOR:g}x")
        else:
            out.append(f"fitted loss at this allocation: {a.loss:.4g}{iv(a.loss_interval, g)} "
                       f"({self.loss_label}; measured range {lo:.3g}-{hi:.3g} FLOPs) [estimated]")
        return out

    def to_dict(self) -> dict:
        return {"allocation": self.allocation.to_dict(), "fit_variant": self.fit_variant,
                "params_target": self.params_target, "steps": self.steps,
                "global_batch": self.global_batch, "tokens_per_image": self.tokens_per_image,
                "lines": self.lines()}


def budget_run(fit_path: str | Path, compute_flops: float, *, routing: str | None,
               global_batch: int) -> BudgetRun:
    """Allocate compute_flops by the headline law of the fit at fit_path."""
    if not (math.isfinite(compute_flops) and compute_flops > 0):
        raise ConfigError(f"--flops {compute_flops}: a compute in FLOPs, finite and > 0 "
                          "(e.g. 1e21)")
    fit = load_fit(fit_path)
    h = fit.headline
    if h is None or not math.isfinite(h.flops_per_param_token):
        raise ConfigError(f"--fit {fit_path}: has no headline L(N, D) fit to allocate compute "
                          "by; refit the table with this version (`ecdit-scale fit TABLE`)")
    kind = FFNKind(routing) if routing else FFNKind.EXPERT_CHOICE
    variants = [v for v in h.law.s_N if kind_of(v) == kind.value]
    if not variants:
        raise ConfigError(f"--routing {kind.value}: the fit has no such variant (it has "
                          f"{', '.join(h.law.s_N)})")
    variant = variants[0]
    alloc = allocate(h.law, variant, compute_flops, h.flops_per_param_token,
                     bootstrap_laws=h.bootstrap_laws, level=h.level,
                     max_measured_flops=h.compute_range[1])
    target = max(1, round(alloc.active_params))
    try:
        cfg = sizes.resolve(target, active=True, kind=kind).config
    except ConfigError as exc:
        raise ConfigError(f"--flops {compute_flops:.3g}: the fitted law spends it on {target:,} "
                          f"activated parameters, for which no config is built ({exc})") from None
    steps = max(1, math.ceil(alloc.tokens / (cfg.tokens_per_image * global_batch)))
    return BudgetRun(allocation=alloc, fit_variant=variant, params_target=target, steps=steps,
                     global_batch=global_batch, tokens_per_image=cfg.tokens_per_image,
                     loss_label=fit.loss_label or fit.loss_column,
                     measured_compute_flops=tuple(h.compute_range))


def budget_request(fit_path, *, flops: float | None, gpu_hours: float | None,
                   routing: str | None, global_batch: int, model: str | None,
                   sustained_flops: float) -> tuple[BudgetRun, str, bool, int]:
    """The plan options for a budget: (the run, --params, --active, --steps). --gpu-hours
    becomes FLOPs at the device's sustained FLOP/s (the planner's assumption)."""
    if fit_path is None:
        raise ConfigError("--flops/--gpu-hours: give --fit FIT, a fit of your sweep "
                          "(`ecdit-scale fit TABLE`)")
    if (flops is None) == (gpu_hours is None):
        raise ConfigError("give --flops or --gpu-hours, not both")
    if model is not None:
        raise ConfigError("--flops/--gpu-hours choose the model from the fit: drop --model")
    if gpu_hours is not None:
        if not (math.isfinite(gpu_hours) and gpu_hours > 0):
            raise ConfigError(f"--gpu-hours {gpu_hours}: a number > 0, e.g. 1e5")
        flops = gpu_hours * 3600.0 * sustained_flops
    run = budget_run(fit_path, flops, routing=routing, global_batch=global_batch)
    return run, str(run.params_target), True, run.steps
