"""``tuner status``: trials by outcome, the best so far, and the running trials."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.db.session import load_study
from tuner.db.trialdb import fail_stale_trials
from tuner.results.summary import summarize

if TYPE_CHECKING:
    from tuner.config.studyfile import StudyFile

__all__ = ["status_text"]


def status_text(study_file: StudyFile) -> str:
    """The study's summary as ``tuner status`` prints it.

    A trial whose worker died is failed here and queued again, so nothing stays RUNNING even
    when no worker is left; ``tuner sync`` then closes its MLflow run as KILLED.
    """
    study = load_study(study_file, heartbeats=True)
    fail_stale_trials(study)
    return summarize(study, budget=study_file.budget.trials, compare=study_file.compare).format()
