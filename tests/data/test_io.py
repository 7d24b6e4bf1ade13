"""io.staging_dir: a folder written under a temporary name, then moved into place."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from margo_dist.data import io as mio
from margo_dist.errors import DataError


def _write(url: str, name: str, text: str) -> None:
    with mio.open_url(mio.join(url, name), "w") as fh:
        fh.write(text)


def _read(url: str, name: str) -> str:
    with mio.open_url(mio.join(url, name), "r") as fh:
        return fh.read()


@pytest.fixture(params=["local", "memory"])
def base(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path)
        return
    root = f"memory://staging-{uuid.uuid4().hex}"
    mio.makedirs(root)
    yield root
    mio.remove(root)


def test_publishes_and_replaces_whole(base) -> None:
    url = mio.join(base, "out")
    with mio.staging_dir(url) as tmp:
        assert tmp != url and not mio.exists(url)
        _write(tmp, "a.txt", "first")
        _write(tmp, "old.txt", "x")
    assert mio.listdir(base) == ["out"] and _read(url, "a.txt") == "first"
    with mio.staging_dir(url) as tmp:
        _write(tmp, "a.txt", "second")
    assert mio.listdir(url) == ["a.txt"] and _read(url, "a.txt") == "second"


def test_failure_keeps_previous_and_leaves_no_temporary(base) -> None:
    url = mio.join(base, "out")
    with mio.staging_dir(url) as tmp:
        _write(tmp, "a.txt", "first")
    with pytest.raises(OSError, match="disk full"):
        with mio.staging_dir(url) as tmp:
            _write(tmp, "a.txt", "half")
            raise OSError("disk full")
    assert mio.listdir(base) == ["out"] and _read(url, "a.txt") == "first"
    with pytest.raises(RuntimeError):
        with mio.staging_dir(mio.join(base, "new")):
            raise RuntimeError("interrupted")
    assert mio.listdir(base) == ["out"]


def test_keep_existing(base) -> None:
    url = mio.join(base, "out")
    asked = []
    with mio.staging_dir(url, keep_existing=asked.append) as tmp:  # nothing there: not asked
        _write(tmp, "a.txt", "first")
    assert asked == []
    with mio.staging_dir(url, keep_existing=lambda dest: True) as tmp:
        _write(tmp, "a.txt", "second")
    assert mio.listdir(base) == ["out"] and _read(url, "a.txt") == "first"


def test_refuses_a_root() -> None:
    with pytest.raises(DataError, match="'/'"):
        with mio.staging_dir("/"):
            pass


@pytest.mark.parametrize("keep", [True, False])
def test_a_concurrent_writer_that_places_its_folder_first(tmp_path, monkeypatch, keep: bool) -> None:
    """Two runs build the same cached folder at once: the other one's rename lands between
    this one's check and its rename. Its folder is then kept (an identical result) or
    replaced, and no temporary folder is left either way."""
    url = str(tmp_path / "graphs")
    real = mio._rename_dir
    calls = []

    def raced(fs, src, dst):
        calls.append(dst)
        if len(calls) == 1:  # the other writer wins the first time
            (tmp_path / "graphs").mkdir()
            (tmp_path / "graphs" / "a.txt").write_text("theirs")
            real(fs, src, dst)  # fails: dst has appeared and is not empty
        real(fs, src, dst)

    monkeypatch.setattr(mio, "_rename_dir", raced)
    with mio.staging_dir(url, keep_existing=lambda dest: keep) as tmp:
        _write(tmp, "a.txt", "ours")
    assert (tmp_path / "graphs" / "a.txt").read_text() == ("theirs" if keep else "ours")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graphs"]
    assert len(calls) == (1 if keep else 2)


def test_a_mapped_npy_is_copied_whole_and_a_slice_of_it_is_not_taken_for_the_file(tmp_path) -> None:
    rows = np.arange(24, dtype=np.float32).reshape(6, 4)
    np.save(tmp_path / "a.npy", rows)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert mio.mapped_npy(mapped) == str(tmp_path / "a.npy")
    assert mio.mapped_npy(mapped[1:3]) is None  # keeps the file name, not the rows
    assert mio.mapped_npy(rows) is None
    for src, want in ((mapped, rows), (mapped[1:3], rows[1:3])):
        mio.save_npy(str(tmp_path / "b.npy"), src)
        np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), want)
    for src in (mapped, rows):
        blocks = list(mio.npy_row_chunks(src, 4))
        assert [len(b) for b in blocks] == [4, 2]
        np.testing.assert_array_equal(np.concatenate(blocks), rows)
