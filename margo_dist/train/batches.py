"""Training triplets: every training pair once per epoch, negatives uniform over items."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from margo_dist.data.dataset import pair_codes


class TripletSampler:
    """Shuffled (user, positive, negative) batches with negatives the user has not trained on.

    Negatives are uniform over all items (docs/equations.md section 11) and
    re-drawn when they hit one of the user's training items; membership is a binary
    search in the sorted pair codes (``user * n_items + item``), so it stays vectorised.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int, batch_size: int) -> None:
        if users.size == 0:
            raise ValueError("no training interactions to sample from")
        self.users = users.astype(np.int64)
        self.items = items.astype(np.int64)
        self.n_items = n_items
        self.batch_size = batch_size
        self.keys = np.unique(pair_codes(self.users, self.items, n_items))
        counts = np.bincount(self.users)
        if np.any(counts[counts > 0] >= n_items):
            bad = int(np.flatnonzero(counts >= n_items)[0])
            raise ValueError(f"user {bad} has interacted with every item: no negative exists")

    def __len__(self) -> int:
        return (self.users.size + self.batch_size - 1) // self.batch_size

    def negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        neg = rng.integers(0, self.n_items, size=users.size)
        todo = np.arange(users.size)
        while todo.size:
            keys = pair_codes(users[todo], neg[todo], self.n_items)
            pos = np.searchsorted(self.keys, keys)
            hit = (pos < self.keys.size) & (self.keys[np.minimum(pos, self.keys.size - 1)] == keys)
            todo = todo[hit]
            neg[todo] = rng.integers(0, self.n_items, size=todo.size)
        return neg

    def epoch(self, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        order = rng.permutation(self.users.size)
        for start in range(0, order.size, self.batch_size):
            idx = order[start:start + self.batch_size]
            u = self.users[idx]
            yield u, self.items[idx], self.negatives(u, rng)
