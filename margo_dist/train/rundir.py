"""A run folder on any fsspec URL: config, metrics, summary, weights, checkpoints.

Every file is written to a temporary name and renamed, so a crash never leaves a
half-written checkpoint or summary as the latest one.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from margo_dist.config import Config, dump_yaml, load_config
from margo_dist.data import io as mio
from margo_dist.errors import MargoError

CONFIG, METRICS, SUMMARY, WEIGHTS = "config.yaml", "metrics.jsonl", "summary.json", "item_weights.parquet"
CHECKPOINT = "checkpoint.pt"


def write_parquet(url: str, table: pa.Table) -> None:
    """``table`` as a Parquet file at ``url``, written atomically."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    with mio.atomic_write(url, "wb") as fh:
        fh.write(buf.getvalue().to_pybytes())


class RunDir:
    """Reads and writes the files of one run."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def path(self, name: str) -> str:
        return mio.join(self.url, name)

    def exists(self, name: str) -> bool:
        return mio.exists(self.path(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        with mio.atomic_write(self.path(name), "wb") as fh:
            fh.write(data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def read_text(self, name: str) -> str:
        if not self.exists(name):
            raise MargoError(f"{self.path(name)} does not exist: is {self.url} a margo-dist run folder?")
        with mio.open_url(self.path(name), "rt") as fh:
            return fh.read()

    def write_config(self, cfg: Config) -> None:
        self.write_text(CONFIG, dump_yaml(cfg))

    def load_config(self, overrides: list[str] | None = None) -> Config:
        if not self.exists(CONFIG):
            raise MargoError(f"{self.path(CONFIG)} does not exist: is {self.url} a margo-dist run folder?")
        return load_config(self.path(CONFIG), overrides)

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        self.write_text(METRICS, "".join(json.dumps(r) + "\n" for r in records))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.exists(METRICS):
            return []
        return [json.loads(line) for line in self.read_text(METRICS).splitlines() if line.strip()]

    def write_json(self, name: str, value: dict[str, Any]) -> None:
        self.write_text(name, json.dumps(value, indent=2, sort_keys=False))

    def read_json(self, name: str) -> dict[str, Any]:
        return json.loads(self.read_text(name))

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        self.write_bytes(name, buf.getvalue())

    def load_state(self, name: str) -> dict[str, Any]:
        with mio.open_url(self.path(name), "rb") as fh:
            data = fh.read()
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")

    def remove(self, name: str) -> None:
        """Delete ``name`` if it is there."""
        mio.remove(self.path(name), recursive=False)

    def write_item_weights(self, weights: np.ndarray, modalities: list[str]) -> None:
        cols = {"item_id": pa.array(np.arange(weights.shape[0], dtype=np.int64))}
        for m, name in enumerate(modalities):
            cols[name] = pa.array(weights[:, m].astype(np.float32))
        self.write_table(WEIGHTS, pa.table(cols))

    def write_table(self, name: str, table: pa.Table) -> None:
        write_parquet(self.path(name), table)

    def read_table(self, name: str) -> pa.Table:
        if not self.exists(name):
            raise MargoError(f"{self.path(name)} does not exist")
        with mio.open_url(self.path(name), "rb") as fh:
            return pq.read_table(fh)
