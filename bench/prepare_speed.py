"""How long `data prepare` takes for 10,000 images at 32 x 32 with the bundled text encoder
(issue 21: <= 2 minutes on two cores), against that budget.

The source is made first and not timed: N shape scenes (``datasets.shapes``, GenEval-style
compositional captions) rendered at 64 x 64, so that every image is decoded, resized and
cropped, saved as PNG in an ImageFolder with a metadata.jsonl. Each caption ends with its
item number ("..., image 17"), so that all are distinct as in a real corpus and the text
encoder runs once per item (``--shared-captions``: the scenes' own captions, 2,772 at most,
which the preparation encodes once each). Then one
`prepare` into a new folder is timed end to end (loading MiniLM, hashing it, decoding,
encoding the captions, writing the shards and the manifest), and a second call on the
finished folder (what a resumed run pays before it finds nothing to do).

    python bench/prepare_speed.py [--items 10000] [--resolution 32] [--keep DIR]

Prints the times, items per second and the ratio to the 120 s budget. Times depend on what
else the machine runs: say so when you quote them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUDGET_S = 120.0
SOURCE_SIZE = 64  # rendered pixels per side: the preparation resizes to --resolution


def make_source(folder: Path, n: int, *, distinct: bool, seed: int = 0) -> None:
    from PIL import Image

    from ecdit_scale.datasets.shapes import make_shapes

    folder.mkdir(parents=True)
    rows = []
    for start in range(0, n, 1000):
        pixels, specs = make_shapes(min(1000, n - start), SOURCE_SIZE, seed + start)
        for j, (px, spec) in enumerate(zip(pixels, specs, strict=True)):
            name = f"{start + j:06d}.png"
            Image.fromarray(px).save(folder / name, compress_level=1)
            caption = f"{spec.caption}, image {start + j}" if distinct else spec.caption
            rows.append(json.dumps({"file_name": name, "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--shared-captions", action="store_true",
                    help="The scenes' own captions (repeated), not one distinct caption per item.")
    ap.add_argument("--keep", default=None, help="Keep the source and output under this folder.")
    args = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from ecdit_scale.datasets.prepare import PrepareRequest, prepare

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="prepare-speed-"))
    try:
        t0 = time.perf_counter()
        make_source(work / "source", args.items, distinct=not args.shared_captions)
        made_s = time.perf_counter() - t0
        req = PrepareRequest(source=str(work / "source"), out=str(work / "prepared"),
                             resolution=args.resolution, device="cpu")
        t0, c0 = time.perf_counter(), time.process_time()
        result = prepare(req)
        prep_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        again = prepare(req)
        again_s = time.perf_counter() - t0
        c = result.manifest["counts"]
        size = sum(f.stat().st_size for f in (work / "prepared").rglob("*") if f.is_file())
        print(f"source: {args.items:,} PNGs {SOURCE_SIZE}x{SOURCE_SIZE}, "
              f"{'shared' if args.shared_captions else 'distinct'} captions, made in "
              f"{made_s:.1f} s (not timed)")
        print(f"prepare -> {args.resolution}x{args.resolution} pixels + MiniLM tokens: "
              f"{prep_s:.1f} s, {c['prepared'] / prep_s:,.0f} items/s, {c['prepared']:,} items, "
              f"{len(result.manifest['shards'])} shards, {size / 2**20:.1f} MiB, "
              f"cpu threads {os.cpu_count()}")
        print(f"ratio to the {BUDGET_S:.0f} s budget: {prep_s / BUDGET_S:.2f} "
              f"({'within' if prep_s <= BUDGET_S else 'OVER'}); CPU time of this process "
              f"{cpu_s:.1f} s = {cpu_s / prep_s:.2f} of {os.cpu_count()} cores on average"
              + (" (others were busy: the machine was shared)"
                 if cpu_s / prep_s < 0.5 * (os.cpu_count() or 1) else ""))
        print(f"rerun on the finished folder: {again_s:.1f} s ({again.shards_written} shards "
              "written)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
