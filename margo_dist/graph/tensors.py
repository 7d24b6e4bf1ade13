"""Edge lists with normalised weights: what the encoder's message passing consumes.

The same edge-list form serves the whole graph (here) and sampled blocks
(``margo_dist.graph.sample``), so one implementation of the layer maths covers both.
Weights always use full-graph degrees.

Node numbering on the bipartite side: users first, then items (``0..n_users-1``,
``n_users..``), both for the whole graph and within a block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from margo_dist.errors import ConfigError
from margo_dist.graph.build import GraphArtifacts, padded_edges


@dataclass
class CSR:
    """Rows of a sparse matrix: row r holds ``indices[indptr[r]:indptr[r+1]]`` with ``weights``.

    Plain index tensors rather than a torch sparse tensor: the product with a dense
    matrix then runs as ``embedding_bag`` (``margo_dist.model.layers``), which is 2-4x
    faster on CPU than torch's sparse-dense ``mm`` on these graphs and works on GPU alike.
    Duplicate entries are allowed and add up.
    """

    indptr: Tensor  # int64 [n_rows + 1]
    indices: Tensor  # int64 [nnz], column of each entry
    weights: Tensor  # float32 [nnz]
    n_cols: int

    @classmethod
    def from_coo(cls, rows: Tensor, cols: Tensor, weights: Tensor, n_rows: int, n_cols: int) -> "CSR":
        indptr = torch.zeros(n_rows + 1, dtype=torch.int64, device=rows.device)
        torch.cumsum(torch.bincount(rows, minlength=n_rows), 0, out=indptr[1:])
        if rows.numel() < 2 or bool((rows[1:] >= rows[:-1]).all()):  # grouped already (DGL's blocks)
            return cls(indptr, cols, weights, n_cols)
        order = stable_order(rows, n_rows)
        return cls(indptr, cols.index_select(0, order), weights.index_select(0, order), n_cols)

    @property
    def n_rows(self) -> int:
        return self.indptr.numel() - 1

    def to(self, device: torch.device | str) -> "CSR":
        return CSR(self.indptr.to(device), self.indices.to(device), self.weights.to(device), self.n_cols)

    def to_dense(self) -> Tensor:
        rows = torch.repeat_interleave(torch.arange(self.n_rows, device=self.indptr.device), torch.diff(self.indptr))
        out = torch.zeros(self.n_rows, self.n_cols, dtype=self.weights.dtype, device=self.weights.device)
        return out.index_put_((rows, self.indices), self.weights, accumulate=True)


def stable_order(keys: Tensor, n_keys: int) -> Tensor:
    """``torch.argsort(keys, stable=True)`` for keys in ``[0, n_keys)``.

    On the CPU a least-significant-digit radix sort over 16-bit digits (numpy sorts
    16-bit keys by counting): 3x faster than torch's comparison sort on a sampled
    block's edges, which a sampler sorts twice per relation and step.
    """
    if keys.device.type != "cpu" or n_keys > 1 << 32:
        return torch.argsort(keys, stable=True)
    k = keys.numpy()
    order = np.argsort((k & 0xFFFF).astype(np.uint16), kind="stable")
    if n_keys > 1 << 16:
        order = order[np.argsort((k[order] >> 16).astype(np.uint16), kind="stable")]
    return torch.from_numpy(order)


@dataclass
class EdgeList:
    """Messages ``src -> dst`` with weight ``w``: an ``n_dst x n_src`` sparse matrix.

    The row form and its transpose are built once here (for the forward product and
    its gradient), not per call: CSR products are several times faster on CPU than
    gathering E x F messages and scattering them back.
    """

    src: Tensor  # int64 [E]
    dst: Tensor  # int64 [E]
    w: Tensor  # float32 [E]
    n_dst: int
    n_src: int
    # position of each dst node among the src nodes (for residuals); None: dst = src[:n_dst]
    dst_in_src: Tensor | None = None
    # the row form and its transpose; built from the edges unless given (already built)
    csr: CSR = field(default=None, repr=False)  # type: ignore[assignment]
    csr_t: CSR = field(default=None, repr=False)  # type: ignore[assignment]
    # ``dst_in_src`` as (start, length) runs of consecutive src positions, when its maker knows
    # it is (a sampled block: its users, then its items): the residual is then slices, not a gather
    dst_runs: list[tuple[int, int]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.csr is None:
            self.csr = CSR.from_coo(self.dst, self.src, self.w, self.n_dst, self.n_src)
        if self.csr_t is None:
            self.csr_t = CSR.from_coo(self.src, self.dst, self.w, self.n_src, self.n_dst)
        if self.dst_runs is not None and (self.dst_in_src is None
                                          or sum(n for _, n in self.dst_runs) != self.dst_in_src.numel()):
            raise ValueError(f"EdgeList: dst_runs {self.dst_runs} do not describe dst_in_src")

    def to(self, device: torch.device | str) -> "EdgeList":
        """This edge list on ``device``; the CSR forms are moved, not rebuilt."""
        src = self.src.to(device)
        if src is self.src:
            return self
        where = None if self.dst_in_src is None else self.dst_in_src.to(device)
        return EdgeList(src, self.dst.to(device), self.w.to(device), self.n_dst, self.n_src, where,
                        self.csr.to(device), self.csr_t.to(device), self.dst_runs)

    def rows(self, dst: Tensor) -> "EdgeList":
        """The edges into the dst nodes ``dst`` (ids of this list's dst side), renumbered 0..len-1.

        Only valid where dst ids are also src positions (``dst_in_src`` is None), as for
        the whole graph's homogeneous layers: the residual then reads ``x_src[dst]``.
        """
        if self.dst_in_src is not None:
            raise ValueError("EdgeList.rows needs an edge list whose dst nodes are its first src nodes")
        # index_select throughout: on the CPU it is several times faster than advanced indexing
        start = self.csr.indptr.index_select(0, dst)
        count = self.csr.indptr.index_select(0, dst + 1) - start
        local = torch.repeat_interleave(torch.arange(dst.numel(), device=dst.device), count)
        indptr = torch.zeros(dst.numel() + 1, dtype=torch.int64, device=dst.device)
        torch.cumsum(count, 0, out=indptr[1:])
        pos = torch.arange(local.numel(), device=dst.device) + (start - indptr[:-1]).index_select(0, local)
        # the selected edges are already grouped by (new) row: the row form needs no sort
        rows = CSR(indptr, self.csr.indices.index_select(0, pos), self.csr.weights.index_select(0, pos), self.n_src)
        return EdgeList(rows.indices, local, rows.weights, dst.numel(), self.n_src, dst, csr=rows)

    def select_dst(self, x_src: Tensor) -> Tensor:
        """The rows of ``x_src`` that belong to this edge list's dst nodes."""
        if self.dst_in_src is not None:
            return x_src.index_select(0, self.dst_in_src)
        # the whole graph: no slice, whose backward would zero-fill and copy a full-size gradient
        return x_src if x_src.shape[0] == self.n_dst else x_src[: self.n_dst]


@dataclass
class ComputeGraph:
    """What one encoder pass needs: inputs, bipartite steps, homogeneous layer, outputs.

    ``bipartite`` has one edge list per propagation step, input side first; the
    last one's dst nodes are the users (first ``n_mid_users``) and items whose ``R``
    the homogeneous layer reads. ``item_item``/``user_user`` map those to the output
    items/users. Global ids of the input and output nodes are None for "all, in
    order" (the whole graph).
    """

    bipartite: list[EdgeList]
    n_mid_users: int
    item_item: EdgeList
    user_user: EdgeList
    input_users: Tensor | None = None
    input_items: Tensor | None = None
    output_users: Tensor | None = None
    output_items: Tensor | None = None

    def split_mid(self, r: Tensor) -> tuple[Tensor, Tensor]:
        """The last propagation step's output rows as (users, items).

        ``torch.split`` rather than two slices: its backward writes one gradient, where
        each slice's backward would zero-fill a full-size copy.
        """
        return torch.split(r, [self.n_mid_users, r.shape[0] - self.n_mid_users])

    def to(self, device: torch.device | str) -> "ComputeGraph":
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return ComputeGraph([e.to(device) for e in self.bipartite], self.n_mid_users, self.item_item.to(device),
                            self.user_user.to(device), move(self.input_users), move(self.input_items),
                            move(self.output_users), move(self.output_items))


@dataclass
class FullGraph:
    """The three relations of the DRAGON encoder over every node."""

    n_users: int
    n_items: int
    bipartite: EdgeList  # users+items -> users+items, D^-1/2 A D^-1/2
    item_item: EdgeList  # items -> items, sum_m s_m * normalised kNN_m
    user_user: EdgeList  # users -> users, softmax of co-occurrence counts

    def to(self, device: torch.device | str) -> "FullGraph":
        return FullGraph(self.n_users, self.n_items, self.bipartite.to(device), self.item_item.to(device),
                         self.user_user.to(device))

    def compute_graph(self, n_layers: int) -> ComputeGraph:
        """Every node, ``n_layers`` propagation steps on the bipartite graph."""
        return ComputeGraph([self.bipartite] * n_layers, self.n_users, self.item_item, self.user_user)


def knn_mix_weights(modalities: list[str], mix: dict[str, float]) -> dict[str, float]:
    """s_m per modality: configured, else DRAGON's 0.1 image / 0.9 text, else uniform."""
    if mix:
        missing = [m for m in modalities if m not in mix]
        if missing:
            raise ConfigError(f"graph.knn_mix gives no weight for modalities {missing}")
        return {m: float(mix[m]) for m in modalities}
    if sorted(modalities) == ["image", "text"]:
        return {"image": 0.1, "text": 0.9}
    return {m: 1.0 / len(modalities) for m in modalities}


def bipartite_edges(user: np.ndarray, item: np.ndarray, user_degree: np.ndarray, item_degree: np.ndarray,
                    n_users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both directions of each training edge with weight 1/sqrt(d_u d_i)."""
    w = 1.0 / np.sqrt(user_degree[user] * item_degree[item])
    src = np.concatenate([user, item + n_users])
    dst = np.concatenate([item + n_users, user])
    return src, dst, np.concatenate([w, w]).astype(np.float32)


def knn_edges(idx: np.ndarray, rows: np.ndarray | None = None,
              row_length: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item i aggregates its kNN list; weight 1/sqrt(deg_i deg_j) with deg = list length.

    Follows DRAGON's normalisation of the (unsymmetrised) top-k indicator matrix,
    where both sides use row degrees; self-loops are excluded (the residual adds
    the item itself). ``rows`` (item id of each row of ``idx``) and ``row_length``
    (every item's list length) serve a table of some items' rows only (a shard's field).
    """
    src, dst, valid = padded_edges(idx)
    if rows is not None:
        dst = rows[dst]
    deg = (valid.sum(axis=1) if row_length is None else row_length).astype(np.float64)
    w = 1.0 / np.sqrt(deg[dst] * np.maximum(deg[src], 1.0))
    return src, dst, w.astype(np.float32)


def user_edges(nbr: np.ndarray, cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """User u aggregates its co-occurrence neighbours with softmax(count) weights."""
    src, dst, valid = padded_edges(nbr)
    logits = np.where(valid, cnt.astype(np.float64), -np.inf)
    top = np.max(np.where(valid, logits, 0.0), axis=1, keepdims=True)
    ex = np.where(valid, np.exp(logits - top), 0.0)
    denom = ex.sum(axis=1, keepdims=True)
    a = np.divide(ex, denom, out=np.zeros_like(ex), where=denom > 0)
    return src, dst, a[valid].astype(np.float32)


def relation_graph(n_users: int, n_items: int, train: tuple[np.ndarray, np.ndarray],
                   degrees: tuple[np.ndarray, np.ndarray], knn: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                   mix: dict[str, float], users: tuple[np.ndarray, np.ndarray, np.ndarray]) -> FullGraph:
    """The three edge lists from their parts: training pairs (user, item) with both sides'
    degrees, each modality's kNN edges (src, dst, w) mixed by the weights ``mix`` names
    (``knn_mix_weights``), and the co-user edges."""
    s, d, w = bipartite_edges(train[0], train[1], degrees[0], degrees[1], n_users)
    n_nodes = n_users + n_items
    bip = EdgeList(torch.from_numpy(s), torch.from_numpy(d), torch.from_numpy(w), n_nodes, n_nodes)
    weights = knn_mix_weights(list(knn), mix)
    ii = EdgeList(torch.from_numpy(np.concatenate([e[0] for e in knn.values()])),
                  torch.from_numpy(np.concatenate([e[1] for e in knn.values()])),
                  torch.from_numpy(np.concatenate([e[2] * weights[m] for m, e in knn.items()]).astype(np.float32)),
                  n_items, n_items)
    uu = EdgeList(*(torch.from_numpy(a) for a in users), n_users, n_users)
    return FullGraph(n_users, n_items, bip, ii, uu)


def full_graph(art: GraphArtifacts, modalities: list[str], mix: dict[str, float]) -> FullGraph:
    """Edge lists of every relation from the cached artefacts."""
    missing = [m for m in modalities if m not in art.item_knn]
    if missing:
        raise ConfigError(f"graph artefacts {art.key} have no kNN graph for modality {missing[0]!r}")
    return relation_graph(art.n_users, art.n_items, (art.train_user, art.train_item),
                          (art.user_degree, art.item_degree), {m: knn_edges(art.item_knn[m][0]) for m in modalities},
                          mix, user_edges(art.user_nbr, art.user_cnt))


@dataclass
class Batch:
    """One training step's input: its compute graph and the triplets in two numberings."""

    graph: ComputeGraph
    users: Tensor  # global ids [B]
    pos: Tensor
    neg: Tensor
    users_local: Tensor  # rows of the graph's output users / items [B]
    # None: the output items are the step's items this worker owns, and each triplet's item
    # vectors come from the item's owner (sampled mode, ``Recommender.item_vectors``)
    pos_local: Tensor | None
    neg_local: Tensor | None
    # triplets in the whole step when this batch is one worker's part of it; 0: the whole step
    step_size: int = 0
    # the rows this worker regularises when the batch is its part of a step: the whole step's
    # users, and positives then negatives, that it owns (None: this batch's own triplets)
    reg_users: Tensor | None = None
    reg_items: Tensor | None = None
    # the batch's triplets whose loss this worker takes: all of them, or (a whole-graph step,
    # which every worker rates whole) its share of them (``dist/step.py``)
    loss_rows: slice = field(default_factory=lambda: slice(None))

    def to(self, device: torch.device | str) -> "Batch":
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return Batch(self.graph.to(device), self.users.to(device), self.pos.to(device), self.neg.to(device),
                     self.users_local.to(device), move(self.pos_local), move(self.neg_local), self.step_size,
                     move(self.reg_users), move(self.reg_items), self.loss_rows)

    @property
    def step_triplets(self) -> int:
        """Triplets in the whole step this batch belongs to: every mean of the loss divides by it."""
        return self.step_size or self.users.numel()

    def regularised(self) -> tuple[Tensor, Tensor]:
        """(users, positives then negatives) whose rows this batch's loss regularises."""
        if self.reg_users is None or self.reg_items is None:
            return self.users, torch.cat([self.pos, self.neg])
        return self.reg_users, self.reg_items

    @staticmethod
    def full(graph: ComputeGraph, users: Tensor, pos: Tensor, neg: Tensor, step_size: int = 0) -> "Batch":
        """A batch on the whole graph, whose homogeneous layers output only the batch's nodes.

        Propagation still covers every node (as DRAGON does), but the last (item-item and
        user-user) layer is computed for the batch's users and items alone: the loss reads
        nothing else, and the user-user layer over every user is the largest sparse product.
        """
        if graph.input_users is not None:
            raise ValueError("Batch.full needs the whole-graph compute graph (FullGraph.compute_graph)")
        device = graph.item_item.src.device
        users, pos, neg = users.to(device), pos.to(device), neg.to(device)
        (out_users, out_items), local = Batch.output_nodes(users, pos, neg)
        g = ComputeGraph(graph.bipartite, graph.n_mid_users, graph.item_item.rows(out_items),
                         graph.user_user.rows(out_users), output_users=out_users, output_items=out_items)
        return Batch(g, users, pos, neg, *local, step_size)

    @staticmethod
    def output_nodes(users: Tensor, pos: Tensor, neg: Tensor) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, ...]]:
        """((unique users, unique items), (users_local, pos_local, neg_local)) of a batch of triplets."""
        out_users, users_local = torch.unique(users, return_inverse=True)
        out_items, items_local = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        return (out_users, out_items), (users_local, items_local[: pos.numel()], items_local[pos.numel():])
