"""tools/get_movielens.py without the network: a fake recbole wheel stands in for ``pip download``."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from .helpers import load_tool

ROWS = {"ml-100k.inter": "196\t242\t3\t881250949", "ml-100k.item": "1\tToy Story\t1995\tAnimation Children's"}


@pytest.fixture
def tool() -> ModuleType:
    """The tool, loaded afresh so monkeypatched functions do not leak between tests."""
    return load_tool("get_movielens")


def fake_wheel(folder: Path, tool: ModuleType, headers: dict[str, str] | None = None,
               skip: str = "") -> Path:
    """A zip with the wheel's member paths, each holding a header line and one row."""
    path = folder / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("recbole/__init__.py", "")
        for name, member in tool.MEMBERS.items():
            if name != skip:
                zf.writestr(member, f"{(headers or tool.HEADERS)[name]}\n{ROWS[name]}\n")
    return path


def test_extract_copies_both_files(tool: ModuleType, tmp_path: Path) -> None:
    """Both atomic files land in --out byte for byte, with no temporary file left behind."""
    out = tmp_path / "raw" / "ml-100k"
    written = tool.extract(str(fake_wheel(tmp_path, tool)), str(out))
    assert sorted(Path(p).name for p in written) == ["ml-100k.inter", "ml-100k.item"]
    for name in ROWS:
        assert (out / name).read_text() == f"{tool.HEADERS[name]}\n{ROWS[name]}\n"
    assert sorted(p.name for p in out.iterdir()) == ["ml-100k.inter", "ml-100k.item"]


def test_extract_rejects_another_header(tool: ModuleType, tmp_path: Path) -> None:
    """A wheel whose file has other columns is refused before anything is written for it."""
    headers = {**tool.HEADERS, "ml-100k.item": "item_id:token\ttitle:token"}
    with pytest.raises(SystemExit, match="header 'item_id:token\\\\ttitle:token'"):
        tool.extract(str(fake_wheel(tmp_path, tool, headers=headers)), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "ml-100k.item").exists()


def test_extract_rejects_a_missing_member(tool: ModuleType, tmp_path: Path) -> None:
    """Another recbole release may move the files: say which member is missing."""
    with pytest.raises(SystemExit, match="has no member recbole/dataset_example/ml-100k/ml-100k.item"):
        tool.extract(str(fake_wheel(tmp_path, tool, skip="ml-100k.item")), str(tmp_path / "out"))


def test_dataset_dir(tool: ModuleType) -> None:
    """data/raw/X is prepared into data/X; any other folder into a sibling '-prepared'."""
    assert tool.dataset_dir("data/raw/ml-100k/") == "data/ml-100k"
    assert tool.dataset_dir("/tmp/ml") == "/tmp/ml-prepared"


def test_download_wheel_asks_pip_for_the_pinned_wheel(tool: ModuleType, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The pip command (no dependencies, binary only, the pinned version) and the wheel it finds."""
    calls = []

    def fake_run(cmd: list[str], **_kw: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        fake_wheel(Path(cmd[cmd.index("-d") + 1]), tool)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(tool, "subprocess", SimpleNamespace(run=fake_run))
    wheel = tool.download_wheel(str(tmp_path))
    assert Path(wheel).name == "recbole-1.2.1-py3-none-any.whl"
    assert calls[0][1:] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "recbole==1.2.1", "-d",
                            str(tmp_path)]
    failed = SimpleNamespace(run=lambda cmd, **_kw: subprocess.CompletedProcess(cmd, 1, "", "no network"))
    monkeypatch.setattr(tool, "subprocess", failed)
    with pytest.raises(SystemExit, match="no network"):
        tool.download_wheel(str(tmp_path / "empty"))


def test_main_extracts_keeps_the_wheel_and_prints_the_next_step(tool: ModuleType, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    """main's flow with the download replaced: the files, the kept wheel, the prepare command to run next."""
    source = fake_wheel(tmp_path, tool)

    def fake_download(dest: str) -> str:
        copy = Path(dest) / source.name
        copy.write_bytes(source.read_bytes())
        return str(copy)

    monkeypatch.setattr(tool, "download_wheel", fake_download)
    out = tmp_path / "data" / "raw" / "ml-100k"
    assert tool.main(["--out", str(out), "--keep-wheel"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["ml-100k.inter", "ml-100k.item", source.name]
    assert printed.count("wrote ") == 3
    assert f"--interactions {out / 'ml-100k.inter'} --items {out / 'ml-100k.item'}" in printed
    assert f"--out {tmp_path / 'data' / 'ml-100k'} --k-core 5" in printed
