"""What a trial is in tuner's vocabulary, on Optuna's trial states: its outcome, whether it
finished, and which optimizer it ran (:mod:`tuner.core.keys` holds the names themselves).

>>> import optuna
>>> study = optuna.create_study()
>>> study.enqueue_trial({"optimizer": "adam"})
>>> trial = study.ask()
>>> _ = trial.suggest_categorical("optimizer", ["adam", "sgd"])
>>> _ = study.tell(trial, 1.0)
>>> frozen = study.trials[0]
>>> outcome_of(frozen), optimizer_of(frozen), count_finished({TrialState.COMPLETE: 2})
('complete', 'adam', 2)
"""

from __future__ import annotations

from collections.abc import Mapping

from optuna.trial import FrozenTrial, TrialState

from tuner.core.keys import ATTR, Outcome

__all__ = ["FINISHED_STATES", "OUTCOME_OF_STATE", "count_finished", "optimizer_of", "outcome_of"]

#: The outcome a trial of each Optuna state has when its worker recorded none.
OUTCOME_OF_STATE: dict[TrialState, str] = {
    TrialState.COMPLETE: Outcome.COMPLETE.value,
    TrialState.PRUNED: Outcome.PRUNED.value,
    TrialState.FAIL: Outcome.FAILED.value,
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}

#: The states of a trial that counts against the budget as done: complete or pruned.
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def count_finished(counts: Mapping[TrialState, int]) -> int:
    """How many trials of ``counts`` (trials by state) finished: complete plus pruned."""
    return sum(counts.get(state, 0) for state in FINISHED_STATES)


def outcome_of(trial: FrozenTrial) -> str:
    """The trial's outcome: the one its worker recorded, else its state's."""
    recorded = trial.user_attrs.get(ATTR.OUTCOME)
    return str(recorded) if recorded is not None else OUTCOME_OF_STATE[trial.state]


def optimizer_of(trial: FrozenTrial) -> str | None:
    """The optimizer the trial ran: from its stored configuration, else its parameters."""
    config = trial.user_attrs.get(ATTR.CONFIG) or {}
    name = config.get("optimizer", trial.params.get("optimizer"))
    return None if name is None else str(name)
