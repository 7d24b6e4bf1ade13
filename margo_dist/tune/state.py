"""Tune's saved experiment state, kept whole across a killed driver.

Tune saves its state files after every step of its loop and copies them to the storage
folder in place; a driver killed during that copy leaves a file cut short, which
``Tuner.restore`` cannot read. :func:`keep_state` keeps the last complete copy of each
file (a Tune callback, :func:`state_keeper`, calls it), and :func:`mend_state` puts it
back before a restore. Apart from the search itself (:mod:`margo_dist.tune.search`).
"""

from __future__ import annotations

import json
import os
import pickletools
from typing import Any, Callable

from margo_dist.data import io as mio

# Tune's files that a restore reads: its trial states (JSON) and the search algorithm's (a pickle)
STATE_GLOBS = ("experiment_state-*.json", "basic-variant-state-*.json")
KEPT = ".state-kept"  # the last complete copy of each state file (a hidden folder Tune does not list)


def _whole(body: bytes, name: str) -> bool:
    """Whether a state file's bytes are complete: a copy cut short by a kill is not.

    The pickle is walked opcode by opcode to its STOP, never loaded.
    """
    try:
        if name.startswith("experiment_state-"):
            json.loads(body)
            return True
        ops = list(pickletools.genops(body))
    except (ValueError, UnicodeDecodeError, EOFError):
        return False
    return bool(ops) and ops[-1][0].name == "STOP"


def _read(url: str) -> bytes | None:
    try:
        with mio.open_url(url, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def _state_files(path: str) -> list[str]:
    fs, root = mio.fs_and_path(path)
    return sorted(os.path.basename(n) for pattern in STATE_GLOBS for n in fs.glob(f"{root}/{pattern}"))


def keep_state(path: str, seen: dict[str, tuple[float, int]] | None = None) -> None:
    """Copy each complete state file of the phase folder ``path`` into ``path/.state-kept``.

    Tune writes its state files in the driver's staging folder and copies them to the
    storage folder in the background, in place: a driver killed during that copy leaves
    a cut-off file, which ``Tuner.restore`` cannot read. The kept copy, written by
    rename, is what :func:`mend_state` puts back. ``seen`` (name -> mtime, size) skips
    files that have not changed since the last call.
    """
    for base in _state_files(path):
        fs, name = mio.fs_and_path(f"{path}/{base}")
        info = fs.info(name)
        stamp = (float(info.get("mtime", 0.0)), int(info["size"]))
        if seen is not None and seen.get(base) == stamp:
            continue
        body = _read(f"{path}/{base}")
        if body is None or not _whole(body, base):  # being copied right now; a later call keeps it
            continue
        with mio.atomic_write(f"{path}/{KEPT}/{base}") as out:
            out.write(body)
        if seen is not None:
            seen[base] = stamp


def mend_state(path: str, log: Callable[[str], None] = print) -> None:
    """Before a restore: put the kept copy back over a state file a kill cut short.

    A cut-off file with no complete kept copy is moved aside (``.unreadable``) so that
    Tune restores from an older complete one, or starts the phase again when there is
    none. The kept copy may be one step older than the cut-off file: a trial that had
    just finished then runs again, finds its run folder complete and reports its result
    without training (``margo_dist.tune.search.run_trial``).
    """
    if not mio.exists(path):
        return
    for base in _state_files(path):
        url = f"{path}/{base}"
        body = _read(url)
        if body is not None and _whole(body, base):
            continue
        kept = _read(f"{path}/{KEPT}/{base}") if mio.exists(f"{path}/{KEPT}/{base}") else None
        if kept is not None and _whole(kept, base):
            with mio.atomic_write(url) as out:
                out.write(kept)
            log(f"search: {url} was cut short (the driver was killed while Tune saved it); "
                f"using the last complete copy")
        else:
            fs, name = mio.fs_and_path(url)
            fs.mv(name, f"{name}.unreadable")
            log(f"search: {url} cannot be read and has no complete copy; moved aside to {url}.unreadable")


def state_keeper(path: str) -> Any:
    """A Tune callback that runs :func:`keep_state` after each step of Tune's loop."""
    from ray import tune

    class StateKeeper(tune.Callback):
        def __init__(self) -> None:
            self.seen: dict[str, tuple[float, int]] = {}

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            keep_state(path, self.seen)

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            keep_state(path, self.seen)

    return StateKeeper()
