"""The stage machine of a distributed run: the trainer's ``Coordinator`` as a Ray actor named after the run.

The driver starts the actor (``start_coordinator``) before the workers; each worker
reaches it through :class:`RemoteCoordinator`, which has the Coordinator's interface.
Only the leader calls the actor; it broadcasts each answer to the other workers, so
every worker applies the same decision at the same step (the broadcast is a
collective at the same point of the loop on every rank). The actor outlives a
restart of the worker group: the restarted workers load the coordinator's state from
their checkpoint into it (``load_state_dict``), or ``reset`` it when there is none.
The driver, or an operator, can read a run's stage and epoch from the actor at any time
(``ray.get_actor(coordinator_name(run_dir))``).
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

from margo_dist.dist.comm import Communicator

if TYPE_CHECKING:
    from margo_dist.train.coordinator import StageProgress


def run_name(run_dir: str) -> str:
    """Ray's resume key for a run: derived from ``run.dir``, never from a timestamp."""
    tail = os.path.basename(run_dir.rstrip("/")) or "run"
    return f"margo-{tail}-{hashlib.sha1(run_dir.encode()).hexdigest()[:8]}"


def coordinator_name(run_dir: str) -> str:
    """The actor's name: the run's Ray name (``run_name``) plus ``-coordinator``."""
    return f"{run_name(run_dir)}-coordinator"


def start_coordinator(run_dir: str, coordinator: type, arguments: tuple[Any, ...]) -> Any:
    """The driver's actor for the run in ``run_dir``: a ``coordinator(*arguments)`` (the trainer's
    ``Coordinator``); an existing one of the same name is reused."""
    import ray

    actor_class = ray.remote(num_cpus=0)(coordinator)
    return actor_class.options(name=coordinator_name(run_dir), get_if_exists=True).remote(*arguments)


class RemoteCoordinator:
    """A worker's view of the run's coordinator actor, with the :class:`Coordinator` interface."""

    def __init__(self, actor: Any, comm: Communicator) -> None:
        self._actor = actor
        self._comm = comm

    @classmethod
    def connect(cls, run_dir: str, comm: Communicator) -> "RemoteCoordinator":
        import ray

        return cls(ray.get_actor(coordinator_name(run_dir)) if comm.is_leader else None, comm)

    def _ask(self, method: str, *args: Any) -> Any:
        """The leader calls the actor; every rank returns (or raises) the same answer."""
        answer: tuple[str, Any] = ("", None)
        if self._comm.is_leader:
            import ray

            try:
                answer = ("ok", ray.get(getattr(self._actor, method).remote(*args)))
            except ray.exceptions.RayTaskError as exc:  # the Coordinator's own error, on every rank
                answer = ("error", exc.as_instanceof_cause())
        kind, value = self._comm.broadcast_object(answer)
        if kind == "error":
            raise value
        return value

    def _attribute(self, name: str) -> Any:
        answer = None
        if self._comm.is_leader:
            import ray

            answer = ray.get(self._actor.__ray_call__.remote(getattr, name))
        return self._comm.broadcast_object(answer)

    # -- the Coordinator's interface --------------------------------------------------

    @property
    def stages(self) -> list[str]:
        return self._attribute("stages")

    @property
    def stage(self) -> str:
        return self._attribute("stage")

    @property
    def stage_index(self) -> int:
        return self._attribute("stage_index")

    @property
    def progress(self) -> "StageProgress":
        """A copy of the current stage's progress (read-only: change it through the methods)."""
        return self._attribute("progress")

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        return self._attribute("results")

    @property
    def done(self) -> bool:
        return self._attribute("done")

    def wants_start_evaluation(self) -> bool:
        return self._ask("wants_start_evaluation")

    def stage_over(self) -> bool:
        return self._ask("stage_over")

    def next_epoch(self) -> int:
        return self._ask("next_epoch")

    def evaluates(self, epoch: int) -> bool:
        return self._ask("evaluates", epoch)

    def report(self, epoch: int, metric: float, valid: dict[str, float]) -> bool:
        return self._ask("report", epoch, metric, valid)

    def require_evaluation(self) -> None:
        self._ask("require_evaluation")

    def finish_stage(self, result: dict[str, Any]) -> None:
        self._ask("finish_stage", result)

    def skip_stage(self, result: dict[str, Any] | None) -> None:
        self._ask("skip_stage", result)

    def reset(self) -> None:
        self._ask("reset")

    def state_dict(self) -> dict[str, Any]:
        return self._ask("state_dict")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._ask("load_state_dict", state)
