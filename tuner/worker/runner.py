"""The trial runner: one worker's loop of reserve a slot, sample, train, record.

The study database is the only coordinator. A worker reserves a trial slot under a lock that
spans processes and machines (:func:`tuner.db.storage.budget_lock`), so the study ends with exactly
``budget.trials`` finished trials however many workers share it. A trial's failure is data
(state FAIL, its traceback in the trial's user attributes), never a crash of the study.

Its reads and writes of the study database live in :mod:`tuner.db.trialdb`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
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

from tuner.catalog.export import OptimizerConfig
from tuner.config.space import sample_config
from tuner.core.durations import format_duration
from tuner.core.errors import StorageFailure
from tuner.core.keys import ATTR, EVENT, OUTCOMES, TAG, Outcome
from tuner.core.private_api import rdb_storage, trial_id
from tuner.core.redact import redact
from tuner.core.trials import count_finished
from tuner.db.storage import budget_lock, storage_errors
from tuner.db.trialdb import (
    TrialHeartbeat,
    budget_counts,
    fail_stale_trials,
    heartbeat_interval,
    set_user_attrs,
    tell,
)
from tuner.results import compare
from tuner.search import prepare_search
from tuner.trial import Trial, TrialDiverged, seed_everything

if TYPE_CHECKING:
    from tuner.config.space import SearchSpace
    from tuner.config.studyfile import StudyFile
    from tuner.tracking import Tracker

__all__ = [
    "ATTR",
    "OUTCOMES",
    "Outcome",
    "TrialResult",
    "Worker",
    "optimizer_state_bytes",
    "trial_seed",
]

log = logging.getLogger("tuner")


# The signal a worker's watchdog sends to its own main thread to cut a trial short.
CUT_SHORT_SIGNAL = signal.SIGUSR1
WATCH_INTERVAL = 0.25
# How long a trial may run on past budget.timeout before it is stopped and queued again.
DEADLINE_GRACE = 10.0
LOST_REASON = (
    "another process failed this trial while this worker was silent for longer than "
    "workers.grace_period (paused, or cut off from the storage); its result is dropped and "
    "the trial runs again"
)


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


@dataclass
class Worker:
    """One worker: runs trials of ``study`` on ``device`` until the budget is spent.

    Collaborators are passed in: the study (with its storage), the tracker, the objective.
    ``events`` receives what a supervisor shows and acts on (a trial started, reached a step,
    ended); ``parent_pid`` is the supervisor's pid: once it is gone the worker stops, its
    running trial queued again, so nothing that ``tuner launch`` started outlives it.
    """

    study_file: StudyFile
    study: optuna.Study
    objective: Callable[[Trial], float]
    tracker: Tracker
    device: str = "cpu"
    device_tag: str | None = None
    deadline: float | None = None
    on_trial_end: Callable[[TrialResult], None] | None = None
    events: Callable[[dict[str, Any]], None] | None = None
    parent_pid: int | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    host: str = field(default_factory=socket.gethostname)
    poll_interval: float = 1.0
    deadline_grace: float = DEADLINE_GRACE
    _in_objective: bool = field(default=False, repr=False)
    _tracking_mark: int | None = field(default=None, repr=False)
    _interrupted: bool = field(default=False, repr=False)
    _next_stale_check: float = field(default=0.0, repr=False)
    _space: SearchSpace | None = field(default=None, repr=False)
    _trials_run: int = field(default=0, repr=False)
    _typical: float | None = field(default=None, repr=False)
    _trial_started: float | None = field(default=None, repr=False)
    _cut_short: _CutShort | None = field(default=None, repr=False)
    _objective_s: float | None = field(default=None, repr=False)
    _steps: set[int] = field(default_factory=set, repr=False)

    def run(self) -> str:
        """Run trials until the budget, the timeout or the failure limit ends the study.

        Returns why this worker stopped: "budget", "timeout", "failures" or "stopped".
        Ctrl-C or SIGTERM raise KeyboardInterrupt once the running trial is recorded as
        interrupted (and queued to run again).
        """
        with self._signals(), self._watchdog(), self._storage_failures():
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
                if result.outcome == Outcome.INTERRUPTED:
                    # Only the deadline's grace ends a trial this way without raising.
                    return "timeout"
            return "stopped"

    @contextlib.contextmanager
    def _storage_failures(self) -> Iterator[None]:
        """A database failure the user must fix (a full disk, a read-only file...) ends this
        worker with one line naming the cause (:func:`tuner.db.storage.storage_failure`), and
        tells the supervisor, which stops the study rather than start workers that would fail
        the same way."""
        try:
            with storage_errors(self.study_file.storage):
                yield
        except StorageFailure as exc:
            self._emit(EVENT.STORAGE_FAILURE, message=str(exc))
            raise

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

        def on_cut_short(signum: int, frame: object) -> None:
            # The watchdog's request: raised in the objective only, never in bookkeeping.
            cut, self._cut_short = self._cut_short, None
            if cut is not None and self._in_objective:
                raise cut

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        previous[CUT_SHORT_SIGNAL] = signal.signal(CUT_SHORT_SIGNAL, on_cut_short)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _prepare_search(self) -> SearchSpace:
        """The range test and the portfolio (:mod:`tuner.search`), once per study."""

        budget = self.study_file.budget
        counts, _ = budget_counts(self.study)
        finished = count_finished(counts)
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

    @contextlib.contextmanager
    def _watchdog(self) -> Iterator[None]:
        """A thread that watches the clock and the parent process, and asks the main thread (by
        a signal) to cut the running trial short: past ``budget.trial_timeout`` it fails as
        timed out; past ``budget.timeout`` plus a short grace it is interrupted and queued
        again; once the supervisor is gone the worker stops as on SIGTERM."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        done = threading.Event()
        thread = threading.Thread(
            target=self._watch, args=(done,), name="tuner-watchdog", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _watch(self, done: threading.Event) -> None:
        trial_timeout = self.study_file.budget.trial_timeout
        asked_for: float | None = None  # the trial (by its start time) already cut short
        while not done.wait(WATCH_INTERVAL):
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                _parent_gone()
                return
            started = self._trial_started
            if started is None or not self._in_objective or asked_for == started:
                continue
            if trial_timeout is not None and time.monotonic() - started > trial_timeout:
                cut = _CutShort(Outcome.FAILED, timed_out_reason(trial_timeout))
            elif self.deadline is not None and time.time() > self.deadline + self.deadline_grace:
                cut = _CutShort(Outcome.INTERRUPTED, "budget.timeout passed: it runs again")
            else:
                continue
            asked_for = started
            self._cut_short = cut
            os.kill(os.getpid(), CUT_SHORT_SIGNAL)

    def _emit(self, event: str, **data: Any) -> None:
        if self.events is not None:
            self.events({"event": event, **data})

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
                finished = count_finished(counts)
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

        sf = self.study_file
        reps = compare.replicate_counts(self.study)
        finished -= count_finished(reps)
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
        """Run one reserved trial: announce it, prepare it, call the objective, record it."""

        started = time.monotonic()
        # Where the trial runs goes with its first heartbeat, in one commit, before sampling: a
        # worker that dies from here on leaves a trial that the stale check fails and retries.
        heartbeat = TrialHeartbeat(ot, self._where())
        heartbeat.start()
        self._emit(EVENT.START, number=ot.number, trial_id=trial_id(ot))
        replicate = compare.replicate_of(ot)
        trial: Trial | None = None
        try:
            try:
                trial = self._prepare(ot, heartbeat, replicate)
            except Exception as exc:
                # The search space or the tracker, not the objective: say so in the reason.
                ending = _failure(exc, prefix="preparing the trial failed: ")
            else:
                ending = self._call_objective(trial)
        except (KeyboardInterrupt, _CutShort) as exc:  # a signal just outside the objective
            ending = _interruption(exc)
        finally:
            unwritten = heartbeat.stop()

        duration = time.monotonic() - started
        if not self._record(ot, trial, ending, duration, unwritten):
            ending = _Ending(Outcome.LOST, reason=LOST_REASON)
        recorder = trial.recorder if trial is not None else None
        if recorder is not None and ending.outcome != Outcome.LOST:
            recorder.finish(
                ending.outcome.value,
                tags={
                    TAG.DURATION: f"{duration:.3f}",
                    # The runs table tells outcomes and replicates apart by name.
                    "mlflow.runName": _run_name(ot.number, ending.outcome.value, replicate),
                },
            )
            # Wait (1 s at most, and not at all while MLflow fails) for the previous trial's
            # MLflow data, not this one's: sending overlaps the next trial, yet training does
            # not run far ahead of MLflow. The study database holds everything; `tuner sync`
            # backfills.
            if self._tracking_mark is not None:
                self.tracker.flush(timeout=1.0, upto=self._tracking_mark)
            self._tracking_mark = self.tracker.mark()
        result = TrialResult(ot.number, ending.outcome.value, ending.value, ending.reason, duration)
        self._emit(
            EVENT.END, number=ot.number, outcome=result.outcome, value=result.value,
            reason=result.reason, duration=round(duration, 3),
        )  # fmt: skip
        self._log_ending(ot.number, ending)
        if ending.outcome == Outcome.INTERRUPTED and not ending.deadline:
            raise KeyboardInterrupt
        return result

    def _where(self) -> dict[str, Any]:
        return {
            ATTR.HOST: self.host,
            ATTR.WORKER: f"{self.host}/{os.getpid()}",
            ATTR.DEVICE: self.device_tag or self.device,
        }

    def _prepare(
        self, ot: optuna.Trial, heartbeat: TrialHeartbeat, replicate: Mapping[str, Any] | None
    ) -> Trial:
        """Sample the configuration (or take a finalist's, for a replicate), open the trial's
        MLflow run, seed: the objective's input."""

        sf = self.study_file
        if replicate is None:
            config = sample_config(ot, self._space or sf.search)
        else:  # a finalist's configuration again, with a fresh seed (tuner.results.compare)
            config = OptimizerConfig.from_dict(replicate["config"])
        heartbeat.write_soon({ATTR.CONFIG: config.to_dict()})
        recorder = self.tracker.start_trial(
            number=ot.number,
            params=_flat_params(config.to_dict()),
            tags={
                **_replicate_tags(replicate),
                TAG.TRIAL_NUMBER: str(ot.number),
                TAG.OPTIMIZER: config.optimizer,
                TAG.SCHEDULE: str(config.schedule.get("name")),
                TAG.HOST: self.host,
                TAG.DEVICE: self.device_tag or self.device,
            },
        )
        seed = trial_seed(_sampler_seed(sf), ot.number)
        if replicate is not None:
            seed = int(replicate["seed"])
        seed_everything(seed)
        number = ot.number
        steps = self._steps = set()
        self._objective_s = None

        def on_report(step: int, value: float) -> None:
            steps.add(step)  # epochs for the cost per epoch (tuner.results.compare)
            self._emit(EVENT.STEP, number=number, step=step)

        return Trial(
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
            on_report=on_report,
        )

    def _call_objective(self, trial: Trial) -> _Ending:
        """The objective's outcome: every way it can end, as data."""
        if self._interrupted:  # the signal came between reserving and starting
            return _interruption(KeyboardInterrupt())
        self._trial_started = time.monotonic()
        self._in_objective = True
        try:
            returned = self.objective(trial)
        except TrialDiverged as exc:
            return _Ending(Outcome.DIVERGED, reason=exc.reason, diverged_step=exc.step)
        except optuna.TrialPruned as exc:
            return _Ending(Outcome.PRUNED, reason=str(exc) or None)
        except (KeyboardInterrupt, _CutShort) as exc:
            return _interruption(exc)
        except optuna.exceptions.UpdateFinishedTrialError:
            # trial.report() on a trial that another process failed while this one was silent.
            return _Ending(Outcome.LOST, reason=LOST_REASON)
        except SystemExit as exc:
            # A worker that exits costs more than the trial; the objective asked to stop, so
            # this trial fails and the worker goes on.
            return _failure(exc, prefix=f"the objective called sys.exit({exc.code!r}): ")
        except Exception as exc:
            return _failure(exc)
        finally:
            self._in_objective = False
            self._objective_s = time.monotonic() - self._trial_started
            self._trial_started = None
        try:
            value = _as_value(returned)
        except TypeError as exc:
            return _failure(exc)
        if not math.isfinite(value):
            return _Ending(Outcome.DIVERGED, reason=f"the objective returned {value}")
        return _Ending(Outcome.COMPLETE, value=value)

    def _log_ending(self, number: int, ending: _Ending) -> None:
        if ending.outcome == Outcome.FAILED:
            _free_device_memory()
            log.warning(
                "trial %d failed: %s (traceback kept in the study database)", number, ending.reason
            )
        elif ending.outcome == Outcome.DIVERGED:
            log.debug("trial %d diverged: %s", number, ending.reason)
        elif ending.outcome == Outcome.LOST:
            log.warning("trial %d: %s", number, LOST_REASON)

    def _record(
        self,
        ot: optuna.Trial,
        trial: Trial | None,
        ending: _Ending,
        duration: float,
        unwritten: Mapping[str, Any],
    ) -> bool:
        """Write the trial's outcome; False when another process already ended the trial."""
        if ending.outcome == Outcome.LOST:
            return False
        # The outcome and whatever the heartbeat thread had not written yet: one commit.
        attrs: dict[str, Any] = {
            **unwritten,
            ATTR.OUTCOME: ending.outcome.value,
            ATTR.DURATION: round(duration, 3),
        }
        if ending.reason:
            attrs[ATTR.REASON] = ending.reason[:2000]
        if ending.traceback:
            attrs[ATTR.TRACEBACK] = ending.traceback[-8000:]
        if trial is not None and self._objective_s is not None:
            attrs.update(_cost(trial, self._objective_s, self._steps))
        try:
            set_user_attrs(ot, attrs)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Failed for silence (the worker was paused or cut off past grace_period) and
            # queued again: its retry owns the result now.
            return False
        outcome = ending.outcome
        if outcome == Outcome.COMPLETE:
            tell(self.study, ot, ending.value)
        elif outcome == Outcome.PRUNED:
            tell(self.study, ot, state=TrialState.PRUNED)
        elif outcome == Outcome.DIVERGED:
            # A pruned trial whose last intermediate value is NaN ranks worst for TPE, so the
            # sampler learns to avoid the region instead of ignoring a failure.
            if ending.diverged_step is None:
                last = trial.last_step if trial is not None else None
                ot.report(float("nan"), 0 if last is None else last + 1)
            tell(self.study, ot, state=TrialState.PRUNED)
        else:
            tell(self.study, ot, state=TrialState.FAIL)
            # The same configuration runs again when the study resumes; a replicate is
            # missing again, and tuner.results.compare queues it.
            if outcome == Outcome.INTERRUPTED and ATTR.REPLICATE not in ot.user_attrs:
                self.study.enqueue_trial(ot.params, user_attrs={ATTR.RETRY_OF: ot.number})
        return True


@dataclass(frozen=True)
class _Ending:
    """How a trial ended, before it is recorded."""

    outcome: Outcome
    value: float | None = None
    reason: str | None = None
    traceback: str | None = None
    diverged_step: int | None = None
    deadline: bool = False  # interrupted by budget.timeout's grace, not by a signal


class _CutShort(BaseException):
    """Raised in the objective at the watchdog's request (a BaseException, so that an
    objective's ``except Exception`` does not swallow it)."""

    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


def _interruption(exc: BaseException) -> _Ending:
    if isinstance(exc, _CutShort):
        return _Ending(exc.outcome, reason=exc.reason, deadline=exc.outcome == Outcome.INTERRUPTED)
    return _Ending(Outcome.INTERRUPTED, reason="interrupted (Ctrl-C or SIGTERM)")


def _failure(exc: BaseException, prefix: str = "") -> _Ending:
    return _Ending(
        Outcome.FAILED,
        reason=redact(f"{prefix}{type(exc).__name__}: {exc}"),
        traceback=redact(traceback.format_exc()),
    )


def timed_out_reason(seconds: float) -> str:
    """The reason recorded for a trial stopped by ``budget.trial_timeout``."""

    return f"timed out after {format_duration(seconds)} (budget.trial_timeout)"


def _parent_gone() -> None:
    """The supervisor died (SIGKILL): stop as on SIGTERM, so the running trial is queued again.

    Nobody reads this worker's output any more: it goes to /dev/null, so that writing a log
    line cannot fail on a broken pipe while the trial is being recorded.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            os.dup2(devnull, fd)
    os.close(devnull)
    os.kill(os.getpid(), signal.SIGTERM)


def _replicate_tags(replicate: Mapping[str, Any] | None) -> dict[str, str]:
    if replicate is None:
        return {}
    return {
        TAG.REPLICATE_OF: str(replicate["of"]),
        TAG.SEED: str(replicate["seed"]),
        TAG.SEED_INDEX: str(replicate["index"]),
    }


def _run_name(number: int, outcome: str, replicate: Mapping[str, Any] | None) -> str:
    """``trial-7``, ``trial-8 (pruned)``, ``trial-40 replicate of 7, seed 2``."""
    name = f"trial-{number}"
    if replicate is not None:
        name += f" replicate of {replicate['of']}, seed {int(replicate['index']) + 1}"
    return name if outcome == Outcome.COMPLETE else f"{name} ({outcome})"


def _cost(trial: Trial, seconds: float, steps: set[int]) -> dict[str, Any]:
    """What the trial cost: the objective's wall time, its epochs (the steps it reported, or
    ``max_epochs``) and the bytes of its optimizer's state; the answer's cost per finalist
    (:mod:`tuner.results.compare`) reads them back from the study database."""
    attrs: dict[str, Any] = {
        ATTR.OBJECTIVE_SECONDS: round(seconds, 4),
        ATTR.EPOCHS: len(steps) or int(trial.max_epochs),
    }
    optimizer = trial._optimizer
    if optimizer is not None:
        attrs[ATTR.STATE_BYTES] = optimizer_state_bytes(optimizer)
    return attrs


def optimizer_state_bytes(optimizer: Any) -> int:
    """The bytes of ``optimizer``'s state tensors (momentum buffers, moments, step counts).

    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(10))
    >>> opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    >>> p.grad = torch.ones(10); opt.step()
    >>> optimizer_state_bytes(opt)  # one float32 momentum buffer of 10 values
    40
    """
    import torch

    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.nelement() * value.element_size()
    return total


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


def _free_device_memory() -> None:
    """After a failure (a CUDA OOM above all) release what the dead trial held."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - freeing memory must never fail a worker
        pass
