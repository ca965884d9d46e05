"""tuner's vocabulary, defined once: stored keys, MLflow tags, trial outcomes and event names.

Every ``tuner:*`` key that tuner writes into Optuna's study and trial user attributes is an
:class:`ATTR` constant, every ``tuner.*`` MLflow tag a :class:`TAG` constant, every outcome a
trial can end with an :class:`Outcome`, and every event a worker reports to launch an
:class:`EVENT` constant. Modules import them from here rather than spelling the strings. What
depends on Optuna's trial states (the state -> outcome map, "finished") is in
:mod:`tuner.core.trials`; this module imports nothing, so ``tuner --help`` stays fast.

>>> ATTR.OUTCOME, Outcome.DIVERGED.value
('tuner:outcome', 'diverged')
>>> Outcome("pruned") is Outcome.PRUNED
True
"""

from __future__ import annotations

import enum

__all__ = ["ATTR", "EVENT", "OUTCOMES", "TAG", "Outcome"]


class ATTR:
    """Keys tuner keeps in Optuna's study and trial user attributes."""

    # trial attributes
    CONFIG = "tuner:config"  # the sampled optimizer configuration (export.OptimizerConfig)
    OUTCOME = "tuner:outcome"  # an Outcome value
    REASON = "tuner:reason"  # why it failed, diverged, was pruned or interrupted
    TRACEBACK = "tuner:traceback"
    HOST = "tuner:worker_host"
    WORKER = "tuner:worker"  # host/pid: which process ran the trial
    DEVICE = "tuner:device"
    DURATION = "tuner:duration_s"
    # What a trial cost, measured by its worker (the answer's cost per finalist,
    # tuner.results.compare)
    OBJECTIVE_SECONDS = "tuner:objective_s"  # wall time of the objective call alone
    EPOCHS = "tuner:epochs"  # steps it reported (max_epochs when it reported none)
    STATE_BYTES = "tuner:state_bytes"  # its optimizer's state tensors at the end, in bytes
    RETRY_OF = "tuner:retry_of"  # the number of the interrupted trial this one reruns
    TOTAL_STEPS = "tuner:total_steps"  # what the objective passed to build_optimizer
    REPLICATE = "tuner:replicate"  # a finalist's re-run after the search (tuner.results.compare)
    PORTFOLIO_ENTRY = "tuner:portfolio_entry"  # a known-good configuration (tuner.search)
    # study attributes
    METRIC = "tuner:metric"
    LR_RANGE_TEST = "tuner:lr_range_test"  # the range test's results (tuner.search)
    PORTFOLIO = "tuner:portfolio"  # the portfolio was enqueued (tuner.search)
    PARENT_RUN = "tuner:mlflow_parent_run_id"


class TAG:
    """The ``tuner.*`` tags tuner sets on MLflow runs (docs/mlflow.md)."""

    # every trial's run
    TRIAL_NUMBER = "tuner.trial_number"
    RUN_KEY = "tuner.run_key"  # finds a run whose create answer was lost
    OUTCOME = "tuner.outcome"  # an Outcome value
    REASON = "tuner.reason"
    DURATION = "tuner.duration_s"
    OPTIMIZER = "tuner.optimizer"
    SCHEDULE = "tuner.schedule"
    HOST = "tuner.worker_host"
    DEVICE = "tuner.device"
    SYNCED = "tuner.synced"  # created or completed by `tuner sync`
    # a replicate's run
    REPLICATE_OF = "tuner.replicate_of"
    SEED = "tuner.seed"
    SEED_INDEX = "tuner.seed_index"
    # the study's parent run
    STUDY_NAME = "tuner.study_name"
    ROLE = "tuner.role"
    SAMPLER = "tuner.sampler"
    PRUNER = "tuner.pruner"
    STORAGE_DIALECT = "tuner.storage_dialect"
    DIRECTION = "tuner.direction"
    METRIC = "tuner.metric"
    ANSWER = "tuner.answer"
    WINNER = "tuner.winner"
    RECOMMENDED = "tuner.recommended"


class EVENT:
    """The ``event`` of each JSON line a worker reports to the process supervising it."""

    START = "start"  # a trial started
    STEP = "step"  # it reported a value
    END = "end"  # it ended (with its outcome)
    OUTPUT = "output"  # a Ray actor's output lines
    TRACK = "track"  # an MLflow record relayed through launch (tuner.tracking._relay)
    STORAGE_FAILURE = "storage_failure"  # the worker lost the database: launch stops
    DONE = "done"  # the worker finished and recorded everything


class Outcome(str, enum.Enum):
    """How a trial ended, as stored in its ``tuner:outcome`` attribute."""

    COMPLETE = "complete"
    PRUNED = "pruned"
    DIVERGED = "diverged"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    # Never stored: another process ended the trial while its worker was silent.
    LOST = "lost"


OUTCOMES = tuple(o.value for o in Outcome if o is not Outcome.LOST)
"""The outcomes a trial can have in the study database."""
