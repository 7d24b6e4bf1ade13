"""experiments/crosscheck_lightgcn.py: our side of the comparison and the independent Recall@20 run without PyG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from margo_dist.data.dataset import Dataset
from margo_dist.errors import DataError

from scripts_helpers import load_script


def test_our_side_trains_rescores_and_agrees_with_the_independent_recall(tiny_data: str, tmp_path: Path) -> None:
    """run_ours: the real trainer on variant lightgcn, its saved best state re-scored by both evaluators."""
    tool = load_script("experiments/crosscheck_lightgcn.py")
    args = tool.parse_args(["--data", tiny_data, "--epochs", "2", "--seed", "1"])
    modalities = tool.modalities_of(tiny_data)
    assert sorted(modalities) == ["image", "text"]
    split = tool.load_split(tiny_data, modalities)
    cfg = tool.our_config(args, modalities[0], str(tmp_path / "ours"))
    assert (cfg.model.variant, cfg.train.max_epochs, cfg.train.patience) == ("lightgcn", 2, 2)
    ours, init_table, _graph = tool.run_ours(cfg, split)
    assert init_table.shape == (split.ds.n_users + split.ds.n_items, cfg.model.dim)
    assert len(ours.valid_curve) == 2 and ours.best_epoch in (1, 2)
    assert ours.valid == pytest.approx(ours.valid_curve[ours.best_epoch - 1])
    assert 0.0 < ours.test <= 1.0
    assert ours.independent_test == pytest.approx(ours.test, abs=1e-6)
    table = tool.table([ours]).splitlines()
    assert "independent test R@20" in table[0] and table[2].startswith("ours (margo_dist IdEncoder)")


def test_independent_recall_by_hand() -> None:
    """Two users, four items, 1-d embeddings: the expected recall is worked out in the comments."""
    tool = load_script("experiments/crosscheck_lightgcn.py")
    # user 0: train item 0, test items 1 and 2; user 1: train item 3, test item 0
    ds = Dataset(name="hand", n_users=2, n_items=4, user=np.array([0, 0, 0, 1, 1]), item=np.array([0, 1, 2, 3, 0]),
                 label=np.array([0, 2, 2, 0, 2], dtype=np.int8), features={})
    users, items = np.ones((2, 1)), np.array([[4.0], [3.0], [0.0], [2.0]])
    # seen items excluded; user 0 ranks 1, 3, 2; user 1 ranks 0, 1, 2
    assert tool.independent_recall(users, items, ds, k=1) == pytest.approx((1 / 2 + 1) / 2)
    assert tool.independent_recall(users, items, ds, k=3) == pytest.approx(1.0)


def test_pyg_edge_index_numbers_items_after_users() -> None:
    """Every training edge once per direction, items offset by n_users (built without PyG)."""
    tool = load_script("experiments/crosscheck_lightgcn.py")
    ds = Dataset(name="hand", n_users=2, n_items=3, user=np.array([0, 1, 1]), item=np.array([2, 0, 1]),
                 label=np.array([0, 0, 2], dtype=np.int8), features={})
    assert torch.equal(tool.pyg_edge_index(ds), torch.tensor([[0, 1, 4, 2], [4, 2, 0, 1]]))


def test_modalities_of_needs_a_feature_file(tmp_path: Path) -> None:
    """The trainer needs a modality listed, so a folder without features is refused up front."""
    tool = load_script("experiments/crosscheck_lightgcn.py")
    (tmp_path / "x.inter").write_text("userID\titemID\tx_label\n")
    with pytest.raises(DataError, match="no \\*_feat.npy file"):
        tool.modalities_of(str(tmp_path))


def test_whole_crosscheck_with_pyg(tiny_data: str, capsys: pytest.CaptureFixture) -> None:
    """The PyG side and the propagation check; a loose tolerance, so only a real mismatch or a crash fails."""
    pytest.importorskip("torch_geometric")
    tool = load_script("experiments/crosscheck_lightgcn.py")
    assert tool.main(["--data", tiny_data, "--epochs", "2", "--tolerance", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "propagation check" in out and "PyG LightGCN (csr)" in out and out.rstrip().endswith("PASS")
