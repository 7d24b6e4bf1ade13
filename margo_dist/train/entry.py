"""``train(cfg)``: the one entry point of a training run, local or on Ray Train workers.

Local mode runs the trainer (``train/loop.py``) here; ``dist.workers`` > 0 hands it
to ``train/workers.py``, which runs the same trainer on each Ray Train worker.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from margo_dist.config import Config
from margo_dist.train.loop import Trainer, load_training_data
from margo_dist.train.rundir import claim


def train(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load the data for ``cfg`` and run every stage; returns the summary.

    ``dist.workers`` > 0 runs the same trainer on that many Ray Train workers. The run
    folder is held for the run's life and must hold this experiment or nothing
    (:func:`margo_dist.train.rundir.claim`).
    """
    with claim(cfg, log):
        if cfg.dist.workers > 0:
            from margo_dist.train.workers import train_on_ray  # Ray is imported only for this

            return train_on_ray(cfg, log)
        torch.manual_seed(cfg.train.seed)
        data = load_training_data(cfg)
        return Trainer(cfg, data, log).fit()
