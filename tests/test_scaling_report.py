"""Scaling reports: Markdown + self-contained HTML whose every figure renders in a browser."""

import json
import math
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from ecdit_scale.scaling.fit import fit_run_table
from ecdit_scale.scaling.formulas import Interval
from ecdit_scale.scaling.report import ReportPaths, plain_answer, write_report
from ecdit_scale.scaling.results import Multiplier, ScalingFit

IMG_TAG = re.compile(r"<img\b[^>]*>")


def sweep_table(seed=0) -> pd.DataFrame:
    """Three kinds x 4 budgets x 3 sizes from a Chinchilla law; expert-choice gets 2x
    effective compute, token-choice 1.3x. Includes an alignment score."""
    rng = np.random.default_rng(seed)
    gains = {"dense": 1.0, "token-choice": 1.3, "expert-choice": 2.0}
    rows = []
    for kind, gain in gains.items():
        for b, compute_flops in enumerate(np.logspace(16, 19, 4)):
            for params in np.logspace(7, 8.5, 3) * 10 ** (b / 4):
                tokens = compute_flops / (6 * params)
                g = math.sqrt(gain)
                loss = (1.69 + 406.4 * (g * params) ** -0.34 + 410.7 * (g * tokens) ** -0.28)
                loss *= math.exp(rng.normal(0, 0.003))
                rows.append({"name": f"{kind}-b{b}-n{params:.1e}", "ffn_kind": kind,
                             "params": 8 * params, "active_params": params,
                             "images_seen": tokens / 256, "tokens_seen": tokens,
                             "compute_flops": compute_flops, "final_loss": loss * 1.01,
                             "smoothed_loss": loss, "budget": f"b{b}",
                             "alignment": min(1.0, 0.1 + 0.15 * b + 0.05 * gain)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def report(session_runs):
    """The report of a planted sweep, written once for all the workers (read only)."""
    def make(out_dir):
        df = sweep_table()
        fit = fit_run_table(df, n_boot=12, seed=0, extrapolate_to_flops=1e21)
        rng = np.random.default_rng(0)
        load = {"tiny-ec8": rng.poisson(64, size=8), "small-ec16": rng.poisson(32, size=16)}
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = write_report(df, fit, out_dir, title="Test sweep", expert_load=load)
        (out_dir.parent / "scaling-report.paths.json").write_text(json.dumps(paths.to_dict()))

    out_dir = session_runs.once("scaling-report", make)
    paths = json.loads((out_dir.parent / "scaling-report.paths.json").read_text())
    return out_dir, ReportPaths.from_dict(paths)


def test_report_writes_markdown_html_and_figures(report):
    out_dir, paths = report
    assert paths.markdown == out_dir / "report.md" and paths.html == out_dir / "report.html"
    names = {p.name for p in paths.figures}
    assert names == {"loss_vs_compute.png", "residuals.png", "held_out.png",
                     "compute_optimal.png", "expert_load.png", "alignment.png"}
    for p in paths.figures:
        assert p.parent == out_dir / "figures"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    leftovers = [p.name for p in out_dir.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_html_is_self_contained_with_one_embedded_image_per_figure(report):
    _, paths = report
    page = paths.html.read_text()
    tags = IMG_TAG.findall(page)
    assert len(tags) == len(paths.figures)
    ids = set()
    for tag in tags:
        assert 'src="data:image/png;base64,' in tag
        assert re.search(r'alt="[^"]+"', tag)
        ids.add(re.search(r'id="([^"]+)"', tag).group(1))
    assert len(ids) == len(tags)
    assert "http://" not in page and "https://" not in page


def test_markdown_has_constants_held_out_error_and_answer(report):
    _, paths = report
    md = paths.markdown.read_text()
    assert "## Held-out extrapolation error" in md
    assert "held-out extrapolation error = (predicted - actual) / actual" in md
    assert re.search(r"expert-choice reaches dense's loss with|between expert-choice and dense", md)
    assert "Measured on 1e+16–1e+19 FLOPs" in md
    assert "## Sensitivity" in md and "| final_loss, all budgets |" in md
    for kind in ("dense", "token-choice", "expert-choice"):
        assert re.search(rf"^\| {kind} \| \d+ \| \d+ \| ([\d.]+ \(|not identified)", md,
                         re.M), kind
    assert "| expert-choice over dense |" in md
    assert "| expert-choice over token-choice |" in md
    for name in ("loss_vs_compute", "held_out", "compute_optimal", "alignment"):
        assert f"](figures/{name}.png)" in md


def test_minimal_report_skips_missing_parts(tmp_path):
    df = sweep_table()
    df = df[(df["ffn_kind"] == "dense") & (df["budget"] != "b0")].drop(columns=["alignment"])
    df = df.groupby("budget").head(1)  # 3 runs: a power law, no Chinchilla, no held-out
    fit = fit_run_table(df, n_boot=5)
    paths = write_report(df, fit, tmp_path)
    assert {p.name for p in paths.figures} == {"loss_vs_compute.png", "residuals.png"}
    md = paths.markdown.read_text()
    assert "cannot be compared" in md
    assert "skipped Chinchilla" in md and "skipped held-out check" in md
    assert len(IMG_TAG.findall(paths.html.read_text())) == 2


def answer_for(value, lo, hi, note="") -> str:
    m = Multiplier(kind="expert-choice", baseline_kind="dense", loss=2.5,
                   reference_compute_flops=1e20, value=value,
                   interval=None if note else Interval(lo, hi), n_boot_used=100, note=note)
    fit = ScalingFit(loss_column="smoothed_loss", level=0.95, n_boot=100, seed=0,
                     kinds=("dense", "expert-choice"), max_compute_flops=1e20, multipliers=(m,))
    return plain_answer(fit)


def test_plain_answer_follows_the_interval():
    assert ("expert-choice reaches dense's loss with 2.10× less compute (95% CI 1.6–2.7)"
            in answer_for(2.1, 1.6, 2.7))
    assert "No detectable difference" in answer_for(1.4, 0.8, 2.2)
    assert "needs 2.00× more compute" in answer_for(0.5, 0.4, 0.7)
    assert "undefined" in answer_for(math.nan, 0, 0, note="undefined: loss below E")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="no chromium binary to render the HTML report")
def test_every_image_renders_in_headless_chromium(report, tmp_path):
    _, paths = report
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=3000", "--dump-dom", paths.html.resolve().as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    n_images = len(paths.figures)
    assert f'data-images-total="{n_images}"' in body
    assert f'data-images-loaded="{n_images}"' in body


def test_isoflop_size_axis_is_labelled_short_and_once_per_tick():
    """A span under two decades of sizes: labels 100K, 200K, 500K, 1M on the major ticks and
    none on the minor ones (matplotlib's own "n x 10^k" minor labels overlapped)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    from ecdit_scale.scaling.report_headline import _short_count_ticks

    ax = Figure().subplots()
    ax.plot([8e4, 9.8e5], [1, 2])
    ax.set_xscale("log")
    _short_count_ticks(ax.xaxis)
    fmt = ax.xaxis.get_major_formatter()
    assert [fmt(x, 0) for x in (1e5, 2e5, 5e5, 1e6, 50)] == ["100K", "200K", "500K", "1M", "50"]
    assert isinstance(ax.xaxis.get_minor_formatter(), NullFormatter)
