"""``tuner launch`` and ``tuner worker``: open the study, start the workers, show progress.

``launch`` supervises ``devices x per_device`` worker processes on this machine (``tuner
worker``, each pinned to its GPU with ``CUDA_VISIBLE_DEVICES``) and never runs the objective
itself (:mod:`tuner.launch.supervisor`). ``worker`` runs the trial loop on any machine that reaches
the
same storage.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.config.objective_spec import is_file_spec, split_objective_spec
from tuner.core.errors import ObjectiveError
from tuner.core.redact import redact
from tuner.db.session import open_session
from tuner.launch.progress import Progress
from tuner.launch.ray_backend import RayCluster, RaySupervisor
from tuner.launch.slots import Slot, check_device, describe_slots, resolve_slots
from tuner.launch.supervisor import Supervisor
from tuner.results.summary import StudySummary, mlflow_view, summarize, update_parent_run

if TYPE_CHECKING:
    from tuner.config.studyfile import StudyFile
    from tuner.launch.supervisor import Stop

__all__ = [
    "launch",
]

log = logging.getLogger("tuner")


Echo = Callable[[str], None]


def launch(
    study_file: StudyFile,
    *,
    echo: Echo,
    slots: list[Slot] | None = None,
    live: bool = False,
    quiet: bool = False,
    show: Callable[[StudySummary, Stop], None] | None = None,
) -> tuple[StudySummary, Stop]:
    """Run the study to its budget on this machine with supervised worker processes.

    Prints what it is doing at once (the study, where it is stored and tracked, the workers),
    shows progress while the workers run, and returns the final summary and why it stopped
    (with the exit code and one line for the user). The objective never runs in this
    process: every slot is a ``tuner worker`` process (:mod:`tuner.launch.supervisor`), or with
    ``workers.backend: ray`` a Ray actor on a Ray cluster (:mod:`tuner.launch.ray_backend`).
    ``show``
    gets the summary as soon as it is known, while the workers' processes are still ending.
    """

    _check_objective_file(study_file)
    echo(
        f"tuner launch: study {study_file.name!r} ({study_file.path}) | storage "
        f"{redact(study_file.storage)} | MLflow {_tracking_location(study_file)}"
    )
    cluster = None
    if study_file.workers.backend == "ray":
        cluster = RayCluster.connect(study_file)  # refuses what the cluster cannot run
        slots = cluster.slots
        echo(f"workers: {cluster.describe()}")
    else:
        slots = slots or resolve_slots(study_file.workers.devices, study_file.workers.per_device)
        for slot in slots:
            check_device(slot.tag)
        echo(f"workers: {len(slots)} ({describe_slots(slots)})")
    # MLflow is opened once the workers are starting: its import and store take seconds, which
    # the workers spend importing torch and the objective.
    session = open_session(study_file, tracking=False)
    study = session.study
    timeout = study_file.budget.timeout
    deadline = time.time() + timeout if timeout else None
    progress = Progress(study, study_file, echo, live=live and not quiet)
    common = dict(
        session=session, slots=slots, progress=progress, deadline=deadline, quiet=quiet,
        after_spawn=session.open_tracking,
    )  # fmt: skip
    if cluster is None:
        supervisor = Supervisor(study_file, **common)
    else:
        supervisor = RaySupervisor(study_file, cluster=cluster, **common)
    try:
        try:
            stop = supervisor.run()
        finally:
            progress.close()
        summary = summarize(study, budget=study_file.budget.trials, compare=study_file.compare)
        summary.stop_reason = stop.reason
        summary.mlflow_view = mlflow_view(
            study_file.mlflow.tracking_uri, getattr(session.tracker, "experiment_id", None)
        )
        update_parent_run(session.tracker, summary)
        session.tracker.end_study()
        session.close(timeout=30.0)  # says what MLflow did not get, before the summary
        if show is not None:
            show(summary, stop)
        return summary, stop
    finally:
        session.close(timeout=30.0)  # a second close is harmless
        # The workers said they were done; their teardown overlapped the summary.
        supervisor.close()


def _check_objective_file(study_file: StudyFile) -> None:
    """A missing objective file is an error before anything is created; importing the objective
    (and anything else about it) is left to the workers: this process runs no user code."""

    target, _ = split_objective_spec(study_file.objective)
    if not is_file_spec(target):
        return
    path = Path(target).expanduser()
    if not path.is_absolute():
        path = study_file.base_dir / path
    if not path.is_file():
        problem = "is a directory, not a file" if path.exists() else "file not found"
        raise ObjectiveError(
            f"objective: {problem}: {path.resolve()} (from {study_file.objective!r}, relative "
            f"to {study_file.base_dir})"
        )


def _tracking_location(study_file: StudyFile) -> str:
    uri = study_file.mlflow.tracking_uri
    if uri is None:
        return "off"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
    return f"{redact(uri)} (experiment {study_file.mlflow.experiment!r})"
