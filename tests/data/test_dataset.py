"""Dataset helpers: pair codes."""

from __future__ import annotations

import numpy as np

from margo_dist.data.dataset import pair_codes, split_pair_codes


def test_pair_codes_sort_as_pairs_and_invert() -> None:
    users = np.array([2, 0, 1, 0], dtype=np.int32)
    items = np.array([0, 4, 3, 1], dtype=np.int32)
    codes = pair_codes(users, items, 5)
    assert codes.dtype == np.int64 and codes.tolist() == [10, 4, 8, 1]
    assert np.argsort(codes).tolist() == np.lexsort((items, users)).tolist()
    u, i = split_pair_codes(codes, 5)
    assert u.tolist() == users.tolist() and i.tolist() == items.tolist()


def test_pair_codes_broadcast_and_no_int32_overflow() -> None:
    assert pair_codes(np.arange(2)[:, None], np.array([[0, 2]]), 3).tolist() == [[0, 2], [3, 5]]
    big = pair_codes(np.array([70_000], dtype=np.int32), np.array([1], dtype=np.int32), 70_000)
    assert big.tolist() == [70_000 * 70_000 + 1]
