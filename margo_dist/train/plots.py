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
                modalities: list[str]) -> None:
    """``learning_curves.png`` always; ``weight_hist.png`` when the run learned item weights."""
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
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.hist(weights[:, 0], bins=50, range=(0.0, 1.0), color="#4477aa")
        ax.set_xlabel(f"learned {modalities[0]} weight")
        ax.set_ylabel("items")
        ax.set_title(f"item weights of modality '{modalities[0]}'")
        run.write_bytes("weight_hist.png", _png(fig))
        plt.close(fig)
