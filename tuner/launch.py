"""``tuner launch`` and ``tuner worker``: open the study, start the workers, show progress.

``launch`` runs ``devices x per_device`` workers on this machine: one in this process, or one
subprocess per slot (``tuner worker``), each pinned to its GPU with ``CUDA_VISIBLE_DEVICES``.
``worker`` runs the same loop on any machine that reaches the same storage.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from tuner.errors import ConfigError, TunerError
from tuner.runner import ATTR, TrialResult, Worker, open_study
from tuner.search import worker_index
from tuner.summary import StudySummary, format_duration, mlflow_view, summarize
from tuner.trialdb import budget_counts, count_states

if TYPE_CHECKING:
    from tuner.studyfile import StudyFile
    from tuner.tracking import Tracker

__all__ = [
    "Slot",
    "launch",
    "open_session",
    "open_study_storage",
    "resolve_slots",
    "run_worker",
]

log = logging.getLogger("tuner")

# launch numbers the workers it starts (0, 1, ...) through this variable: worker 0 keeps the
# study's sampler seed, the others derive theirs from it.
WORKER_INDEX_ENV = "TUNER_WORKER_INDEX"

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Slot:
    """Where one worker runs: the device the objective sees, and the one the tags record."""

    device: str
    tag: str
    visible: str | None = None  # CUDA_VISIBLE_DEVICES for a worker subprocess


def resolve_slots(devices: str | list[str], per_device: int) -> list[Slot]:
    """``auto`` means every visible CUDA device, else the CPU; each device ``per_device`` times."""
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


def open_session(study_file: StudyFile, *, worker: int = 0) -> tuple[optuna.Study, Tracker]:
    """Open the storage, the study (created or resumed) and the tracker with its parent run.

    ``worker`` numbers this worker among the study's (its sampler seed derives from it).
    """
    from tuner.storage import dialect_of
    from tuner.tracking import make_tracker

    tracker = make_tracker(study_file.mlflow.tracking_uri, experiment=study_file.mlflow.experiment)
    study = open_study(study_file, open_study_storage(study_file, tracker), worker=worker)
    existing = study.user_attrs.get(ATTR.PARENT_RUN)
    parent = tracker.open_study(
        study_name=study_file.name,
        experiment=study_file.mlflow.experiment,
        study_yaml_text=study_file.raw_text,
        tags={
            "tuner.sampler": study_file.sampler.name,
            "tuner.pruner": study_file.pruner.name,
            "tuner.storage_dialect": dialect_of(study_file.storage),
            "tuner.direction": study_file.direction,
            "tuner.metric": study_file.metric,
        },
        existing_parent_run_id=existing,
    )
    if parent is not None and parent != existing:
        study.set_user_attr(ATTR.PARENT_RUN, parent)
    return study, tracker


def open_study_storage(study_file: StudyFile, tracker: Tracker) -> optuna.storages.BaseStorage:
    """The study database with heartbeats on: a trial whose worker went silent for
    ``workers.grace_period`` is failed, queued again, and its MLflow run closed as KILLED."""
    from tuner.storage import open_storage

    return open_storage(
        study_file.storage,
        heartbeat_interval=study_file.workers.heartbeat_interval,
        grace_period=study_file.workers.grace_period,
        failed_trial_callback=_retry_stale_trials(tracker),
    )


def _retry_stale_trials(
    tracker: Tracker,
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
        tracker.kill_trial(trial.number, reason="its worker stopped sending heartbeats")

    return on_stale


def launch(
    study_file: StudyFile,
    *,
    echo: Echo,
    slots: list[Slot] | None = None,
) -> StudySummary:
    """Run the study to its budget on this machine; returns the final summary."""
    from tuner.objective import load_objective

    objective = load_objective(study_file.objective, base_dir=study_file.path.parent)
    slots = slots or resolve_slots(study_file.workers.devices, study_file.workers.per_device)
    for slot in slots:
        _check_device(slot.tag)
    study, tracker = open_session(study_file)
    timeout = study_file.budget.timeout
    deadline = time.time() + timeout if timeout else None
    progress = Progress(study, study_file, echo)
    try:
        if len(slots) == 1:
            worker = Worker(
                study_file=study_file,
                study=study,
                objective=objective,
                tracker=tracker,
                device=slots[0].tag,
                device_tag=slots[0].tag,
                deadline=deadline,
                on_trial_end=progress.trial_ended,
            )
            progress.stopped(worker.run())
        else:
            progress.stopped(_run_subprocess_workers(study_file, slots, deadline, progress))
        summary = summarize(study, budget=study_file.budget.trials, compare=study_file.compare)
        summary.stop_reason = progress.reason
        summary.mlflow_view = mlflow_view(
            study_file.mlflow.tracking_uri, getattr(tracker, "experiment_id", None)
        )
        _update_parent(tracker, summary)
        tracker.end_study()
        return summary
    finally:
        tracker.close(timeout=30.0)


def run_worker(
    study_file: StudyFile,
    *,
    echo: Echo,
    device: str | None = None,
    device_tag: str | None = None,
    deadline: float | None = None,
) -> str:
    """``tuner worker``: join the study and run trials on one device until the budget is spent."""
    from tuner.objective import load_objective
    from tuner.storage import warn_if_sqlite_shared

    warning = warn_if_sqlite_shared(study_file.storage)
    if warning:
        log.warning(warning)
    objective = load_objective(study_file.objective, base_dir=study_file.path.parent)
    if device is None:
        device = resolve_slots(study_file.workers.devices, 1)[0].tag
    _check_device(device)
    # launch numbers its workers; a worker started by hand on another machine takes a number
    # from its host and pid, so no two workers share a sampler seed.
    index = os.environ.get(WORKER_INDEX_ENV, "")
    worker = (
        int(index) if index.isdigit() else worker_index(f"{socket.gethostname()}/{os.getpid()}")
    )
    study, tracker = open_session(study_file, worker=worker)
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
        on_trial_end=lambda r: echo(_result_line(r, study_file.metric)),
    )
    try:
        reason = worker.run()
        summary = summarize(study, budget=study_file.budget.trials, compare=study_file.compare)
        _update_parent(tracker, summary)
        return reason
    finally:
        tracker.close(timeout=30.0)


class Progress:
    """Progress lines while trials finish: done of budget, best so far, elapsed, remaining."""

    def __init__(self, study: optuna.Study, study_file: StudyFile, echo: Echo) -> None:
        self.study = study
        self.sf = study_file
        self.echo = echo
        self.started = time.monotonic()
        self.done_at_start = _finished(study)
        self.reason: str | None = None

    def trial_ended(self, result: TrialResult | None = None) -> None:
        done = _finished(self.study)
        budget = self.sf.budget.trials
        elapsed = time.monotonic() - self.started
        best = _best(self.study)
        replicates = 0
        if done > budget:  # replicates of the finalists (tuner.compare), after the search
            from tuner.compare import replicate_counts

            reps = replicate_counts(self.study)
            replicates = reps.get(TrialState.COMPLETE, 0) + reps.get(TrialState.PRUNED, 0)
            done -= replicates
        parts = [f"[{done:>{len(str(budget))}}/{budget}]"]
        if replicates:
            parts[0] += f" replicate {replicates}"
        if result is not None:
            parts.append(_result_line(result, self.sf.metric))
        parts.append(f"best {best}")
        parts.append(f"elapsed {format_duration(elapsed)}")
        new = done - self.done_at_start
        if new > 0 and done < budget:
            left = elapsed / new * (budget - done)
            if self.sf.budget.timeout:
                left = min(left, max(0.0, self.sf.budget.timeout - elapsed))
            parts.append(f"~{format_duration(left)} left")
        self.echo(" | ".join(parts))

    def stopped(self, reason: str) -> None:
        self.reason = reason
        messages = {
            "timeout": "budget.timeout reached: no new trial started",
            "failures": (
                f"stopped: {self.sf.budget.max_failures} trials failed (budget.max_failures); "
                "see `tuner status` and the tracebacks in MLflow or the study database"
            ),
        }
        if reason in messages:
            self.echo(messages[reason])


def _run_subprocess_workers(
    study_file: StudyFile, slots: list[Slot], deadline: float | None, progress: Progress
) -> str:
    procs = []
    for index, slot in enumerate(slots):
        env = {**os.environ, WORKER_INDEX_ENV: str(index)}
        if slot.visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.visible
        cmd = [
            sys.executable, "-m", "tuner", "worker", str(study_file.path),
            "--device", slot.device, "--device-tag", slot.tag, "--quiet",
        ]  # fmt: skip
        if deadline is not None:
            cmd += ["--deadline", repr(deadline)]
        procs.append(subprocess.Popen(cmd, env=env))
    last = -1
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            done = _finished(progress.study)
            if done != last:
                last = done
                progress.trial_ended()
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(timeout=60)
        raise
    codes = [p.returncode for p in procs]
    if any(c not in (0,) for c in codes):
        raise TunerError(
            f"{sum(c != 0 for c in codes)} of {len(procs)} workers exited with an "
            f"error (exit codes {codes}); their output is above"
        )
    progress.trial_ended()
    # The workers decided why they stopped; read it back from the study database.
    counts, failed = budget_counts(progress.study)
    finished = counts.get(TrialState.COMPLETE, 0) + counts.get(TrialState.PRUNED, 0)
    if finished >= study_file.budget.trials:
        return "budget"
    if failed >= study_file.budget.max_failures:
        return "failures"
    return "timeout" if deadline is not None and time.time() >= deadline else "stopped"


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

    metrics, artifacts = study_results(summary)
    tags: dict[str, str] = {}
    if summary.answer is not None and summary.answer.finalists:
        from tuner.compare import describe_answer

        # The parent run leads with the answer: its description (MLflow's note) and a file.
        artifacts["answer.json"] = summary.answer.dumps()
        tags["mlflow.note.content"] = describe_answer(summary.answer)
        tags["tuner.answer"] = summary.answer.sentence()
        tags["tuner.winner"] = summary.answer.finalists[0].optimizer
    tracker.update_study(metrics=metrics, tags=tags, artifacts=artifacts)


def _finished(study: optuna.Study) -> int:
    counts = count_states(study)
    return counts.get(TrialState.COMPLETE, 0) + counts.get(TrialState.PRUNED, 0)


def _best(study: optuna.Study) -> str:
    try:
        best = study.best_trial
    except ValueError:
        return "none yet"
    return f"{best.value:.6g} (trial {best.number})"


def _result_line(result: TrialResult, metric: str) -> str:
    text = f"trial {result.number} {result.outcome}"
    if result.value is not None and result.outcome == "complete":
        text += f" {metric}={result.value:.6g}"
    elif result.reason and result.outcome in ("failed", "diverged"):
        text += f" ({result.reason[:80]})"
    return text
