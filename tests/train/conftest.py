"""Shared fixtures of the training tests."""

from __future__ import annotations

import pytest

from margo_dist.data.synth import write_synthetic


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, request) -> str:
    """The test module's tiny synthetic dataset (its ``TINY`` spec), written once per module."""
    path = str(tmp_path_factory.mktemp("syn") / "tiny")
    write_synthetic(request.module.TINY, path, "mmrec")
    return path
