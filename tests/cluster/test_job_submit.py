"""The cluster recipe (cluster/README.md) on a real head: token auth, ``ray job submit``, a 2-worker job.

The test starts its own head on loopback (free ports, a token in a temporary file,
``RAY_AUTH_MODE=token``) in its own process session and stops that session, and only
that head, when it ends, whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from margo_dist.data.synth import SynthSpec, write_synthetic

pytest.importorskip("ray")
RAY = shutil.which("ray") or pytest.skip("no `ray` command on PATH", allow_module_level=True)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """(dashboard URL, environment with the token, GCS address) of a fresh token-auth head; stopped afterwards."""
    tmp_path = tmp_path_factory.mktemp("head")
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    log = tmp_path / "head.log"
    proc = subprocess.Popen([RAY, "start", "--head", "--block", "--port=0", "--dashboard-port=0",
                             "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp}",
                             "--disable-usage-stats"], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        url = gcs = None
        while url is None or gcs is None:
            text = log.read_text()
            found = re.search(r"RAY_API_SERVER_ADDRESS='(http://[^']+)'", text)
            url = found.group(1) if found else None
            found = re.search(r"ray start --address='([^']+)'", text)
            gcs = found.group(1) if found else None
            assert proc.poll() is None and time.time() < deadline, text[-3000:]
            time.sleep(0.2)
        yield url, env, gcs
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


def ray_cli(env: dict, *args: str, timeout: float = 60) -> str:
    done = subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


SPEC = SynthSpec(n_users=120, n_items=80, n_interactions=1200, modality_dims={"image": 12, "text": 8}, seed=0)


def submit(url: str, env: dict, data: Path, run: Path, *extra: str) -> str:
    """The README's recipe with the tiny job's settings; returns the submission id.

    A head that has just started may answer "No available agent to submit job, please try
    again later" (500) until its job agent has registered; that one answer is retried.
    """
    job = f"margo-test-{secrets.token_hex(4)}"
    args = [RAY, "job", "submit", "--address", url, "--submission-id", job, "--no-wait", "--working-dir", ".",
            "--runtime-env-json", json.dumps({"excludes": ["runs/", "data/", ".git/"]}), "--",
            "margo-dist", "train", "--config", "configs/default.yaml", f"data.path={data}", f"run.dir={run}",
            "dist.workers=2", "dist.cpus_per_worker=1", "model.dim=8", "graph.user_k=5", "graph.item_k=3",
            "train.batch_size=256", "train.threads=1", "run.plots=false", *extra]
    deadline = time.time() + 120
    while True:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
        if done.returncode == 0:
            return job
        out = done.stdout + done.stderr
        assert "No available agent to submit job" in out and time.time() < deadline, out[-3000:]
        time.sleep(2)


def wait_for(url: str, env: dict, job: str, wanted: str, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while (state := job_state(url, env, job)) != wanted:
        assert state in ("PENDING", "RUNNING"), (state, ray_cli(env, "job", "logs", "--address", url, job))
        assert time.time() < deadline, state
        time.sleep(1)


def job_state(url: str, env: dict, job: str) -> str:
    """The job's status from the job API, with the token (what ``ray job status`` prints)."""
    request = urllib.request.Request(f"{url}/api/jobs/{job}",
                                     headers={"Authorization": f"Bearer {Path(env['RAY_AUTH_TOKEN_PATH']).read_text()}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["status"]


def test_a_two_worker_job_through_ray_job_submit_with_token_auth(head, tmp_path):
    url, env, _ = head
    # the job API refuses a request without the token
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/api/jobs/", timeout=10)
    assert refused.value.code == 401
    data, run = tmp_path / "data", tmp_path / "run"
    write_synthetic(SPEC, str(data), "mmrec")
    # two threads on one reserved CPU: each worker warns, and the job log says which rank did
    job = submit(url, env, data, run, "train.max_epochs=2", "train.threads=2")
    wait_for(url, env, job, "SUCCEEDED")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["variant"] == "margo" and 0 < summary["test"]["recall@20"] <= 1
    assert "succeeded" in ray_cli(env, "job", "status", "--address", url, job)
    logs = ray_cli(env, "job", "logs", "--address", url, job)
    assert "training on 2 Ray Train workers" in logs
    # the log a person reads: each stage's epoch lines once, from the leader, with loss, metric and seconds
    for stage, epochs in (("pretrain", (1, 2)), ("calibrate", (1, 2))):
        for epoch in epochs:
            lines = re.findall(rf"\[{stage}\] epoch +{epoch}/\d+ +loss [0-9.]+ +valid recall@20 [0-9.]+ .*s eval\)", logs)
            assert len(lines) == 1, (stage, epoch, logs[-3000:])
    for rank in (0, 1):
        assert re.search(rf"rank {rank}: UserWarning: train\.threads=2 is more than the dist\.cpus_per_worker=1", logs)
    # a job log is a file: no colour codes, no "(RayTrainWorker pid=...)" before the lines (the
    # `ray job logs` command colours its own lines before the log: not looked at)
    job_log = logs.split("Running entrypoint for job", 1)[1]
    assert "\x1b[" not in job_log and "RayTrainWorker pid=" not in job_log
    assert "PreemptionWatcher" not in logs  # Ray's known-harmless ERROR line, filtered (dist/ray_session.py)
    assert re.search(r"^\[pretrain\] epoch +1/", logs, re.MULTILINE)
    # no per-report lines from Ray Train, no progress bars
    assert "Reporting training result" not in logs and "Checkpoint successfully created" not in logs
    assert "\r" not in logs and "batch/s" not in logs
    # the summary table ends the job log
    tail = logs.rstrip().splitlines()[-10:]
    assert tail[-1].startswith("outputs in ") and any(line.startswith("final test ") for line in tail), tail


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ray_job_stop_ends_the_workers_and_the_same_command_resumes(head, tmp_path):
    url, env, _ = head
    data, run = tmp_path / "data", tmp_path / "run"
    write_synthetic(SPEC, str(data), "mmrec")
    args = ("train.max_epochs=8", "train.patience=20")
    job = submit(url, env, data, run, *args)
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").exists() or not (run / "checkpoint.pt").exists():
        assert job_state(url, env, job) in ("PENDING", "RUNNING"), ray_cli(env, "job", "logs", "--address", url, job)
        assert time.time() < deadline
        time.sleep(0.2)
    workers = [int((run / "workers" / f"rank{r}.pid").read_text()) for r in range(2)]
    ray_cli(env, "job", "stop", "--address", url, "--no-wait", job)
    stopped = time.time()
    while any(alive(pid) for pid in workers):
        assert time.time() - stopped < 30, "workers still alive 30 s after ray job stop"
        time.sleep(0.2)
    wait_for(url, env, job, "STOPPED", timeout=60)
    from margo_dist.dist import checkpoint
    from margo_dist.train.rundir import RunDir

    record = checkpoint.read_record(RunDir(str(run)))  # the last checkpoint is whole
    assert not record["coordinator"]["done"]
    again = submit(url, env, data, run, *args)  # the same command
    wait_for(url, env, again, "SUCCEEDED")
    logs = ray_cli(env, "job", "logs", "--address", url, again)
    assert "resuming" in logs, logs[-3000:]
    assert json.loads((run / "summary.json").read_text())["variant"] == "margo"


def test_cluster_check_names_the_nodes_token_auth_and_storage(head, tmp_path):
    _, env, gcs = head
    cmd = [sys.executable, "-m", "margo_dist.cli", "cluster", "check", "--address", gcs]
    good = subprocess.run([*cmd, "--storage", str(tmp_path / "store")], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert good.returncode == 0, good.stdout + good.stderr[-3000:]
    assert "1 node(s), 2 CPU(s), 0 GPU(s)" in good.stdout and f"at {gcs}" in good.stdout
    assert "token auth: on" in good.stdout
    assert "writable and readable from all 1 node(s)" in good.stdout
    blocked = tmp_path / "file"
    blocked.write_text("a file where a folder should be")
    bad = subprocess.run([*cmd, "--storage", str(blocked / "runs")], env=env, capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert bad.returncode == 1 and "NOT reachable from 1/1 node(s)" in bad.stdout, bad.stdout + bad.stderr[-2000:]
