"""Where training's graph artefacts come from: the artefact cache or a shard set.

Kept apart from :mod:`margo_dist.graph.build` (which makes the artefacts) and
:mod:`margo_dist.graph.partition` (which splits them into shards), since choosing
between the two needs both, and partition itself reads build's ``GraphArtifacts``.
"""

from __future__ import annotations

from margo_dist.config import GraphConfig
from margo_dist.data import io as mio
from margo_dist.data.dataset import Dataset
from margo_dist.errors import DataError
from margo_dist.graph.build import GraphArtifacts, check_modalities, ensure_graphs, graph_key


def load_graph_source(ds: Dataset, ds_url: str, cfg: GraphConfig, modalities: list[str] | None = None,
                      build: bool = True, progress: bool = False) -> GraphArtifacts:
    """The artefacts training uses: from the shard set ``cfg.shards`` when set, else the cache.

    A shard set is accepted only if it was made from this dataset with these graph
    parameters (same ``graph_key``), so a stale set cannot silently train another graph.
    """
    if not cfg.shards:
        return ensure_graphs(ds, ds_url, cfg, modalities, build=build, progress=progress)
    # imported here: partition loads DGL, which cache-only training never needs
    from margo_dist.graph.partition import artifacts_from_shards, read_shard_manifest

    mods = check_modalities(ds, modalities)
    key = graph_key(ds, cfg, mods)
    man = read_shard_manifest(cfg.shards)
    if man["graph_key"] != key:
        raise DataError(f"graph.shards={cfg.shards!r}: the shards were made from other data or graph parameters "
                        f"(graph_key {man['graph_key']!r}, this dataset and config give {key!r}: item_k={cfg.item_k}, "
                        f"user_k={cfg.user_k}, modalities {mods}); rerun `margo-dist data partition`")
    return artifacts_from_shards(cfg.shards)


def load_graph_by_key(ds_url: str, cfg: GraphConfig, key: str, modalities: list[str]) -> GraphArtifacts:
    """The artefacts of graph ``key`` (a shard manifest's), found without reading the dataset.

    A distributed worker cannot compute the key (that hashes every feature row); the
    driver built the artefacts and the shard set under it. From ``cfg.shards`` when set,
    else the cache; either must hold that key with these modalities.
    """
    from margo_dist.graph.build import MANIFEST, graphs_dir, load_graphs

    if cfg.shards:
        from margo_dist.graph.partition import artifacts_from_shards

        art, where = artifacts_from_shards(cfg.shards), f"graph.shards={cfg.shards!r}"
    else:
        folder = graphs_dir(ds_url, cfg, key)
        if not mio.exists(mio.join(folder, MANIFEST)):
            raise DataError(f"graph artefacts {key} for dataset {ds_url!r} are not at {folder}; the driver builds "
                            "them before it starts the workers (is graph.cache_dir a path every node sees?)")
        art, where = load_graphs(folder), folder
    if art.key != key or sorted(art.modalities) != sorted(modalities):
        raise DataError(f"{where}: graph key {art.key!r} with modalities {art.modalities}, the shard set needs "
                        f"{key!r} with {modalities}")
    return art
