"""Failures: a worker SIGKILLed in stage 2 (found by its pid) and a process killed mid-checkpoint.

The distributed run is a real ``margo-dist train ... dist.workers=2 dist.max_failures=1``
in its own process session (it starts and stops its own local Ray instance); the test
kills that whole session when it ends, whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from margo_dist.config import load_config
from margo_dist.data.synth import SynthSpec, write_synthetic
from margo_dist.train.entry import train

pytest.importorskip("ray")

ARGS = ["train.max_epochs=8", "train.patience=20", "model.dim=8", "graph.user_k=5", "graph.item_k=3",
        "train.batch_size=128", "train.progress=false", "train.threads=1", "run.plots=false"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("faults") / "data")
    write_synthetic(SynthSpec(n_users=150, n_items=90, n_interactions=2000, modality_dims={"image": 12, "text": 8},
                              seed=1), path, "mmrec")
    return path


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_a_worker_killed_in_stage_two_resumes_there_with_the_same_result(data_dir, tmp_path):
    straight = train(load_config("configs/default.yaml", [f"data.path={data_dir}", f"run.dir={tmp_path / 'local'}",
                                                          *ARGS]), log=lambda _m: None)
    run = tmp_path / "dist"
    cmd = [sys.executable, "-m", "margo_dist.cli", "train", "--config", "configs/default.yaml",
           f"data.path={data_dir}", f"run.dir={run}", "dist.workers=2", "dist.max_failures=1", *ARGS]
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not any(r["stage"] == "calibrate" and r["epoch"] >= 2 for r in records(run)):
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.time() < deadline, "stage 2 never started"
            time.sleep(0.05)
        victim = int((run / "workers" / "rank1.pid").read_text())
        os.kill(victim, signal.SIGKILL)
        assert proc.wait(timeout=240) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    assert int((run / "workers" / "rank1.pid").read_text()) != victim  # a new worker group ran
    summary = json.loads((run / "summary.json").read_text())
    for split in ("valid", "test"):
        for key, value in straight[split].items():
            assert summary[split][key] == pytest.approx(value, abs=1e-6), (split, key)
    text = (tmp_path / "driver.log").read_text()
    assert "resuming" in text and "stage 2/2" in text
    # the driver's log says once that the group failed, which rank, and that it restarts
    restarts = [line for line in text.splitlines() if ": worker group failed (" in line]
    assert len(restarts) == 1 and restarts[0].endswith("(restart 1 of dist.max_failures=1)"), text[-3000:]
    # rank 1 is named first, as lost; the survivor's error (its collective's peer vanished) may
    # follow. Ray Train polls the group about once a second: a poll between rank 0's error and
    # Ray noticing rank 1's death reports rank 0 alone, with the lost peer as its cause.
    cause = restarts[0].split(": worker group failed (", 1)[1]
    assert (cause.startswith("rank 1 lost (")
            or cause.startswith("rank 0: RuntimeError: ") and "by peer" in cause), restarts[0]


KILL_IN_SAVE = """
import os, sys
from margo_dist.config import load_config
from margo_dist.train import rundir
from margo_dist.train.entry import train

calls = {"n": 0}
original = rundir.RunDir.write_bytes

def dying_write(self, name, data):
    if name.startswith(sys.argv[2]):
        calls["n"] += 1
        if calls["n"] == int(sys.argv[1]):
            os.makedirs(os.path.dirname(self.path(name)), exist_ok=True)
            with open(self.path(name) + ".tmp-partial", "wb") as fh:  # half a file, then death
                fh.write(data[: len(data) // 2])
            os._exit(9)
    original(self, name, data)

rundir.RunDir.write_bytes = dying_write
train(load_config("configs/default.yaml", sys.argv[3:]), log=lambda _m: None)
"""


@pytest.mark.parametrize("file", ["checkpoint.pt", "checkpoint-shards/"])  # the commit, or a worker's rows
def test_a_process_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(data_dir, tmp_path, file):
    args = [f"data.path={data_dir}", f"run.dir={tmp_path / 'run'}", *ARGS]
    died = subprocess.run([sys.executable, "-c", KILL_IN_SAVE, "5", file, *args], timeout=240)
    assert died.returncode == 9
    from margo_dist.train.rundir import RunDir

    ckpt = RunDir(str(tmp_path / "run")).load_state("checkpoint.pt")  # intact: the 4th, complete
    assert ckpt["coordinator"]["progress"]["epoch"] == 4
    messages: list[str] = []
    resumed = train(load_config("configs/default.yaml", args), log=messages.append)
    assert any(m.startswith("resuming") and "epoch 4" in m for m in messages)
    straight = train(load_config("configs/default.yaml", [f"data.path={data_dir}",
                                                          f"run.dir={tmp_path / 'straight'}", *ARGS]),
                     log=lambda _m: None)
    assert resumed["test"] == straight["test"]
