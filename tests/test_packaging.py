"""The package's metadata admits what the docs promise."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet


def test_python_3_11_and_3_12_are_admitted_and_3_13_is_not() -> None:
    meta = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    spec = SpecifierSet(meta["requires-python"])
    assert "3.11.7" in spec and "3.12.3" in spec
    assert "3.10.14" not in spec and "3.13.0" not in spec  # dgl 2.1.0 has no wheel there
    assert {"Programming Language :: Python :: 3.11", "Programming Language :: Python :: 3.12"} <= \
        set(meta["classifiers"])
