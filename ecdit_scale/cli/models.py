"""`ecdit-scale models ...`: the size ladder, one config in detail, and the checked-in cards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from .. import sizes
from ..config import FFNKind
from ..errors import ConfigError
from ..params import count_params
from ..planner.cards import card_dict, export_cards, load_card_or_name
from ..units import format_count
from .common import app, choices, console, print_json

models_app = typer.Typer(help="Named EC-DiT configs, exact parameter counts, model cards.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")

DEFAULT_CARDS_DIR = Path("models")


def _row(cfg) -> dict[str, Any]:
    b = count_params(cfg)
    return {"name": cfg.name, "family": cfg.family, "ffn_kind": cfg.ffn.kind.value,
            "experts": cfg.ffn.num_experts, "total_params": b.total_params,
            "active_params": b.active_params, "model_params": b.model_params}


@models_app.command("list")
def list_models(
    family: str | None = typer.Option(None,
                                      metavar=choices(sorted({c.family
                                                              for c in sizes.REGISTRY.values()})),
                                      help="Only this family."),
    kind: str | None = typer.Option(None, metavar=choices(FFNKind), help="Only this FFN kind."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON array instead of a table."),
) -> None:
    """All named sizes with total and activated parameters."""
    families = sorted({c.family for c in sizes.REGISTRY.values()})
    if family is not None and family not in families:
        raise ConfigError(f"--family {family!r}: valid families are {', '.join(families)}")
    if kind is not None:
        kind = FFNKind(kind) if kind in {k.value for k in FFNKind} else _bad_kind(kind)
    rows = [_row(c) for c in sizes.REGISTRY.values()
            if (family is None or c.family == family) and (kind is None or c.ffn.kind is kind)]
    if json_out:
        print_json(rows)
        return
    table = Table(title=f"EC-DiT model ladder ({len(rows)} configs)")
    for col, just in (("name", "left"), ("family", "left"), ("FFN", "left"),
                      ("experts", "right"), ("total", "right"), ("activated", "right")):
        table.add_column(col, justify=just)
    for r in rows:
        table.add_row(r["name"], r["family"], r["ffn_kind"], str(r["experts"]),
                      format_count(r["total_params"]), format_count(r["active_params"]))
    console.print(table)
    console.print("Totals include the frozen text encoder where the config counts it "
                  "(ec-dit family: 0.67B, as the paper does).", style="dim")


def _bad_kind(kind: str):
    raise ConfigError(f"--kind {kind!r}: valid kinds are {', '.join(k.value for k in FFNKind)}")


@models_app.command("show")
def show(
    name: str | None = typer.Argument(None, help="A model name or a path to a YAML card."),
    params: str | None = typer.Option(None, "--params",
                                      help="Resolve a parameter target instead, e.g. 97B."),
    active: bool = typer.Option(False, "--active", help="--params counts activated parameters."),
    kind: str = typer.Option("expert-choice", metavar=choices(FFNKind),
                             help="FFN kind for --params."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One config: its fields, exact parameter breakdown and FLOPs per image."""
    if (name is None) == (params is None):
        raise ConfigError("give either a model NAME|PATH or --params TARGET (e.g. 97B), not both")
    resolved = None
    if params is not None:
        if kind not in {k.value for k in FFNKind}:
            _bad_kind(kind)
        resolved = sizes.resolve(params, active=active, kind=kind)
        cfg = resolved.config
    else:
        cfg = load_card_or_name(name)
    card = card_dict(cfg)
    if resolved is not None:
        card["resolved"] = {"target": resolved.target, "active": resolved.active,
                            "synthesised": resolved.synthesised, "achieved": resolved.achieved,
                            "relative_error": resolved.relative_error}
    if json_out:
        print_json(card)
        return
    _print_card(card)


def _print_card(card: dict[str, Any]) -> None:
    s = card["summary"]
    head = Table(title=escape(card["name"]), show_header=False)
    head.add_column("field")
    head.add_column("value")
    for key in ("family", "hidden_size", "depth", "num_heads", "num_kv_heads", "patch_size",
                "input_size", "in_channels", "conditioning", "adaln"):
        head.add_row(key, escape(str(card[key])))
    ffn = card["ffn"]
    head.add_row("ffn", ", ".join(f"{k}={v}" for k, v in ffn.items()))
    head.add_row("image tokens", str(s["tokens_per_image"]))
    if ffn["kind"] != "dense":
        head.add_row("MoE layers", f"{s['num_moe_layers']} (blocks {s['moe_blocks']})")
        head.add_row("capacity per expert", f"{s['expert_capacity']} tokens per routing group "
                     f"of {s['routing_group_tokens']}")
    if "resolved" in card:
        r = card["resolved"]
        how = "synthesised" if r["synthesised"] else "named config"
        head.add_row("resolved", f"{how}: {format_count(r['achieved'])} for target "
                     f"{format_count(r['target'])} ({r['relative_error']:+.2%})")
    console.print(head)
    p = s["params"]
    table = Table(title="parameters (exact)")
    table.add_column("component")
    table.add_column("params", justify="right")
    for key in ("embedders", "self_attention", "cross_attention", "ffn", "experts", "router",
                "adaln", "output_head", "text_encoder"):
        label = key + ("" if key != "text_encoder" or p["text_encoder_counted"]
                       else " (not counted)")
        table.add_row(label, f"{p[key]:,}")
    table.add_row("total", f"{p['total_params']:,}", style="bold")
    table.add_row("activated per token", f"{p['active_params']:,}", style="bold")
    console.print(table)
    if "flops_per_image" in card:
        f = card["flops_per_image"]
        console.print(f"FLOPs per image (2 per MAC): forward {f['forward']:.4g}, backward "
                      f"{f['backward']:.4g}; forward MACs {f['forward_macs']:.4g} (DiT's 'Gflops' "
                      f"= {f['forward_macs'] / 1e9:.4g})")
    if s.get("reported_total"):
        console.print(f"paper reports {format_count(s['reported_total'])} total: "
                      f"{s['reported_total_error']:+.2%} here")
    if card.get("notes"):
        console.print(escape(card["notes"]), style="dim", highlight=False)


@models_app.command("export")
def export(
    out: str = typer.Option(str(DEFAULT_CARDS_DIR), "--out",
                            help="Folder for the YAML cards (it appears "
                                 "whole; files you put there stay)."),
    check: bool = typer.Option(False, "--check", help="Only report stale or missing cards."),
    json_out: bool = typer.Option(False, "--json",
                                  help="Print the cards written, unchanged, "
                                       "removed (or stale) as JSON."),
) -> None:
    """Write one YAML card per named size (the checked-in models/ folder)."""
    result = export_cards(out, check=check)
    if check and result.stale:
        raise ConfigError(f"{len(result.stale)} stale card(s) in {out}: "
                          f"{', '.join(result.stale[:5])}; run `ecdit-scale models export`")
    if json_out:
        print_json({"out": out, **result.to_dict()})
        return
    if check:
        console.print(f"{len(result.written) + len(result.unchanged)} cards up to date in "
                      f"{escape(out)}")
        return
    console.print(f"wrote {len(result.written)} card(s), {len(result.unchanged)} unchanged, "
                  f"{len(result.removed)} removed in {escape(out)}")
