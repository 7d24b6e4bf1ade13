"""The toy dataset the data tests share, written by hand (not by the code under test)."""

from __future__ import annotations

import os

import numpy as np

# (user, item, x_label); user 2 and item 4 have no interaction; train items are 0 and 1.
ROWS = [(0, 0, 0), (0, 1, 0), (0, 2, 1), (1, 1, 0), (1, 3, 2), (3, 0, 0), (3, 2, 1), (3, 3, 2), (1, 0, 0)]
# Exact in float16 too, so reads in either feature dtype compare equal.
IMAGE = np.arange(15, dtype=np.float32).reshape(5, 3) / 4
TEXT = -np.arange(10, dtype=np.float32).reshape(5, 2) / 8
HEADER = "userID\titemID\tx_label"


def write_mmrec(folder, rows=ROWS, feats=None, header=HEADER, name="toy") -> str:
    """An MMRec folder: ``<name>.inter`` and one ``<modality>_feat.npy`` per entry of ``feats``.

    ``rows`` are written under ``header`` as they are, field by field, so a malformed
    row stays malformed; ``feats`` defaults to IMAGE and TEXT.
    """
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.inter"), "w") as fh:
        fh.write(header + "\n")
        fh.writelines("\t".join(str(v) for v in row) + "\n" for row in rows)
    for mod, arr in (feats if feats is not None else {"image": IMAGE, "text": TEXT}).items():
        np.save(os.path.join(folder, f"{mod}_feat.npy"), arr)
    return folder
