"""PNG plots of a run: learning curves and the learned weight histogram (paper Fig. 5)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from margo_dist.train.rundir import RunDir


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def write_plots(run: RunDir, records: list[dict[str, Any]], weights: np.ndarray | None,
                modalities: list[str], truth: np.ndarray | None = None) -> None:
    """``learning_curves.png`` always; ``weight_hist.png`` when the run learned item weights
    (``truth``: the planted unreliable pairs, drawn apart from the clean ones)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    step = 0
    for stage in dict.fromkeys(r["stage"] for r in records):
        rows = [r for r in records if r["stage"] == stage]
        x = np.arange(step + 1, step + len(rows) + 1)
        step += len(rows)
        ax_loss.plot(x, [r.get("train_loss", np.nan) for r in rows], label=f"{stage} loss")
        ax_val.plot(x, [r["valid"].get("recall@20", np.nan) for r in rows], label=f"{stage} recall@20")
        ax_val.plot(x, [r["valid"].get("ndcg@20", np.nan) for r in rows], "--", label=f"{stage} ndcg@20")
    ax_loss.set_xlabel("evaluation")
    ax_loss.set_title("training loss")
    ax_val.set_xlabel("evaluation")
    ax_val.set_title("validation")
    for ax in (ax_loss, ax_val):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    run.write_bytes("learning_curves.png", _png(fig))
    plt.close(fig)
    if weights is not None:
        fig = weight_histogram(weights, modalities, truth)
        run.write_bytes("weight_hist.png", _png(fig))
        plt.close(fig)


def weight_histogram(weights: np.ndarray, modalities: list[str], truth: np.ndarray | None = None) -> Any:
    """One panel per modality of the learned item weights [n_items, M] (paper Fig. 5).

    With a planted truth ([n_items, M], True = unreliable pair) the clean and the noisy
    items are two overlaid histograms, so the separation the weight AUC measures is
    visible; the legend gives each group's size and median weight.
    """
    import matplotlib.pyplot as plt

    n = weights.shape[1]
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.6), squeeze=False)
    for m, ax in enumerate(axes[0]):
        w = weights[:, m]
        if truth is None:
            ax.hist(w, bins=50, range=(0.0, 1.0), color="#4477aa")
        else:
            noisy = truth[:, m].astype(bool)
            for mask, label, colour in ((~noisy, "clean", "#4477aa"), (noisy, "noisy (planted)", "#cc6677")):
                if mask.any():
                    ax.hist(w[mask], bins=50, range=(0.0, 1.0), color=colour, alpha=0.6,
                            label=f"{label}: {int(mask.sum())} items, median {np.median(w[mask]):.2f}")
            ax.legend(fontsize=7)
        ax.set_xlabel(f"learned {modalities[m]} weight")
        ax.set_ylabel("items")
        ax.set_title(f"item weights of modality '{modalities[m]}'")
    fig.tight_layout()
    return fig
