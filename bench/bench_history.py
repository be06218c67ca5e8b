#!/usr/bin/env python
"""The history index at the sizes users have: importing an A1111 outputs folder (N pictures with A1111-format
infotext, written here first) and searching 50 000 rows.

    python bench/bench_history.py                 # 2 000 pictures imported, 50 000 rows searched
    python bench/bench_history.py --pictures 500 --rows 10000

Goals (issue 19): the 2 000-picture import ≤ 20 s on 2 cores, a search over 50 000 rows ≤ 50 ms.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WORDS = ("red blue green circle square cat dog castle forest portrait astronaut horse city night sunset "
         "mountain river painting photo detailed").split()
INFOTEXT = ("{prompt}\nNegative prompt: lowres, bad anatomy\nSteps: 20, Sampler: {sampler}, Schedule type: Karras, "
            "CFG scale: 7, Seed: {seed}, Size: 512x768, Model hash: 6ce0161689, Model: {model}, Version: v1.10.1")


def write_folder(root: Path, n: int, side: int) -> None:
    """`n` PNGs of side × 1.5 side noise (A1111's pictures compress little: ~3 bytes a pixel, as noise does)."""
    import numpy as np
    from PIL import Image, PngImagePlugin

    rng = random.Random(0)
    noise = np.random.default_rng(0).integers(0, 256, (side * 3 // 2, side, 3), dtype=np.uint8)
    for i in range(n):
        folder = root / "txt2img-images" / f"2024-0{1 + i % 9}-1{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", INFOTEXT.format(
            prompt=" ".join(rng.choice(WORDS) for _ in range(8)), sampler=rng.choice(["Euler a", "DPM++ 2M"]),
            seed=i, model=rng.choice(["v1-5-pruned-emaonly", "sd_xl_base_1.0"])))
        noise[0, 0] = (i % 256, i // 256 % 256, 0)  # every file different (its sha256 too)
        Image.fromarray(noise).save(folder / f"{i:05d}-{i}.png", pnginfo=info, compress_level=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pictures", type=int, default=2000)
    p.add_argument("--rows", type=int, default=50000)
    p.add_argument("--side", type=int, default=256, help="picture width (height 1.5x), noise")
    args = p.parse_args(argv)
    from modules.history import HistoryStore, Query, picture_row

    with tempfile.TemporaryDirectory(prefix="sdbench-history-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        write_folder(root / "outputs", args.pictures, args.side)
        size = sum(p.stat().st_size for p in (root / "outputs").rglob("*.png"))
        print(f"wrote {args.pictures} A1111 pictures ({args.side}x{args.side * 3 // 2} noise, {size / 2**20:.0f} MiB) "
              f"in {time.perf_counter() - t:.1f} s (not part of the import)")
        store = HistoryStore(root / "history.sqlite3", root / "outputs")
        t = time.perf_counter()
        counts = store.reconcile()
        took = time.perf_counter() - t
        print(f"import: {counts['imported']} pictures in {took:.1f} s ({counts['imported'] / took:.0f}/s; "
              f"goal: 2 000 in <= 20 s)")
        # grow to --rows with rows copied from the imported ones (their files need not exist for searching)
        template = picture_row(next(store.pictures_on_disk()), None)
        rng = random.Random(1)
        rows = []
        for i in range(args.rows - counts["imported"]):
            prompt = " ".join(rng.choice(WORDS) for _ in range(8))
            rows.append({**template, "path": f"{root}/virtual/{i:06d}.png", "prompt": prompt,
                         "infotext": INFOTEXT.format(prompt=prompt, sampler="Euler a", seed=i, model="m"),
                         "model": rng.choice(["v1-5-pruned-emaonly", "sd_xl_base_1.0"]), "seed": i})
            if len(rows) == 5000:
                store._insert(rows)
                rows = []
        if rows:
            store._insert(rows)
        total = store._reader().execute("SELECT count(*) FROM images").fetchone()[0]
        for label, query in (("full text 'red circle'", Query(q="red circle")),
                             ("full text + model filter", Query(q="castle night", model="sd_xl_base_1.0")),
                             ("newest page", Query()), ("starred", Query(starred=True)),
                             ("page 200 by cursor", Query(cursor=total - 200 * 50))):
            times = []
            for _ in range(7):
                t = time.perf_counter()
                items, _ = store.search(query)
                times.append(time.perf_counter() - t)
            print(f"search over {total} rows, {label:<26} median {statistics.median(times) * 1000:6.1f} ms "
                  f"({len(items)} items; goal <= 50 ms)")
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
