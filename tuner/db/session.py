"""Opening a study, in one place: the storage, the study with its sampler and pruner, the tracker.

Every command goes through here. ``launch`` and ``worker`` call :func:`open_session`, which
creates what is missing (tables, study, MLflow parent run); ``status``, ``best``, ``report`` and
``sync`` call :func:`load_study`, which never creates anything: a missing database is an error
naming the file and the working directory.

The sampler and pruner of a process are built in :func:`open_study` and nowhere else. Phases that
run around the search (a learning-rate range test before it, replicate runs after it) run
inside worker processes, in ``Worker.run`` (:mod:`tuner.worker.runner`), on the study opened here:
``launch`` itself runs no training.

Example::

    session = open_session(study_file)          # doctest: +SKIP
    try:
        Worker(study_file=study_file, study=session.study, tracker=session.tracker, ...).run()
    finally:
        session.close()
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_before_delay,
    wait_exponential,
)

from tuner.core.errors import ConfigError, StorageError, TunerError
from tuner.core.keys import ATTR, TAG
from tuner.core.private_api import rdb_storage
from tuner.core.redact import redact
from tuner.db.storage import budget_lock, dialect_of, open_storage
from tuner.sampling.registry import make_pruner, make_sampler
from tuner.tracking import NullTracker, make_tracker

if TYPE_CHECKING:
    from tuner.config.studyfile import StudyFile
    from tuner.tracking import Tracker

__all__ = [
    "Session",
    "load_study",
    "open_session",
    "open_study",
    "open_study_storage",
    "parent_run_tags",
]

log = logging.getLogger("tuner")


@dataclass
class Session:
    """An open study: its storage, the Optuna study and the tracker with the parent run."""

    study_file: StudyFile
    storage: optuna.storages.BaseStorage
    study: optuna.Study
    tracker: Tracker

    def open_tracking(self) -> None:
        """Start tracking (a session opened with ``tracking=False``): the tracker and the
        study's MLflow parent run, found or created.

        Not on a background thread while trials run, which would hide MLflow's ~4 s start-up
        in a fresh worker (tried): MLflow's import silences a urllib3 warning inside
        ``warnings.catch_warnings``, whose filters are process-global before Python 3.14, and
        the runner's own ``catch_warnings`` around ``study.ask()`` raced with it (the warning
        leaked into the launch's output; filters can be lost or left behind the same way).
        """
        self.tracker = _open_tracking(self.study_file, self.study)

    def close(self, timeout: float = 30.0) -> None:
        """Flush and stop the tracker (bounded by ``timeout``)."""
        self.tracker.close(timeout=timeout)


def open_session(
    study_file: StudyFile, *, patience: float = 0.0, worker: int = 0, tracking: bool = True
) -> Session:
    """Open (creating what is missing) the storage, the study and the MLflow parent run.

    A storage that cannot be reached is retried for ``patience`` seconds when the error is
    transient (a PostgreSQL restart): a worker started meanwhile waits instead of dying.
    ``worker`` is this worker's number: its sampler's seed derives from it. With ``tracking``
    False the tracker tracks nothing until :meth:`Session.open_tracking` (``launch`` starts
    its workers first: importing MLflow and opening its store takes seconds).
    """

    def say(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "the study storage is not reachable yet (%s); retrying in %.0fs",
            exc,
            state.upcoming_sleep,
        )

    retrying = Retrying(
        stop=stop_before_delay(patience),
        wait=wait_exponential(multiplier=1.0, max=10.0),
        retry=retry_if_exception(lambda exc: isinstance(exc, StorageError) and exc.transient),
        before_sleep=say,
        reraise=True,
    )
    return retrying(_open_once, study_file, worker, tracking)


def _open_once(study_file: StudyFile, worker: int, tracking: bool) -> Session:

    session: Session | None = None
    # A trial lost with its worker closes its MLflow run through whichever tracker is open then.
    storage = open_study_storage(
        study_file, lambda: session.tracker if session is not None else NullTracker()
    )
    study = open_study(study_file, storage, worker=worker)
    session = Session(study_file, storage, study, NullTracker())
    if tracking:
        session.open_tracking()
    return session


def parent_run_tags(study_file: StudyFile) -> dict[str, str]:
    """The tags of the study's MLflow parent run that come from its study file."""
    return {
        TAG.SAMPLER: study_file.sampler.name,
        TAG.PRUNER: study_file.pruner.name,
        TAG.STORAGE_DIALECT: dialect_of(study_file.storage),
        TAG.DIRECTION: study_file.direction,
        TAG.METRIC: study_file.metric,
    }


def _open_tracking(study_file: StudyFile, study: optuna.Study) -> Tracker:

    tracker = make_tracker(study_file.mlflow.tracking_uri, experiment=study_file.mlflow.experiment)
    if isinstance(tracker, NullTracker):
        return tracker  # tracking off: no parent run to find or create, no lock to take

    def open_parent(existing: str | None) -> None:
        parent = tracker.open_study(
            study_name=study_file.name,
            experiment=study_file.mlflow.experiment,
            study_yaml_text=study_file.raw_text,
            tags=parent_run_tags(study_file),
            existing_parent_run_id=existing,
        )
        if parent is not None and parent != existing:
            study.set_user_attr(ATTR.PARENT_RUN, parent)

    existing = study.user_attrs.get(ATTR.PARENT_RUN)
    if existing is not None:
        open_parent(existing)
        return tracker
    # One parent run per study: workers that start together (by hand, on several machines)
    # would each create one. Under the budget lock the first creates it and stores its id in
    # the study; the others find it there.
    with budget_lock(rdb_storage(study) or study_file.storage, study_file.name):
        open_parent(study.user_attrs.get(ATTR.PARENT_RUN))
    return tracker


def open_study(
    study_file: StudyFile, storage: optuna.storages.BaseStorage, *, worker: int = 0
) -> optuna.Study:
    """Create the study, or load it when a study of that name exists (resume, other workers).

    This process's sampler and pruner are built here, from the study file. ``worker`` is this
    worker's number: its sampler's seed derives from the study's (worker 0 keeps it), so
    parallel workers never draw the same sequence; TPE gets tuner's settings for the
    conditional space (:mod:`tuner.sampling.sampler`).
    """

    study = optuna.create_study(
        storage=storage,
        study_name=study_file.name,
        direction=study_file.direction,
        sampler=make_sampler(study_file.sampler, worker=worker, trials=study_file.budget.trials),
        pruner=make_pruner(study_file.pruner, max_resource=study_file.budget.epochs),
        load_if_exists=True,
    )
    wanted = optuna.study.StudyDirection[study_file.direction.upper()]
    if study.direction != wanted:
        raise ConfigError(
            f"direction: study {study_file.name!r} already exists in the storage with direction "
            f"{study.direction.name.lower()}, but the study file says {study_file.direction}",
            hint="use another `name` for a new study",
        )
    if study.user_attrs.get(ATTR.METRIC) != study_file.metric:
        study.set_user_attr(ATTR.METRIC, study_file.metric)
    return study


def load_study(study_file: StudyFile, *, heartbeats: bool = False) -> optuna.Study:
    """The existing study, for commands that only read it; never creates a database or a study.

    With ``heartbeats`` the storage can fail trials whose workers died (``tuner status``).
    """

    if heartbeats:
        storage = open_study_storage(study_file, NullTracker, create=False)
    else:
        storage = open_storage(study_file.storage, create=False)
    try:
        return optuna.load_study(study_name=study_file.name, storage=storage)
    except KeyError:
        raise TunerError(
            f"no study named {study_file.name!r} in {redact(study_file.storage)}",
            hint="run `tuner launch` to create it",
        ) from None


def open_study_storage(
    study_file: StudyFile, tracker: Callable[[], Tracker], *, create: bool = True
) -> optuna.storages.BaseStorage:
    """The study database with heartbeats on: a trial whose worker went silent for
    ``workers.grace_period`` is failed, queued again, and its MLflow run closed as KILLED by
    the tracker that ``tracker()`` returns then. With ``create=False`` a missing database is an
    error instead of a new one."""
    return open_storage(
        study_file.storage,
        heartbeat_interval=study_file.workers.heartbeat_interval,
        grace_period=study_file.workers.grace_period,
        failed_trial_callback=_retry_stale_trials(tracker),
        create=create,
    )


def _retry_stale_trials(
    tracker: Callable[[], Tracker],
) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """The callback for a trial lost with its worker: queue it again with the same parameters,
    and close its MLflow run as KILLED (no recorder of the dead worker will ever end it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        if retry_cls is None:  # optuna < 4.9
            retry_cls = optuna.storages.RetryFailedTrialCallback
        retry = retry_cls(max_retry=3)

    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retry(study, trial)
        tracker().kill_trial(trial.number, reason="its worker stopped sending heartbeats")

    return on_stale
