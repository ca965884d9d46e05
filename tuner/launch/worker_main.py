"""``tuner worker``: one worker joins the study and runs trials on one device until the budget
is spent; under ``tuner launch`` it is a supervised process or a Ray actor that reports its
trials on an event stream (docs/distribution.md)."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tuner.core.errors import StorageFailure
from tuner.core.keys import EVENT
from tuner.core.private_api import rdb_storage
from tuner.db.session import open_session
from tuner.db.storage import warn_if_sqlite_shared
from tuner.launch.events import WORKER_INDEX_ENV, EventWriter
from tuner.launch.progress import result_line
from tuner.launch.slots import check_device, resolve_slots
from tuner.results.summary import summarize, update_parent_run
from tuner.sampling.sampler import worker_index
from tuner.tracking import RelayTracker, tracking_off
from tuner.worker.objective import load_objective
from tuner.worker.runner import Worker

if TYPE_CHECKING:
    import optuna

    from tuner.config.studyfile import StudyFile
    from tuner.db.session import Session
    from tuner.tracking import Tracker

__all__ = ["STARTUP_PATIENCE", "run_worker"]

log = logging.getLogger("tuner")

Echo = Callable[[str], None]

# How long a worker keeps trying to reach the study storage when it starts (a PostgreSQL
# restart takes seconds; a server that is down for longer is an error worth seeing).
STARTUP_PATIENCE = 60.0


def run_worker(
    study_file: StudyFile,
    *,
    echo: Echo,
    device: str | None = None,
    device_tag: str | None = None,
    deadline: float | None = None,
    supervisor_pid: int | None = None,
    events_fd: int | None = None,
    events: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """``tuner worker``: join the study and run trials on one device until the budget is spent.

    Under ``tuner launch`` the worker reports its trials to launch: on ``events_fd`` for a
    local worker, which stops once ``supervisor_pid`` is gone, or to ``events`` for a Ray
    actor (:mod:`tuner.launch.ray_backend`).
    """

    if events_fd is not None:
        events = EventWriter(events_fd)
    if events is None:
        # A local launch owns its SQLite file; the warning is for a worker joining from afar.
        warning = warn_if_sqlite_shared(study_file.storage)
        if warning:
            log.warning(warning)
    objective = load_objective(study_file.objective, base_dir=study_file.path.parent)
    if device is None:
        device = resolve_slots(study_file.workers.devices, 1)[0].tag
    check_device(device)
    # Every trial seeds torch (tuner.worker.runner): import it now, not inside the first trial,
    # where its seconds on a loaded machine counted against budget.trial_timeout, in a C import
    # that the watchdog cannot interrupt; launch then killed each new worker in its first trial.
    import torch  # noqa: F401

    session = _open_worker_session(study_file, _worker_number(), events)
    study, tracker = session.study, session.tracker
    if deadline is None and study_file.budget.timeout:
        deadline = time.time() + study_file.budget.timeout
    worker = Worker(
        study_file=study_file,
        study=study,
        objective=objective,
        tracker=tracker,
        device=device,
        device_tag=device_tag or device,
        deadline=deadline,
        on_trial_end=None
        if events is not None
        else lambda r: echo(result_line(r.number, r.outcome, r.value, r.reason, study_file.metric)),
        events=events,
        parent_pid=supervisor_pid,
    )
    reason = _run_to_the_end(worker, study_file, study, tracker, under_launch=events is not None)
    if events is not None:
        # Everything is recorded: launch need not wait for this process's teardown (about a
        # second after torch) to write its summary.
        events({"event": EVENT.DONE, "reason": reason})
    return reason


def _worker_number() -> int:
    """This worker's number, which seeds its sampler.

    launch numbers its workers; a worker started by hand on another machine takes a number
    from its host and pid, so no two workers share a sampler seed.
    """
    index = os.environ.get(WORKER_INDEX_ENV, "")
    return int(index) if index.isdigit() else worker_index(f"{socket.gethostname()}/{os.getpid()}")


def _open_worker_session(
    study_file: StudyFile, worker: int, events: Callable[[dict[str, Any]], None] | None
) -> Session:
    """Open the study's session for worker number ``worker``. Under launch (``events`` set)
    the MLflow records are relayed to launch, and a storage that cannot be reached is
    reported to it before the error is raised."""
    # Under launch the records go to the launch process, which has MLflow open: this process
    # never imports MLflow (seconds per worker start; tuner.tracking._relay).
    relayed = events is not None and not tracking_off(study_file.mlflow.tracking_uri)
    try:
        session = open_session(
            study_file, patience=STARTUP_PATIENCE, worker=worker, tracking=not relayed
        )
    except StorageFailure as exc:  # e.g. no connection left: launch stops, says this line
        if events is not None:
            events({"event": EVENT.STORAGE_FAILURE, "message": str(exc)})
        raise
    if relayed:
        assert events is not None
        session.tracker = RelayTracker(events)
    return session


def _run_to_the_end(
    worker: Worker,
    study_file: StudyFile,
    study: optuna.Study,
    tracker: Tracker,
    *,
    under_launch: bool,
) -> str:
    """Run ``worker`` until the budget is spent and return why it stopped; then close the
    tracker and the storage's connections, whatever happened. A worker on its own updates
    the study's parent run (under launch, the supervisor does)."""
    try:
        reason = worker.run()
        if not under_launch:
            update_parent_run(
                tracker,
                summarize(study, budget=study_file.budget.trials, compare=study_file.compare),
            )
    finally:
        tracker.close(timeout=30.0)
        # The worker's connections end with its run, not with its process: a Ray actor's
        # process can outlive the run (until launch kills it), and a server counts them.
        storage = rdb_storage(study)
        if storage is not None:
            storage.engine.dispose()
    return reason
