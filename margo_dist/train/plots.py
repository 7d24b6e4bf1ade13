"""PNG plots of a run: learning curves and the learned weight histogram (paper Fig. 5)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from margo_dist.train.rundir import RunDir

COLOURS = ("#4477aa", "#cc6677", "#228833", "#ccbb44", "#66ccee", "#aa3377")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def write_plots(run: RunDir, records: list[dict[str, Any]], weights: np.ndarray | None,
                modalities: list[str], truth: np.ndarray | None = None, metric: str = "recall@20",
                present: np.ndarray | None = None) -> None:
    """``learning_curves.png`` always; ``weight_hist.png`` when the run learned item weights
    (``truth``: the planted unreliable pairs, drawn apart from the clean ones; ``present``:
    which (item, modality) pairs have a feature, the others left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = learning_curves(records, metric)
    run.write_bytes("learning_curves.png", _png(fig))
    plt.close(fig)
    if weights is not None:
        fig = weight_histogram(weights, modalities, truth, present)
        run.write_bytes("weight_hist.png", _png(fig))
        plt.close(fig)


def learning_curves(records: list[dict[str, Any]], metric: str = "recall@20") -> Any:
    """Training loss and validation ``metric`` by epoch, the stages one after the other.

    A later stage's epoch ``e`` is drawn at the previous stage's last epoch plus ``e``, so
    its epoch 0 (the starting state, when evaluated) sits on the dashed stage boundary;
    each stage's best epoch (the state it keeps) is a star.
    """
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 3.8))
    offset = 0
    stages = list(dict.fromkeys(r["stage"] for r in records))
    for k, stage in enumerate(stages):
        rows = [r for r in records if r["stage"] == stage]
        colour = COLOURS[k % len(COLOURS)]
        x = np.array([offset + r["epoch"] for r in rows])
        losses = [(xi, r["train_loss"]) for xi, r in zip(x, rows) if "train_loss" in r]
        if losses:
            ax_loss.plot(*zip(*losses), color=colour, marker=".", label=stage)
        ax_val.plot(x, [r["valid"].get(metric, np.nan) for r in rows], color=colour, marker=".",
                    label=f"{stage} {metric}")
        best = [(xi, r) for xi, r in zip(x, rows) if r.get("best")]
        if best:
            xb, rb = best[-1]
            ax_val.scatter([xb], [rb["valid"].get(metric, np.nan)], marker="*", s=160, color=colour,
                           edgecolor="black", zorder=3, label=f"{stage} best: epoch {rb['epoch']}")
        if k > 0:
            for ax in (ax_loss, ax_val):
                ax.axvline(offset, color="grey", linestyle="--", linewidth=1)
            # along the line's foot, on the side of the previous stage, whose late (high) scores leave it free
            ax_val.annotate(f"{stage} starts", (offset, 0.03), xycoords=("data", "axes fraction"),
                            xytext=(-3, 0), textcoords="offset points", rotation=90, ha="right", va="bottom",
                            fontsize=8, color="grey")
        offset = int(x.max()) if len(x) else offset
    ax_loss.set_ylabel("training loss (per triplet)")
    ax_loss.set_title("training loss")
    ax_val.set_ylabel(f"validation {metric}")
    ax_val.set_title(f"validation {metric}")
    for ax in (ax_loss, ax_val):
        ax.set_xlabel("epoch (each stage continues where the previous one ended)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def weight_histogram(weights: np.ndarray, modalities: list[str], truth: np.ndarray | None = None,
                     present: np.ndarray | None = None) -> Any:
    """The learned item weights [n_items, M] (paper Fig. 5), on the range the weights span.

    With two modalities a pair's weights sum to 1, so one panel (the first modality's
    weight) says everything; with more, one panel per modality. With a planted truth
    ([n_items, M], True = unreliable pair) each group of items is its own histogram:
    clean items and, per modality, the items whose view of it is noisy, each labelled
    with its size and median weight. Pairs absent from ``present`` have weight 0 by
    construction and are left out.
    """
    import matplotlib.pyplot as plt

    n_mod = weights.shape[1]
    panels = [0] if n_mod == 2 else list(range(n_mod))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.6), squeeze=False)
    keep = np.ones(len(weights), dtype=bool) if present is None else np.asarray(present).all(axis=1)
    for ax, m in zip(axes[0], panels):
        w = weights[keep, m]
        lo, hi = (float(w.min()), float(w.max())) if len(w) else (0.0, 1.0)
        pad = max((hi - lo) * 0.02, 1e-3)  # a float32 range narrower than this has too few values for 50 bins
        span = (lo - pad, hi + pad)
        groups = [(np.ones(len(w), dtype=bool), "items")]
        if truth is not None:
            t = np.asarray(truth, dtype=bool)[keep]
            groups = [(~t.any(axis=1), "clean")] + [(t[:, j], f"{modalities[j]} noisy (planted)")
                                                    for j in range(n_mod)]
        for k, (mask, label) in enumerate(groups):
            if mask.any():
                ax.hist(w[mask], bins=50, range=span, color=COLOURS[k % len(COLOURS)], alpha=0.6,
                        label=f"{label}: {int(mask.sum())} items, median {np.median(w[mask]):.3f}")
        ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)  # below: no bar hidden
        other = f" (the {modalities[1]} weight is 1 minus it)" if n_mod == 2 else ""
        ax.set_xlabel(f"learned {modalities[m]} weight{other}")
        ax.set_ylabel("items")
        left_out = int((~keep).sum())
        note = f"; {left_out} items missing a modality left out" if left_out else ""
        ax.set_title(f"item weights of modality '{modalities[m]}'{note}", fontsize=10)
    fig.tight_layout()
    return fig
