"""``ecdit-scale adaptive``: how expert choice spends compute, from a trained run.

Loads the run's last checkpoint into the single-device model, noises held-out samples (never
trained on: ``datasets.batches.holdout_rows``) to a grid of timesteps t in (0, 1), and records
how many experts processed each image token in each MoE layer (``ECDiT.routing_stats``).

With the routing group = one image, every image gets exactly f_c experts per token on
average (E experts x C slots = f_c x S); what adapts is *where* they go. So the analysis
reports dispersion, not the mean: the histogram of experts per token (0..E), the share of
tokens no expert took, the largest share of a layer's experts one token got, by layer and by
timestep (EC-DiT reports near-uniform allocation in early layers and early denoising steps,
and experts concentrating on detailed regions); per sample, the spread of allocation against
caption length; per token, experts against the detail of its patch (pixel standard deviation)
and against foreground (non-background pixels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..train.records import write_json
from .runs import held_out_samples, load_trained_model, open_run

DETAIL_BACKGROUND = 0.95  # pixels above this (in [-1, 1]) count as white background
# Each grid point is one forward pass of every sample, and every point is labelled in the plots;
# the (timesteps, layers, samples, tokens) table of experts per token is held in memory.
TIMESTEPS_RANGE = (1, 64)
SAMPLES_RANGE = (1, 1024)  # all samples go through the model as one batch


def check_args(*, samples: int, timesteps: int, seed: int) -> None:
    """One-line errors for a grid or sample count out of range (before anything is loaded)."""
    for name, value, (lo, hi) in (("--samples", samples, SAMPLES_RANGE),
                                  ("--timesteps", timesteps, TIMESTEPS_RANGE)):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"{name} {value!r}: must be an integer in {lo}..{hi}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed {seed!r}: must be an integer >= 0")


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def _layer_summary(ept: np.ndarray, num_experts: int) -> dict[str, Any]:
    """ept: experts per token, any shape."""
    flat = ept.reshape(-1)
    hist = np.bincount(flat, minlength=num_experts + 1)[: num_experts + 1]
    return {"mean": float(flat.mean()), "std": float(flat.std()),
            "zero_share": float((flat == 0).mean()), "max": int(flat.max()),
            "max_expert_share": float(flat.max() / num_experts),
            "hist": hist.tolist()}


def analyse(run_dir: Path, *, out: Path | None = None, samples: int = 32,
            timesteps: int = 8, seed: int = 0) -> dict[str, Any]:
    """Experts per token of held-out samples noised to ``timesteps`` points of (0, 1);
    plots and summary.json go to ``out`` (default RUN/adaptive)."""
    check_args(samples=samples, timesteps=timesteps, seed=seed)
    import torch

    from ..datasets.captioned import to_uint8

    rd = open_run(run_dir)
    cfg, s, model, ckpt_step = load_trained_model(rd)
    held = held_out_samples(s, cfg)
    if len(held) == 0:
        raise ConfigError(f"{run_dir}: the run kept no held-out samples (holdout = 0)")
    n = min(samples, len(held))
    x0 = held.images[:n]
    text = held.text[:n]
    text_len = held.text_len[:n].numpy()
    E = cfg.ffn.num_experts
    L = cfg.num_moe_layers
    g = cfg.input_size // cfg.patch_size
    ts = (np.arange(timesteps) + 0.5) / timesteps  # midpoints of a uniform grid on (0, 1)
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0.shape, generator=gen)
    ept = np.zeros((timesteps, L, n, g * g), dtype=np.int64)
    with torch.no_grad():
        for k, t in enumerate(ts):
            x_t = (1 - t) * x0 + t * eps
            model(x_t, torch.full((n,), float(t)), text)
            for li, st in enumerate(model.routing_stats()):
                ept[k, li] = st.experts_per_token.numpy()

    # per-token image features: detail = pixel std of the patch, foreground = non-white share
    p = cfg.patch_size
    patches = x0.unfold(2, p, p).unfold(3, p, p)  # (n, C, g, g, p, p)
    detail = patches.permute(0, 2, 3, 1, 4, 5).reshape(n, g * g, -1).std(-1).numpy()
    fg = (patches.permute(0, 2, 3, 1, 4, 5).reshape(n, g * g, -1, ) < DETAIL_BACKGROUND)
    foreground = fg.float().mean(-1).numpy()

    tok = ept.mean(axis=(0, 1))  # (n, S): experts per token, averaged over layers and timesteps
    per_sample_std = ept.astype(float).std(axis=3).mean(axis=(0, 1))  # (n,)
    per_sample_zero = (ept == 0).mean(axis=(0, 1, 3))
    per_sample_mean = ept.mean(axis=(0, 1, 3))
    result: dict[str, Any] = {
        "run": str(rd.path), "model": cfg.name, "checkpoint_step": ckpt_step,
        "routing": cfg.ffn.kind.value, "num_experts": E, "capacity_factor": cfg.ffn.capacity_factor,
        "routing_group_tokens": cfg.routing_group_tokens, "tokens_per_image": g * g,
        "samples": n, "timesteps": ts.tolist(), "moe_blocks": list(cfg.moe_block_indices),
        "by_layer": [{"block": int(b), **_layer_summary(ept[:, i], E)}
                     for i, b in enumerate(cfg.moe_block_indices)],
        "by_timestep": [{"t": float(t), **_layer_summary(ept[k], E)} for k, t in enumerate(ts)],
        "layer_timestep_std": ept.astype(float).std(axis=(2, 3)).T.tolist(),  # (L, K)
        "caption_length": {
            "note": "per sample; with one image per routing group the mean is f_c by "
                    "construction, so the spread of allocation is what can vary",
            "pearson_std": _pearson(text_len, per_sample_std),
            "spearman_std": _spearman(text_len, per_sample_std),
            "pearson_zero_share": _pearson(text_len, per_sample_zero),
            "pearson_mean": _pearson(text_len, per_sample_mean),
            "caption_tokens_mean": float(text_len.mean()),
        },
        "tokens": {
            "pearson_detail": _pearson(detail.reshape(-1), tok.reshape(-1)),
            "spearman_detail": _spearman(detail.reshape(-1), tok.reshape(-1)),
            "pearson_foreground": _pearson(foreground.reshape(-1), tok.reshape(-1)),
            "mean_experts_foreground": float(tok[foreground > 0.5].mean())
            if (foreground > 0.5).any() else None,
            "mean_experts_background": float(tok[foreground <= 0.5].mean())
            if (foreground <= 0.5).any() else None,
        },
    }
    out = out or rd.path / "adaptive"
    out.mkdir(parents=True, exist_ok=True)
    images = to_uint8(x0[: min(4, n)])
    mid = timesteps // 2
    result["plots"] = plot(out, images, ept, ts, cfg, held.captions[:n], mid)
    result["out"] = str(out)
    write_json(out / "summary.json", result)
    return result


def plot(out: Path, images: np.ndarray, ept: np.ndarray, ts: np.ndarray, cfg,
         captions: list[str], mid: int) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    E = cfg.ffn.num_experts
    g = cfg.input_size // cfg.patch_size
    paths = []
    # 1. each sample next to the experts its patches got (mean over MoE layers, middle t)
    k = len(images)
    fig, axes = plt.subplots(k, 2, figsize=(5.2, 2.5 * k), squeeze=False)
    for i in range(k):
        axes[i, 0].imshow(images[i])
        axes[i, 0].set_title(captions[i][:32], fontsize=8)
        heat = ept[mid, :, i].mean(axis=0).reshape(g, g)
        im = axes[i, 1].imshow(heat, cmap="magma", vmin=0, vmax=max(1.0, heat.max()))
        axes[i, 1].set_title(f"experts per patch (t={ts[mid]:.2f})", fontsize=8)
        fig.colorbar(im, ax=axes[i, 1], fraction=0.046)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    paths.append(_save(fig, out / "heatmap_samples.png"))
    # 2. spread of allocation by layer and timestep
    fig, ax = plt.subplots(figsize=(6, 3))
    std = ept.astype(float).std(axis=(2, 3)).T  # (L, K)
    im = ax.imshow(std, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(ts)), [f"{t:.2f}" for t in ts], fontsize=7)
    ax.set_yticks(range(std.shape[0]), [f"block {b}" for b in cfg.moe_block_indices], fontsize=7)
    ax.set_xlabel("timestep t (1 = noise)")
    ax.set_title("std of experts per token", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    paths.append(_save(fig, out / "layer_timestep_std.png"))
    # 3. histograms of experts per token, by timestep
    fig, ax = plt.subplots(figsize=(6, 3))
    for kk, t in enumerate(ts):
        hist = np.bincount(ept[kk].reshape(-1), minlength=E + 1)[: E + 1]
        ax.plot(range(E + 1), hist / hist.sum(), marker="o", ms=3, label=f"t={t:.2f}")
    ax.set_xlabel("experts per token")
    ax.set_ylabel("share of tokens")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    paths.append(_save(fig, out / "histograms.png"))
    return paths


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return str(path)
