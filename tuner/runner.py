"""The trial runner: one worker's loop of reserve a slot, sample, train, record.

The study database is the only coordinator. A worker reserves a trial slot under a lock that
spans processes and machines (:func:`tuner.storage.budget_lock`), so the study ends with exactly
``budget.trials`` finished trials however many workers share it. A trial's failure is data
(state FAIL, its traceback in the trial's user attributes), never a crash of the study.

Per trial the worker adds two write transactions to Optuna's own (create, one per sampled
parameter, tell): the first heartbeat with where the trial runs, before sampling, and the
outcome at the end, the sampled configuration with it unless the trial outlived a short delay
(:class:`TrialHeartbeat`). On SQLite each commit is a file sync, so this is most of tuner's
per-trial overhead (``benchmarks/overhead.py``).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
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

from tuner.errors import ConfigError
from tuner.storage import DEFAULT_ATTEMPTS, budget_lock, redact_url, retry
from tuner.trial import Trial, TrialDiverged

if TYPE_CHECKING:
    from tuner.studyfile import StudyFile
    from tuner.tracking import Tracker

__all__ = [
    "ATTR",
    "OUTCOMES",
    "TrialHeartbeat",
    "TrialResult",
    "Worker",
    "open_study",
    "set_user_attrs",
    "trial_seed",
]

log = logging.getLogger("tuner")


def _find_private_tell() -> Callable[..., Any] | None:
    """Optuna's internal tell (what ``Study.tell`` and ``Study.optimize`` call), if it has the
    expected signature; else None and the public ``Study.tell`` is used."""
    try:
        from optuna.study._tell import _tell_with_warning
    except ImportError:  # pragma: no cover - another Optuna layout
        return None
    wanted = {"study", "trial", "value_or_values", "state"}
    return (
        _tell_with_warning
        if wanted <= set(inspect.signature(_tell_with_warning).parameters)
        else None
    )


_PRIVATE_TELL = _find_private_tell()


class ATTR:
    """Keys tuner keeps in Optuna's study and trial user attributes."""

    CONFIG = "tuner:config"
    OUTCOME = "tuner:outcome"
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


def open_study(study_file: StudyFile, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study, or load it when a study of that name exists (resume, other workers)."""
    from tuner.studyfile import make_pruner, make_sampler

    study = optuna.create_study(
        storage=storage,
        study_name=study_file.name,
        direction=study_file.direction,
        sampler=make_sampler(study_file.sampler),
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

    def run(self) -> str:
        """Run trials until the budget, the timeout or the failure limit ends the study.

        Returns why this worker stopped: "budget", "timeout", "failures" or "stopped".
        Ctrl-C or SIGTERM raise KeyboardInterrupt once the running trial is recorded as
        interrupted (and queued to run again).
        """
        with self._signals():
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

    def _reserve(self) -> optuna.Trial | str:
        """A trial to run, or why there is none; waits while other workers' trials decide."""
        budget = self.study_file.budget
        while True:
            with budget_lock(_rdb(self.study) or self.study_file.storage, self.study.study_name):
                counts, failed = _budget_counts(self.study)
                # Interrupted trials and those lost with a dead worker are retried, so only
                # the objective's own failures count toward max_failures.
                if failed >= budget.max_failures:
                    return "failures"
                finished = counts.get(TrialState.COMPLETE, 0) + counts.get(TrialState.PRUNED, 0)
                running = counts.get(TrialState.RUNNING, 0)
                if finished >= budget.trials:
                    return "budget"
                # ask() takes a WAITING (retried) trial first, else creates a new one.
                if counts.get(TrialState.WAITING, 0) or finished + running < budget.trials:
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
        interval = _heartbeat_interval(self.study)
        self._next_stale_check = now + (interval if interval else self.poll_interval)

    def _run_trial(self, ot: optuna.Trial) -> TrialResult:
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
        try:
            config = sample_config(ot, sf.search)
            heartbeat.write_soon({ATTR.CONFIG: config.to_dict()})
            recorder = self.tracker.start_trial(
                number=ot.number,
                params=_flat_params(config.to_dict()),
                tags={
                    "tuner.trial_number": str(ot.number),
                    "tuner.optimizer": config.optimizer,
                    "tuner.schedule": str(config.schedule.get("name")),
                    "tuner.worker_host": self.host,
                    "tuner.device": self.device_tag or self.device,
                },
            )
            seed = trial_seed(_sampler_seed(sf), ot.number)
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
            recorder.finish(outcome, tags={"tuner.duration_s": f"{duration:.3f}"})
            # Wait (bounded) for the previous trial's MLflow data, not this one's: sending
            # overlaps the next trial, yet training never runs more than a trial ahead of
            # MLflow. The study database already holds everything; `tuner sync` backfills.
            if self._tracking_mark is not None:
                self.tracker.flush(timeout=10.0, upto=self._tracking_mark)
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
            _tell(self.study, ot, value)
        elif outcome == "pruned":
            _tell(self.study, ot, state=TrialState.PRUNED)
        elif outcome == "diverged":
            # A pruned trial whose last intermediate value is NaN ranks worst for TPE, so the
            # sampler learns to avoid the region instead of ignoring a failure.
            if diverged_step is None:
                last = trial.last_step if trial is not None else None
                ot.report(float("nan"), 0 if last is None else last + 1)
            _tell(self.study, ot, state=TrialState.PRUNED)
        else:
            _tell(self.study, ot, state=TrialState.FAIL)
            if outcome == "interrupted":
                # The same configuration runs again when the study resumes.
                self.study.enqueue_trial(ot.params, user_attrs={ATTR.RETRY_OF: ot.number})


def set_user_attrs(ot: optuna.Trial, attrs: Mapping[str, Any], *, heartbeat: bool = False) -> None:
    """Set several user attributes of the running trial ``ot`` in one transaction.

    ``Trial.set_user_attr`` commits once per key, and on SQLite each commit is a file sync: a
    trial's bookkeeping (where it runs, its configuration, its outcome) would cost more than
    the sampler's own writes. With ``heartbeat`` the trial's heartbeat is recorded in the same
    commit. Transient errors are retried; every write is an upsert, so a retry after a lost
    acknowledgement is harmless.

    >>> study = optuna.create_study()
    >>> trial = study.ask()
    >>> set_user_attrs(trial, {"tuner:device": "cpu", "tuner:worker_host": "node1"})
    >>> trial.user_attrs["tuner:device"]
    'cpu'
    """
    storage = _rdb(ot.study)
    if storage is None or storage.engine.dialect.name not in ("sqlite", "postgresql"):
        for key, value in attrs.items():
            ot.set_user_attr(key, value)
        if heartbeat and _heartbeat_interval(ot.study) is not None:
            ot.study._storage.record_heartbeat(ot._trial_id)
        return
    from optuna.storages._rdb import models
    from sqlalchemy import func, select

    if storage.engine.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    trial_id = ot._trial_id
    trials = models.TrialModel.__table__
    rows = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]

    def write() -> None:
        # Statements on Optuna's tables as its own upserts write them, in one transaction: the
        # trial's state is read once and every attribute goes in one statement.
        with storage.engine.begin() as conn:
            state = conn.execute(
                select(trials.c.state).where(trials.c.trial_id == trial_id)
            ).scalar_one()
            storage.check_trial_is_updatable(trial_id, state)  # never touch a finished trial
            if rows:
                table = models.TrialUserAttributeModel.__table__
                upsert = insert(table).values(rows)
                conn.execute(
                    upsert.on_conflict_do_update(
                        index_elements=[table.c.trial_id, table.c.key],
                        set_={"value_json": upsert.excluded.value_json},
                    )
                )
            if heartbeat:  # stamped by the server's clock, as record_heartbeat does
                table = models.TrialHeartbeatModel.__table__
                conn.execute(
                    insert(table)
                    .values(trial_id=trial_id, heartbeat=func.now())
                    .on_conflict_do_update(
                        index_elements=[table.c.trial_id], set_={"heartbeat": func.now()}
                    )
                )

    retry(write, attempts=getattr(storage, "retry_attempts", DEFAULT_ATTEMPTS))
    # Trial.user_attrs reads Optuna's per-trial cache, which set_user_attr keeps current.
    cached = getattr(ot, "_cached_frozen_trial", None)
    if cached is not None:
        cached.user_attrs.update(attrs)


class TrialHeartbeat:
    """Heartbeats of one running trial, and its bookkeeping writes, off the training path.

    ``start`` records the first heartbeat together with ``attrs`` (where the trial runs) in
    one commit, before anything else happens to the trial: from then on a worker that dies
    leaves a trial that the stale check fails and retries. A background thread then beats
    every ``heartbeat_interval`` seconds, as Optuna's heartbeat thread does.

    :meth:`write_soon` hands it attributes that may wait a moment (the sampled configuration):
    the thread writes them ``delay`` seconds later, while the objective runs; if the trial ends
    first, :meth:`stop` returns them for the caller to write with the outcome. A trial shorter
    than ``delay`` thus costs one commit less, which is where per-trial overhead matters.
    Without heartbeats in the storage every write happens at once.
    """

    def __init__(self, ot: optuna.Trial, attrs: Mapping[str, Any], *, delay: float = 0.2) -> None:
        self._trial = ot
        self._attrs = dict(attrs)
        self._delay = delay
        self._interval = _heartbeat_interval(ot.study)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._pending: dict[str, Any] = {}
        self._due = math.inf
        self._next_beat = math.inf
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Record the first heartbeat and ``attrs`` (one commit), then start beating."""
        if self._interval is None:
            set_user_attrs(self._trial, self._attrs)
            return
        self._next_beat = time.monotonic() + self._interval
        try:
            set_user_attrs(self._trial, self._attrs, heartbeat=True)
        except Exception as exc:  # retried transient errors already; the thread tries again
            log.warning(
                "trial %d: recording its first heartbeat failed: %s", self._trial.number, exc
            )
            self._pending.update(self._attrs)
            self._due = self._next_beat = time.monotonic()
        self._thread = threading.Thread(
            target=self._beat, name=f"tuner-heartbeat-{self._trial.number}", daemon=True
        )
        self._thread.start()

    def write_soon(self, attrs: Mapping[str, Any]) -> None:
        """Write ``attrs`` in ``delay`` seconds, or leave them to :meth:`stop`'s caller."""
        if self._thread is None:
            set_user_attrs(self._trial, attrs)
            return
        with self._lock:
            self._pending.update(attrs)
            self._due = min(self._due, time.monotonic() + self._delay)
        self._wake.set()

    def stop(self) -> dict[str, Any]:
        """Stop beating; returns the attributes not written yet (write them before ``tell``).

        Returns once the thread is done, so no write of it races the caller's next ones.
        """
        with self._lock:
            self._stopping = True
            left, self._pending = self._pending, {}
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        return left

    def _beat(self) -> None:
        assert self._interval is not None
        number, storage = self._trial.number, self._trial.study._storage
        next_beat = self._next_beat
        while True:
            with self._lock:
                if self._stopping:
                    return
                due = self._due if self._pending else math.inf
                take: dict[str, Any] = {}
                if time.monotonic() >= due:
                    # Claimed under the lock: either this thread writes them or stop() hands
                    # them back, never both.
                    take, self._pending, self._due = self._pending, {}, math.inf
            if take:
                try:
                    set_user_attrs(self._trial, take)
                except Exception as exc:  # bookkeeping must never kill the trial
                    log.warning("trial %d: recording %s failed: %s", number, sorted(take), exc)
                continue
            now = time.monotonic()
            if now >= next_beat:
                try:
                    storage.record_heartbeat(self._trial._trial_id)
                except Exception as exc:  # the next beat tries again
                    log.warning("trial %d: recording a heartbeat failed: %s", number, exc)
                next_beat = time.monotonic() + self._interval
                continue
            self._wake.wait(min(next_beat, due) - now)
            self._wake.clear()


def _tell(
    study: optuna.Study,
    ot: optuna.Trial,
    value: float | None = None,
    state: TrialState | None = None,
) -> None:
    """``study.tell`` without reading the finished trial back for a return value nobody uses.

    That read is a query per trial; Optuna's own ``optimize`` calls the same private function.
    """
    if _PRIVATE_TELL is None:
        study.tell(ot, value, state=state)
    else:
        _PRIVATE_TELL(study=study, trial=ot, value_or_values=value, state=state)


def _heartbeat_interval(study: optuna.Study) -> int | None:
    getter = getattr(study._storage, "get_heartbeat_interval", None)
    return getter() if getter is not None else None


def _budget_counts(study: optuna.Study) -> tuple[dict[TrialState, int], int]:
    """Trials by state and the objective's own failures: one query per reservation.

    Both are counted in the database, never by loading trials, so the cost stays flat as the
    study grows; the failures are looked up among the study's FAIL trials only.
    """
    storage = _rdb(study)
    if storage is None:
        return count_states(study), count_outcome(study, "failed")
    from sqlalchemy import text

    query = text(
        "SELECT state, COUNT(*), ("
        "SELECT COUNT(*) FROM trials f JOIN trial_user_attributes a ON a.trial_id = f.trial_id "
        "WHERE f.study_id = :sid AND f.state = 'FAIL' AND a.key = :key AND a.value_json = :val"
        ") FROM trials WHERE study_id = :sid GROUP BY state"
    )
    params = {"sid": study._study_id, "key": ATTR.OUTCOME, "val": json.dumps("failed")}

    def count() -> list[Any]:
        with storage.engine.connect() as conn:
            return list(conn.execute(query, params).all())

    rows = retry(count, attempts=getattr(storage, "retry_attempts", DEFAULT_ATTEMPTS))
    counts = {TrialState[str(state).split(".")[-1]]: n for state, n, _ in rows}
    return counts, int(rows[0][2]) if rows else 0


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    """Trials of the study by state, counted in the database (no trial objects are loaded)."""
    storage = _rdb(study)
    if storage is None:
        counts: dict[TrialState, int] = {}
        for t in study.get_trials(deepcopy=False):
            counts[t.state] = counts.get(t.state, 0) + 1
        return counts
    from sqlalchemy import text

    with storage.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT state, COUNT(*) FROM trials WHERE study_id = :sid GROUP BY state"),
            {"sid": study._study_id},
        ).all()
    return {TrialState[str(state).split(".")[-1]]: n for state, n in rows}


def count_outcome(study: optuna.Study, outcome: str) -> int:
    """Trials of the study whose recorded outcome is ``outcome``, counted in the database."""
    storage = _rdb(study)
    if storage is None:
        return sum(
            1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get(ATTR.OUTCOME) == outcome
        )
    from sqlalchemy import text

    with storage.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT COUNT(*) FROM trial_user_attributes a JOIN trials t "
                    "ON a.trial_id = t.trial_id WHERE t.study_id = :sid AND a.key = :key "
                    "AND a.value_json = :val"
                ),
                {"sid": study._study_id, "key": ATTR.OUTCOME, "val": json.dumps(outcome)},
            ).scalar_one()
        )


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail trials whose worker stopped sending heartbeats (it died) and queue their retry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _rdb(study: optuna.Study) -> Any:
    storage = study._storage
    inner = getattr(storage, "_backend", storage)  # optuna wraps RDBStorage in a cache
    return inner if isinstance(inner, optuna.storages.RDBStorage) else None


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
