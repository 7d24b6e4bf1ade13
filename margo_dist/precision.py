"""Which floating-point type the heavy products run in: float32, or bfloat16 where it is native.

``train.precision`` (the projection MLPs) and ``graph.knn_precision`` (the item-kNN
similarity products) take ``float32``, ``bfloat16`` or ``auto``. bf16 is native on a CPU
whose flags include ``avx512_bf16`` or ``amx_bf16`` (read from ``/proc/cpuinfo`` at run
time) and on a CUDA GPU of compute capability 8.0 or newer; elsewhere it is emulated,
slower than float32. An explicit ``bfloat16`` runs anywhere (tests use it).

``auto`` decides per key (``AUTO_BF16``): the kNN build, whose bf16 candidates are
re-scored in float32 (the same neighbour lists), takes bf16 wherever it is native; the
projection stays float32 under ``auto``, because bf16 training moved the planted
benchmark's means by more than the budget the project set for a silent default (test
Recall@20 -0.004, weight AUC +0.013 over 3 seeds; docs/architecture.md, "Precision").
"""

from __future__ import annotations

from typing import Callable

import torch

PRECISIONS = ("float32", "bfloat16", "auto")
# whether ``auto`` may pick bfloat16 for a key (where it is native); see the module docstring
AUTO_BF16 = {"train.precision": False, "graph.knn_precision": True}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where the file is not there: not Linux)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: str | torch.device) -> tuple[bool, str]:
    """Whether ``device`` multiplies bfloat16 natively, and the evidence in words."""
    dev = torch.device(device)
    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        return major >= 8, f"compute capability {major}.{minor}"
    if dev.type == "cpu":
        found = sorted(set(CPU_BF16_FLAGS) & cpu_flags())
        return bool(found), (f"CPU flags {', '.join(found)}" if found else
                             f"no {' or '.join(CPU_BF16_FLAGS)} among the CPU flags")
    return False, f"device type {dev.type}"


def resolve(precision: str, device: str | torch.device, key: str = "train.precision",
            detect: Callable[[str | torch.device], tuple[bool, str]] | None = None) -> tuple[str, str]:
    """``precision`` with ``auto`` decided for ``device``: (float32 | bfloat16, why).

    ``detect`` (default :func:`native_bf16`, looked up at call time) is injectable so tests
    can play either kind of machine.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"{key}={precision!r} is not one of {list(PRECISIONS)}")
    if precision != "auto":
        return precision, "as configured"
    native, evidence = (detect or native_bf16)(device)
    if native and not AUTO_BF16.get(key, True):
        return "float32", (f"auto on {torch.device(device).type}: {evidence}, but {key}=auto keeps float32 "
                           "(bf16 training is opt-in: docs/architecture.md, Precision)")
    return ("bfloat16" if native else "float32"), f"auto on {torch.device(device).type}: {evidence}"


def dtype_of(precision: str) -> torch.dtype:
    """The torch dtype of a resolved precision name."""
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[precision]
