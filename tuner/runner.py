"""The trial runner: one worker's loop of reserve a slot, sample, train, record.

The study database is the only coordinator. A worker reserves a trial slot under a lock that
spans processes and machines (:func:`tuner.storage.budget_lock`), so the study ends with exactly
``budget.trials`` finished trials however many workers share it. A trial's failure is data
(state FAIL, its traceback in the trial's user attributes), never a crash of the study.

Its reads and writes of the study database live in :mod:`tuner.trialdb`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import random
import signal
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from tuner.compare import REPLICATE_ATTR
from tuner.errors import ConfigError
from tuner.storage import budget_lock, redact_url
from tuner.trial import Trial, TrialDiverged
from tuner.trialdb import (
    OUTCOME_ATTR,
    TrialHeartbeat,
    budget_counts,
    fail_stale_trials,
    heartbeat_interval,
    rdb_storage,
    set_user_attrs,
    tell,
)

if TYPE_CHECKING:
    from tuner.space import SearchSpace
    from tuner.studyfile import StudyFile
    from tuner.tracking import Tracker

__all__ = [
    "ATTR",
    "OUTCOMES",
    "TrialResult",
    "Worker",
    "open_study",
    "trial_seed",
]

log = logging.getLogger("tuner")


class ATTR:
    """Keys tuner keeps in Optuna's study and trial user attributes."""

    CONFIG = "tuner:config"
    OUTCOME = OUTCOME_ATTR
    REASON = "tuner:reason"
    TRACEBACK = "tuner:traceback"
    HOST = "tuner:worker_host"
    WORKER = "tuner:worker"  # host/pid: which process ran the trial
    DEVICE = "tuner:device"
    DURATION = "tuner:duration_s"
    RETRY_OF = "tuner:retry_of"
    METRIC = "tuner:metric"
    PARENT_RUN = "tuner:mlflow_parent_run_id"


OUTCOMES = ("complete", "pruned", "diverged", "failed", "interrupted")


@dataclass(frozen=True)
class TrialResult:
    """What became of one trial, as the worker loop reports it to progress displays."""

    number: int
    outcome: str
    value: float | None
    reason: str | None
    duration_s: float


def trial_seed(base: int, number: int) -> int:
    """A per-trial seed, stable across resumes and workers."""
    return (base * 1_000_003 + number) % (2**31)


def open_study(
    study_file: StudyFile, storage: optuna.storages.BaseStorage, *, worker: int = 0
) -> optuna.Study:
    """Create the study, or load it when a study of that name exists (resume, other workers).

    ``worker`` is this worker's number: its sampler's seed is derived from it, so parallel
    workers never draw the same sequence (worker 0 keeps the study's seed).
    """
    from tuner.studyfile import make_pruner, make_sampler

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


@dataclass
class Worker:
    """One worker: runs trials of ``study`` on ``device`` until the budget is spent.

    Collaborators are passed in: the study (with its storage), the tracker, the objective.
    """

    study_file: StudyFile
    study: optuna.Study
    objective: Callable[[Trial], float]
    tracker: Tracker
    device: str = "cpu"
    device_tag: str | None = None
    deadline: float | None = None
    on_trial_end: Callable[[TrialResult], None] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    host: str = field(default_factory=socket.gethostname)
    poll_interval: float = 1.0
    _in_objective: bool = field(default=False, repr=False)
    _tracking_mark: int | None = field(default=None, repr=False)
    _interrupted: bool = field(default=False, repr=False)
    _next_stale_check: float = field(default=0.0, repr=False)
    _space: SearchSpace | None = field(default=None, repr=False)
    _trials_run: int = field(default=0, repr=False)
    _typical: float | None = field(default=None, repr=False)

    def run(self) -> str:
        """Run trials until the budget, the timeout or the failure limit ends the study.

        Returns why this worker stopped: "budget", "timeout", "failures" or "stopped".
        Ctrl-C or SIGTERM raise KeyboardInterrupt once the running trial is recorded as
        interrupted (and queued to run again).
        """
        with self._signals():
            self._space = self._prepare_search()
            while not self.stop.is_set():
                if self._interrupted:
                    raise KeyboardInterrupt
                if self.deadline is not None and time.time() >= self.deadline:
                    return "timeout"
                self._check_stale()
                reserved = self._reserve()
                if self._interrupted and isinstance(reserved, str):
                    raise KeyboardInterrupt
                if isinstance(reserved, str):
                    return reserved
                result = self._run_trial(reserved)
                if self.on_trial_end is not None:
                    self.on_trial_end(result)
            return "stopped"

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """Ctrl-C and SIGTERM interrupt the objective at once, but never tuner's bookkeeping:
        outside the objective they only stop the loop, so no trial is left RUNNING."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, frame: object) -> None:
            self._interrupted = True
            if self._in_objective:
                raise KeyboardInterrupt

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _prepare_search(self) -> SearchSpace:
        """The range test and the portfolio (:mod:`tuner.search`), once per study."""
        from tuner.search import prepare_search

        budget = self.study_file.budget
        counts, _ = budget_counts(self.study)
        finished = counts.get(TrialState.COMPLETE, 0) + counts.get(TrialState.PRUNED, 0)
        if finished >= budget.trials:
            return self.study_file.search  # nothing left to search: no probe either
        self._in_objective = True  # the probes run the objective: Ctrl-C interrupts them
        try:
            return prepare_search(
                self.study,
                self.study_file,
                self.objective,
                lock=lambda: budget_lock(
                    rdb_storage(self.study) or self.study_file.storage, self.study.study_name
                ),
                device=self.device,
                stop=self.stop,
                poll_interval=self.poll_interval,
            )
        finally:
            self._in_objective = False

    def _reserve(self) -> optuna.Trial | str:
        """A trial to run, or why there is none; waits while other workers' trials decide."""
        budget = self.study_file.budget
        while True:
            with budget_lock(
                rdb_storage(self.study) or self.study_file.storage, self.study.study_name
            ):
                counts, failed = budget_counts(self.study)
                # Interrupted trials and those lost with a dead worker are retried, so only
                # the objective's own failures count toward max_failures.
                if failed >= budget.max_failures:
                    return "failures"
                finished = counts.get(TrialState.COMPLETE, 0) + counts.get(TrialState.PRUNED, 0)
                running = counts.get(TrialState.RUNNING, 0)
                phase = None
                if finished + running >= budget.trials:
                    # Replicates run after the search and never count toward its budget.
                    finished, running, phase = self._replicate_phase(finished, running)
                if phase is not None and phase != "wait":
                    return phase
                if phase is None and finished >= budget.trials:
                    return "budget"
                # ask() takes a WAITING (retried) trial first, else creates a new one.
                if phase is None and (
                    counts.get(TrialState.WAITING, 0) or finished + running < budget.trials
                ):
                    with warnings.catch_warnings():
                        # Optuna warns that heartbeats are meant for Study.optimize; this loop
                        # runs them itself (a TrialHeartbeat around each trial).
                        warnings.filterwarnings("ignore", "Heartbeat of storage")
                        return self.study.ask()
            # The rest of the budget is running elsewhere. Stay until those trials finish: one
            # whose worker died is failed after the grace period and its retry queued here.
            if self._interrupted or self.stop.wait(self.poll_interval):
                return "stopped"
            if self.deadline is not None and time.time() >= self.deadline:
                return "timeout"
            self._check_stale()

    def _typical_value(self) -> float | None:
        """The median magnitude of the study's complete values: divergence's scale floor.

        Refreshed every 10 trials of this worker; the median moves slowly.
        """
        if self._trials_run % 10 == 0:
            values = sorted(
                abs(t.value)
                for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)
            )
            self._typical = values[len(values) // 2] if values else None
        self._trials_run += 1
        return self._typical

    def _replicate_phase(
        self, finished: int, running: int
    ) -> tuple[int, int, optuna.Trial | str | None]:
        """Search counts without replicates, and what to do once the search is over.

        The third item is None while the search goes on; else a replicate trial to run,
        "wait" (search trials or replicates still running elsewhere) or "budget" (nothing
        left to run). Called under the budget lock, so no two workers enqueue the same one.
        """
        from tuner import compare

        sf = self.study_file
        reps = compare.replicate_counts(self.study)
        finished -= reps.get(TrialState.COMPLETE, 0) + reps.get(TrialState.PRUNED, 0)
        running -= reps.get(TrialState.RUNNING, 0)
        if finished < sf.budget.trials or sf.compare.seeds == 0:
            return finished, running, None
        if running > 0:  # the finalists are not settled until every search trial is done
            return finished, running, "wait"
        if reps.get(TrialState.WAITING, 0) or compare.next_replicate(
            self.study, sf.direction, sf.compare, _sampler_seed(sf)
        ):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Heartbeat of storage")
                return finished, running, self.study.ask()
        return finished, running, "wait" if reps.get(TrialState.RUNNING, 0) else "budget"

    def _check_stale(self) -> None:
        """``fail_stale_trials``, at most once per heartbeat interval.

        A dead worker's trial turns stale only ``grace_period`` after its last heartbeat, so
        looking more often than worker heartbeats arrive finds nothing new; with trials of a few
        milliseconds the check would otherwise cost a query per trial.
        """
        now = time.monotonic()
        if now < self._next_stale_check:
            return
        fail_stale_trials(self.study)
        interval = heartbeat_interval(self.study)
        self._next_stale_check = now + (interval if interval else self.poll_interval)

    def _run_trial(self, ot: optuna.Trial) -> TrialResult:
        from tuner import compare
        from tuner.export import OptimizerConfig
        from tuner.space import sample_config

        started = time.monotonic()
        sf = self.study_file
        recorder = None
        outcome, value, reason, tb = "complete", None, None, None
        diverged_step: int | None = None
        trial: Trial | None = None
        # Where the trial runs goes with its first heartbeat, in one commit, before sampling: a
        # worker that dies from here on leaves a trial that the stale check fails and retries.
        heartbeat = TrialHeartbeat(
            ot,
            {
                ATTR.HOST: self.host,
                ATTR.WORKER: f"{self.host}/{os.getpid()}",
                ATTR.DEVICE: self.device_tag or self.device,
            },
        )
        heartbeat.start()
        replicate = compare.replicate_of(ot)
        try:
            if replicate is None:
                config = sample_config(ot, self._space or sf.search)
            else:  # a finalist's configuration again, with a fresh seed (tuner.compare)
                config = OptimizerConfig.from_dict(replicate["config"])
            heartbeat.write_soon({ATTR.CONFIG: config.to_dict()})
            recorder = self.tracker.start_trial(
                number=ot.number,
                params=_flat_params(config.to_dict()),
                tags={
                    **_replicate_tags(replicate),
                    "tuner.trial_number": str(ot.number),
                    "tuner.optimizer": config.optimizer,
                    "tuner.schedule": str(config.schedule.get("name")),
                    "tuner.worker_host": self.host,
                    "tuner.device": self.device_tag or self.device,
                },
            )
            seed = trial_seed(_sampler_seed(sf), ot.number)
            if replicate is not None:
                seed = int(replicate["seed"])
            trial = Trial(
                optuna=ot,
                config=config,
                device=self.device,
                max_epochs=sf.budget.epochs,
                params=dict(sf.params),
                seed=seed,
                metric=sf.metric,
                direction=sf.direction,
                recorder=recorder,
                typical_value=self._typical_value(),
                prune=replicate is None,  # a replicate runs to the end, whatever the pruner says
            )
            _seed_everything(seed)
            if self._interrupted:  # the signal came between reserving and starting
                raise KeyboardInterrupt
            self._in_objective = True
            try:
                returned = self.objective(trial)
            finally:
                self._in_objective = False
            value = _as_value(returned)
            if not math.isfinite(value):
                raise TrialDiverged(f"the objective returned {value}")
        except TrialDiverged as exc:
            outcome, reason = "diverged", exc.reason
            diverged_step = exc.step
        except optuna.TrialPruned as exc:
            outcome, reason = "pruned", str(exc) or None
        except KeyboardInterrupt:
            outcome, reason = "interrupted", "interrupted (Ctrl-C or SIGTERM)"
        except Exception as exc:
            outcome = "failed"
            reason = redact_url(f"{type(exc).__name__}: {exc}")
            tb = redact_url(traceback.format_exc())
            del exc
        finally:
            unwritten = heartbeat.stop()

        duration = time.monotonic() - started
        self._record(ot, trial, outcome, value, reason, tb, diverged_step, duration, unwritten)
        if recorder is not None:
            recorder.finish(
                outcome,
                tags={
                    "tuner.duration_s": f"{duration:.3f}",
                    # The runs table tells outcomes and replicates apart by name.
                    "mlflow.runName": _run_name(ot.number, outcome, replicate),
                },
            )
            # Wait (1 s at most, and not at all while MLflow fails) for the previous trial's
            # MLflow data, not this one's: sending overlaps the next trial, yet training does
            # not run far ahead of MLflow. The study database holds everything; `tuner sync`
            # backfills.
            if self._tracking_mark is not None:
                self.tracker.flush(timeout=1.0, upto=self._tracking_mark)
            self._tracking_mark = self.tracker.mark()
        if outcome == "failed":
            _free_device_memory()
            log.warning(
                "trial %d failed: %s (traceback kept in the study database)", ot.number, reason
            )
        elif outcome == "diverged":
            log.debug("trial %d diverged: %s", ot.number, reason)
        if outcome == "interrupted":
            raise KeyboardInterrupt
        return TrialResult(ot.number, outcome, value, reason, duration)

    def _record(
        self,
        ot: optuna.Trial,
        trial: Trial | None,
        outcome: str,
        value: float | None,
        reason: str | None,
        tb: str | None,
        diverged_step: int | None,
        duration: float,
        unwritten: Mapping[str, Any],
    ) -> None:
        # The outcome and whatever the heartbeat thread had not written yet: one commit.
        attrs: dict[str, Any] = {
            **unwritten,
            ATTR.OUTCOME: outcome,
            ATTR.DURATION: round(duration, 3),
        }
        if reason:
            attrs[ATTR.REASON] = reason[:2000]
        if tb:
            attrs[ATTR.TRACEBACK] = tb[-8000:]
        set_user_attrs(ot, attrs)
        if outcome == "complete":
            tell(self.study, ot, value)
        elif outcome == "pruned":
            tell(self.study, ot, state=TrialState.PRUNED)
        elif outcome == "diverged":
            # A pruned trial whose last intermediate value is NaN ranks worst for TPE, so the
            # sampler learns to avoid the region instead of ignoring a failure.
            if diverged_step is None:
                last = trial.last_step if trial is not None else None
                ot.report(float("nan"), 0 if last is None else last + 1)
            tell(self.study, ot, state=TrialState.PRUNED)
        else:
            tell(self.study, ot, state=TrialState.FAIL)
            # The same configuration runs again when the study resumes; a replicate is
            # missing again, and tuner.compare queues it.
            if outcome == "interrupted" and REPLICATE_ATTR not in ot.user_attrs:
                self.study.enqueue_trial(ot.params, user_attrs={ATTR.RETRY_OF: ot.number})


def _replicate_tags(replicate: Mapping[str, Any] | None) -> dict[str, str]:
    if replicate is None:
        return {}
    return {
        "tuner.replicate_of": str(replicate["of"]),
        "tuner.seed": str(replicate["seed"]),
        "tuner.seed_index": str(replicate["index"]),
    }


def _run_name(number: int, outcome: str, replicate: Mapping[str, Any] | None) -> str:
    """``trial-7``, ``trial-8 (pruned)``, ``trial-40 replicate of 7, seed 2``."""
    name = f"trial-{number}"
    if replicate is not None:
        name += f" replicate of {replicate['of']}, seed {int(replicate['index']) + 1}"
    return name if outcome == "complete" else f"{name} ({outcome})"


def _as_value(returned: Any) -> float:
    if isinstance(returned, bool) or returned is None:
        raise TypeError(f"the objective must return a number, but it returned {returned!r}")
    try:
        return float(returned)
    except (TypeError, ValueError):
        raise TypeError(
            f"the objective must return a number, but it returned {returned!r}"
        ) from None


def _flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_params(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _sampler_seed(study_file: StudyFile) -> int:
    seed = study_file.sampler.options.get("seed") if study_file.sampler.options else None
    return int(seed) if isinstance(seed, int) else 0


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _free_device_memory() -> None:
    """After a failure (a CUDA OOM above all) release what the dead trial held."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - freeing memory must never fail a worker
        pass
