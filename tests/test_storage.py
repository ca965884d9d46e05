"""The study database, one suite over SQLite and PostgreSQL (a fresh database per test)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import sqlalchemy.exc

import tuner.db.storage
from tests.pgutil import fresh_postgres_database, require_postgres, terminate_backends
from tuner.core.errors import StorageError
from tuner.core.redact import redact
from tuner.db.storage import (
    budget_lock,
    dialect_of,
    is_transient_error,
    normalize_url,
    open_storage,
    retry,
    warn_if_sqlite_shared,
)

REPO = Path(__file__).resolve().parents[1]

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh study database: an SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.db'}"
    else:
        require_postgres()
        with fresh_postgres_database() as url:
            yield url


@pytest.fixture
def pg_url() -> Iterator[str]:
    require_postgres()
    with fresh_postgres_database() as url:
        yield url


def _dispose(storage: optuna.storages.RDBStorage) -> None:
    storage.remove_session()
    storage.engine.dispose()


def _quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1.0, 1.0)
    return x * x


# --- URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("sqlite:///tuner.db", "sqlite:///tuner.db"),
        ("mysql+pymysql://u@h/db", "mysql+pymysql://u@h/db"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://tuner:s3cret@db:5432/tuner", "postgresql"),
        ("postgres://tuner:s3cret@db/tuner", "postgresql"),
        ("sqlite:///tuner.db", "sqlite"),
        ("sqlite://", "sqlite"),
        ("mysql+pymysql://root:s3cret@db/x", "mysql"),
        ("not a url", "unknown"),
    ],
)
def test_dialect_of_names_the_database_kind_only(url: str, expected: str) -> None:
    assert dialect_of(url) == expected


def test_redact_url_hides_every_password() -> None:
    text = "a postgresql://tuner:s3cret@db/t and mysql://root:s3cret@h/x, sqlite:///t.db"
    assert redact(text) == "a postgresql://tuner:***@db/t and mysql://root:***@h/x, sqlite:///t.db"


def test_warn_if_sqlite_shared() -> None:
    text = warn_if_sqlite_shared("sqlite:///tuner.db")
    assert text is not None
    assert "sqlite:///tuner.db" in text and "PostgreSQL" in text and "machine" in text
    assert warn_if_sqlite_shared("postgresql://tuner:s3cret@db/tuner") is None
    assert "s3cret" not in (warn_if_sqlite_shared("sqlite:///s3cret.db") or "").replace(
        "sqlite:///s3cret.db", ""
    )


def test_all_names_exist() -> None:
    for name in tuner.db.storage.__all__:
        assert hasattr(tuner.db.storage, name), name


# --- opening a storage ---------------------------------------------------------------------


def test_open_storage_serves_optuna_studies(storage_url: str) -> None:
    storage = open_storage(storage_url)
    assert isinstance(storage, optuna.storages.RDBStorage)
    study = optuna.create_study(
        study_name="s", storage=storage, sampler=optuna.samplers.RandomSampler(0)
    )
    study.optimize(_quadratic, n_trials=5)

    # A second process-like opener (fresh engine, plain postgresql:// URL) sees the same study.
    plain = storage_url.replace("postgresql+psycopg://", "postgresql://")
    other = open_storage(plain)
    loaded = optuna.load_study(study_name="s", storage=other)
    assert len(loaded.trials) == 5
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in loaded.trials)
    assert loaded.best_value == study.best_value
    _dispose(storage)
    _dispose(other)


def test_open_storage_uses_psycopg3_and_pre_ping_for_postgresql(pg_url: str) -> None:
    storage = open_storage(pg_url.replace("postgresql+psycopg://", "postgres://"))
    assert storage.engine.dialect.driver == "psycopg"
    assert storage.engine.pool._pre_ping
    _dispose(storage)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_heartbeat_settings_reach_optuna_without_warnings(storage_url: str) -> None:
    failed: list[int] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        storage = open_storage(
            storage_url,
            heartbeat_interval=1,
            grace_period=1,
            failed_trial_callback=lambda study, trial: failed.append(trial.number),
        )
    assert storage.get_heartbeat_interval() == 1
    study = optuna.create_study(study_name="hb", storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)  # past the grace period: the trial's worker is presumed dead
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert failed == [0]
    _dispose(storage)


def _assert_clean_error(error: StorageError, *, must_contain: list[str]) -> None:
    text = str(error)
    everything = text + (error.hint or "") + "".join(traceback.format_exception(error))
    assert "s3cret" not in everything
    assert error.__cause__ is None and error.__context__ is None
    assert error.hint
    for piece in must_contain:
        assert piece in text, (piece, text)


@pytest.mark.postgres
def test_unreachable_server_is_a_redacted_storage_error() -> None:
    url = "postgresql://tuner:s3cret@127.0.0.1:1/tuner"
    with pytest.raises(StorageError) as info:
        open_storage(url)
    _assert_clean_error(
        info.value,
        must_contain=["postgresql://tuner:***@127.0.0.1:1/tuner", "(postgresql)", "refused"],
    )
    assert "server running" in info.value.hint


@pytest.mark.postgres
def test_missing_database_is_a_redacted_storage_error() -> None:
    require_postgres()
    url = "postgresql://postgres:s3cret@127.0.0.1:5432/tuner_no_such_database"
    with pytest.raises(StorageError) as info:
        open_storage(url)
    _assert_clean_error(
        info.value, must_contain=["postgres:***@127.0.0.1", "does not exist", "(postgresql)"]
    )
    assert "createdb tuner_no_such_database" in info.value.hint


@pytest.mark.parametrize(
    ("url", "pieces"),
    [
        (
            "sqlite:////nonexistent-dir/s3cret/../tuner.db",
            ["does not exist: /nonexistent-dir", "(SQLite: unable to open"],
        ),
        ("nosuchdb://tuner:s3cret@host/tuner", ["nosuchdb://tuner:***@host", "(nosuchdb)"]),
        ("postgresql://tuner:s3cret@host:notaport/db", ["invalid storage URL", "tuner:***@"]),
        ("nonsense", ["invalid storage URL", "Could not parse"]),
    ],
)
def test_invalid_urls_are_storage_errors(url: str, pieces: list[str]) -> None:
    with pytest.raises(StorageError) as info:
        open_storage(url)
    if "sqlite" in url:
        # The path is part of the URL here, not a password: only the redaction rules apply.
        assert info.value.__cause__ is None and info.value.__context__ is None
        assert all(piece in str(info.value) for piece in pieces)
    else:
        _assert_clean_error(info.value, must_contain=pieces)


# --- transient errors, retries and reconnecting ---------------------------------------------


def test_retry_retries_transient_errors_only() -> None:
    transient = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed"))
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise optuna.exceptions.StorageInternalError("commit failed") from transient
        return "ok"

    assert retry(flaky, attempts=3, delay=0.001) == "ok"
    assert len(calls) == 3

    calls.clear()
    with pytest.raises(optuna.exceptions.StorageInternalError):
        retry(flaky, attempts=2, delay=0.001)
    assert len(calls) == 2

    def broken() -> None:
        calls.append(1)
        raise ValueError("not a database problem")

    calls.clear()
    with pytest.raises(ValueError):
        retry(broken, attempts=5, delay=0.001)
    assert len(calls) == 1


def test_sqlite_schema_errors_are_not_transient(tmp_path: Path) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(sqlalchemy.exc.OperationalError) as info, engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT * FROM no_such_table"))
    assert not is_transient_error(info.value)
    engine.dispose()


@pytest.mark.postgres
def test_a_killed_connection_is_transient(pg_url: str) -> None:
    engine = sqlalchemy.create_engine(pg_url)
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT 1"))
        assert terminate_backends(pg_url) >= 1
        with pytest.raises(sqlalchemy.exc.DBAPIError) as info:
            conn.execute(sqlalchemy.text("SELECT 1"))
    assert is_transient_error(info.value)
    engine.dispose()


@pytest.mark.postgres
def test_storage_survives_terminated_connections(pg_url: str) -> None:
    storage = open_storage(pg_url)
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(_quadratic, n_trials=3)
    # Every pooled connection dies, as in a server restart; pre-ping replaces them.
    assert terminate_backends(pg_url) >= 1
    study.optimize(_quadratic, n_trials=3)
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 6
    _dispose(storage)


@pytest.mark.postgres
@pytest.mark.parametrize("attempts", [1, 3])
def test_storage_retries_a_connection_killed_mid_call(
    pg_url: str, attempts: int, caplog: pytest.LogCaptureFixture
) -> None:
    storage = open_storage(pg_url, retry_attempts=attempts)
    storage.retry_delay = 0.05
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(_quadratic, n_trials=2)

    # The next connection passes its pre-ping and is then killed before Optuna's query runs,
    # which pre-ping cannot catch: only a retry saves the call.
    def kill_after_checkout(*_: object) -> None:
        terminate_backends(pg_url)

    sqlalchemy.event.listen(storage.engine, "engine_connect", kill_after_checkout, once=True)
    caplog.set_level(logging.WARNING, logger="tuner.db.storage")
    if attempts == 1:
        with pytest.raises(optuna.exceptions.StorageInternalError):
            storage.get_all_trials(study._study_id)
    else:
        assert len(storage.get_all_trials(study._study_id)) == 2
        assert "transient storage error" in caplog.text
    _dispose(storage)


@pytest.mark.postgres
def test_study_carries_on_while_connections_are_killed(pg_url: str) -> None:
    storage = open_storage(pg_url)
    storage.retry_delay = 0.05
    study = optuna.create_study(study_name="s", storage=storage)
    stop = threading.Event()
    kills: list[int] = []

    def killer() -> None:
        while not stop.wait(0.25):
            kills.append(terminate_backends(pg_url))

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        for _ in range(20):
            trial = study.ask()
            study.tell(trial, _quadratic(trial))
    finally:
        stop.set()
        thread.join()
    assert sum(kills) >= 3, kills
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert len(trials) == 20
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    _dispose(storage)


# --- the budget lock -----------------------------------------------------------------------

_LOCK_CHILD = r"""
import os, sys, time
from pathlib import Path
from tuner.db.storage import budget_lock
url, study, log, ready, go, rounds, use_lock = sys.argv[1:8]
Path(ready).touch()
while not os.path.exists(go):
    time.sleep(0.005)
pid = os.getpid()
for _ in range(int(rounds)):
    with budget_lock(url, study) if use_lock == "1" else open(os.devnull):
        with open(log, "a") as f:
            f.write(f"enter {pid}\n")
        time.sleep(0.01)
        with open(log, "a") as f:
            f.write(f"exit {pid}\n")
"""

_BUDGET_CHILD = r"""
import os, sys, time
from pathlib import Path
import optuna
from tuner.db.storage import budget_lock, open_storage
url, study_name, budget, ready, go = sys.argv[1:6]
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = open_storage(url)
study = optuna.load_study(study_name=study_name, storage=storage)
study_id = storage.get_study_id_from_name(study_name)
Path(ready).touch()
while not os.path.exists(go):
    time.sleep(0.005)
while True:
    with budget_lock(storage, study_name):
        if storage.get_n_trials(study_id) >= int(budget):
            break
        time.sleep(0.002)  # widen the count-then-create window a race would need
        trial = study.ask()
    study.tell(trial, trial.suggest_float("x", 0, 1))
"""


def _run_children(script: str, args: list[Callable[[str, str], list[str]]], tmp_path: Path) -> None:
    """Start one child per argument list, release them at once, wait for all to succeed."""
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    children = []
    for i, child_args in enumerate(args):
        ready = tmp_path / f"ready-{i}"
        children.append(
            (
                ready,
                subprocess.Popen(
                    [sys.executable, "-c", script, *child_args(str(ready), str(go))],
                    cwd=REPO,
                    env=env,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    deadline = time.monotonic() + 60
    while not all(ready.exists() for ready, _ in children):
        assert time.monotonic() < deadline, "children did not start"
        assert all(p.poll() is None for _, p in children), [p.stderr.read() for _, p in children]
        time.sleep(0.01)
    go.touch()
    for _, process in children:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr


def _overlaps(log: Path) -> int:
    """How often a process entered while another was inside."""
    inside: set[str] = set()
    overlaps = 0
    for line in log.read_text().splitlines():
        event, pid = line.split()
        if event == "enter":
            overlaps += bool(inside)
            inside.add(pid)
        else:
            inside.discard(pid)
    return overlaps


@pytest.mark.parametrize("use_lock", [True, False], ids=["locked", "unlocked-control"])
def test_budget_lock_excludes_other_processes(
    storage_url: str, tmp_path: Path, use_lock: bool
) -> None:
    if not use_lock and storage_url.startswith("postgresql"):
        pytest.skip("the control needs no database; it runs once, with SQLite")
    log = tmp_path / "log"

    def args(ready: str, go: str) -> list[str]:
        return [storage_url, "digits", str(log), ready, go, "15", "1" if use_lock else "0"]

    _run_children(_LOCK_CHILD, [args] * 3, tmp_path)
    lines = log.read_text().splitlines()
    assert len(lines) == 3 * 15 * 2
    if use_lock:
        assert _overlaps(log) == 0
    else:
        # Without the lock the same check sees processes overlap: it can fail.
        assert _overlaps(log) > 0


@pytest.mark.slow
def test_budget_lock_makes_the_global_budget_exact(storage_url: str, tmp_path: Path) -> None:
    storage = open_storage(storage_url)
    optuna.create_study(study_name="budget", storage=storage)
    _dispose(storage)

    def args(ready: str, go: str) -> list[str]:
        return [storage_url, "budget", "12", ready, go]

    _run_children(_BUDGET_CHILD, [args] * 3, tmp_path)
    storage = open_storage(storage_url)
    trials = optuna.load_study(study_name="budget", storage=storage).trials
    assert len(trials) == 12
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    _dispose(storage)


@pytest.mark.postgres
def test_budget_lock_is_per_study_on_postgresql(pg_url: str) -> None:
    # (An SQLite file has one lock for all its studies: one machine, usually one study.)
    storage_url = pg_url
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with budget_lock(storage_url, "a"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        done: list[str] = []
        other = threading.Thread(target=lambda: _lock_and_note(storage_url, "b", done))
        same = threading.Thread(target=lambda: _lock_and_note(storage_url, "a", done))
        other.start()
        same.start()
        other.join(5)
        assert done == ["b"]  # another study is not blocked ...
        time.sleep(0.3)
        assert done == ["b"]  # ... the same study is, until the holder leaves
    finally:
        release.set()
        thread.join()
    same.join(10)
    assert done == ["b", "a"]


def _lock_and_note(url: str, study: str, done: list[str]) -> None:
    with budget_lock(url, study):
        done.append(study)


_HOLD_CHILD = r"""
import sys, time
from pathlib import Path
from tuner.db.storage import budget_lock
url, flag = sys.argv[1:3]
with budget_lock(url, "digits"):
    Path(flag).touch()
    time.sleep(120)
"""


def test_budget_lock_is_released_when_its_holder_is_killed(
    storage_url: str, tmp_path: Path
) -> None:
    flag = tmp_path / "held"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_CHILD, storage_url, str(flag)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        acquired = threading.Event()

        def take() -> None:
            with budget_lock(storage_url, "digits"):
                acquired.set()

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        assert acquired.wait(10), "the lock of a SIGKILLed worker was never released"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_budget_lock_in_memory_sqlite_excludes_threads() -> None:
    inside = 0
    overlaps = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, overlaps
        for _ in range(20):
            with budget_lock("sqlite:///:memory:", "s"):
                with guard:
                    inside += 1
                    overlaps += inside > 1
                time.sleep(0.001)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == 0


def test_budget_lock_rejects_unsupported_databases() -> None:
    with (
        pytest.raises(StorageError, match="not supported") as info,
        budget_lock("mysql://root:s3cret@db/x", "s"),
    ):
        pass
    assert "s3cret" not in str(info.value)


def test_a_sqlite_study_file_is_in_write_ahead_log_mode(tmp_path: Path) -> None:
    """One log sync per commit, and readers (progress, status) never block the workers."""
    import sqlite3

    open_storage(f"sqlite:///{tmp_path / 'wal.db'}")
    with sqlite3.connect(tmp_path / "wal.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: nothing less durable


def test_a_held_budget_lock_is_announced_and_given_up_on(tmp_path, monkeypatch):
    """Another process holds the SQLite study's lock file: waiting says what for, then stops."""
    db = tmp_path / "study.db"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('held', flush=True); time.sleep(60)", f"{db}.lock"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Its own handler: the CLI's logging setup stops tuner's records at the "tuner" logger.
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("tuner.db.storage").addHandler(handler)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(tuner.db.storage, "LOCK_NOTICE_AFTER", 0.2)
        monkeypatch.setattr(tuner.db.storage, "LOCK_TIMEOUT", 1.0)
        with pytest.raises(StorageError) as raised, budget_lock(f"sqlite:///{db}", "demo"):
            pass
    finally:
        logging.getLogger("tuner.db.storage").removeHandler(handler)
        holder.kill()
        holder.wait()
    assert any(f"waiting for the lock file {db}.lock (reserving a trial)" in m for m in seen)
    assert str(raised.value).startswith(f"gave up after 1s waiting for the lock file {db}.lock")
    with budget_lock(f"sqlite:///{db}", "demo"):  # released with its process
        pass


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_a_stale_trial_is_failed_once_when_many_processes_check_at_once(storage_url: str) -> None:
    """The launch and every worker look for stale trials; a trial failed twice would queue its
    retry twice and run one trial past the budget."""
    from tuner.db.trialdb import fail_stale_trials

    failed: list[int] = []

    def checker() -> optuna.storages.RDBStorage:
        return open_storage(
            storage_url,
            heartbeat_interval=1,
            grace_period=1,
            failed_trial_callback=lambda study, trial: failed.append(trial.number),
        )

    first = checker()
    study = optuna.create_study(study_name="stale", storage=first)
    for _ in range(3):
        first.record_heartbeat(study.ask()._trial_id)
    time.sleep(2.5)  # past the grace period: the workers are presumed dead
    storages = [checker() for _ in range(6)]
    barrier = threading.Barrier(len(storages))

    def check(storage: optuna.storages.RDBStorage) -> None:
        barrier.wait()
        fail_stale_trials(optuna.load_study(study_name="stale", storage=storage))

    threads = [threading.Thread(target=check, args=(s,)) for s in storages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(failed) == [0, 1, 2]
    for storage in [first, *storages]:
        _dispose(storage)
