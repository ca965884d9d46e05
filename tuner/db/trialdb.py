"""The study database, as the runner reads and writes it for each trial.

Per trial the worker adds two write transactions to Optuna's own (create, one per sampled
parameter, tell): the first heartbeat with where the trial runs, before sampling, and the
outcome at the end, the sampled configuration with it unless the trial outlived a short delay
(:class:`TrialHeartbeat`). On SQLite each commit is a file sync, so this is most of tuner's
per-trial overhead (``benchmarks/overhead.py``). Counting for the budget happens in SQL, never
by loading trials, so its cost stays flat as the study grows.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy import bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql import Executable

from tuner.core.keys import ATTR, Outcome
from tuner.core.private_api import (
    optuna_tables,
    private_tell,
    rdb_storage,
    remember_user_attrs,
    state_of,
    study_id,
    study_storage,
    trial_id,
)
from tuner.db.storage import DEFAULT_ATTEMPTS, retry, stale_check_lock, storage_errors

__all__ = [
    "TrialHeartbeat",
    "budget_counts",
    "count_outcome",
    "count_states",
    "fail_stale_trials",
    "heartbeat_interval",
    "set_user_attrs",
    "tell",
]

log = logging.getLogger("tuner")


_PRIVATE_TELL = private_tell()


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
    storage = rdb_storage(ot.study)
    if storage is None or storage.engine.dialect.name not in ("sqlite", "postgresql"):
        for key, value in attrs.items():
            ot.set_user_attr(key, value)
        if heartbeat and heartbeat_interval(ot.study) is not None:
            study_storage(ot.study).record_heartbeat(trial_id(ot))
        return
    insert = sqlite_insert if storage.engine.dialect.name == "sqlite" else postgresql_insert
    number = trial_id(ot)
    trials, attributes, heartbeats = optuna_tables()
    rows = [{"trial_id": number, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]

    def write() -> None:
        # Statements on Optuna's tables as its own upserts write them, in one transaction: the
        # trial's state is read once and every attribute goes in one statement.
        with storage.engine.begin() as conn:
            state = conn.execute(
                select(trials.c.state).where(trials.c.trial_id == number)
            ).scalar_one()
            storage.check_trial_is_updatable(number, state)  # never touch a finished trial
            if rows:
                upsert = insert(attributes).values(rows)
                conn.execute(
                    upsert.on_conflict_do_update(
                        index_elements=[attributes.c.trial_id, attributes.c.key],
                        set_={"value_json": upsert.excluded.value_json},
                    )
                )
            if heartbeat:  # stamped by the server's clock, as record_heartbeat does
                conn.execute(
                    insert(heartbeats)
                    .values(trial_id=number, heartbeat=func.now())
                    .on_conflict_do_update(
                        index_elements=[heartbeats.c.trial_id], set_={"heartbeat": func.now()}
                    )
                )

    with storage_errors(str(storage.url)):  # a full disk says so, not Optuna's boilerplate
        retry(write, attempts=getattr(storage, "retry_attempts", DEFAULT_ATTEMPTS))
    remember_user_attrs(ot, attrs)  # Trial.user_attrs reads a cache of Optuna's


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
        self._interval = heartbeat_interval(ot.study)
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
        number, storage = self._trial.number, study_storage(self._trial.study)
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
                    storage.record_heartbeat(trial_id(self._trial))
                except Exception as exc:  # the next beat tries again
                    log.warning("trial %d: recording a heartbeat failed: %s", number, exc)
                next_beat = time.monotonic() + self._interval
                continue
            self._wake.wait(min(next_beat, due) - now)
            self._wake.clear()


def tell(
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


def heartbeat_interval(study: optuna.Study) -> int | None:
    getter = getattr(study_storage(study), "get_heartbeat_interval", None)
    return getter() if getter is not None else None


def budget_counts(study: optuna.Study) -> tuple[dict[TrialState, int], int]:
    """Trials by state and the objective's own failures: one query per reservation.

    Both are counted in the database, never by loading trials, so the cost stays flat as the
    study grows; the failures are looked up among the study's FAIL trials only.
    """
    storage = rdb_storage(study)
    if storage is None:
        return count_states(study), count_outcome(study, Outcome.FAILED.value)
    query = _budget_query()
    params = {"sid": study_id(study), "failed": json.dumps(Outcome.FAILED.value)}

    def count() -> list[Any]:
        with storage.engine.connect() as conn:
            return list(conn.execute(query, params).all())

    rows = retry(count, attempts=getattr(storage, "retry_attempts", DEFAULT_ATTEMPTS))
    counts = {state_of(state): n for state, n, _ in rows}
    return counts, int(rows[0][2]) if rows else 0


@functools.cache
def _budget_query() -> Executable:
    """The budget's one query, built once (building it costs more than running it): trials by
    state, and the objective's own failures among the FAIL ones; parameters ``sid``, ``failed``."""
    trials, attributes, _ = optuna_tables()
    failed = trials.alias("f")
    failures = (
        select(func.count())
        .select_from(failed.join(attributes, attributes.c.trial_id == failed.c.trial_id))
        .where(
            failed.c.study_id == bindparam("sid"),
            failed.c.state == TrialState.FAIL,
            attributes.c.key == ATTR.OUTCOME,
            attributes.c.value_json == bindparam("failed"),
        )
        .scalar_subquery()
    )
    return (
        select(trials.c.state, func.count(), failures)
        .where(trials.c.study_id == bindparam("sid"))
        .group_by(trials.c.state)
    )


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    """Trials of the study by state, counted in the database (no trial objects are loaded)."""
    storage = rdb_storage(study)
    if storage is None:
        counts: dict[TrialState, int] = {}
        for t in study.get_trials(deepcopy=False):
            counts[t.state] = counts.get(t.state, 0) + 1
        return counts
    trials, _, _ = optuna_tables()
    query = (
        select(trials.c.state, func.count())
        .where(trials.c.study_id == study_id(study))
        .group_by(trials.c.state)
    )
    with storage.engine.connect() as conn:
        rows = conn.execute(query).all()
    return {state_of(state): n for state, n in rows}


def count_outcome(study: optuna.Study, outcome: str) -> int:
    """Trials of the study whose recorded outcome is ``outcome``, counted in the database."""
    storage = rdb_storage(study)
    if storage is None:
        return sum(
            1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get(ATTR.OUTCOME) == outcome
        )
    trials, attributes, _ = optuna_tables()
    query = (
        select(func.count())
        .select_from(attributes.join(trials, attributes.c.trial_id == trials.c.trial_id))
        .where(
            trials.c.study_id == study_id(study),
            attributes.c.key == ATTR.OUTCOME,
            attributes.c.value_json == json.dumps(outcome),
        )
    )
    with storage.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail trials whose worker stopped sending heartbeats (it died) and queue their retry.

    One checker at a time (:func:`tuner.db.storage.stale_check_lock`): a trial failed by two
    would have its retry queued twice, one trial past the budget.
    """
    storage = rdb_storage(study)
    if storage is None:  # no heartbeats outside a database
        return
    with stale_check_lock(storage, study.study_name) as mine:
        if not mine:
            return  # another process is checking right now
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
