"""Neighbour-sampled compute graphs for a batch of triplets, with DGL.

DGL samples, per layer and relation, the blocks the encoder needs: ``ui``/``iu`` for
each propagation step (input side first) and ``ii``/``uu`` for the homogeneous layer
on the batch's users and items. Each block becomes an :class:`EdgeList` whose weights
are the full-graph ones (so normalisation uses full-graph degrees), multiplied by
``in_degree / sampled_in_degree`` of the destination node for that relation when
the fan-out is finite: an unbiased estimate of the full neighbourhood sum. With
every fan-out at -1 the factor is exactly 1 and a block forward equals the
full-graph forward (tested).

Fan-outs (``sampler.fanouts``): ``ui`` and ``iu`` hold one entry per propagation
step, input side first (DGL's order); ``ii`` and ``uu`` one entry; -1 means all.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import pickle
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from margo_dist.errors import ConfigError
from margo_dist.graph.dgl_backend import dgl
from margo_dist.graph.tensors import Batch, ComputeGraph, EdgeList, FullGraph

RELATIONS = ("ui", "iu", "ii", "uu")
CANONICAL = {"ui": ("user", "ui", "item"), "iu": ("item", "iu", "user"),
             "ii": ("item", "ii", "item"), "uu": ("user", "uu", "user")}


def check_fanouts(fanouts: dict[str, list[int]], n_layers: int) -> dict[str, list[int]]:
    """Validate ``sampler.fanouts`` against the model's number of propagation steps."""
    unknown = set(fanouts) - set(RELATIONS)
    if unknown:
        raise ConfigError(f"sampler.fanouts has unknown relations {sorted(unknown)}; known: {list(RELATIONS)}")
    out = {}
    for rel in RELATIONS:
        want = n_layers if rel in ("ui", "iu") else 1
        values = fanouts.get(rel, [-1] * want)
        if want == 0:  # no propagation step (BPR-MF): the ui/iu fan-outs are not used
            values = []
        if len(values) != want:
            raise ConfigError(f"sampler.fanouts.{rel}={values} needs {want} entries (model.n_layers={n_layers})")
        for v in values:
            if v == 0 or v < -1:
                raise ConfigError(f"sampler.fanouts.{rel}={values}: each entry is -1 (all) or > 0")
        out[rel] = list(values)
    return out


class BlockSampler:
    """Samples :class:`ComputeGraph` s from the full graph's relations."""

    def __init__(self, full: FullGraph, fanouts: dict[str, list[int]], n_layers: int) -> None:
        self.n_layers = n_layers
        self.fanouts = check_fanouts(fanouts, n_layers)
        n_u = full.n_users
        bip = full.bipartite
        to_item = bip.src < n_u
        rel_edges = {
            "ui": (bip.src[to_item], bip.dst[to_item] - n_u, bip.w[to_item]),
            "iu": (bip.src[~to_item] - n_u, bip.dst[~to_item], bip.w[~to_item]),
            "ii": (full.item_item.src, full.item_item.dst, full.item_item.w),
            "uu": (full.user_user.src, full.user_user.dst, full.user_user.w),
        }
        self.graph = dgl.heterograph({CANONICAL[r]: (e[0], e[1]) for r, e in rel_edges.items()},
                                     num_nodes_dict={"user": n_u, "item": full.n_items})
        self.weights = {r: e[2].float() for r, e in rel_edges.items()}
        self.in_degree = {r: self.graph.in_degrees(etype=CANONICAL[r]).float() for r in RELATIONS}
        layers = [{CANONICAL["ui"]: self.fanouts["ui"][s], CANONICAL["iu"]: self.fanouts["iu"][s],
                   CANONICAL["ii"]: 0, CANONICAL["uu"]: 0} for s in range(n_layers)]
        layers.append({CANONICAL["ui"]: 0, CANONICAL["iu"]: 0, CANONICAL["ii"]: self.fanouts["ii"][0],
                       CANONICAL["uu"]: self.fanouts["uu"][0]})
        self.layer_fanouts = layers
        self.sampler = dgl.dataloading.NeighborSampler(layers)

    def _relation(self, block: object, rel: str, fanout: int) -> tuple[Tensor, Tensor, Tensor]:
        """(src, dst, weight) of one relation in a block, in the block's per-type numbering."""
        etype = CANONICAL[rel]
        src, dst = block.edges(etype=etype)  # type: ignore[attr-defined]
        eid = block.edges[etype].data[dgl.EID]  # type: ignore[attr-defined]
        w = self.weights[rel][eid]
        if fanout != -1 and src.numel():
            n_dst = block.num_dst_nodes(etype[2])  # type: ignore[attr-defined]
            sampled = torch.bincount(dst, minlength=n_dst).float()
            dst_global = block.dstnodes[etype[2]].data[dgl.NID]  # type: ignore[attr-defined]
            factor = self.in_degree[rel][dst_global] / sampled.clamp(min=1.0)
            w = w * factor[dst]
        return src, dst, w

    def _bipartite(self, block: object, step: int) -> EdgeList:
        n_us, n_is = block.num_src_nodes("user"), block.num_src_nodes("item")  # type: ignore[attr-defined]
        n_ud, n_id = block.num_dst_nodes("user"), block.num_dst_nodes("item")  # type: ignore[attr-defined]
        s1, d1, w1 = self._relation(block, "ui", self.fanouts["ui"][step])
        s2, d2, w2 = self._relation(block, "iu", self.fanouts["iu"][step])
        src = torch.cat([s1, s2 + n_us])
        dst = torch.cat([d1 + n_ud, d2])
        # DGL puts a block's dst nodes first among its src nodes of their type
        where = torch.cat([torch.arange(n_ud), n_us + torch.arange(n_id)])
        return EdgeList(src, dst, torch.cat([w1, w2]), n_ud + n_id, n_us + n_is, where,
                        dst_runs=[(0, n_ud), (n_us, n_id)])

    def _homogeneous(self, block: object, rel: str) -> EdgeList:
        ntype = CANONICAL[rel][0]
        src, dst, w = self._relation(block, rel, self.fanouts[rel][0])
        return EdgeList(src, dst, w, block.num_dst_nodes(ntype), block.num_src_nodes(ntype))  # type: ignore

    def sample(self, users: Tensor, items: Tensor) -> ComputeGraph:
        """The compute graph whose outputs are ``users`` and ``items``, in that order."""
        for name, ids in (("user", users), ("item", items)):  # DGL aborts the process on a bad id
            n = self.graph.num_nodes(name)
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
                raise ValueError(f"BlockSampler.sample: {name} ids span [{int(ids.min())}, {int(ids.max())}], "
                                 f"the graph has {n} {name}s")
        _, _, blocks = self.sampler.sample_blocks(self.graph, {"user": users, "item": items})
        top = blocks[-1]
        out_users = top.dstnodes["user"].data[dgl.NID]
        out_items = top.dstnodes["item"].data[dgl.NID]
        if not (torch.equal(out_users, users) and torch.equal(out_items, items)):
            raise RuntimeError("DGL returned output nodes in another order than the seeds")
        first = blocks[0]
        return ComputeGraph(
            bipartite=[self._bipartite(b, s) for s, b in enumerate(blocks[:-1])],
            n_mid_users=top.num_src_nodes("user"),
            item_item=self._homogeneous(top, "ii"), user_user=self._homogeneous(top, "uu"),
            input_users=first.srcnodes["user"].data[dgl.NID], input_items=first.srcnodes["item"].data[dgl.NID],
            output_users=out_users, output_items=out_items)

    def batch(self, u: np.ndarray, i: np.ndarray, j: np.ndarray, items: np.ndarray | None = None) -> Batch:
        """Sample for one batch of triplets (global ids).

        ``items`` (sorted, distinct) makes those the compute graph's output items instead of
        the triplets' own: a worker encodes the step's items it owns and their owners send
        each triplet's item vectors (``Batch.pos_local`` is then None).
        """
        users, pos, neg = (torch.from_numpy(np.ascontiguousarray(a)) for a in (u, i, j))
        if items is None:
            (out_users, out_items), local = Batch.output_nodes(users, pos, neg)
            return Batch(self.sample(out_users, out_items), users, pos, neg, *local)
        out_users, users_local = torch.unique(users, return_inverse=True)
        return Batch(self.sample(out_users, torch.from_numpy(np.ascontiguousarray(items))), users, pos, neg,
                     users_local, None, None)


Request = tuple[np.ndarray, ...]  # (users, positives, negatives[, output items]): ``BlockSampler.batch``'s


class OneBuffer:
    """An object whose tensors travel in one buffer: what a sampler process sends.

    A DataLoader hands each tensor of a batch to the training process as its own
    shared-memory segment, and the training process fetches every segment's file
    descriptor from the sampler in a round trip of its own: a sampled batch holds
    about fifty tensors, and receiving it cost 12-70 ms of the training process's
    step (benchmarks/bench_local.py). Copied into one buffer the batch is one segment;
    ``unpack`` gives the object back with its tensors as views of that buffer.
    """

    def __init__(self, obj: Any) -> None:
        tensors: list[Tensor] = []
        index: dict[int, int] = {}  # a tensor named twice (an edge list's src and its CSR's) travels once

        def persistent_id(o: Any) -> int | None:
            if not isinstance(o, Tensor):
                return None
            if id(o) not in index:
                index[id(o)] = len(tensors)
                tensors.append(o)
            return index[id(o)]

        body = io.BytesIO()
        pickler = pickle.Pickler(body, protocol=pickle.HIGHEST_PROTOCOL)
        pickler.persistent_id = persistent_id  # type: ignore[method-assign]
        pickler.dump(obj)
        self.body = body.getvalue()
        self.layout: list[tuple[torch.dtype, tuple[int, ...], int, int]] = []  # dtype, shape, start, bytes
        offset = 0
        for t in tensors:
            n = t.numel() * t.element_size()
            self.layout.append((t.dtype, tuple(t.shape), offset, n))
            offset += -(-n // 8) * 8  # every tensor starts 8-byte aligned
        self.data = torch.empty(offset, dtype=torch.uint8)
        for t, (_, _, start, n) in zip(tensors, self.layout):
            self.data[start: start + n].copy_(t.detach().reshape(-1).view(torch.uint8))

    def unpack(self) -> Any:
        views = [self.data[start: start + n].view(dtype).view(shape) for dtype, shape, start, n in self.layout]
        unpickler = pickle.Unpickler(io.BytesIO(self.body))
        unpickler.persistent_load = views.__getitem__  # type: ignore[method-assign]
        return unpickler.load()


class _EpochBatches(IterableDataset):
    """One epoch of sampled batches; worker k produces batches k, k+W, ... (order is kept)."""

    def __init__(self, block_sampler: BlockSampler, triplets: list[Request], seed: int) -> None:
        self.block_sampler = block_sampler
        self.triplets = triplets
        self.seed = seed

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for index in range(wid, len(self.triplets), nw):
            dgl.seed(self.seed + index)  # the sample depends on the batch, not on the worker
            batch = self.block_sampler.batch(*self.triplets[index])
            yield batch if info is None else OneBuffer(batch)


def _as_is(batch: OneBuffer) -> OneBuffer:
    return batch


def sampled_batches(block_sampler: BlockSampler, triplets: list[Request], seed: int,
                    num_workers: int) -> Iterator[Batch]:
    """Batches sampled in ``num_workers`` DataLoader processes (0: in this process), one per
    request (``BlockSampler.batch``'s arguments)."""
    dataset = _EpochBatches(block_sampler, triplets, seed)
    if num_workers <= 0:
        return iter(dataset)
    # fork shares the sampling graph with the workers instead of pickling it
    context = "fork" if "fork" in mp.get_all_start_methods() else None
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_as_is,
                        prefetch_factor=4, persistent_workers=False, multiprocessing_context=context)
    return (shipped.unpack() for shipped in loader)
