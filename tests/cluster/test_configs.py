"""The cluster configs in cluster/ parse and hold what the recipe relies on."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from margo_dist.config import load_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def entrypoint_config(entrypoint: str):
    """The typed config of a ``margo-dist train --config FILE key=value ...`` entrypoint."""
    words = shlex.split(entrypoint)
    assert words[:3] == ["margo-dist", "train", "--config"], words
    return load_config(str(CLUSTER.parent / words[3]), words[4:])  # unknown keys and bad values raise


def test_the_cluster_launcher_config_starts_every_node_with_token_auth():
    cfg = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu = [t for name, t in types.items() if name != cfg["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert gpu and gpu[0]["min_workers"] >= 2  # two GPU workers for dist.workers=2
    assert any(target.endswith("margo-token") for target in cfg["file_mounts"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cfg[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c and "RAY_AUTH_TOKEN_PATH=" in c for c in start), key
    assert any("pip install -e ~/margo-dist" in c for c in cfg["setup_commands"])
    assert any("torch==2.13.0" in c for c in cfg["setup_commands"])


def test_the_rayjob_manifest_runs_a_valid_gpu_training_command_with_token_auth():
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["rayClusterSpec"]["authOptions"]["mode"] == "token"
    cfg = entrypoint_config(spec["entrypoint"])
    assert cfg.dist.use_gpu and cfg.dist.workers >= 1
    assert "://" in cfg.run.dir and "://" in cfg.data.path  # storage every pod sees
    gpus = sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get(
        "nvidia.com/gpu", 0)) for g in spec["rayClusterSpec"]["workerGroupSpecs"])
    assert gpus >= cfg.dist.workers, (gpus, cfg.dist.workers)  # one GPU per worker


def test_the_recipe_command_in_the_cluster_readme_is_a_valid_config():
    text = (CLUSTER / "README.md").read_text()
    start = text.index("margo-dist train --config")
    command = text[start: text.index("\n    ray job status", start)].replace("\\\n", " ")
    cfg = entrypoint_config(command)
    assert cfg.dist.workers == 2
