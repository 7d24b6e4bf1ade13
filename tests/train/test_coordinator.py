"""The stage machine on its own: patience, the starting-state candidate, stage changes, checkpoints."""

from __future__ import annotations

import pytest

from margo_dist.train.coordinator import Coordinator


def run_stage(coord: Coordinator, metrics: list[float]) -> list[int]:
    """Feed one metric per epoch until the stage is over; returns the epochs trained."""
    epochs = []
    for metric in metrics:
        if coord.stage_over():
            break
        epoch = coord.next_epoch()
        epochs.append(epoch)
        coord.report(epoch, metric, {"recall@20": metric})
    return epochs


def test_patience_counts_evaluations_without_improvement():
    coord = Coordinator(["pretrain"], max_epochs=10, patience=2, eval_every=1, eval_stage_start=True)
    assert not coord.wants_start_evaluation()  # the first stage starts from nothing worth keeping
    assert run_stage(coord, [0.1, 0.3, 0.2, 0.25, 0.9]) == [1, 2, 3, 4]
    assert coord.progress.best_epoch == 2 and coord.progress.best_metric == 0.3
    coord.finish_stage({"best_epoch": 2})
    assert coord.done and coord.results == {"pretrain": {"best_epoch": 2}}
    with pytest.raises(RuntimeError, match="over"):
        coord.next_epoch()


def test_stage_two_start_is_a_candidate_and_does_not_use_patience():
    coord = Coordinator(["pretrain", "calibrate"], max_epochs=5, patience=2, eval_every=1, eval_stage_start=True)
    run_stage(coord, [0.5])
    coord.next_epoch()  # max_epochs reached
    coord.finish_stage({"best_epoch": 1})
    assert coord.stage == "calibrate" and coord.wants_start_evaluation()
    assert coord.report(0, 0.4, {"recall@20": 0.4})
    assert not coord.wants_start_evaluation() and coord.progress.bad_evals == 0
    assert run_stage(coord, [0.3, 0.35, 0.9]) == [1, 2]
    assert coord.progress.best_epoch == 0 and coord.progress.best_valid == {"recall@20": 0.4}


def test_without_the_rule_stage_two_starts_training_at_once():
    coord = Coordinator(["pretrain", "calibrate"], max_epochs=1, patience=2, eval_every=1, eval_stage_start=False)
    run_stage(coord, [0.5])
    coord.finish_stage({})
    assert not coord.wants_start_evaluation()


def test_a_stage_without_evaluation_cannot_finish():
    coord = Coordinator(["pretrain"], max_epochs=2, patience=2, eval_every=5, eval_stage_start=True)
    assert [coord.evaluates(e) for e in (1, 2)] == [False, True]  # the last epoch is always evaluated
    with pytest.raises(RuntimeError, match="ran no evaluation"):
        coord.finish_stage({})


def test_state_round_trips_through_a_checkpoint():
    coord = Coordinator(["pretrain", "calibrate"], max_epochs=9, patience=3, eval_every=1, eval_stage_start=True)
    run_stage(coord, [0.2, 0.1])
    again = Coordinator(["pretrain", "calibrate"], max_epochs=9, patience=3, eval_every=1, eval_stage_start=True)
    again.load_state_dict(coord.state_dict())
    assert again.state_dict() == coord.state_dict()
    assert run_stage(again, [0.05, 0.05, 0.9]) == [3, 4]
    other = Coordinator(["pretrain"], max_epochs=9, patience=3, eval_every=1, eval_stage_start=True)
    with pytest.raises(ValueError, match="stages"):
        other.load_state_dict(coord.state_dict())
