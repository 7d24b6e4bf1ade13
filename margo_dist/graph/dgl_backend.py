"""The one place that imports DGL.

DGL 2.1.0's ``import dgl`` loads GraphBolt's C++ library, built for torch <= 2.2.1,
and fails on torch 2.13. Nothing this project uses needs GraphBolt, so a stub module
is put in ``sys.modules['dgl.graphbolt']`` first. Heterographs, NeighborSampler,
blocks and ``dgl.distributed.partition_graph`` work with it (architecture.md).
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

os.environ.setdefault("DGLBACKEND", "pytorch")
if "dgl.graphbolt" not in sys.modules:
    sys.modules["dgl.graphbolt"] = types.ModuleType("dgl.graphbolt")

import dgl  # noqa: E402  (must follow the stub)
import dgl.distributed  # noqa: E402,F401

__all__ = ["dgl", "get_dgl"]


def get_dgl() -> Any:
    """The imported ``dgl`` module."""
    return dgl
