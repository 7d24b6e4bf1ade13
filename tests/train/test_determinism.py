"""Fresh runs of one config repeat bit for bit (same seed and thread count), full and sampled.

Each run is its own process: the non-determinism this guards against (advanced-indexing
backward summing duplicate rows in a thread-dependent order) only shows between
processes, and only with more than one thread and batches big enough to be split.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from margo_dist.data.synth import SynthSpec, write_synthetic

RUN = """
import sys
from margo_dist.config import load_config
from margo_dist.train.entry import train
train(load_config("configs/default.yaml", sys.argv[1:]), log=lambda _m: None)
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("det") / "data")
    write_synthetic(SynthSpec(n_users=800, n_items=400, n_interactions=9000,
                              modality_dims={"image": 48, "text": 24}, seed=3), path, "mmrec")
    return path


def fresh_run(data_dir: str, run_dir: str, mode: str) -> tuple[list[float], dict]:
    args = [f"data.path={data_dir}", f"run.dir={run_dir}", f"train.mode={mode}", "train.threads=2",
            "train.max_epochs=2", "train.batch_size=1024", "train.progress=false", "run.plots=false",
            "sampler.num_workers=1"]
    subprocess.run([sys.executable, "-c", RUN, *args], check=True, cwd=".", timeout=300)
    records = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
    summary = json.load(open(f"{run_dir}/summary.json"))
    return [r["train_loss"] for r in records if "train_loss" in r], {k: summary[k] for k in ("valid", "test",
                                                                                              "weight_auc")}


@pytest.mark.parametrize("mode", ["full", "sampled"])
def test_two_fresh_runs_are_bit_identical(data_dir, tmp_path, mode):
    losses_a, summary_a = fresh_run(data_dir, str(tmp_path / "a"), mode)
    losses_b, summary_b = fresh_run(data_dir, str(tmp_path / "b"), mode)
    assert len(losses_a) == 4
    assert [x.hex() for x in losses_a] == [x.hex() for x in losses_b]
    assert json.dumps(summary_a) == json.dumps(summary_b)
