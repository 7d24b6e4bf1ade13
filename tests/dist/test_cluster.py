"""The storage check every distributed run makes before its workers start (``dist/cluster.py``).

A two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``, stopped by the
fixture): both nodes share one disk, so a probe that pretends the second node lacks the
mount stands in for a node-local path on a real cluster.
"""

from __future__ import annotations

import os

import pytest

from margo_dist.config import load_config
from margo_dist.dist.cluster import require_shared_storage, unseen_by_nodes
from margo_dist.errors import ConfigError

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_path_every_node_sees_passes_and_leaves_no_marker(two_nodes, tmp_path):
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    run = tmp_path / "run"
    assert unseen_by_nodes({"run.dir": str(run), "data.path": str(tmp_path)}) == {}
    require_shared_storage({"run.dir": str(run)})
    assert os.listdir(run) == []  # the marker is removed again


def test_a_path_one_node_does_not_see_is_refused_naming_it_and_the_node(two_nodes, tmp_path):
    head = ray.get_runtime_context().get_node_id()  # the driver runs on the head

    def head_only(path: str) -> bool:
        return ray.get_runtime_context().get_node_id() == head and os.path.exists(path)

    other = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head]
    urls = {"run.dir": str(tmp_path / "run"), "data.path": "s3://bucket/data"}
    assert unseen_by_nodes(urls, head_only) == {"run.dir": other}  # an object store URL is not probed
    with pytest.raises(ConfigError, match=r"run\.dir=.*run is a local path that node\(s\) .* do not see"):
        require_shared_storage(urls, head_only)


def test_memory_urls_are_refused_for_workers_when_the_config_is_read():
    with pytest.raises(ConfigError, match=r"run\.dir=memory://x with dist\.workers=2: memory:// is private"):
        load_config("configs/default.yaml", ["run.dir=memory://x", "dist.workers=2"])
    load_config("configs/default.yaml", ["run.dir=memory://x"])  # local mode: one process, fine
