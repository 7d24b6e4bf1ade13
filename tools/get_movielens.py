"""Fetch MovieLens-100k (RecBole's atomic files) for a real-data run of `margo-dist data prepare`.

The files come from the ``recbole`` wheel on the package index (``pip download``),
which carries ``ml-100k.inter`` (user_id, item_id, rating, timestamp) and
``ml-100k.item`` (item_id, movie_title, release_year, class). Nothing is installed
and nothing is added to git: the files land in ``--out`` (default ``data/raw/ml-100k``).

    python tools/get_movielens.py [--out DIR] [--keep-wheel]
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile

RECBOLE = "recbole==1.2.1"
MEMBERS = {
    "ml-100k.inter": "recbole/dataset_example/ml-100k/ml-100k.inter",
    "ml-100k.item": "recbole/dataset_example/ml-100k/ml-100k.item",
}
HEADERS = {
    "ml-100k.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float",
    "ml-100k.item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
}


def download_wheel(dest: str) -> str:
    """``pip download`` the recbole wheel (no dependencies) into ``dest``; its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", RECBOLE, "-d", dest]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed (exit {done.returncode}):\n{done.stderr.strip()}")
    wheels = glob.glob(os.path.join(dest, "recbole-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"error: expected one recbole wheel in {dest}, found {wheels}")
    return wheels[0]


def extract(wheel: str, out: str) -> list[str]:
    """Copy the two ml-100k files out of the wheel, each written under a temporary name first."""
    os.makedirs(out, exist_ok=True)
    written = []
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for name, member in MEMBERS.items():
            if member not in names:
                raise SystemExit(f"error: {wheel} has no member {member}")
            data = zf.read(member)
            header = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")
            if header != HEADERS[name]:
                raise SystemExit(f"error: {wheel}:{member}: header {header!r}, expected {HEADERS[name]!r}")
            target = os.path.join(out, name)
            tmp = f"{target}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
            written.append(target)
    return written


def dataset_dir(raw_dir: str) -> str:
    """Where the prepared dataset goes: data/raw/ml-100k -> data/ml-100k, else <raw_dir>-prepared."""
    raw_dir = os.path.normpath(raw_dir)
    parent = os.path.dirname(raw_dir)
    if os.path.basename(parent) == "raw":
        return os.path.join(os.path.dirname(parent), os.path.basename(raw_dir))
    return raw_dir + "-prepared"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join("data", "raw", "ml-100k"),
                        help="folder for ml-100k.inter and ml-100k.item (default: %(default)s)")
    parser.add_argument("--keep-wheel", action="store_true",
                        help="keep the downloaded recbole wheel in --out instead of deleting it")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="margo-recbole-") as tmp:
        wheel = download_wheel(tmp)
        files = extract(wheel, args.out)
        if args.keep_wheel:
            kept = os.path.join(args.out, os.path.basename(wheel))
            shutil.copy2(wheel, kept)
            files.append(kept)
    for f in files:
        print(f"wrote {f} ({os.path.getsize(f)} bytes)")
    inter, item = (shlex.quote(os.path.join(args.out, n)) for n in MEMBERS)
    print("\nnext:")
    print(f"  margo-dist data prepare --interactions {inter} --items {item} "
          f"--out {shlex.quote(dataset_dir(args.out))} --k-core 5 --seed 0 --format mmrec --text-encoder minilm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
