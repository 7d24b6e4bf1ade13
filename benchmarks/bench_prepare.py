"""Wall time and peak memory of ``data prepare`` on an Amazon 2018 dump at category scale.

A synthetic dump in the published 2018 layout is written for each scale: reviews
(``<Cat>_5.json.gz``, every record with the 2018 keys, some with ``vote``/``style``),
metadata (``meta_<Cat>.json.gz``; a tenth of the items with an empty ``image`` list, a
fiftieth with no metadata line at all) and McAuley's ``.b`` image features for the
items that have an image (plus ASINs of other items, as in the real file). Scale 1 is
Amazon Electronics 5-core (192,403 users, 63,001 items, 1,689,188 reviews); scale 10
multiplies all three.

Each ``prepare`` runs in a fresh process, which reports its own wall time (until the
output is on disk: ``os.sync``) and peak RSS (``getrusage``), so one run's peak cannot
hide another's; the dump is synced and dropped from the page cache before the clock starts
(it is read from disk at every scale). The table ends with the
10x/1x ratio of time and memory for each encoder (the targets: Electronics in at most
3 minutes and 4 GB with the hash encoder; 10x at most linear in time, under 12 GB).

    python benchmarks/bench_prepare.py                          # scales 1 and 10, hash encoder
    python benchmarks/bench_prepare.py --repeat 3               # the median of three runs each (the disk varies)
    python benchmarks/bench_prepare.py --scales 1 --encoders hash,minilm
    python benchmarks/bench_prepare.py --scales 0.002,0.004          # seconds (the smoke test)
    python benchmarks/bench_prepare.py --work W --keep [--reuse]     # keep the dumps; reuse them next time
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from margo_dist.data.dumps import IMAGE_DIM

ELECTRONICS = dict(users=192_403, items=63_001, reviews=1_689_188)
NO_IMAGE_EVERY = 10  # items with an empty image list (and no .b record)
NO_META_EVERY = 50  # items with no metadata line (they keep an image)
FOREIGN_FRAC = 0.05  # .b records of ASINs that have no review
CHUNK = 100_000  # lines formatted at a time
WORDS = ("cable charger battery screen sound quality price works great fast small light case "
         "remote signal power adapter speaker volume bass wireless bluetooth port plug cord "
         "fits easy setup return broke month year good bad cheap solid sturdy clear bright").split()


@dataclass
class Dump:
    reviews: str
    meta: str
    images: str
    users: int
    items: int
    lines: int
    gz_mb: float


def _texts(rng: np.random.Generator, n: int, words: int) -> list[str]:
    picks = rng.integers(0, len(WORDS), size=(n, words))
    return [" ".join(WORDS[k] for k in row).capitalize() + "." for row in picks]


def _user(u: int) -> str:
    return f"A{u:013X}"


def _asin(i: int) -> str:
    return f"B{i:09d}"


def write_dump(scale: float, folder: str, seed: int = 0) -> Dump:
    """Write reviews, metadata and .b image features of ``scale`` x Electronics into ``folder``."""
    rng = np.random.default_rng(seed)
    n_users = max(int(round(ELECTRONICS["users"] * scale)), 10)
    n_items = max(int(round(ELECTRONICS["items"] * scale)), 10)
    n_reviews = max(int(round(ELECTRONICS["reviews"] * scale)), 5 * max(n_users, n_items))
    # every user and item at least 5 reviews (a 5-core dump), the rest skewed as in the real data
    extra = n_reviews - 5 * n_users
    users = np.repeat(np.arange(n_users), 5 + np.bincount(
        rng.choice(n_users, extra, p=_skew(rng, n_users, 1.2)), minlength=n_users))
    extra = n_reviews - 5 * n_items
    items = np.concatenate([np.repeat(np.arange(n_items), 5), rng.choice(n_items, extra, p=_skew(rng, n_items, 0.8))])
    rng.shuffle(items)
    rating = rng.integers(1, 6, size=n_reviews)
    stamp = rng.integers(1_262_304_000, 1_538_352_000, size=n_reviews)
    texts = _texts(rng, 512, 40)
    summaries = _texts(rng, 64, 4)
    text_pick = rng.integers(0, len(texts), size=n_reviews)

    reviews = os.path.join(folder, "Electronics_5.json.gz")
    with gzip.open(reviews, "wt", encoding="utf-8", compresslevel=1) as fh:
        for lo in range(0, n_reviews, CHUNK):
            out = []
            for r in range(lo, min(lo + CHUNK, n_reviews)):
                ts = int(stamp[r])
                day = time.gmtime(ts)
                extra_keys = (f'"vote": "{r % 40 + 2}", "style": {{"Format:": " Cable"}}, '
                              if r % 7 == 0 else "")
                out.append(f'{{"overall": {float(rating[r])}, "verified": {"true" if r % 3 else "false"}, '
                           f'"reviewTime": "{day.tm_mon:02d} {day.tm_mday}, {day.tm_year}", '
                           f'"reviewerID": "{_user(int(users[r]))}", "asin": "{_asin(int(items[r]))}", '
                           f'{extra_keys}"reviewerName": "Pat R.", "reviewText": "{texts[text_pick[r]]}", '
                           f'"summary": "{summaries[r % len(summaries)]}", "unixReviewTime": {ts}}}\n')
            fh.writelines(out)

    meta = os.path.join(folder, "meta_Electronics.json.gz")
    descriptions = _texts(rng, 256, 30)
    with gzip.open(meta, "wt", encoding="utf-8", compresslevel=1) as fh:
        for i in range(n_items):
            if i % NO_META_EVERY == 1:
                continue
            image = [] if i % NO_IMAGE_EVERY == 0 else [f"https://images-na.ssl-images-amazon.com/{i}.jpg"]
            fh.write(json.dumps({
                "category": ["Electronics", "Accessories", WORDS[i % len(WORDS)]], "tech1": "",
                "description": [descriptions[i % len(descriptions)]], "fit": "", "title": f"Item {i} {WORDS[i % 7]}",
                "also_buy": [_asin((i + 1) % n_items)], "image": image, "tech2": "", "brand": f"Brand{i % 97}",
                "feature": [WORDS[i % 11], WORDS[i % 13]], "rank": f"{i} in Electronics", "also_view": [],
                "main_cat": "All Electronics", "price": "$9.99", "asin": _asin(i), "details": {}}) + "\n")

    images = os.path.join(folder, "image_features_Electronics.b")
    with_image = np.flatnonzero(np.arange(n_items) % NO_IMAGE_EVERY != 0)
    foreign = n_items + np.arange(int(len(with_image) * FOREIGN_FRAC))
    order = rng.permutation(np.concatenate([with_image, foreign]))
    rec = np.dtype([("asin", "S10"), ("feature", "<f4", (IMAGE_DIM,))])
    base = rng.random((64, IMAGE_DIM), dtype=np.float32)
    with open(images, "wb") as fh:
        for lo in range(0, len(order), 256):
            ids = order[lo:lo + 256]
            chunk = np.empty(len(ids), dtype=rec)
            chunk["asin"] = [_asin(int(i)).encode("ascii") for i in ids]
            chunk["feature"] = base[ids % 64] + (ids[:, None] % 1000).astype(np.float32) / 1000
            fh.write(chunk.tobytes())
    gz_mb = (os.path.getsize(reviews) + os.path.getsize(meta)) / 2**20
    return Dump(reviews, meta, images, n_users, n_items, n_reviews, gz_mb)


def _skew(rng: np.random.Generator, n: int, power: float) -> np.ndarray:
    w = 1.0 / (rng.permutation(n) + 10.0) ** power
    return w / w.sum()


def evict(paths: list[str]) -> None:
    """Drop ``paths`` from the page cache (``posix_fadvise`` DONTNEED after an fsync), so that
    prepare reads them from disk at every scale: a 1 GB dump written a moment ago would
    otherwise be read from memory while a 10 GB one (past this host's cache) comes off the
    disk, and the ratio would compare the two. A downloaded dump is on disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(args: list[str]) -> dict:
    """Run ``data prepare`` in a fresh process; its wall time and peak RSS."""
    # the clock stops when the folder is on disk (os.sync): a 1 GB output would otherwise still
    # sit in the page cache while a 10 GB one waits for the disk, and the ratio would compare them
    code = ("import json, os, resource, sys, time\n"
            "from margo_dist.cli import main\n"
            "t = time.perf_counter()\n"
            "rc = main(sys.argv[1:])\n"
            "os.sync()\n"
            "print(json.dumps({'rc': rc or 0, 'seconds': time.perf_counter() - t, "
            "'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if proc.returncode != 0 or '"rc": 0' not in proc.stdout:
        raise SystemExit(f"data prepare failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _kept(out: str, fmt: str) -> int:
    """Interactions in the prepared folder."""
    if fmt == "parquet":
        import pyarrow.parquet as pq
        return pq.ParquetFile(os.path.join(out, "interactions.parquet")).metadata.num_rows
    (inter,) = [e for e in os.listdir(out) if e.endswith(".inter")]
    with open(os.path.join(out, inter), "rb") as fh:
        return sum(1 for _ in fh) - 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", default="1,10", help="comma-separated multiples of Electronics 5-core")
    ap.add_argument("--encoders", default="hash", help="comma-separated text encoders: hash, minilm")
    ap.add_argument("--format", default="mmrec", choices=("mmrec", "parquet"))
    ap.add_argument("--work", default="", help="folder for the dumps and outputs (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the dumps and prepared folders")
    ap.add_argument("--repeat", type=int, default=1, help="prepare runs per scale and encoder (the median is compared)")
    ap.add_argument("--reuse", action="store_true",
                    help="with --work and --keep: read the dumps a previous run left there instead of writing them")
    a = ap.parse_args(argv)
    if a.repeat < 1:
        ap.error(f"--repeat {a.repeat}: at least 1")
    scales = [float(s) for s in a.scales.split(",")]
    encoders = a.encoders.split(",")
    work = a.work or tempfile.mkdtemp(prefix="bench_prepare_")
    os.makedirs(work, exist_ok=True)
    rows = []
    try:
        for scale in scales:
            folder = os.path.join(work, f"x{scale:g}")
            os.makedirs(folder, exist_ok=True)
            record = os.path.join(folder, "dump.json")
            t = time.perf_counter()
            if a.reuse and os.path.exists(record):
                with open(record) as fh:
                    dump = Dump(**json.load(fh))
                verb = "reused"
            else:
                dump = write_dump(scale, folder)
                os.sync()  # the dump's own writing does not spill into prepare's time
                with open(record, "w") as fh:  # written last: a dump cut short has none
                    json.dump(dump.__dict__, fh)
                verb = "wrote"
            print(f"[bench] x{scale:g}: {verb} {dump.lines} reviews, {dump.users} users, {dump.items} items "
                  f"({dump.gz_mb:.0f} MB gzip, images {os.path.getsize(dump.images) / 2**20:.0f} MB) "
                  f"in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
            for enc in encoders:
                out = os.path.join(folder, f"out-{enc}")
                runs = []
                for _ in range(a.repeat):
                    shutil.rmtree(out, ignore_errors=True)  # the previous run's output: not timed
                    os.sync()
                    evict([dump.reviews, dump.meta, dump.images])
                    runs.append(measure(["data", "prepare", "--interactions", dump.reviews, "--items", dump.meta,
                                         "--images", dump.images, "--out", out, "--text-encoder", enc,
                                         "--format", a.format]))
                    print(f"[bench] x{scale:g} {enc}: {runs[-1]['seconds']:.1f} s, peak {runs[-1]['peak_mb']:.0f} MB",
                          file=sys.stderr, flush=True)
                seconds = sorted(r["seconds"] for r in runs)
                rows.append(dict(scale=scale, encoder=enc, reviews=dump.lines, interactions=_kept(out, a.format),
                                 seconds=float(np.median(seconds)), runs=seconds,
                                 peak_mb=max(r["peak_mb"] for r in runs)))
                if not a.keep:
                    shutil.rmtree(out)
            if not a.keep:
                shutil.rmtree(folder)
    finally:
        if not a.keep and not a.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\ndata prepare on a synthetic Amazon 2018 dump (format {a.format}, "
          f"{os.cpu_count()} CPUs)")
    print(f"{'scale':>6} {'encoder':>8} {'reviews':>11} {'kept':>11} {'seconds':>9} {'peak MB':>9}  runs (seconds: "
          f"until the dataset is on disk; the median of {a.repeat})")
    for r in rows:
        print(f"{r['scale']:>6g} {r['encoder']:>8} {r['reviews']:>11,} {r['interactions']:>11,} {r['seconds']:>9.1f} "
              f"{r['peak_mb']:>9.0f}  {' '.join(f'{x:.1f}' for x in r['runs'])}")
    for enc in encoders:
        mine = sorted((r for r in rows if r["encoder"] == enc), key=lambda r: r["scale"])
        if len(mine) >= 2:
            lo, hi = mine[0], mine[-1]
            k = hi["scale"] / lo["scale"]
            print(f"{enc}: x{hi['scale']:g}/x{lo['scale']:g} time ratio {hi['seconds'] / lo['seconds']:.2f} "
                  f"(linear: {k:g}), peak ratio {hi['peak_mb'] / lo['peak_mb']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
