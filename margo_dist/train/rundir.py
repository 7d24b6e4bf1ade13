"""A run folder on any fsspec URL: config, metrics, summary, weights, checkpoints.

Every file is written to a temporary name and renamed, so a crash never leaves a
half-written checkpoint or summary as the latest one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import time
import warnings
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from margo_dist.config import Config, dump_yaml, load_config, to_dict
from margo_dist.data import io as mio
from margo_dist.data.synth import default_dataset_url
from margo_dist.dist.checkpoint import CHECKPOINT, SHARDS
from margo_dist.errors import MargoError
from margo_dist.precision import resolve as resolve_precision

CONFIG, METRICS, SUMMARY, WEIGHTS = "config.yaml", "metrics.jsonl", "summary.json", "item_weights.parquet"


def write_parquet(url: str, table: pa.Table) -> None:
    """``table`` as a Parquet file at ``url``, written atomically."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    with mio.atomic_write(url, "wb") as fh:
        fh.write(buf.getvalue().to_pybytes())


class RunDir:
    """Reads and writes the files of one run."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def path(self, name: str) -> str:
        return mio.join(self.url, name)

    def exists(self, name: str) -> bool:
        return mio.exists(self.path(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        with mio.atomic_write(self.path(name), "wb") as fh:
            fh.write(data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def read_text(self, name: str) -> str:
        if not self.exists(name):
            raise MargoError(f"{self.path(name)} does not exist: is {self.url} a margo-dist run folder?")
        with mio.open_url(self.path(name), "rt") as fh:
            return fh.read()

    def write_config(self, cfg: Config) -> None:
        self.write_text(CONFIG, dump_yaml(cfg))

    def load_config(self, overrides: list[str] | None = None) -> Config:
        if not self.exists(CONFIG):
            raise MargoError(f"{self.path(CONFIG)} does not exist: is {self.url} a margo-dist run folder?")
        return load_config(self.path(CONFIG), overrides)

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        self.write_text(METRICS, "".join(json.dumps(r) + "\n" for r in records))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.exists(METRICS):
            return []
        lines = self._text(METRICS).splitlines()
        return [self._json(METRICS, line, n) for n, line in enumerate(lines, 1) if line.strip()]

    def write_json(self, name: str, value: dict[str, Any]) -> None:
        self.write_text(name, json.dumps(value, indent=2, sort_keys=False))

    def read_json(self, name: str) -> dict[str, Any]:
        return self._json(name, self._text(name))

    def _text(self, name: str) -> str:
        """``read_text`` of a JSON file, whose bytes are not UTF-8 only when it was overwritten."""
        try:
            return self.read_text(name)
        except UnicodeDecodeError as exc:
            raise MargoError(f"{self.path(name)} is not text ({exc.reason} at byte {exc.start}): "
                             "it was overwritten; rerun the training with run.resume=false") from None

    def _json(self, name: str, text: str, line: int = 0) -> dict[str, Any]:
        """One JSON object of ``name`` (``line``: of a JSON-lines file); a cut-short or garbled one
        is a MargoError naming the file and line."""
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MargoError(f"{self.path(name)}, line {line or exc.lineno}: not valid JSON ({exc.msg}, column "
                             f"{exc.colno}): the file was cut short or overwritten; rerun the training with "
                             "run.resume=false") from None
        if not isinstance(value, dict):
            raise MargoError(f"{self.path(name)}, line {line or 1}: a JSON {type(value).__name__}, not an object")
        return value

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        self.write_bytes(name, buf.getvalue())

    def load_state(self, name: str) -> dict[str, Any]:
        """A ``torch.save`` dict of the run; a missing, cut-short or garbled file is a MargoError
        naming it and what to do (a checkpoint can be started afresh, a best state is lost)."""
        try:
            with mio.open_url(self.path(name), "rb") as fh:
                data = fh.read()
            state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except FileNotFoundError:
            problem = "does not exist"
        except OSError as exc:
            problem = f"cannot be read ({exc})"
        except Exception as exc:  # torch's errors for a bad file vary, and their texts are long and off the point
            problem = f"is cut short or not a saved state ({type(exc).__name__})"
        else:
            if isinstance(state, dict):
                return state
            problem = f"holds a {type(state).__name__}, not a saved state"
        if name.startswith("best_"):
            remedy = ("the run's trained state of that stage is lost; retrain it with run.resume=false "
                      "(the old contents are moved aside)")
        else:
            remedy = (f"set run.resume=false to start the run afresh (the old contents are moved aside), "
                      f"or delete {self.path(CHECKPOINT)}")
        raise MargoError(f"{self.path(name)} {problem}: {remedy}")

    def remove(self, name: str) -> None:
        """Delete ``name`` if it is there."""
        mio.remove(self.path(name), recursive=False)

    def write_item_weights(self, weights: np.ndarray, modalities: list[str],
                           raw_items: np.ndarray | None = None) -> None:
        """``item_weights.parquet``: item_id, then ``item`` (the dataset's raw id, where it has an
        id map), then one weight column per modality."""
        cols = {"item_id": pa.array(np.arange(weights.shape[0], dtype=np.int64))}
        if raw_items is not None:
            cols["item"] = pa.array(raw_items, pa.string())
        for m, name in enumerate(modalities):
            cols[name] = pa.array(weights[:, m].astype(np.float32))
        self.write_table(WEIGHTS, pa.table(cols))

    def write_table(self, name: str, table: pa.Table) -> None:
        write_parquet(self.path(name), table)

    def read_table(self, name: str) -> pa.Table:
        if not self.exists(name):
            raise MargoError(f"{self.path(name)} does not exist")
        with mio.open_url(self.path(name), "rb") as fh:
            return pq.read_table(fh)


# -- one experiment, one writer ------------------------------------------------------------

LOCK = "run.lock"

# keys that change where or how fast a run computes, not what: a rerun that differs only in
# these resumes. dist.*: N workers' checkpoint loads at any M, and an N-worker step equals the
# local step (tests/dist/test_contract.py); graph.shards and cache_dir only say where artefacts are,
# graph.chunk_rows how they are computed (none of the three is in the graph cache key either).
_NOT_IDENTITY = {"run.dir", "run.resume", "run.checkpoint_every", "run.plots", "train.progress", "train.threads",
                 "train.device", "train.eval_user_chunk", "sampler.num_workers", "graph.cache_dir", "graph.shards",
                 "graph.chunk_rows"}


def identity(cfg: Config) -> dict[str, Any]:
    """Every config key that changes a run's result, ``section.key`` -> value, paths absolute.

    ``data.path`` empty (the built-in dataset) is its folder, so a run that names the built-in
    dataset either way is the same experiment.
    """
    flat = {f"{section}.{key}": value for section, fields in to_dict(cfg).items() for key, value in fields.items()}
    out = {k: v for k, v in flat.items() if k not in _NOT_IDENTITY and not k.startswith("dist.")}
    out["data.path"] = mio.absolute(out["data.path"] or default_dataset_url())
    # auto is what it resolves to here (a run's config.yaml records the resolved value)
    out["train.precision"] = resolve_precision(cfg.train.precision, cfg.train.device)[0]
    out["graph.knn_precision"] = resolve_precision(cfg.graph.knn_precision, "cpu", "graph.knn_precision")[0]
    if out["run.pretrained"]:
        out["run.pretrained"] = mio.absolute(out["run.pretrained"])
    return out


def fingerprint(cfg: Config) -> str:
    """A short hash of :func:`identity`: the name of the experiment a run folder holds."""
    text = json.dumps(identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def identity_diff(old: Config, new: Config, where: str, prefixes: tuple[str, ...] = ("",)) -> str:
    """Every identity key (starting with one of ``prefixes``) whose values differ, both values
    named (``where``: whose the old one is); empty when none differ."""
    a, b = identity(old), identity(new)
    return "; ".join(f"{k}={a.get(k)!r} {where}, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
                     if k.startswith(prefixes) and a.get(k) != b.get(k))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class RunLock:
    """One writer per run folder: ``run.lock`` names the writing process (pid, host, start).

    On a local disk the lock is created with ``O_EXCL``, so two runs racing for a folder
    cannot both get it; a lock left by a dead process of this host is taken over with a
    warning. On an object store (``s3://``, ``gs://``) creation is check-then-write, so two
    runs started within the same second can both pass (docs/architecture.md).
    """

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.url = run.path(LOCK)
        self.mine = {"pid": os.getpid(), "host": socket.gethostname(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def acquire(self) -> None:
        """Take the lock or raise a :class:`MargoError` naming its holder."""
        try:
            mio.makedirs(self.run.url)
            for _ in range(2):
                if self._create():
                    return
                holder = self._holder()
                if holder.get("host") != self.mine["host"] or _alive(int(holder.get("pid", 0))):
                    raise MargoError(
                        f"run.dir={self.run.url} is in use by pid {holder.get('pid')} on {holder.get('host')} "
                        f"(since {holder.get('started')}): wait for that run, or choose another run.dir; if that "
                        f"process is gone, delete {self.url}")
                warnings.warn(f"{self.url}: pid {holder.get('pid')} that held this run folder is no longer "
                              f"running; taking the folder over", stacklevel=2)
                mio.remove(self.url, recursive=False)
        except PermissionError as exc:
            raise MargoError(f"run.dir={self.run.url} is not writable ({exc.strerror}): choose another run.dir"
                             ) from exc
        except (NotADirectoryError, FileExistsError) as exc:  # a file where a folder must be
            raise MargoError(f"run.dir={self.run.url} cannot be a folder ({exc.strerror}: {exc.filename}): "
                             f"choose another run.dir") from exc
        raise MargoError(f"run.dir={self.run.url}: another run took {self.url} while this one tried to")

    def _create(self) -> bool:
        text = json.dumps(self.mine)
        fs, path = mio.fs_and_path(self.url)
        if mio.is_local(fs):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            return True
        if fs.exists(path):
            return False
        self.run.write_text(LOCK, text)
        return True

    def _holder(self) -> dict[str, Any]:
        try:
            with mio.open_url(self.url, "rt") as fh:
                return dict(json.loads(fh.read()))
        except (OSError, ValueError, TypeError):
            return {"pid": 0, "host": self.mine["host"], "started": "unknown (unreadable lock)"}

    def release(self) -> None:
        """Remove the lock if it is still this process's."""
        if mio.exists(self.url) and self._holder().get("pid") == self.mine["pid"]:
            mio.remove(self.url, recursive=False)


def move_aside(run: RunDir) -> str | None:
    """Move everything in the run folder but its lock to a sibling ``<dir>.replaced-<time>``;
    returns that folder, or None when there was nothing to move."""
    entries = [e for e in mio.listdir(run.url) if e != LOCK] if mio.exists(run.url) else []
    if not entries:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = f"{run.url}.replaced-{stamp}"
    n = 1
    while mio.exists(dest):
        n += 1
        dest = f"{run.url}.replaced-{stamp}-{n}"
    mio.makedirs(dest)
    fs, _ = mio.fs_and_path(run.url)
    for name in entries:
        fs.mv(mio.fs_and_path(run.path(name))[1], mio.fs_and_path(mio.join(dest, name))[1], recursive=True)
    return dest


def _check_same_experiment(run: RunDir, cfg: Config) -> None:
    """Refuse a run folder whose outputs another experiment made (or nobody can say who)."""
    entries = mio.listdir(run.url) if mio.exists(run.url) else []
    outputs = [e for e in entries if e in (CHECKPOINT, SUMMARY, METRICS, SHARDS)
               or (e.startswith("best_") and e.endswith(".pt"))]
    if not outputs:
        return  # nothing trained yet (a user's own files, or a run that failed before its first epoch)
    if CONFIG not in entries:
        raise MargoError(f"run.dir={run.url} holds {', '.join(outputs)} but no {CONFIG}, so what made them is "
                         f"unknown: choose another run.dir, or set run.resume=false to move its contents aside")
    try:
        old = run.load_config()
    except MargoError as exc:
        raise MargoError(f"run.dir={run.url}: its {CONFIG} cannot be read ({exc}); choose another run.dir, or set "
                         f"run.resume=false to move its contents aside") from exc
    diff = identity_diff(old, cfg, "there")
    if diff:
        raise MargoError(f"run.dir={run.url} holds another experiment ({diff}): choose another "
                         f"run.dir, or set run.resume=false to start over (the old contents are moved aside)")


@contextlib.contextmanager
def claim(cfg: Config, log: Callable[[str], None] = print) -> Iterator[RunDir]:
    """Hold ``cfg.run.dir`` for one run: lock it, check it holds this experiment (or nothing),
    move an old experiment aside when ``run.resume`` is false, and record the config.

    Nothing in the folder is read or written before the lock is held and the identity checked.
    """
    run = RunDir(cfg.run.dir)
    lock = RunLock(run)
    lock.acquire()
    try:
        if cfg.run.resume:
            _check_same_experiment(run, cfg)
        else:
            moved = move_aside(run)
            if moved:
                log(f"run.resume=false: the previous contents of {run.url} are now in {moved}")
        run.write_config(cfg)  # the latest invocation's keys; the identity keys are the same
        log(f"run {run.url}: experiment {fingerprint(cfg)}")
        yield run
    finally:
        lock.release()
