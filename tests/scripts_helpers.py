"""What the script smoke tests (tests/benchmarks, tests/experiments) share: the tiny dataset and its
fixtures, loading a script as a module, running one as a script.

Each folder's conftest.py imports the fixtures from here, so both folders get the same ones.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import shutil
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Callable, Iterator

import pytest
import torch

from margo_dist.data.synth import SynthSpec, write_synthetic

REPO = Path(__file__).resolve().parents[1]
# The brief's tiny shape: small enough that a script's whole path runs in about a second.
TINY = SynthSpec(n_users=150, n_items=80, n_interactions=1500, modality_dims={"image": 12, "text": 8}, seed=0)
# Config overrides that keep a training run on TINY short (1-2 epochs are set per test).
SMALL = ["model.dim=8", "train.batch_size=256", "graph.item_k=3", "graph.user_k=5", "sampler.num_workers=0",
         "train.progress=false", "run.plots=false"]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Scripts read ``configs/default.yaml`` relative to the working folder and default to ``$MARGO_DIST_HOME``."""
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
    """TINY written once per session; tests get copies, since scripts cache graphs inside the folder."""
    path = tmp_path_factory.mktemp("tiny-master") / "tiny"
    write_synthetic(TINY, str(path), "mmrec")
    return path


@pytest.fixture
def tiny_data(tiny_master: Path, tmp_path: Path) -> str:
    """A private copy of the tiny synthetic dataset (MMRec layout plus its planted-noise truth)."""
    return str(shutil.copytree(tiny_master, tmp_path / "tiny"))


def script_path(script: str) -> Path:
    """``benchmarks/bench_local.py`` (a path from the repository root) as an absolute path that must exist."""
    path = REPO / script
    if not path.is_file():
        raise FileNotFoundError(f"no script {script!r} under {REPO}")
    return path


def load_script(script: str) -> ModuleType:
    """``benchmarks/<name>.py`` (or experiments/) as module ``name``: neither folder is a package, and
    dataclasses need the module registered."""
    path = script_path(script)
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class InlineProcess:
    """Stands in for ``multiprocessing.Process``: runs the target at ``start()`` in this process.

    A script that runs each step in a fresh 'spawn' process pays ~3 s of imports per
    step on this 2-core machine; the step's code is the same either way. Running it
    inline also makes a failing step raise here, where the script would wait for ever
    on a queue that its dead child never fills.
    """

    def __init__(self, target: Callable[..., Any], args: tuple = (), kwargs: dict | None = None) -> None:
        self._target, self._args, self._kwargs = target, args, kwargs or {}

    def start(self) -> None:
        self._target(*self._args, **self._kwargs)

    def join(self, timeout: float | None = None) -> None:
        """Nothing to wait for: the target finished in start()."""


def inline_mp() -> SimpleNamespace:
    """A stand-in for a script's ``mp`` module whose 'spawn' context runs processes inline."""
    context = SimpleNamespace(Process=InlineProcess, Queue=queue.Queue)
    return SimpleNamespace(get_context=lambda _method=None: context, Queue=queue.Queue)


def run_script(script: str, args: list[str], timeout: float, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS`` (e.g. ``benchmarks/bench_scale.py``) from the repository root, in its own
    process group.

    The group (the script and every process it spawned) is killed when the script
    overruns ``timeout`` and again once it has exited, so no child outlives the test.
    Torch gets one thread, as in the test process (one_torch_thread above).
    """
    proc = subprocess.Popen([sys.executable, str(script_path(script)), *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{script} ran past {timeout}s\nstdout:\n{out}\nstderr:\n{err}") from None
    finally:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def markdown_table(text: str, first_header: str) -> list[dict[str, str]]:
    """Rows of the first ``| a | b |`` table in ``text`` whose first column is ``first_header``."""
    lines = [ln.strip() for ln in text.splitlines()]
    cells = lambda ln: [c.strip() for c in ln.strip("|").split("|")]  # noqa: E731
    start = next(k for k, ln in enumerate(lines) if ln.startswith("|") and cells(ln)[0] == first_header)
    head = cells(lines[start])
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append(dict(zip(head, cells(ln), strict=True)))
    return rows


def number(cell: str) -> float:
    """A printed number ('1,689', '42%', '0.1234') as a float."""
    return float(cell.replace(",", "").rstrip("%"))
