"""The run's plots: weight histograms on the weights' own range, learning curves by epoch per stage."""

from __future__ import annotations

import numpy as np

from margo_dist.train.plots import learning_curves, weight_histogram


def _bar_counts(ax) -> list[int]:
    return [int(sum(rect.get_height() for rect in group)) for group in ax.containers]


def test_two_modalities_one_panel_with_each_planted_group_its_own_histogram():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.48, 0.52, size=200)  # a narrow spread: the range follows it
    weights = np.stack([image, 1 - image], axis=1)
    truth = np.zeros((200, 2), dtype=bool)
    truth[:30, 0] = True
    truth[50:120, 1] = True
    fig = weight_histogram(weights, ["image", "text"], truth)
    (ax,) = fig.axes
    assert _bar_counts(ax) == [100, 30, 70]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [lab.split(":")[0] for lab in labels] == ["clean", "image noisy (planted)", "text noisy (planted)"]
    assert f"median {np.median(image[:30]):.3f}" in labels[1]
    assert ax.get_xlabel() == "learned image weight (the text weight is 1 minus it)"
    lo, hi = ax.get_xlim()
    assert 0.47 < lo < image.min() and image.max() < hi < 0.53


def test_three_modalities_a_panel_each_and_missing_pairs_left_out():
    weights = np.full((10, 3), 1 / 3)
    weights[:2] = [0.0, 0.5, 0.5]  # items 0, 1 miss the first modality: weight 0 by construction
    present = np.ones((10, 3), dtype=bool)
    present[:2, 0] = False
    fig = weight_histogram(weights, ["image", "text", "title"], present=present)
    assert [_bar_counts(ax) for ax in fig.axes] == [[8], [8], [8]]
    assert all(ax.get_legend() is not None for ax in fig.axes)
    assert "2 items missing a modality left out" in fig.axes[0].get_title()


def _records() -> list[dict]:
    rows = [{"stage": "pretrain", "epoch": e, "train_loss": 1.0 / e, "valid": {"recall@20": 0.1 * e},
             "best": True} for e in (1, 2, 3)]
    rows += [{"stage": "calibrate", "epoch": 0, "valid": {"recall@20": 0.31}, "best": True},
             {"stage": "calibrate", "epoch": 1, "train_loss": 0.5, "valid": {"recall@20": 0.35}, "best": True},
             {"stage": "calibrate", "epoch": 2, "train_loss": 0.4, "valid": {"recall@20": 0.33}, "best": False}]
    return rows


def test_learning_curves_by_epoch_with_the_boundary_and_each_stages_best_marked():
    fig = learning_curves(_records())
    ax_loss, ax_val = fig.axes
    xs = [list(line.get_xdata()) for line in ax_val.get_lines() if line.get_linestyle() == "-"
          and line.get_marker() == "."]
    assert xs == [[1, 2, 3], [3, 4, 5]]  # stage 2's epoch 0 on stage 1's last epoch, the boundary
    boundaries = [line.get_xdata()[0] for line in ax_val.get_lines() if line.get_linestyle() == "--"]
    assert boundaries == [3]
    stars = [c.get_offsets()[0].tolist() for c in ax_val.collections]
    assert stars == [[3.0, 0.30000000000000004], [4.0, 0.35]]
    labels = [t.get_text() for t in ax_val.get_legend().get_texts()]
    assert "pretrain best: epoch 3" in labels and "calibrate best: epoch 1" in labels
    assert ax_val.get_ylabel() == "validation recall@20" and ax_loss.get_ylabel().startswith("training loss")
    loss_x = [list(line.get_xdata()) for line in ax_loss.get_lines() if line.get_marker() == "."]
    assert loss_x == [[1, 2, 3], [4, 5]]  # the starting state has no training loss
