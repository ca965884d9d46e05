"""``tuner launch`` and ``tuner worker``: open the study, start the workers, show progress.

``launch`` supervises ``devices x per_device`` worker processes on this machine (``tuner
worker``, each pinned to its GPU with ``CUDA_VISIBLE_DEVICES``) and never runs the objective
itself (:mod:`tuner.supervisor`). ``worker`` runs the trial loop on any machine that reaches the
same storage.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import ConfigError, ObjectiveError, StorageFailure
from tuner.progress import result_line
from tuner.runner import Worker
from tuner.search import worker_index
from tuner.session import open_session
from tuner.storage import redact_url
from tuner.summary import StudySummary, mlflow_view, summarize
from tuner.supervisor import WORKER_INDEX_ENV

if TYPE_CHECKING:
    from tuner.studyfile import StudyFile
    from tuner.supervisor import Stop
    from tuner.tracking import Tracker

__all__ = [
    "Slot",
    "launch",
    "resolve_slots",
    "run_worker",
]

log = logging.getLogger("tuner")


Echo = Callable[[str], None]


@dataclass(frozen=True)
class Slot:
    """Where one worker runs: the device the objective sees, and the one the tags record."""

    device: str
    tag: str
    visible: str | None = None  # CUDA_VISIBLE_DEVICES for a worker subprocess


def resolve_slots(devices: str | list[str], per_device: int) -> list[Slot]:
    """``auto`` means every visible CUDA device, else the CPU; each device ``per_device`` times."""
    if devices == "auto" and not _gpu_driver_present():
        devices = ["cpu"]  # no torch build sees a GPU here: spare launch torch's import
    if devices == "auto":
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        names = [f"cuda:{i}" for i in range(n)] or ["cpu"]
    else:
        names = list(devices)
    slots = []
    for name in names:
        for _ in range(per_device):
            if name.startswith("cuda"):
                index = name.partition(":")[2] or "0"
                slots.append(Slot(device="cuda:0", tag=f"cuda:{index}", visible=index))
            else:
                slots.append(Slot(device=name, tag=name))
    return slots


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
    process: every slot is a ``tuner worker`` process (:mod:`tuner.supervisor`), or with
    ``workers.backend: ray`` a Ray actor on a Ray cluster (:mod:`tuner.ray_backend`). ``show``
    gets the summary as soon as it is known, while the workers' processes are still ending.
    """
    from tuner.progress import Progress
    from tuner.supervisor import Supervisor

    _check_objective_file(study_file)
    echo(
        f"tuner launch: study {study_file.name!r} ({study_file.path}) | storage "
        f"{redact_url(study_file.storage)} | MLflow {_tracking_location(study_file)}"
    )
    cluster = None
    if study_file.workers.backend == "ray":
        from tuner.ray_backend import RayCluster

        cluster = RayCluster.connect(study_file)  # refuses what the cluster cannot run
        slots = cluster.slots
        echo(f"workers: {cluster.describe()}")
    else:
        slots = slots or resolve_slots(study_file.workers.devices, study_file.workers.per_device)
        for slot in slots:
            _check_device(slot.tag)
        echo(f"workers: {len(slots)} ({_describe_slots(slots)})")
    # MLflow is opened once the workers are starting: its import and store take seconds, which
    # the workers spend importing torch and the objective.
    session = open_session(study_file, tracking=False)
    study = session.study
    timeout = study_file.budget.timeout
    deadline = time.time() + timeout if timeout else None
    progress = Progress(study, study_file, echo, live=live and not quiet)
    supervisor = (Supervisor if cluster is None else cluster.supervisor)(
        study_file, session=session, slots=slots, progress=progress, deadline=deadline,
        quiet=quiet, after_spawn=session.open_tracking,
    )  # fmt: skip
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
        _update_parent(session.tracker, summary)
        session.tracker.end_study()
        session.close(timeout=30.0)  # says what MLflow did not get, before the summary
        if show is not None:
            show(summary, stop)
        return summary, stop
    finally:
        session.close(timeout=30.0)  # a second close is harmless
        # The workers said they were done; their teardown overlapped the summary.
        supervisor.close()


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
    actor (:mod:`tuner.ray_backend`).
    """
    from tuner.objective import load_objective
    from tuner.storage import warn_if_sqlite_shared
    from tuner.tracking import RelayTracker, tracking_off
    from tuner.trialdb import rdb_storage

    if events_fd is not None:
        from tuner.supervisor import EventWriter

        events = EventWriter(events_fd)
    if events is None:
        # A local launch owns its SQLite file; the warning is for a worker joining from afar.
        warning = warn_if_sqlite_shared(study_file.storage)
        if warning:
            log.warning(warning)
    objective = load_objective(study_file.objective, base_dir=study_file.path.parent)
    if device is None:
        device = resolve_slots(study_file.workers.devices, 1)[0].tag
    _check_device(device)
    # Every trial seeds torch (tuner.runner): import it now, not inside the first trial, where
    # its seconds on a loaded machine counted against budget.trial_timeout, in a C import that
    # the watchdog cannot interrupt; launch then killed each new worker in its first trial.
    import torch  # noqa: F401

    # launch numbers its workers; a worker started by hand on another machine takes a number
    # from its host and pid, so no two workers share a sampler seed.
    index = os.environ.get(WORKER_INDEX_ENV, "")
    worker = (
        int(index) if index.isdigit() else worker_index(f"{socket.gethostname()}/{os.getpid()}")
    )
    # Under launch the records go to the launch process, which has MLflow open: this process
    # never imports MLflow (seconds per worker start; tuner.tracking._relay).
    relayed = events is not None and not tracking_off(study_file.mlflow.tracking_uri)
    try:
        session = open_session(
            study_file, patience=STARTUP_PATIENCE, worker=worker, tracking=not relayed
        )
    except StorageFailure as exc:  # e.g. no connection left: launch stops, says this line
        if events is not None:
            events({"event": "storage_failure", "message": str(exc)})
        raise
    if relayed:
        assert events is not None
        session.tracker = RelayTracker(events)
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
    try:
        reason = worker.run()
        if events is None:  # under launch, the supervisor updates the parent run
            _update_parent(
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
    if events is not None:
        # Everything is recorded: launch need not wait for this process's teardown (about a
        # second after torch) to write its summary.
        events({"event": "done", "reason": reason})
    return reason


# How long a worker keeps trying to reach the study storage when it starts (a PostgreSQL
# restart takes seconds; a server that is down for longer is an error worth seeing).
STARTUP_PATIENCE = 60.0


def _check_objective_file(study_file: StudyFile) -> None:
    """A missing objective file is an error before anything is created; importing the objective
    (and anything else about it) is left to the workers: this process runs no user code."""
    from tuner.objective import is_file_spec, split_objective_spec

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
    return f"{redact_url(uri)} (experiment {study_file.mlflow.experiment!r})"


def _describe_slots(slots: list[Slot]) -> str:
    counts: dict[str, int] = {}
    for slot in slots:
        counts[slot.tag] = counts.get(slot.tag, 0) + 1
    return ", ".join(f"{tag} x{n}" if n > 1 else tag for tag, n in counts.items())


# What a GPU driver leaves on a machine: NVIDIA's (bare metal and containers), WSL2's GPU
# paravirtualisation, AMD's ROCm. Without any of them torch.cuda sees no device, so ``devices:
# auto`` means the CPU without importing torch (1.3 s of launch's start-up on a CPU machine;
# the workers import it anyway, in parallel).
_GPU_DRIVER_PATHS = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg", "/dev/kfd")


def _gpu_driver_present() -> bool:
    return any(os.path.exists(p) for p in _GPU_DRIVER_PATHS)


def _check_device(device: str) -> None:
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"workers.devices: {device} was asked for, but this torch build sees no CUDA device "
            f"(torch {torch.__version__})",
            hint="install a CUDA build of torch (see the README) or use `devices: [cpu]`",
        )


def _update_parent(tracker: Tracker, summary: StudySummary) -> None:
    from tuner.tracking import study_results

    metrics, tags, artifacts = study_results(summary)
    tracker.update_study(metrics=metrics, tags=tags, artifacts=artifacts)
