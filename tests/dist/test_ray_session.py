"""Ray joined on purpose, impossible requests refused fast (``dist/ray_session.py``).

Most checks are functions of the config, the environment and the cluster's resources, with
no Ray. Two start Ray: a private instance beside another user's token-auth head (which the
test starts with ``ray start`` in a temp folder of its own and kills by its process group),
and a real ``margo-dist train dist.workers=2`` interrupted by Ctrl-C once its workers run.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from margo_dist.config import load_config
from margo_dist.data.synth import SynthSpec, write_synthetic
from margo_dist.dist.launch import restart_line
from margo_dist.dist.ray_session import (HarmlessLinesFiltered, Joined, Needs, address_problem, check_resources,
                                         interrupts, ray_session, resolve_address, run_needs, source_of)
from margo_dist.errors import ConfigError, MargoError

ray = pytest.importorskip("ray")
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster(cpus: float = 2, gpus: float = 0, largest: dict | None = None, ceiling: dict | None = None) -> Joined:
    return Joined(address="127.0.0.1:6379", how="test", nodes=1, cpus=cpus, gpus=gpus,
                  largest=largest if largest is not None else {"CPU": cpus, "GPU": gpus}, ceiling=ceiling)


def test_the_address_rule_is_dist_address_then_ray_address_then_a_private_instance():
    assert resolve_address("", {}) == "local"
    assert resolve_address("", {"RAY_ADDRESS": "10.0.0.1:6379"}) == "10.0.0.1:6379"
    assert resolve_address("local", {"RAY_ADDRESS": "10.0.0.1:6379"}) == "local"
    assert resolve_address("auto", {}) == "auto"
    assert source_of("", {"RAY_ADDRESS": "h:1"}) == "RAY_ADDRESS=h:1"
    assert source_of("h:1", {"RAY_ADDRESS": "x:2"}, key="--address") == "--address=h:1"
    for good in ("", "local", "auto", "10.0.0.1:6379", "ray://head:10001", "[::1]:6379"):
        assert address_problem(good) == "", good
    for bad in ("bogus", "head:", "head:port", "head:70000", ":6379"):
        assert address_problem(bad), bad
    with pytest.raises(ConfigError, match=r"dist\.address='head:port': must be '', 'local', 'auto', HOST:PORT"):
        load_config("configs/default.yaml", ["dist.address=head:port"])
    assert load_config("configs/default.yaml").dist.max_failures == 2  # a lost worker restarts the group


def test_a_request_the_cluster_cannot_hold_is_refused_naming_the_numbers():
    dist = load_config("configs/default.yaml", ["dist.workers=4"]).dist
    with pytest.raises(ConfigError, match=r"^dist\.workers=4 x dist\.cpus_per_worker=1 needs 4 CPUs; the cluster "
                                          r"at 127\.0\.0\.1:6379 has 2\. "):
        check_resources(run_needs(dist), cluster(cpus=2))
    check_resources(run_needs(dist), cluster(cpus=4))
    # an autoscaler that may grow the cluster to 8 CPUs: not refused for what it has now
    check_resources(run_needs(dist), cluster(cpus=2, ceiling={"CPU": 8.0}))
    with pytest.raises(ConfigError, match=r"needs 4 CPUs; .* has 3 \(its autoscaler's limit\)"):
        check_resources(run_needs(dist), cluster(cpus=2, ceiling={"CPU": 3.0}))
    gpu = load_config("configs/default.yaml", ["dist.workers=2", "dist.use_gpu=true"]).dist
    with pytest.raises(ConfigError, match=r"x dist\.gpus_per_worker=1\) needs 2 GPUs; .* has 1"):
        check_resources(run_needs(gpu), cluster(cpus=8, gpus=1))
    # enough CPUs in all, but no node holds one worker's 4
    wide = load_config("configs/default.yaml", ["dist.workers=2", "dist.cpus_per_worker=4"]).dist
    with pytest.raises(ConfigError, match=r"one worker needs 4 CPUs on one node; the largest node .* has 2"):
        check_resources(run_needs(wide), cluster(cpus=8, largest={"CPU": 2.0, "GPU": 0.0}))
    check_resources(Needs(what="cpus_per_trial=1", bundles=1, cpus=1), cluster(cpus=1))


def test_a_refused_port_fails_in_seconds_with_one_line():
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "margo_dist.cli", "cluster", "check", "--address", "127.0.0.1:1"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert time.time() - t0 < 15
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: Ray cluster at 127.0.0.1:1 (--address=127.0.0.1:1): its port refused the connection; is the head "
        "running (`ray start --head`) and reachable from here? dist.address=local trains on a private Ray instance "
        "on this machine instead"]


def test_sigterm_interrupts_the_block_like_sigint_and_the_old_handlers_come_back():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(KeyboardInterrupt):
        with interrupts() as received:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
    assert received == ["SIGTERM"]
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_restart_is_one_line_with_its_cause():
    line = restart_line("margo-run-1", 1, 2, {1: RuntimeError("worker died\nmore detail")})
    assert line == ("margo-run-1: worker group failed (rank 1: RuntimeError: worker died); Ray Train restarts the "
                    "worker group from the latest checkpoint (restart 1 of dist.max_failures=2)")
    assert restart_line("r", 3, 2, {0: ValueError()}).endswith("no restart left (dist.max_failures=2): the run fails")


def test_a_lost_worker_is_named_first_before_the_survivors_that_lost_their_peer():
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    reset = RuntimeError("[pair.cc:537] Read error [127.0.0.1]:36278: Connection reset by peer.")
    line = restart_line("r", 1, 1, {0: reset, 2: reset, 1: WorkerHealthCheckFailedError("A worker health check failed.",
                                                                                    failure=OSError("gone"))})
    assert line.startswith("r: worker group failed (rank 1 lost (WorkerHealthCheckFailedError: A worker health check "
                           "failed.); rank 0: RuntimeError: [pair.cc:537] Read error [127.0.0.1]:36278: Connection "
                           "reset by peer.; rank 2: RuntimeError: "), line


def test_a_private_instance_ignores_another_users_token_head_which_refuses_a_join_in_seconds(monkeypatch):
    """The other user's head is the one ``ray.init()`` would join (the latest ``ray start``,
    recorded under RAY_TMPDIR, a folder of this test's own so no other Ray user sees it)."""
    tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths live under it
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": tmp,
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "another-users-token-0123456789abcdef"}
    head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                             f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                             "--block"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # Ray sets it when it starts an instance
    try:
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(tmp, "ray", "ray_current_cluster")):
            assert head.poll() is None and time.time() < deadline, "the other head did not start"
            time.sleep(0.2)
        lines: list[str] = []
        with ray_session("", lines.append) as joined:
            assert joined.address.startswith("127.0.0.1:") and joined.address != f"127.0.0.1:{port}"
            assert [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]] == ["127.0.0.1"]
            assert ray.get(ray.remote(lambda: 1).remote()) == 1  # the private instance runs tasks
        assert lines == [f"started a private Ray instance (dist.address=local) at {joined.address}: 1 node(s), "
                         f"{joined.cpus:g} CPU(s), 0 GPU(s)"]
        assert not ray.is_initialized()
        t0 = time.time()
        with pytest.raises(MargoError, match=rf"^Ray cluster at 127\.0\.0\.1:{port} \(dist\.address=127\.0\.0\.1:"
                                             rf"{port}\) refused this process's token: .*RAY_AUTH_TOKEN"):
            with ray_session(f"127.0.0.1:{port}"):
                pass
        assert time.time() - t0 < 15
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_ctrl_c_stops_a_distributed_run_and_its_workers_in_seconds(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    write_synthetic(SynthSpec(n_users=60, n_items=40, n_interactions=480, modality_dims={"image": 8, "text": 6},
                              seed=2), str(data), "mmrec")
    cmd = [sys.executable, "-m", "margo_dist.cli", "train", "--config", "configs/default.yaml", f"data.path={data}",
           f"run.dir={run}", "dist.workers=2", "train.max_epochs=500", "train.patience=500", "model.dim=8",
           "graph.user_k=4", "graph.item_k=3", "train.progress=false", "train.threads=1", "run.plots=false"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        pids = [run / "workers" / f"rank{r}.pid" for r in (0, 1)]
        deadline = time.time() + 120
        while not all(p.exists() and p.read_text().strip() for p in pids):
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.time() < deadline, "the workers never started"
            time.sleep(0.1)
        workers = [int(p.read_text()) for p in pids]
        t0 = time.time()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
        assert time.time() - t0 < 20
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    text = (tmp_path / "driver.log").read_text()
    assert code == 2, text[-3000:]
    assert f"error: interrupted (SIGINT): the workers of {run} were stopped" in text
    assert "Traceback" not in text
    deadline = time.time() + 10
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers), workers


WATCHER_LINE = ("[2026-12-05 12:00:23,720 E 32762 367] core_worker.cc:2465: Actor with class name: "
                "'PreemptionWatcher' and ID: '59b3c30f2c9a4a3e2928f13401000000' has constructor arguments in the "
                "object store and max_restarts > 0. If the arguments in the object store go out of scope or are "
                "lost, the actor restart will fail. See https://github.com/ray-project/ray/issues/53727 for more "
                "details.")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rays_known_harmless_line_is_dropped_and_every_other_line_kept():
    target = Terminal()
    out = HarmlessLinesFiltered(target)
    other_error = WATCHER_LINE.replace("PreemptionWatcher", "RayTrainWorker")
    out.write("first line\n(TrainController pid=4) " + WATCHER_LINE + "\n")
    out.write(WATCHER_LINE[:40])  # a line arrives in pieces: held until it ends
    assert target.getvalue() == "first line\n"
    out.write(WATCHER_LINE[40:] + "\n" + other_error + "\nlast")
    assert target.getvalue() == "first line\n" + other_error + "\n"
    out.write("\rbatch 3/10")  # a progress bar redrawn in place passes at once
    assert target.getvalue().endswith("last\rbatch 3/10")
    out.write(" done")
    out.close_partial()
    assert target.getvalue().endswith("last\rbatch 3/10 done")
    assert out.isatty() and out.getvalue() == target.getvalue()  # the rest is the target's
