"""What the tool smoke tests share: the tiny dataset, loading a tool as a module, running one as a script."""

from __future__ import annotations

import importlib.util
import os
import queue
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Callable

from margo_dist.data.synth import SynthSpec

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
# The brief's tiny shape: small enough that a tool's whole path runs in about a second.
TINY = SynthSpec(n_users=150, n_items=80, n_interactions=1500, modality_dims={"image": 12, "text": 8}, seed=0)
# Config overrides that keep a training run on TINY short (1-2 epochs are set per test).
SMALL = ["model.dim=8", "train.batch_size=256", "graph.item_k=3", "graph.user_k=5", "sampler.num_workers=0",
         "train.progress=false", "run.plots=false"]


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as module ``name``: tools/ is no package, and dataclasses need the module registered."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class InlineProcess:
    """Stands in for ``multiprocessing.Process``: runs the target at ``start()`` in this process.

    A tool that runs each step in a fresh 'spawn' process pays ~3 s of imports per
    step on this 2-core machine; the step's code is the same either way. Running it
    inline also makes a failing step raise here, where the tool would wait for ever
    on a queue that its dead child never fills.
    """

    def __init__(self, target: Callable[..., Any], args: tuple = (), kwargs: dict | None = None) -> None:
        self._target, self._args, self._kwargs = target, args, kwargs or {}

    def start(self) -> None:
        self._target(*self._args, **self._kwargs)

    def join(self, timeout: float | None = None) -> None:
        """Nothing to wait for: the target finished in start()."""


def inline_mp() -> SimpleNamespace:
    """A stand-in for a tool's ``mp`` module whose 'spawn' context runs processes inline."""
    context = SimpleNamespace(Process=InlineProcess, Queue=queue.Queue)
    return SimpleNamespace(get_context=lambda _method=None: context, Queue=queue.Queue)


def run_script(name: str, args: list[str], timeout: float, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess:
    """``python tools/<name>.py ARGS`` from the repository root, in its own process group.

    The group (the tool and every process it spawned) is killed when the tool
    overruns ``timeout`` and again once it has exited, so no child outlives the test.
    Torch gets one thread, as in the test process (conftest.one_torch_thread).
    """
    proc = subprocess.Popen([sys.executable, str(TOOLS / f"{name}.py"), *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"tools/{name}.py ran past {timeout}s\nstdout:\n{out}\nstderr:\n{err}") from None
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
