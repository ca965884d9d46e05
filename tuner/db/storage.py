"""The study database: Optuna RDB storage on SQLite or PostgreSQL, secrets kept out of sight.

The storage database is the only coordinator of workers (docs/distribution.md). This module opens it
with settings that suit many processes on many machines, turns connection failures into a
:class:`~tuner.core.errors.StorageError` that never shows a password, retries transient errors (a
PostgreSQL restart, a dropped connection, a busy SQLite file) and offers :func:`budget_lock`, a
mutual-exclusion section per study across processes and machines.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import inspect
import logging
import os
import random
import re
import sqlite3
import threading
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, TypeVar

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from tuner.core.errors import StorageError, StorageFailure
from tuner.core.private_api import RetriedPrivateMethods, optuna_stale_trial_ids, optuna_tables
from tuner.core.redact import redact

__all__ = [
    "RetryingRDBStorage",
    "budget_lock",
    "dialect_of",
    "is_transient_error",
    "normalize_url",
    "open_storage",
    "retry",
    "stale_check_lock",
    "storage_errors",
    "storage_failure",
    "warn_if_sqlite_shared",
]

_logger = logging.getLogger(__name__)

T = TypeVar("T")
FailedTrialCallback = Callable[["optuna.Study", FrozenTrial], None]

_SCHEME = re.compile(r"(?P<dialect>[a-zA-Z][a-zA-Z0-9.\-]*)(\+[a-zA-Z0-9_.\-]+)?://")

# Enough to ride out a PostgreSQL restart (a few seconds) with room to spare: the waits are
# 0.5, 1, 2, 4, 8, 8, 8 s (plus jitter), about 30 s in all before the error reaches the caller.
DEFAULT_ATTEMPTS = 8
DEFAULT_DELAY = 0.5
DEFAULT_MAX_DELAY = 8.0

_CONNECT_HINT = "is the server running? check the host, port and credentials"
_URL_HINT = "check the storage URL, e.g. sqlite:///tuner.db or postgresql://user@host:5432/tuner"


def normalize_url(url: str) -> str:
    """Point plain PostgreSQL URLs at the psycopg 3 driver; leave every other URL as it is.

    >>> normalize_url("postgres://tuner@db/tuner")
    'postgresql+psycopg://tuner@db/tuner'
    >>> normalize_url("sqlite:///tuner.db")
    'sqlite:///tuner.db'
    """
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def dialect_of(url: str) -> str:
    """The database kind of a storage URL, without driver or credentials.

    Safe for MLflow tags and log lines.

    >>> dialect_of("postgresql+psycopg://tuner:s3cret@db/tuner")
    'postgresql'
    >>> dialect_of("sqlite:///tuner.db")
    'sqlite'
    """
    match = _SCHEME.match(normalize_url(url))
    return match.group("dialect").lower() if match else "unknown"


def warn_if_sqlite_shared(url: str) -> str | None:
    """The warning ``tuner worker`` shows for an SQLite storage, or None for a server database.

    SQLite coordinates processes through file locks, which do not hold across machines (nor on
    network file systems): workers on two machines sharing one file lose or corrupt trials.

    >>> warn_if_sqlite_shared("postgresql://db/tuner") is None
    True
    >>> "PostgreSQL" in warn_if_sqlite_shared("sqlite:///tuner.db")
    True
    """
    if dialect_of(url) != "sqlite":
        return None
    return (
        f"storage {redact(url)} is SQLite: it serves the workers of one machine only. "
        "A `tuner worker` on another machine must not share this file (SQLite's file locks do "
        "not hold across machines or network file systems, so trials would be lost or the "
        "database corrupted). Use PostgreSQL for several machines, e.g. "
        "storage: postgresql://user@host:5432/tuner with the password in ${ENV_VAR}."
    )


# --- transient errors and retries ------------------------------------------------------------


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it wraps) is worth retrying: a lost connection, a server
    that is restarting or unreachable, a deadlock, or a busy SQLite file.

    Optuna wraps SQLAlchemy errors in ``optuna.exceptions.StorageInternalError``; the chain is
    searched, so both forms are recognised.

    >>> is_transient_error(ValueError("bad value"))
    False
    """
    for error in _exception_chain(exc):
        if isinstance(error, sqlalchemy.exc.DisconnectionError):
            return True
        if isinstance(error, sqlalchemy.exc.DBAPIError):
            if error.connection_invalidated:
                return True
            if isinstance(error.orig, sqlite3.OperationalError):
                # Only a busy file is transient; "no such table" and friends are not.
                text = str(error.orig).lower()
                return "locked" in text or "busy" in text
            return isinstance(
                error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
            )
    return False


def retry(
    fn: Callable[[], T],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    delay: float = DEFAULT_DELAY,
    max_delay: float = DEFAULT_MAX_DELAY,
    is_transient: Callable[[BaseException], bool] = is_transient_error,
) -> T:
    """Call ``fn()``; on a transient database error wait and call it again, up to ``attempts``.

    Waits double from ``delay`` up to ``max_delay`` with a little jitter so that many workers do
    not reconnect in lockstep. Other errors, and the last transient one, propagate unchanged.

    >>> calls = []
    >>> retry(lambda: calls.append(1) or len(calls), attempts=3)
    1
    """
    if attempts < 1:
        raise ValueError(f"`attempts >= 1` must hold, but got (attempts={attempts})")
    try:
        return fn()  # the common case, once per storage call, pays nothing for the machinery
    except Exception as exc:
        if attempts == 1 or not is_transient(exc):
            raise
        failed: list[Exception] = [exc]

    def again() -> T:  # tenacity's attempt 1 is the one that just failed
        if failed:
            raise failed.pop()
        return fn()

    def wait(state: RetryCallState) -> float:
        return min(delay * 2 ** (state.attempt_number - 1), max_delay) * random.uniform(0.8, 1.2)

    def say(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        _logger.warning(
            "transient storage error (attempt %d of %d), retrying in %.1fs: %s",
            state.attempt_number,
            attempts,
            state.upcoming_sleep,
            redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__),
        )

    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait,
        retry=retry_if_exception(is_transient),
        before_sleep=say,
        reraise=True,  # the last transient error, and every other one, propagate unchanged
    )
    return retrying(again)


# How deep this thread is in RetryingRDBStorage calls: only the outermost call retries.
_retry_depth = threading.local()


class RetryingRDBStorage(RetriedPrivateMethods, RDBStorage):
    """Optuna's ``RDBStorage`` whose every database call is retried on transient errors.

    Optuna's study loop calls the storage itself, so retries belong here rather than around
    ``study.ask``/``study.tell``: a PostgreSQL restart mid-study then costs a pause, not a trial.
    Every method Optuna calls is covered, including the private ones its cache and ``Study``
    call (:class:`tuner.core.private_api.RetriedPrivateMethods`); nested calls are retried
    once, by the outermost call. A write whose commit reached the server just as the connection
    died may be applied twice on retry; finishing a trial is made idempotent, the rest is left
    to that rare case. Build it with :func:`open_storage`.
    """

    retry_attempts: int = DEFAULT_ATTEMPTS
    retry_delay: float = DEFAULT_DELAY

    def _retry(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        local = _retry_depth
        if getattr(local, "depth", 0) > 0:
            return method(self, *args, **kwargs)

        def call() -> T:
            local.depth = getattr(local, "depth", 0) + 1
            try:
                return method(self, *args, **kwargs)
            finally:
                local.depth -= 1

        with storage_errors(str(self.url)):
            return retry(call, attempts=self.retry_attempts, delay=self.retry_delay)

    def create_new_study(self, *args: Any, **kwargs: Any) -> int:
        return self._retry(RDBStorage.create_new_study, *args, **kwargs)

    def delete_study(self, *args: Any, **kwargs: Any) -> None:
        return self._retry(RDBStorage.delete_study, *args, **kwargs)

    def set_study_user_attr(self, *args: Any, **kwargs: Any) -> None:
        return self._retry(RDBStorage.set_study_user_attr, *args, **kwargs)

    def set_study_system_attr(self, *args: Any, **kwargs: Any) -> None:
        return self._retry(RDBStorage.set_study_system_attr, *args, **kwargs)

    def get_study_id_from_name(self, *args: Any, **kwargs: Any) -> int:
        return self._retry(RDBStorage.get_study_id_from_name, *args, **kwargs)

    def get_study_name_from_id(self, *args: Any, **kwargs: Any) -> str:
        return self._retry(RDBStorage.get_study_name_from_id, *args, **kwargs)

    def get_study_directions(self, *args: Any, **kwargs: Any) -> Any:
        return self._retry(RDBStorage.get_study_directions, *args, **kwargs)

    def get_study_user_attrs(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self._retry(RDBStorage.get_study_user_attrs, *args, **kwargs)

    def get_study_system_attrs(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self._retry(RDBStorage.get_study_system_attrs, *args, **kwargs)

    def get_all_studies(self, *args: Any, **kwargs: Any) -> Any:
        return self._retry(RDBStorage.get_all_studies, *args, **kwargs)

    def create_new_trial(self, *args: Any, **kwargs: Any) -> int:
        return self._retry(RDBStorage.create_new_trial, *args, **kwargs)

    def set_trial_param(self, *args: Any, **kwargs: Any) -> None:
        return self._retry(RDBStorage.set_trial_param, *args, **kwargs)

    def get_trial_param(self, *args: Any, **kwargs: Any) -> float:
        return self._retry(RDBStorage.get_trial_param, *args, **kwargs)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        first = True

        def attempt(storage: RDBStorage) -> bool:
            nonlocal first
            try:
                return RDBStorage.set_trial_state_values(storage, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # A retry after a lost acknowledgement finds its own earlier write: success.
                if first:
                    raise
                stored = RDBStorage.get_trial(storage, trial_id)
                if stored.state == state and (values is None or stored.values == list(values)):
                    return True
                raise
            finally:
                first = False

        return self._retry(attempt)

    def set_trial_intermediate_value(self, *args: Any, **kwargs: Any) -> None:
        return self._retry(RDBStorage.set_trial_intermediate_value, *args, **kwargs)

    def set_trial_user_attr(self, *args: Any, **kwargs: Any) -> None:
        return self._retry(RDBStorage.set_trial_user_attr, *args, **kwargs)

    def set_trial_system_attr(self, *args: Any, **kwargs: Any) -> None:
        return self._retry(RDBStorage.set_trial_system_attr, *args, **kwargs)

    def get_trial_user_attrs(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self._retry(RDBStorage.get_trial_user_attrs, *args, **kwargs)

    def get_trial_system_attrs(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self._retry(RDBStorage.get_trial_system_attrs, *args, **kwargs)

    def get_trial_id_from_study_id_trial_number(self, *args: Any, **kwargs: Any) -> int:
        return self._retry(RDBStorage.get_trial_id_from_study_id_trial_number, *args, **kwargs)

    def get_trial(self, *args: Any, **kwargs: Any) -> FrozenTrial:
        return self._retry(RDBStorage.get_trial, *args, **kwargs)

    def get_all_trials(self, *args: Any, **kwargs: Any) -> list[FrozenTrial]:
        return self._retry(RDBStorage.get_all_trials, *args, **kwargs)

    def get_best_trial(self, *args: Any, **kwargs: Any) -> FrozenTrial:
        return self._retry(RDBStorage.get_best_trial, *args, **kwargs)

    def record_heartbeat(self, *args: Any, **kwargs: Any) -> None:
        return self._retry(RDBStorage.record_heartbeat, *args, **kwargs)

    def stale_trial_ids(self, storage: RDBStorage, study_id: int) -> list[int]:
        """Optuna's stale trials, and RUNNING trials that never recorded a heartbeat."""
        ids = optuna_stale_trial_ids(storage, study_id)
        return ids + [i for i in _orphaned_trial_ids(storage, study_id) if i not in ids]


def _orphaned_trial_ids(storage: RDBStorage, study_id: int) -> list[int]:
    """RUNNING trials that never recorded a heartbeat and started over ``grace_period`` ago.

    A worker records the first heartbeat right after it creates a trial; one that could not
    (its database write failed: a full disk) and then died leaves a trial that Optuna's stale
    check never sees, and that would stay RUNNING forever, holding a slot of the budget.
    """
    assert storage.heartbeat_interval is not None
    grace = storage.grace_period or 2 * storage.heartbeat_interval
    trials, _, beats = optuna_tables()
    query = sqlalchemy.select(trials.c.trial_id, trials.c.datetime_start).where(
        trials.c.study_id == study_id,
        trials.c.state == TrialState.RUNNING,
        ~sqlalchemy.exists().where(beats.c.trial_id == trials.c.trial_id),
    )
    with storage.engine.connect() as conn:
        rows = conn.execute(query).all()
    # datetime_start is the creating worker's clock (Optuna's datetime.now()).
    cutoff = datetime.now() - timedelta(seconds=grace)
    return [trial_id for trial_id, started in rows if started is not None and started < cutoff]


# --- what went wrong, in one line --------------------------------------------------------------


def storage_failure(exc: BaseException, url: str) -> StorageFailure | None:
    """A database error that the user must fix, as a one-line :class:`StorageFailure` naming
    the cause and the database; None for any other error.

    Optuna reports every failed commit as "An exception is raised during the commit. This
    typically happens due to invalid data in the commit, e.g. exceeding max length."
    (``StorageInternalError``, raised from the SQLAlchemy error by its ``_create_scoped_session``).
    The cause is the driver's error under it (SQLAlchemy's ``orig``): this is the one place
    that reads it. Recognised: a full disk, a read-only file or file system, a missing
    folder, permission denied, and PostgreSQL's "too many connections".

    >>> import sqlite3, sqlalchemy.exc
    >>> orig = sqlite3.OperationalError("database or disk is full")
    >>> str(storage_failure(sqlalchemy.exc.OperationalError("COMMIT", {}, orig),
    ...                     "sqlite:////data/tuner.db"))
    'the disk holding /data/tuner.db is full (SQLite: database or disk is full)'
    """
    dialect = dialect_of(url)
    path = _sqlite_path(normalize_url(url)) if dialect == "sqlite" else None
    for error in _exception_chain(exc):
        if isinstance(error, StorageFailure):
            return error
        if isinstance(error, StorageError):
            return None  # already says what happened
        driver = error
        if isinstance(error, sqlalchemy.exc.DBAPIError) and error.orig is not None:
            driver = error.orig
        if isinstance(driver, sqlite3.Error):
            message = _sqlite_failure(str(driver), path)
        elif isinstance(driver, OSError) and path and str(driver.filename).startswith(path):
            message = _file_failure(driver, path)  # tuner's lock file beside the database
        elif dialect == "postgresql" and _is_psycopg_error(driver):
            message = _postgres_failure(driver, url)
        else:
            continue
        if message is not None:
            return StorageFailure(_scrub(message, url))
    return None


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn the database errors of :func:`storage_failure` inside the block into its one-line
    :class:`StorageFailure`; every other error passes unchanged."""
    try:
        yield
    except StorageFailure:
        raise
    except Exception as exc:
        error = storage_failure(exc, url)
        if error is None:
            raise
        raise error from None  # the driver's text is in the message; no traceback for it


def _file_failure(error: OSError, path: str) -> str | None:
    cause = f"({error.strerror}: {error.filename})"
    if error.errno == errno.ENOSPC:
        return f"the disk holding {path} is full {cause}"
    if error.errno == errno.EROFS:
        return f"the database {path} is on a read-only file system {cause}"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: this user cannot write beside the database {path} {cause}"
    if error.errno == errno.ENOENT:
        return f"the folder of the database {path} does not exist {cause}"
    return None


def _sqlite_failure(text: str, path: str | None) -> str | None:
    where = path or "the in-memory database"
    lowered = text.lower()
    cause = f"(SQLite: {text})"
    if "disk is full" in lowered:
        return f"the disk holding {where} is full {cause}"
    if "readonly" in lowered or "read-only" in lowered:
        if path is not None and os.path.exists(path) and not os.access(path, os.W_OK):
            return f"the database file {path} is read-only {cause}"
        folder = os.path.dirname(path) if path else where
        return (
            f"the database {where} cannot be written: it or its folder {folder} is read-only "
            f"{cause}"
        )
    if "unable to open database file" in lowered and path is not None:
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            return f"the folder of the database {path} does not exist: {folder} {cause}"
        return f"permission denied: the database {path} or its folder cannot be opened {cause}"
    if "disk i/o error" in lowered:
        return f"a disk I/O error on {where} {cause}"
    return None


def _is_psycopg_error(error: BaseException) -> bool:
    return type(error).__module__.startswith(("psycopg", "psycopg2"))


def _postgres_failure(error: BaseException, url: str) -> str | None:
    state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None) or ""
    text = " ".join(str(error).split()) or type(error).__name__
    text = text.rpartition("FATAL:")[2].strip()  # libpq's "connection ... failed: FATAL: why"
    lowered = text.lower()
    where = f"PostgreSQL at {redact(url)}"
    cause = f"(PostgreSQL: {text})"
    if state == "53300" or "too many clients" in lowered or "too many connections" in lowered:
        return f"{where} has too many connections {cause}"
    if state in ("53100", "53000") or "no space left" in lowered or "could not extend" in lowered:
        return f"the disk of {where} is full {cause}"
    if state == "25006" or "read-only transaction" in lowered:
        return f"{where} is read-only {cause}"
    if state == "42501" or "permission denied" in lowered:
        return f"permission denied in {where} {cause}"
    return None


# --- opening a storage -----------------------------------------------------------------------


def _scrub(text: str, url: str) -> str:
    """``text`` with URL passwords, and the password of ``url`` in any form, replaced."""
    return redact(text, url)


def _reason(exc: BaseException, url: str) -> str:
    """The first line of the innermost database error, without SQLAlchemy's boilerplate."""
    root = exc
    for error in _exception_chain(exc):
        root = error
        if isinstance(error, sqlalchemy.exc.DBAPIError) and error.orig is not None:
            root = error.orig
            break
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    text = lines[0] if lines else type(root).__name__
    return _scrub(text, url)


def _hint(exc: BaseException, dialect: str, reason: str, url: str) -> str:
    lowered = reason.lower()
    if isinstance(exc, sqlalchemy.exc.ArgumentError):
        return _URL_HINT
    if dialect == "sqlite":
        return "check that the directory of the database file exists and is writable"
    if "database" in lowered and "does not exist" in lowered:
        database = sqlalchemy.engine.make_url(url).database
        return f"create the database first, e.g. `createdb {database}`, or fix its name"
    if "password" in lowered or "authentication" in lowered:
        return "check the user name and password (e.g. the ${ENV_VAR} the URL names)"
    return _CONNECT_HINT


def _engine_kwargs(url: str, dialect: str, connect_timeout: float) -> dict[str, Any]:
    if dialect == "sqlite":
        # Several local processes share one file: wait for a busy database instead of failing.
        return {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {
        # Connections survive a server restart: each is checked before use and replaced if dead.
        "pool_pre_ping": True,
        # A worker needs few connections (the trial loop, the heartbeat, a budget lock); many
        # workers times a large pool would exhaust the server's max_connections.
        "pool_size": 2,
        "max_overflow": 4,
        "pool_recycle": 1800,
    }
    if url.startswith("postgresql+psycopg"):
        kwargs["connect_args"] = {
            "connect_timeout": max(1, round(connect_timeout)),
            "application_name": "tuner",
            # Notice a vanished server (or a cut network) in about a minute, not two hours.
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
    return kwargs


_RDB_PARAMETERS = inspect.signature(RDBStorage.__init__).parameters


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    failed_trial_callback: FailedTrialCallback | None = None,
    connect_timeout: float = 10.0,
    retry_attempts: int = DEFAULT_ATTEMPTS,
    create: bool = True,
) -> RetryingRDBStorage:
    """Open (and create the tables of) the study database at ``url``.

    ``postgresql://`` URLs use the psycopg 3 driver. Server databases get pre-pinged pooled
    connections, a connect timeout and TCP keepalives; SQLite gets a 60 s busy timeout so that
    the workers of one machine can share one file. Every storage call is retried on transient
    errors (``retry_attempts``; 1 disables retries). ``heartbeat_interval``, ``grace_period``
    and ``failed_trial_callback`` (called with each stale trial that the heartbeat check fails)
    go to Optuna's heartbeat mechanism. With ``create=False`` nothing is created: a missing
    SQLite file or a database without Optuna's tables is a StorageError (for the commands that
    only read a study: ``status``, ``best``, ``report``).

    Raises :class:`~tuner.core.errors.StorageError` when the database cannot be reached or used; its
    message names the redacted URL, the dialect and the reason, with a hint, never a password.

    >>> storage = open_storage("sqlite:///:memory:")
    >>> isinstance(storage, optuna.storages.RDBStorage)
    True
    """
    normalized = normalize_url(url)
    dialect = dialect_of(normalized)
    kwargs = _rdb_kwargs(heartbeat_interval, grace_period, failed_trial_callback)
    _check_url(url, normalized)
    if not create:
        _check_exists(url, normalized, dialect)
        kwargs["skip_table_creation"] = True
    # Errors are raised outside the ``except`` blocks so that no driver exception is chained to
    # the StorageError: the message carries a scrubbed summary instead.
    error: StorageError | None = None
    try:
        with warnings.catch_warnings():
            # tuner relies on heartbeats on purpose; Optuna flags the argument as experimental.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            with _schema_lock(normalized, dialect, connect_timeout):
                storage = RetryingRDBStorage(
                    normalized,
                    engine_kwargs=_engine_kwargs(normalized, dialect, connect_timeout),
                    **kwargs,
                )
                if dialect == "sqlite" and create and _sqlite_path(normalized) is not None:
                    _use_wal(storage)
    except Exception as exc:  # what each kind means, said once in _open_error
        error = _open_error(exc, url, dialect)
    if error is not None:
        raise error
    storage.retry_attempts = retry_attempts
    return storage


def _rdb_kwargs(
    heartbeat_interval: int | None,
    grace_period: int | None,
    failed_trial_callback: FailedTrialCallback | None,
) -> dict[str, Any]:
    """RDBStorage's heartbeat arguments, under the callback's name in the installed Optuna."""
    kwargs: dict[str, Any] = {
        "heartbeat_interval": heartbeat_interval,
        "grace_period": grace_period,
    }
    if failed_trial_callback is not None:
        # Optuna 4.9 renamed the argument and warns about the old name.
        name = (
            "heartbeat_stale_trial_callback"
            if "heartbeat_stale_trial_callback" in _RDB_PARAMETERS
            else "failed_trial_callback"
        )
        kwargs[name] = failed_trial_callback
    return kwargs


def _check_url(url: str, normalized: str) -> None:
    """A StorageError for a URL SQLAlchemy cannot parse, with no driver exception chained."""
    error: StorageError | None = None
    try:
        sqlalchemy.engine.make_url(normalized)
    except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
        error = StorageError(
            f"invalid storage URL {redact(url)}: {_scrub(str(exc), url)}",
            hint=_URL_HINT,
        )
    if error is not None:
        raise error


def _open_error(exc: Exception, url: str, dialect: str) -> StorageError:
    """The StorageError for ``exc`` raised while opening the storage; other errors re-raise."""
    if isinstance(exc, (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)):
        reason = _reason(exc, url)
        # A cause the user must fix (a full disk, a missing folder...) is said as it is.
        error = storage_failure(exc, url) or StorageError(
            f"cannot open the study storage {redact(url)} ({dialect}): {reason}",
            hint=_hint(exc, dialect, reason, url),
        )
        error.transient = is_transient_error(exc)
        return error
    if isinstance(exc, OSError):  # tuner's lock file beside an SQLite database
        failure = storage_failure(exc, url)
        if failure is None:
            raise exc
        return failure
    if isinstance(exc, ImportError):
        return StorageError(
            f"cannot open the study storage {redact(url)} ({dialect}): "
            f"its database driver is not installed ({_scrub(str(exc), url)})",
            hint="install the driver, e.g. `pip install 'psycopg[binary]'` for PostgreSQL",
        )
    if isinstance(exc, RuntimeError):
        # Optuna's schema version check: the database was written by another Optuna version.
        return StorageError(
            f"cannot use the study storage {redact(url)} ({dialect}): {_scrub(str(exc), url)}",
            hint="run `optuna storage upgrade --storage URL` or use the Optuna version that "
            "created it",
        )
    raise exc


def _check_exists(url: str, normalized: str, dialect: str) -> None:
    """For ``create=False``: an SQLite file that is not there is an error, never a new file."""
    if dialect != "sqlite":
        return  # a server database: Optuna's missing tables surface when the study is read
    path = _sqlite_path(normalized)
    if path is not None and not os.path.isfile(path):
        raise StorageError(
            f"the study storage {redact(url)} does not exist: no file {path} "
            f"(working directory {os.getcwd()})",
            hint="run the command from the folder where the study was launched, or run "
            "`tuner launch` first",
        )


def _use_wal(storage: RDBStorage) -> None:
    """Put a SQLite study file in write-ahead-log mode.

    A commit then syncs the log once instead of the rollback journal and the database, and
    readers (progress, `tuner status`) no longer block the workers' writes. Durability is
    unchanged: synchronous stays FULL. The mode is stored in the file, so this runs once per
    database; it needs a local filesystem, which SQLite studies need anyway (one machine).
    """
    try:
        # Outside any transaction: inside one, SQLite ignores a change of journal mode.
        with storage.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode=WAL").scalar()
        _logger.debug("SQLite study journal mode: %s", mode)
    except sqlalchemy.exc.OperationalError as exc:  # busy or read-only: keep the journal mode
        _logger.debug("could not switch the SQLite study to WAL: %s", exc)


@contextlib.contextmanager
def _schema_lock(url: str, dialect: str, connect_timeout: float) -> Iterator[None]:
    """Serialize Optuna's table creation: processes that open an empty database at the same
    moment otherwise collide in CREATE TABLE (PostgreSQL: duplicate key in pg_type; SQLite:
    "table alembic_version already exists"). SQLite files use the study's lock file."""
    if dialect == "sqlite":
        path = _sqlite_path(url)
        if path is None or not os.path.isdir(os.path.dirname(path)):
            yield  # no file to share, or no folder: opening it fails with a clear message
        else:
            with _file_lock(path, purpose="creating the study tables"):
                yield
        return
    if dialect != "postgresql":
        yield
        return
    engine = sqlalchemy.create_engine(
        url, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": connect_timeout}
    )
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _SCHEMA_KEY})
            try:
                yield
            finally:
                conn.execute(
                    sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _SCHEMA_KEY}
                )
    finally:
        engine.dispose()


# A fixed advisory-lock key for schema creation, distinct from the per-study budget keys' use.
_SCHEMA_KEY = int.from_bytes(hashlib.sha256(b"tuner:schema").digest()[:8], "big", signed=True)


# --- the budget lock -------------------------------------------------------------------------

_memory_locks: dict[tuple[str, str], threading.Lock] = {}
_memory_locks_guard = threading.Lock()


def _advisory_key(study_name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``; Python's ``hash`` varies per run."""
    digest = hashlib.blake2b(f"tuner.budget:{study_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _sqlite_path(url: str) -> str | None:
    """The database file of an SQLite URL, or None for an in-memory database."""
    database = sqlalchemy.engine.make_url(url).database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    if database.startswith("file:"):
        database = database[len("file:") :].split("?", 1)[0]
    return os.path.abspath(database)


@contextlib.contextmanager
def _postgres_lock(
    engine: sqlalchemy.engine.Engine, study_name: str, attempts: int
) -> Iterator[None]:
    key = _advisory_key(study_name)

    def acquire() -> sqlalchemy.engine.Connection:
        # A dedicated connection in autocommit mode: the session-level lock is held without an
        # open transaction, and is released by the server if this process or its link dies.
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        query = sqlalchemy.text("SELECT pg_try_advisory_lock(:key)")
        try:
            _wait_for(
                lambda: bool(conn.execute(query, {"key": key}).scalar()),
                what=f"the budget lock of study {study_name!r} (a PostgreSQL advisory lock)",
                timeout=LOCK_TIMEOUT,
            )
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        return conn

    conn = retry(acquire, attempts=attempts)
    try:
        yield
    except BaseException:
        # The lock dies with the connection; invalidating it keeps a possibly still-locked
        # connection out of the pool.
        conn.invalidate()
        conn.close()
        raise
    try:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    except sqlalchemy.exc.SQLAlchemyError:
        conn.invalidate()
    finally:
        conn.close()


# How long a process waits for a lock that another holds before it says so, and in all.
LOCK_NOTICE_AFTER = 10.0
LOCK_TIMEOUT = 600.0


@contextlib.contextmanager
def _file_lock(
    path: str, *, purpose: str = "reserving a trial", timeout: float | None = None
) -> Iterator[None]:
    # flock locks belong to the open file description, so threads and processes of this machine
    # exclude each other; they do not reach other machines, hence warn_if_sqlite_shared.
    lock_path = f"{path}.lock"
    with open(lock_path, "a") as handle:
        _wait_for(
            lambda: _try_flock(handle.fileno()),
            what=f"the lock file {lock_path} ({purpose})",
            timeout=LOCK_TIMEOUT if timeout is None else timeout,
        )
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# Not the filelock package: these locks must be released by the kernel when their holder dies
# (a killed worker must not hold the budget), and a try-lock must answer at once without
# opening a second descriptor; filelock 4 falls back to a soft lock file on file systems
# without flock, which outlives a killed process. fcntl.flock does exactly this, in 5 lines.
def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _wait_for(acquire: Callable[[], bool], *, what: str, timeout: float) -> None:
    """Poll ``acquire`` until it succeeds; say what is waited for after a while, give up after
    ``timeout`` seconds with a StorageError instead of freezing every worker."""
    notice = LOCK_NOTICE_AFTER

    def say(state: RetryCallState) -> None:
        nonlocal notice
        if state.seconds_since_start >= notice:
            _logger.warning(
                "waiting for %s, held by another process (%.0fs)", what, state.seconds_since_start
            )
            notice = state.seconds_since_start + 30.0

    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=0.005, max=0.2),
        retry=retry_if_result(lambda acquired: not acquired),
        before_sleep=say,
        retry_error_callback=lambda state: False,
    )
    if not retrying(acquire):
        raise StorageError(
            f"gave up after {timeout:.0f}s waiting for {what}: another process holds it",
            hint="look for a stuck tuner process on this machine (`ps`), or remove the lock "
            "holder; the lock is released when its process exits",
        )


@contextlib.contextmanager
def budget_lock(
    storage: str | RDBStorage, study_name: str, *, attempts: int = DEFAULT_ATTEMPTS
) -> Iterator[None]:
    """Hold the study's budget lock: one holder at a time across processes and machines.


    Reserve a trial slot inside it (count the trials, then create one) so that the global budget
    is exact. ``storage`` is a URL or an ``RDBStorage``; pass the storage to reuse its pool.
    PostgreSQL uses ``pg_advisory_lock`` on a dedicated connection (acquiring it retries
    transient errors); the server releases it if the holder dies. An SQLite file uses ``flock``
    on ``<file>.lock``, one lock for every study in the file (released by the kernel if the
    holder dies); in-memory SQLite uses a lock of this process.

    >>> with budget_lock("sqlite:///:memory:", "digits-cnn"):
    ...     pass  # count the finished and running trials, then create one if budget remains
    """
    url = storage if isinstance(storage, str) else str(storage.url)
    url = normalize_url(url)
    dialect = dialect_of(url)
    if dialect == "postgresql":
        if isinstance(storage, RDBStorage):
            with _postgres_lock(storage.engine, study_name, attempts):
                yield
            return
        engine = sqlalchemy.create_engine(
            url,
            poolclass=sqlalchemy.pool.NullPool,
            connect_args=_engine_kwargs(url, dialect, 10.0).get("connect_args", {}),
        )
        try:
            with _postgres_lock(engine, study_name, attempts):
                yield
        finally:
            engine.dispose()
    elif dialect == "sqlite":
        path = _sqlite_path(url)
        if path is None:
            with _memory_locks_guard:
                lock = _memory_locks.setdefault((url, study_name), threading.Lock())
            with lock:
                yield
        else:
            with _file_lock(path):
                yield
    else:
        raise StorageError(
            f"budget lock: storage {redact(url)} ({dialect}) is not supported",
            hint="use PostgreSQL for several machines, SQLite for one",
        )


@contextlib.contextmanager
def stale_check_lock(storage: RDBStorage, study_name: str) -> Iterator[bool]:
    """True while this process alone looks for stale trials; False: another one is looking now.

    The launch and every worker look. On PostgreSQL, Optuna's ``SELECT ... FOR UPDATE`` lets one
    of them fail a stale trial and the others see it failed. On SQLite that row lock holds
    nothing (pysqlite begins the transaction only at the UPDATE), so two of them can fail the
    same trial and both queue its retry. There, the check takes the budget lock, but never
    waits for it: a check skipped now runs a heartbeat interval later, while a wait would stall
    the launch's own loop (signals, progress) behind a worker that holds the lock.
    """
    url = normalize_url(str(storage.url))
    if dialect_of(url) != "sqlite":
        yield True
        return
    path = _sqlite_path(url)
    if path is None:
        with _memory_locks_guard:
            lock = _memory_locks.setdefault((url, study_name), threading.Lock())
        mine = lock.acquire(blocking=False)
        try:
            yield mine
        finally:
            if mine:
                lock.release()
        return
    with open(f"{path}.lock", "a") as handle:
        mine = _try_flock(handle.fileno())
        try:
            yield mine
        finally:
            if mine:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
