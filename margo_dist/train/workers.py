"""The trainer on Ray Train workers: what each worker runs, and the driver's call that starts them.

``dist/launch.py`` holds the Ray plumbing (offline steps, joining Ray, the coordinator
actor, ``TorchTrainer``); this module gives it the worker's loop, the ordinary
:class:`Trainer` with a :class:`TorchComm` and the owner rule's :class:`Placement`, and
reads the run folder after. So the distributed package never imports the trainer.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from margo_dist.config import Config, from_dict
from margo_dist.dist.coordination import RemoteCoordinator
from margo_dist.dist.checkpoint import CHECKPOINT
from margo_dist.dist.launch import report_checkpoint, train_distributed, worker_comm, worker_log, worker_shard
from margo_dist.dist.sharding import Placement
from margo_dist.graph.partition import load_owners
from margo_dist.train.coordinator import Coordinator
from margo_dist.train.loop import Trainer, load_training_data
from margo_dist.train.rundir import SUMMARY, RunDir


def worker_main(config: dict[str, Any]) -> None:
    """One Ray Train worker: the typed config first, then the ordinary trainer on its own rows."""
    cfg = from_dict(config, "Ray's train_loop_config")
    comm = worker_comm(cfg)
    owners = load_owners(cfg.dist.shards)
    data = load_training_data(cfg, shard=worker_shard(cfg, comm))  # its own feature rows only
    trainer = Trainer(cfg, data, log=worker_log, comm=comm, placement=Placement(comm, owners["user"], owners["item"]),
                      coordinator=RemoteCoordinator.connect(cfg.run.dir, comm),
                      on_checkpoint=lambda seq, record: report_checkpoint(cfg.run.dir, comm, seq, record))
    trainer.fit()


def train_on_ray(cfg: Config, log: Callable[[str], None] = print, callbacks: list[Any] | None = None
                 ) -> dict[str, Any]:
    """Run ``cfg`` on ``dist.workers`` Ray Train workers; returns the run's summary.

    ``callbacks`` go to Ray Train's ``RunConfig`` (a Tune trial passes
    ``TuneReportCallback``). Ctrl-C or SIGTERM stops the workers and ends with a
    ``MargoError``; the same command resumes.
    """
    cfg = copy.deepcopy(cfg)
    if not cfg.run.resume:
        # "start afresh" is the driver's decision, once: a group that Ray restarts after a
        # failure must resume from this run's own checkpoints, not start over again
        RunDir(cfg.run.dir).remove(CHECKPOINT)
        cfg.run.resume = True
    train_distributed(cfg, worker_main, (Coordinator, Coordinator.arguments(cfg)), log, callbacks)
    return RunDir(cfg.run.dir).read_json(SUMMARY)
