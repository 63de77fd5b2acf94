"""`ecdit-scale data ...`: a team's own images and captions, prepared once for the trainer.

torch, diffusers and transformers load inside the command only.
"""

from __future__ import annotations

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .common import app, console, err_console, print_json

data_app = typer.Typer(help="Prepare your own image-caption data for launch and sweep.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
def prepare_cmd(
    source: str = typer.Argument(...,
                                 help="An ImageFolder (metadata.jsonl or .txt side-cars), a "
                                      "WebDataset .tar, a brace pattern "
                                      "(shards/{000..009}.tar) or a folder of .tar shards."),
    out: str = typer.Option(..., "--out",
                            help="Folder to write (shards, manifest.json); "
                                 "rerun the same command to resume."),
    resolution: int = typer.Option(..., "--resolution",
                                   help="Image side R in pixels: shorter side "
                                        "resized to R, centre crop R x R."),
    vae: str | None = typer.Option(None, "--vae",
                                   help="A diffusers AutoencoderKL folder: store its "
                                        "latents x scaling factor (default: keep pixels)."),
    text_encoder: str | None = typer.Option(None, "--text-encoder",
                                            help="A sentence-transformers or transformers folder "
                                                 "(default: the bundled all-MiniLM-L6-v2)."),
    text_tokens: int = typer.Option(77, "--text-tokens",
                                    help="Tokens kept per caption (a card "
                                         "reads its own count, at most this)."),
    shard_size: int = typer.Option(1024, "--shard-size",
                                   help="Items per shard (the unit of resuming)."),
    device: str = typer.Option("auto", "--device",
                               help="auto, cpu or cuda: where the encoders run."),
    workers: int = typer.Option(1, "--workers",
                                help="Threads decoding and resizing images (the "
                                     "output is the same for any number)."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Resize, crop and encode images and captions into sharded arrays with a manifest."""
    from ..datasets.prepare import PrepareRequest, check_request, prepare

    req = PrepareRequest(source=source, out=out, resolution=resolution, vae=vae,
                         text_encoder=text_encoder, text_tokens=text_tokens,
                         shard_size=shard_size, device=device, workers=workers)
    check_request(req)  # before the bar: a refusal is its one line
    with Progress(TextColumn("preparing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=json_out) as bar:
        task = bar.add_task("items", total=None)
        result = prepare(req, progress=lambda done, total: bar.update(task, completed=done,
                                                                      total=total))
    if json_out:
        print_json(result.manifest)
        return
    render_manifest(result.manifest, str(result.out), result.shards_written, result.shards_kept)


def render_manifest(m: dict, out: str, written: int, kept: int) -> None:
    c, i = m["counts"], m["inputs"]
    t = Table(title=f"Prepared {out}")
    t.add_column("")
    t.add_column("value")
    t.add_row("source", f"{m['source']['kind']} {m['source']['spec']}")
    t.add_row("items", f"{c['prepared']:,} prepared of {c['source_items']:,}; "
                       f"{c['skipped']:,} skipped")
    for reason, n in sorted(c["skipped_by_reason"].items()):
        t.add_row("  skipped", f"{n:,} {reason}")
    t.add_row("model inputs", f"{i['array']} {i['channels']} x {i['size']} x {i['size']} "
                              f"{i['dtype']} (vae_downsample {i['vae_downsample']})")
    vae = m["vae"]
    t.add_row("VAE", "none (pixels)" if vae is None else
              f"{vae['name']} sha256 {vae['sha256'][:12]}, scaling {vae['scaling_factor']}")
    tx = m["text"]
    t.add_row("text encoder", f"{tx['name']} sha256 {tx['sha256'][:12]}, {tx['dim']}-d, "
                              f"<= {tx['stored_tokens_max']} tokens")
    t.add_row("shards", f"{len(m['shards'])} ({written} written now, {kept} from an earlier run)")
    console.print(t)
    for s in m["skipped"][:10]:
        console.print(f"skipped {s['key']}: {s['reason']}", highlight=False, markup=False)
    if len(m["skipped"]) > 10:
        console.print(f"... and {len(m['skipped']) - 10} more (manifest.json lists them all)",
                      highlight=False)
