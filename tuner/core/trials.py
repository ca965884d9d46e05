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

from tuner.core.keys import ATTR, OUTCOMES, Outcome

__all__ = [
    "FINISHED_OUTCOMES",
    "FINISHED_STATES",
    "OUTCOME_OF_STATE",
    "SHOWN_OUTCOMES",
    "count_finished",
    "optimizer_of",
    "outcome_of",
]

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

#: The same trials by outcome: a diverged trial is stored PRUNED (so TPE ranks it worst).
FINISHED_OUTCOMES = (Outcome.COMPLETE.value, Outcome.PRUNED.value, Outcome.DIVERGED.value)

#: Every outcome as the summary and the report list them, in that order.
SHOWN_OUTCOMES = (*OUTCOMES, "running", "waiting")


def count_finished(counts: Mapping[TrialState, int]) -> int:
    """How many trials of ``counts`` (trials by state) finished: complete plus pruned."""
    return sum(counts.get(state, 0) for state in FINISHED_STATES)


def outcome_of(trial: FrozenTrial) -> str:
    """The trial's outcome: ``running`` or ``waiting`` while it is; else the one its worker
    recorded; else its state's, where a FAIL without one is ``interrupted`` (its worker died
    mid-trial, and a retry was queued)."""
    if trial.state in (TrialState.RUNNING, TrialState.WAITING):
        return OUTCOME_OF_STATE[trial.state]
    recorded = trial.user_attrs.get(ATTR.OUTCOME)
    if recorded:
        return str(recorded)
    if trial.state == TrialState.FAIL:
        return Outcome.INTERRUPTED.value
    return OUTCOME_OF_STATE[trial.state]


def optimizer_of(trial: FrozenTrial) -> str | None:
    """The optimizer the trial ran: from its stored configuration, else its parameters."""
    config = trial.user_attrs.get(ATTR.CONFIG) or {}
    name = config.get("optimizer", trial.params.get("optimizer"))
    return None if name is None else str(name)
