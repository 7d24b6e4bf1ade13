"""precision.py: auto picks bfloat16 only where the device multiplies it natively."""

from __future__ import annotations

import pytest
import torch

from margo_dist import precision
from margo_dist.precision import cpu_flags, dtype_of, native_bf16, resolve


def test_auto_follows_the_detected_capability() -> None:
    native = lambda _d: (True, "flags avx512_bf16")  # noqa: E731
    assert resolve("auto", "cpu", "graph.knn_precision", detect=native) == \
        ("bfloat16", "auto on cpu: flags avx512_bf16")
    assert resolve("auto", "cpu", "graph.knn_precision", detect=lambda _d: (False, "none"))[0] == "float32"
    # training keeps float32 under auto even where bf16 is native, and says why
    chosen, why = resolve("auto", "cuda", "train.precision", detect=native)
    assert chosen == "float32" and "train.precision=auto keeps float32" in why
    assert resolve("bfloat16", "cpu", detect=lambda _d: (False, "none")) == ("bfloat16", "as configured")
    assert resolve("float32", "cpu", detect=lambda _d: (True, "x")) == ("float32", "as configured")
    with pytest.raises(ValueError, match=r"graph.knn_precision='half' is not one of"):
        resolve("half", "cpu", "graph.knn_precision")
    assert dtype_of("bfloat16") == torch.bfloat16 and dtype_of("float32") == torch.float32


def test_cpu_flags_are_read_from_cpuinfo(tmp_path, monkeypatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 sse\n\nprocessor\t: 1\n")
    assert cpu_flags(str(info)) == {"fpu", "avx512f", "avx512_bf16", "sse"}
    assert cpu_flags(str(tmp_path / "absent")) == set()
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert native_bf16("cpu") == (True, "CPU flags amx_bf16")
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    native, why = native_bf16("cpu")
    assert not native and "no avx512_bf16 or amx_bf16" in why
    assert resolve("auto", "cpu", "graph.knn_precision") == ("float32", f"auto on cpu: {why}")  # looked up late
