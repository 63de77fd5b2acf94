"""What a card's plain-torch forward + backward costs over the step-time model's price for it,
per counted kernel, interleaved with the profile's host probe (issue 19).

The profile prices the host's cost per kernel from a probe model (``evaluation.host_probe``: a
nano card at width 32, 16 image tokens, one image). Matrices 22-29 put 18 us per counted
kernel over the model's price in the trainer's steps (``bench/matrix_drift.py --per-kernel``).
This asks whether plain torch sees it too, and how it grows with the card: each round times
the probe (its host cost per kernel, as ``profile`` computes it) and then each card (one
thread, fp32, no engine), and prices the card by that round's probe and the profile's other
rates, so that the VM's drift between rounds moves both alike. Prints each round and, per card,
the median excess per kernel.

    python bench/host_excess.py PROFILE.yaml nano-dense:1 mini-dense:1 base-dense:1 [--rounds 6]

Seen on this 2-core VM (2026-12-07), at micro-batch 1: priced by a profile taken at ~14:30
UTC, nano 2, micro 3, tiny 8, mini 15, small 20 and base 18 us per kernel over 6 rounds (the
probe itself 8.7-22 us between rounds); priced by matrix 29's first profile (pass1), 4 rounds:
nano -1.7, mini +0.7, base +7.2. So plain torch's excess is small beside the trainer's 18 us
and moves with the profile that prices it: most of the trainer's excess is not the model's own
code. The cards' GEMMs timed alone (operands rotated past the cache) come to the grid's price
(mini-dense: 0.95x), and a step page-faults nothing (``ru_minflt``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", help="a CPU profile (ecdit-scale profile --out P.yaml)")
    ap.add_argument("cards", nargs="+", metavar="CARD:MICRO_BATCH")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    import torch

    from ecdit_scale.config import FFNKind, Precision, Recompute
    from ecdit_scale.errors import ConfigError
    from ecdit_scale.evaluation.host_probe import probe_config
    from ecdit_scale.model.diffusion import rectified_flow_loss
    from ecdit_scale.model.dit import build_model
    from ecdit_scale.planner.cards import load_card_or_name
    from ecdit_scale.planner.compute import micro_batch_terms
    from ecdit_scale.planner.hardware import get_accelerator
    from ecdit_scale.train.cpu_allocator import keep_large_allocations

    torch.set_num_threads(1)
    keep_large_allocations()  # as the trainer's ranks run
    try:
        acc = get_accelerator(args.profile)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")

    def setup(cfg, images: int):
        torch.manual_seed(0)
        model = build_model(cfg, device="cpu", recompute=Recompute.NONE)
        x = torch.randn(images, cfg.in_channels, cfg.input_size, cfg.input_size)
        cond = torch.randn(images, cfg.text_tokens, cfg.text_dim)
        gen, params = torch.Generator(), list(model.parameters())

        def step() -> None:
            rectified_flow_loss(model, x, cond, generator=gen.manual_seed(0)).loss.backward()
            for p in params:
                p.grad = None

        cost = micro_batch_terms(cfg, acc, images=images, tp=1, recompute=Recompute.NONE,
                                 precision=Precision.FP32).total
        priced = float(cost.device_s) + acc.profile.engine_s_per_param_tensor * len(params)
        return step, priced, float(cost.kernels)

    def seconds(step, calls: int) -> float:
        for _ in range(2):
            step()
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    probe = setup(probe_config(FFNKind.DENSE), 1)
    cards = {}
    for spec in args.cards:
        name, _, mb = spec.partition(":")
        if not mb.isdigit() or int(mb) < 1:
            sys.exit(f"error: {spec!r}: write CARD:MICRO_BATCH, e.g. mini-dense:1")
        try:
            cards[spec] = setup(load_card_or_name(name), int(mb))
        except ConfigError as exc:
            sys.exit(f"error: {spec!r}: {exc}")
    excess: dict[str, list[float]] = {c: [] for c in cards}
    for i in range(args.rounds):
        step, priced, kernels = probe
        host = max(0.0, seconds(step, 200) - priced) / kernels
        line = f"round {i}: probe {host * 1e6:5.1f} us/kernel"
        for spec, (step, priced, kernels) in cards.items():
            wall = seconds(step, 5)
            excess[spec].append((wall - priced - kernels * host) / kernels)
            line += f" | {spec} {wall * 1e3:.1f} ms, {excess[spec][-1] * 1e6:+.1f} us"
        print(line, flush=True)
    for spec, values in excess.items():
        print(f"{spec:<16} median excess {statistics.median(values) * 1e6:+6.1f} us per kernel")


if __name__ == "__main__":
    main()
