"""The in-memory dataset every later stage consumes.

Ids are dense: users 0..n_users-1, items 0..n_items-1 (n_items is the feature
tables' row count). ``label`` is MMRec's ``x_label``: 0 train, 1 validation, 2 test.
``present`` records which (item, modality) pairs had a feature in the raw data: the
model does not read it yet (a missing row is a zero vector, as it always was).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}


def pair_codes(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """One int64 per (user, item) pair, ``user * n_items + item`` (arrays broadcast).

    Codes sort as the pairs do (by user, then item) and compare in one operation, so
    deduplication and membership tests need no two-key sort. Ids must lie in
    ``0..n_items-1`` on the item side and ``n_users * n_items`` must fit in int64.
    """
    return np.asarray(users, dtype=np.int64) * np.int64(n_items) + np.asarray(items, dtype=np.int64)


def split_pair_codes(codes: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) of :func:`pair_codes` output."""
    return codes // n_items, codes % n_items


@dataclass
class Dataset:
    """Interactions (three aligned int arrays) and one feature table per modality."""

    name: str
    n_users: int
    n_items: int
    user: np.ndarray  # int64 [n_inter]
    item: np.ndarray  # int64 [n_inter]
    label: np.ndarray  # int8 [n_inter], 0/1/2
    features: dict[str, np.ndarray]  # modality -> float [n_items, dim]
    source: str = ""
    notes: list[str] = field(default_factory=list)  # non-fatal findings (reported, not errors)
    # modality -> bool [n_items]: which items have that feature (a missing row is zeros);
    # a modality without an entry has every row; not part of the fingerprint (features are)
    present: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    def presence(self, modality: str) -> np.ndarray:
        """Bool [n_items] of the items that have ``modality``'s feature (all True when none was recorded)."""
        mask = self.present.get(modality)
        return np.ones(self.n_items, dtype=bool) if mask is None else mask

    def split(self, label: int) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of one split."""
        mask = self.label == label
        return self.user[mask], self.item[mask]

    def fingerprint(self) -> str:
        """Content hash of interactions and features (names cached artefacts)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.n_users},{self.n_items}".encode())
        for arr in (self.user, self.item, self.label):
            h.update(np.ascontiguousarray(arr).tobytes())
        for name in sorted(self.features):
            feat = self.features[name]
            h.update(f"{name}:{feat.shape}:{feat.dtype}".encode())
            rows = 65536
            for start in range(0, feat.shape[0], rows):
                h.update(np.ascontiguousarray(feat[start:start + rows]).tobytes())
        return h.hexdigest()
