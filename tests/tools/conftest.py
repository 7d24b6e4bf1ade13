"""Fixtures of the tool smoke tests: a fresh copy of the tiny dataset per test, run from the repo root."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest
import torch

from margo_dist.data.synth import write_synthetic

from .helpers import REPO, TINY


@pytest.fixture(autouse=True)
def in_repo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tools read ``configs/default.yaml`` relative to the working folder and default to ``$MARGO_DIST_HOME``."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("MARGO_DIST_HOME", str(tmp_path / "margo-home"))


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on 2 shared cores, two threads that wait on each other make a tiny step ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TINY written once per session; tests get copies, since tools cache graphs inside the folder."""
    path = tmp_path_factory.mktemp("tiny-master") / "tiny"
    write_synthetic(TINY, str(path), "mmrec")
    return path


@pytest.fixture
def tiny_data(tiny_master: Path, tmp_path: Path) -> str:
    """A private copy of the tiny synthetic dataset (MMRec layout plus its planted-noise truth)."""
    return str(shutil.copytree(tiny_master, tmp_path / "tiny"))
