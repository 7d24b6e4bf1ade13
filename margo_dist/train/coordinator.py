"""The stage machine of a run: which stage, which epoch, the best state so far, when to move on.

The training loop asks it what to do after each epoch and each evaluation instead of
keeping that state in local variables. It holds plain data only (``state_dict`` goes
into every checkpoint). Locally it is an in-process object; a distributed run hosts
this same class as a Ray actor named after the run, which the workers reach through
``margo_dist.dist.coordination.RemoteCoordinator`` (same interface).

Rules (docs/equations.md section 7):

- a stage runs until ``max_epochs`` or until ``patience`` evaluations in a row have not
  improved the selection metric (validation Recall@20 by default);
- a stage that starts from the previous stage's best state (stage 2 of MARGO) may also
  evaluate that starting state as epoch 0 (``eval_stage_start``); it is then a candidate
  for the stage's best state like any other epoch, so stage 2 never ends worse on
  validation than the model it started from;
- after a stage its result (best epoch, metrics, test once) is recorded and the next
  stage starts from that stage's best state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from margo_dist.errors import ConfigError

if TYPE_CHECKING:
    from margo_dist.config import Config


@dataclass
class StageProgress:
    """Early-stopping state of the current stage."""

    epoch: int = 0  # last epoch trained in this stage (0: none yet)
    best_metric: float = float("-inf")
    best_epoch: int | None = None  # None: nothing evaluated yet; 0: the stage's starting state
    bad_evals: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    start_evaluated: bool = False


class Coordinator:
    """Owns the stage list, the current stage's progress and every finished stage's result."""

    def __init__(self, stages: list[str], max_epochs: int, patience: int, eval_every: int,
                 eval_stage_start: bool) -> None:
        if not stages:
            raise ValueError("a run needs at least one stage")
        self.stages = list(stages)
        self.max_epochs = max_epochs
        self.patience = patience
        self.eval_every = eval_every
        self.eval_stage_start = eval_stage_start
        self.stage_index = 0
        self.progress = StageProgress()
        self.results: dict[str, dict[str, Any]] = {}
        self.done = False

    @staticmethod
    def arguments(cfg: "Config") -> tuple[list[str], int, int, int, bool]:
        """The constructor's arguments for ``cfg``'s run (its variant's stages and early-stop rules)."""
        return (stages_of(cfg), cfg.train.max_epochs, cfg.train.patience,
                cfg.train.eval_every, cfg.train.eval_stage_start)

    @property
    def stage(self) -> str:
        return self.stages[self.stage_index]

    def wants_start_evaluation(self) -> bool:
        """Evaluate the stage's starting state now (epoch 0)? Only for a stage that starts
        from an earlier stage's best state, once, before its first epoch."""
        p = self.progress
        return self.eval_stage_start and self.stage_index > 0 and p.epoch == 0 and not p.start_evaluated

    def stage_over(self) -> bool:
        p = self.progress
        return p.epoch >= self.max_epochs or p.bad_evals >= self.patience

    def next_epoch(self) -> int:
        """Start the next epoch of the current stage; returns its number (1-based)."""
        if self.done or self.stage_over():
            raise RuntimeError(f"stage {self.stage} is over: no epoch to start")
        self.progress.epoch += 1
        return self.progress.epoch

    def evaluates(self, epoch: int) -> bool:
        """Is ``epoch`` followed by a validation pass?"""
        return epoch % self.eval_every == 0 or epoch == self.max_epochs

    def report(self, epoch: int, metric: float, valid: dict[str, float]) -> bool:
        """Record a validation result of ``epoch`` (0: the starting state); True if it is the new best."""
        p = self.progress
        if epoch == 0:
            p.start_evaluated = True
        if metric > p.best_metric:
            p.best_metric, p.best_epoch, p.best_valid, p.bad_evals = metric, epoch, dict(valid), 0
            return True
        if epoch > 0:
            p.bad_evals += 1
        return False

    def require_evaluation(self) -> None:
        """A stage needs at least one evaluation to have a best state."""
        if self.progress.best_epoch is None:
            raise RuntimeError(f"stage {self.stage} ran no evaluation (train.max_epochs={self.max_epochs}, "
                               f"train.eval_every={self.eval_every})")

    def finish_stage(self, result: dict[str, Any]) -> None:
        """Store the finished stage's result and move to the next stage (or to done)."""
        self.require_evaluation()
        self.results[self.stage] = result
        self.progress = StageProgress()
        self.stage_index += 1
        if self.stage_index == len(self.stages):
            self.done = True
            self.stage_index -= 1

    def skip_stage(self, result: dict[str, Any] | None) -> None:
        """The current stage was done elsewhere (``run.pretrained``): take its result as is."""
        if result is not None:
            self.results[self.stage] = result
        self.progress = StageProgress()
        self.stage_index += 1

    def reset(self) -> None:
        """Back to the first stage, nothing trained (a run that starts afresh)."""
        self.stage_index = 0
        self.progress = StageProgress()
        self.results = {}
        self.done = False

    # -- checkpoints ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"stages": self.stages, "stage_index": self.stage_index, "progress": asdict(self.progress),
                "results": self.results, "done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["stages"]) != self.stages:
            raise ValueError(f"checkpoint has stages {state['stages']}, this run has {self.stages}")
        self.stage_index = int(state["stage_index"])
        self.progress = StageProgress(**state["progress"])
        self.results = dict(state["results"])
        self.done = bool(state["done"])


def stages_of(cfg: "Config") -> list[str]:
    """The stages ``cfg``'s run trains: its variant's, up to ``run.stop_after`` when set."""
    from margo_dist.variants import get_variant

    stages = list(get_variant(cfg.model.variant).stages)
    if not cfg.run.stop_after:
        return stages
    if cfg.run.stop_after not in stages:
        raise ConfigError(f"run.stop_after={cfg.run.stop_after!r} is not a stage of model.variant="
                          f"{cfg.model.variant} ({', '.join(stages)})")
    return stages[: stages.index(cfg.run.stop_after) + 1]
