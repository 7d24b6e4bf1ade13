"""The one place that imports DGL.

DGL 2.1.0's ``import dgl`` loads GraphBolt's C++ library, built for torch <= 2.2.1,
and fails on torch 2.13. Nothing this project uses needs GraphBolt, so a stub module
is put in ``sys.modules['dgl.graphbolt']`` first. Heterographs, NeighborSampler,
blocks and ``dgl.distributed.partition_graph`` work with it (docs/architecture.md).

DGL's C++ side logs to the process's stdout/stderr directly (METIS's "Partition a
graph with ..." line); :func:`captured_output` keeps such lines off the terminal.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import tempfile
import types
from dataclasses import dataclass
from typing import Any, Iterator

os.environ.setdefault("DGLBACKEND", "pytorch")
if "dgl.graphbolt" not in sys.modules:
    sys.modules["dgl.graphbolt"] = types.ModuleType("dgl.graphbolt")

import dgl  # noqa: E402  (must follow the stub)
import dgl.distributed  # noqa: E402,F401

__all__ = ["Captured", "captured_output", "dgl", "get_dgl"]


def get_dgl() -> Any:
    """The imported ``dgl`` module."""
    return dgl


@dataclass
class Captured:
    """What a :func:`captured_output` block wrote; filled when the block ends, also by an exception."""

    text: str = ""


def _flush_all() -> None:
    """Flush Python's and C's stdio buffers, so what was written lands before the descriptors change."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """Keep everything the block writes to file descriptors 1 and 2 (C/C++ included) instead of printing it.

    Python-level ``print`` is caught too. The descriptors point at a temporary file
    for the block and are restored in any case; the yielded object's ``text`` then
    holds the output, so a caller can put it into an error message.
    """
    got = Captured()
    py_out, py_err = io.StringIO(), io.StringIO()
    _flush_all()
    saved = (os.dup(1), os.dup(2))
    try:
        with tempfile.TemporaryFile() as sink:
            try:
                os.dup2(sink.fileno(), 1)
                os.dup2(sink.fileno(), 2)
                with contextlib.redirect_stdout(py_out), contextlib.redirect_stderr(py_err):
                    yield got
            finally:
                _flush_all()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                sink.seek(0)
                native = sink.read().decode("utf-8", errors="replace")
                got.text = py_out.getvalue() + py_err.getvalue() + native
    finally:
        for fd in saved:
            os.close(fd)
