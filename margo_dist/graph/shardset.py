"""Reading a shard set's manifest and owner arrays: what every reader of a set needs first.

A shard set (``margo-dist data partition``, ``graph/partition.py``) is a folder with a
``manifest.json`` (written last: a set is complete once it has one), the owner arrays
and one folder per shard. ``graph/partition.py`` writes sets and reads the shards'
graphs and feature rows; ``graph/field.py`` writes and reads each shard's receptive
field. Both read the manifest and owners through this module, so neither imports the
other to do it.
"""

from __future__ import annotations

import json

import numpy as np

from margo_dist.data import io as mio
from margo_dist.errors import DataError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def read_shard_manifest(url: str) -> dict:
    """The manifest of a shard set, checked for the fields this module reads."""
    path = mio.join(url, MANIFEST)
    try:
        with mio.open_url(path, "rt") as fh:
            man = json.load(fh)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: shard manifest not found; run `margo-dist data partition`") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(man, dict) or man.get("format_version") != FORMAT_VERSION:
        got = man.get("format_version") if isinstance(man, dict) else None
        raise DataError(f"{path}: format_version={got!r}, this code reads {FORMAT_VERSION}; "
                        "rerun `margo-dist data partition`")
    for key in ("parts", "graph_key", "n_users", "n_items", "modalities", "dgl_config", "relations", "widths",
                "owners", "files"):
        if key not in man:
            raise DataError(f"{path}: field {key!r} missing")
    return man


def check_part(man: dict, url: str, part: int) -> None:
    """Refuse a shard number the set at ``url`` (manifest ``man``) does not have."""
    parts = int(man["parts"])
    if isinstance(part, bool) or not isinstance(part, int) or not 0 <= part < parts:
        raise DataError(f"{mio.join(url, MANIFEST)}: shard {part!r} requested, the set has shards 0..{parts - 1}")


def load_owners(url: str) -> dict[str, np.ndarray]:
    """Shard id (int32) of every original user and item id of a shard set."""
    man = read_shard_manifest(url)
    out = {}
    for t, n in (("user", man["n_users"]), ("item", man["n_items"])):
        file_url = mio.join(url, man["owners"][t])
        arr = mio.load_npy(file_url)
        if arr.shape != (n,) or arr.dtype != np.int32:
            raise DataError(f"{file_url}: holds {arr.dtype}{list(arr.shape)}, expected int32[{n}]")
        out[t] = arr
    return out
