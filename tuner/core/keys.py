"""tuner's vocabulary in the study database, defined once: attribute keys and trial outcomes.

Every ``tuner:*`` key that tuner writes into Optuna's study and trial user attributes is an
:class:`ATTR` constant, and every outcome a trial can end with is an :class:`Outcome`. Modules
import them from here rather than spelling the strings.

>>> ATTR.OUTCOME, Outcome.DIVERGED.value
('tuner:outcome', 'diverged')
>>> Outcome("pruned") is Outcome.PRUNED
True
"""

from __future__ import annotations

import enum

__all__ = ["ATTR", "OUTCOMES", "Outcome"]


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
