"""fsspec helpers: every file the system reads or writes goes through these.

A URL is a local path, ``memory://...`` or any protocol whose fsspec package is
installed (``s3://`` with s3fs, ...). Writes of final artefacts go to a temporary
name first and are renamed, so a crash never leaves a half-written file in place.
"""

from __future__ import annotations

import contextlib
import os
import io
import posixpath
import shutil
import uuid
from typing import IO, Any, Callable, Iterator

import fsspec
import numpy as np

from margo_dist.errors import DataError


def fs_and_path(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for ``url`` and the path within it."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL (``/`` separated, protocol kept)."""
    if "://" in url:
        proto, rest = url.split("://", 1)
        return f"{proto}://{posixpath.join(rest, *parts)}"
    return posixpath.join(url, *parts)


def absolute(url: str) -> str:
    """``url`` with a local path made absolute (other processes may start elsewhere)."""
    return url if "://" in url else posixpath.abspath(url)


def exists(url: str) -> bool:
    fs, path = fs_and_path(url)
    return fs.exists(path)


def isdir(url: str) -> bool:
    fs, path = fs_and_path(url)
    return fs.isdir(path)


def listdir(url: str) -> list[str]:
    """Base names of the entries directly under ``url``."""
    fs, path = fs_and_path(url)
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def makedirs(url: str) -> None:
    fs, path = fs_and_path(url)
    fs.makedirs(path, exist_ok=True)


def remove(url: str, recursive: bool = True) -> None:
    """Remove a file or folder if it exists."""
    fs, path = fs_and_path(url)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def open_url(url: str, mode: str = "rb", compression: str | None = None) -> IO[Any]:
    """Open ``url``; ``compression='infer'`` decompresses by file suffix (.gz, ...)."""
    return fsspec.open(url, mode, compression=compression).open()


@contextlib.contextmanager
def atomic_write(url: str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write to a temporary sibling, then rename onto ``url`` on success."""
    fs, path = fs_and_path(url)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open(tmp, mode) as fh:
            yield fh
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


@contextlib.contextmanager
def staging_dir(url: str, keep_existing: Callable[[str], bool] | None = None) -> Iterator[str]:
    """A fresh temporary folder beside ``url`` (as a URL) to write a whole folder into.

    When the body finishes, the folder replaces ``url`` (remove, then rename on the
    same filesystem), so readers see the old folder or the complete new one, never a
    partial one. If the body raises, the temporary folder is removed and ``url`` is
    left as it was. ``keep_existing(url)``, asked only when ``url`` exists once the
    body is done, can keep what is there (an identical earlier result); the staged
    copy is then dropped. The name is hidden (``.<name>.tmp-*``) so listings of the
    parent do not pick it up.
    """
    fs, path = fs_and_path(url)
    path = path.rstrip("/")
    parent, base = posixpath.split(path)
    if not base:
        raise DataError(f"{url!r}: not a folder path that can be written")
    tmp = posixpath.join(parent, f".{base}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        fs.makedirs(tmp, exist_ok=True)
        yield _with_protocol(url, tmp)
        # another writer (a concurrent run on the same dataset) may put its folder there
        # between our check and our rename: the rename then fails, and the check is asked again
        for attempt in range(_PLACE_ATTEMPTS):
            if fs.exists(path):
                if keep_existing is not None and keep_existing(url):
                    break
                fs.rm(path, recursive=True)
            try:
                _rename_dir(fs, tmp, path)
                break
            except OSError:
                if not fs.exists(path) or attempt == _PLACE_ATTEMPTS - 1:
                    raise
    finally:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)


_PLACE_ATTEMPTS = 5


def _rename_dir(fs: fsspec.AbstractFileSystem, src: str, dst: str) -> None:
    """Rename folder ``src`` to ``dst``; locally one ``rename``, which fails when ``dst`` has
    appeared meanwhile (fsspec's local move would copy ``src`` into it instead)."""
    if is_local(fs):
        os.rename(src, dst)
    else:
        fs.mv(src, dst, recursive=True)


def _with_protocol(url: str, path: str) -> str:
    """``path`` (a path from :func:`fs_and_path`) as a URL with ``url``'s protocol."""
    if "://" in url:
        return f"{url.split('://', 1)[0]}://{path}"
    return path


COPY_BYTES = 1 << 24  # bytes per read when a mapped table is copied
READ_HEADER = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def save_npy(url: str, array: np.ndarray) -> None:
    """Write ``array`` as .npy (atomic).

    A map of a whole .npy file is copied by file reads, so a table larger than
    memory is never made resident (reading through the map would count every page).
    """
    source = mapped_npy(array)
    with atomic_write(url, "wb") as fh:
        if source is None:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
            return
        with open(source, "rb") as src:
            shutil.copyfileobj(src, fh, COPY_BYTES)


def move_npy(array: np.ndarray, url: str) -> bool:
    """Move the local .npy file ``array`` maps whole to ``url`` (the same local disk); False, and
    nothing done, where that is not possible. For a scratch table its writer owns: a rename,
    where a copy of a 10 GB table would cost a write, a read and a delete."""
    source = mapped_npy(array)
    fs, path = fs_and_path(url)
    if source is None or not is_local(fs):
        return False
    try:
        os.replace(source, path)
    except OSError:  # another disk
        return False
    return True


def mapped_npy(array: np.ndarray) -> str | None:
    """The path of the .npy file ``array`` maps whole (as ``np.load(mmap_mode=...)`` gives), else None.

    A slice of a map keeps the map's file name but not its rows, so the file's own
    header must describe exactly this array.
    """
    if not isinstance(array, np.memmap) or array.filename is None:
        return None
    name = os.fspath(array.filename)
    if not array.flags.c_contiguous or not name.endswith(".npy"):
        return None
    try:
        with open(name, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version not in READ_HEADER:
                return None
            shape, fortran, dtype = READ_HEADER[version](fh)
            start = fh.tell()
    except (OSError, ValueError):
        return None
    same = shape == array.shape and not fortran and dtype == array.dtype and start == array.offset
    return name if same else None


def npy_row_chunks(array: np.ndarray, rows: int) -> Iterator[np.ndarray]:
    """``array`` in blocks of ``rows`` rows; a mapped .npy file is read by file reads, block by block."""
    source = mapped_npy(array)
    if source is None:
        for lo in range(0, len(array), rows):
            yield np.ascontiguousarray(array[lo:lo + rows])
        return
    row_bytes = array.dtype.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
    with open(source, "rb") as fh:
        fh.seek(array.offset)
        for lo in range(0, len(array), rows):
            n = min(rows, len(array) - lo)
            yield np.frombuffer(fh.read(n * row_bytes), dtype=array.dtype).reshape((n, *array.shape[1:]))


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is the local disk (paths can be opened directly)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def load_npy(url: str, mmap: bool = False) -> np.ndarray:
    """Read a .npy file, refusing pickled object arrays.

    ``mmap`` maps local files instead of reading them (large feature tables).
    """
    fs, path = fs_and_path(url)
    if not fs.exists(path):
        raise DataError(f"{url}: file not found")
    try:
        if is_local(fs):
            # straight from disk: no second in-memory copy of a large feature table
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        with fs.open(path, "rb") as fh:
            data = fh.read()
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "allow_pickle" in str(exc):
            raise DataError(f"{url}: holds a pickled object where a numeric array is expected; "
                            "refusing to unpickle data files") from exc
        raise DataError(f"{url}: not a readable .npy array ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"{url}: not a readable .npy array ({exc})") from exc
