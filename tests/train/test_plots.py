"""The weight histogram: with a planted truth, the clean and the noisy items are drawn apart."""

from __future__ import annotations

import numpy as np

from margo_dist.train.plots import weight_histogram


def test_with_a_truth_each_modality_shows_clean_and_noisy_items_as_two_histograms():
    rng = np.random.default_rng(0)
    weights = rng.uniform(size=(200, 2))
    truth = np.zeros((200, 2), dtype=bool)
    truth[:30, 0] = True
    truth[50:120, 1] = True
    fig = weight_histogram(weights, ["image", "text"], truth)
    for m, ax in enumerate(fig.axes):
        bars = ax.containers
        assert len(bars) == 2
        counts = [int(sum(rect.get_height() for rect in group)) for group in bars]
        assert counts == [int((~truth[:, m]).sum()), int(truth[:, m].sum())]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels[0].startswith("clean: ") and labels[1].startswith("noisy (planted): ")
        assert f"median {np.median(weights[truth[:, m], m]):.2f}" in labels[1]
    assert [ax.get_xlabel() for ax in fig.axes] == ["learned image weight", "learned text weight"]


def test_without_a_truth_one_histogram_per_modality():
    fig = weight_histogram(np.full((10, 2), 0.5), ["image", "text"])
    assert [len(ax.containers) for ax in fig.axes] == [1, 1]
    assert all(ax.get_legend() is None for ax in fig.axes)
