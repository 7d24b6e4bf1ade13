"""The driver's offline step for a distributed run: the shard set each worker reads.

``ensure_owner_shards`` makes a METIS set with every shard's feature rows on first use
(cached by the graph's hash), makes a cached set again when it predates feature rows,
and refuses a given ``dist.shards`` with another number of shards or another graph.
"""

from __future__ import annotations

import os

import pytest

from margo_dist.config import load_config
from margo_dist.data.formats import read_dataset_cfg
from margo_dist.data.synth import SynthSpec, write_synthetic
from margo_dist.dist.launch import ensure_owner_shards
from margo_dist.errors import ConfigError
from margo_dist.graph.build import ensure_graphs
from margo_dist.graph.partition import MANIFEST, partition_graphs, read_shard_manifest

SPEC = SynthSpec(n_users=60, n_items=40, n_interactions=480, modality_dims={"image": 8, "text": 6}, seed=2)


def config(path: str, *extra: str):
    return load_config("configs/default.yaml", [f"data.path={path}", "graph.user_k=4", "graph.item_k=3",
                                                "train.progress=false", *extra])


def test_a_set_is_made_once_with_feature_rows_and_an_older_cached_one_is_made_again(tmp_path):
    path = str(tmp_path / "data")
    write_synthetic(SPEC, path, "mmrec")
    cfg = config(path)
    url = ensure_owner_shards(cfg, 2, progress=False)
    assert sorted(read_shard_manifest(url)["feature_rows"]) == ["image", "text"]
    stamp = os.stat(os.path.join(url, MANIFEST)).st_mtime_ns
    assert ensure_owner_shards(cfg, 2, progress=False) == url
    assert os.stat(os.path.join(url, MANIFEST)).st_mtime_ns == stamp  # cached: not made again
    ds = read_dataset_cfg(cfg.data)
    art = ensure_graphs(ds, path, cfg.graph, cfg.data.modalities)
    partition_graphs(art, cfg.data.modalities, url, 2, "metis")  # as sets were made before feature rows
    assert read_shard_manifest(url)["feature_rows"] == {}
    assert ensure_owner_shards(cfg, 2, progress=False, ds=ds) == url
    assert sorted(read_shard_manifest(url)["feature_rows"]) == ["image", "text"]


def test_a_given_shard_set_must_have_n_shards_of_this_graph(tmp_path):
    path = str(tmp_path / "data")
    write_synthetic(SPEC, path, "mmrec")
    url = ensure_owner_shards(config(path), 2, progress=False)
    with pytest.raises(ConfigError, match=r"has 2 shards, dist.workers=3"):
        ensure_owner_shards(config(path, f"dist.shards={url}"), 3, progress=False)
    other = config(path, f"dist.shards={url}", "graph.item_k=4")
    with pytest.raises(ConfigError, match=r"other data or graph parameters \(graph_key '[0-9a-f]+'.*gives '[0-9a-f]+'"):
        ensure_owner_shards(other, 2, progress=False)
    assert ensure_owner_shards(config(path, f"dist.shards={url}"), 2, progress=False) == url
