"""Storage failures a user must fix end ``tuner launch`` with one line naming the cause and the
database, and the next launch after the fix leaves no trial RUNNING.

Real causes, no mocks: a small tmpfs that the objective itself fills (SQLite's own "database or
disk is full"), a database file bind-mounted read-only (root writes through file modes, not
through a read-only mount), a folder that does not exist, a folder that the user ``nobody``
may not write to (the launch runs as that user), and a PostgreSQL role whose connection limit
is reached. The mounts and the change of user need root; without it those tests are skipped
with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import psycopg
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import REGRESSION, SMALL_SEARCH
from tests.pgutil import ADMIN_URL
from tests.test_launch import run

pytestmark = pytest.mark.slow

# Trial 2 fills the disk that holds the study database, then returns: the worker's write of its
# result is the first to find the disk full.
FILLS_THE_DISK = REGRESSION.replace(
    "    return loss.item()",
    "    if trial.number == 2 and 'fill' in trial.params:\n"
    "        with open(trial.params['fill'], 'wb') as f:\n"
    "            try:\n"
    "                while True:\n"
    "                    f.write(b'0' * 65536)\n"
    "                    f.flush()\n"
    "            except OSError:\n"
    "                pass\n"
    "    return loss.item()",
)
GENERIC = "An exception is raised during the commit"


def write_study(folder: Path, storage: str, source: str = REGRESSION, **extra: Any) -> Path:
    (folder / "obj.py").write_text(source)
    doc: dict[str, Any] = {
        "name": "storage-failure",
        "objective": "obj.py:objective",
        "budget": {"trials": 4, "epochs": 2},
        "storage": storage,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "search": SMALL_SEARCH,
        "compare": {"seeds": 0},
        "mlflow": {"tracking_uri": "off"},
        # A trial left RUNNING by a worker that died is failed within seconds.
        "workers": {"heartbeat_interval": 1, "grace_period": 2},
        **extra,
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    for p in (folder, *folder.iterdir()):
        p.chmod(0o777 if p.is_dir() else 0o666)
    return path


def launch(path: Path, *args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    # As another user through util-linux's setpriv, which drops root's groups too.
    become = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}",
                                      "--clear-groups"]  # fmt: skip
    return subprocess.run(
        [*become, sys.executable, "-m", "tuner", "launch", str(path), *args],
        cwd=path.parent, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def trials_of(storage: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="storage-failure", storage=storage).trials


def assert_one_line(proc: subprocess.CompletedProcess[str], line: str) -> None:
    """Launch failed, and its last line is the cause; no traceback, no Optuna boilerplate."""
    assert proc.returncode != 0, proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == line, proc.stderr
    assert "Traceback" not in proc.stderr and GENERIC not in proc.stderr, proc.stderr


@contextlib.contextmanager
def mounted(target: Path, *options: str, source: str = "tmpfs") -> Iterator[None]:
    """``mount`` for the length of a test; skipped where this process may not mount."""
    args = ["-t", "tmpfs", "-o", ",".join(options), "tmpfs"] if source == "tmpfs" else options
    proc = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount here (root and CAP_SYS_ADMIN needed): {proc.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_full_disk_ends_launch_with_one_line_and_the_next_launch_recovers(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted(disk, "size=3m"):
        storage = f"sqlite:///{disk / 'tuner.db'}"
        filler = disk / "filler"
        path = write_study(tmp_path, storage, FILLS_THE_DISK, params={"fill": str(filler)})
        proc = launch(path)
        assert_one_line(
            proc,
            f"error: the disk holding {disk / 'tuner.db'} is full "
            "(SQLite: database or disk is full)",
        )
        assert proc.returncode == 1
        states = [t.state for t in trials_of(storage)]
        assert states[:2] == [TrialState.COMPLETE] * 2
        assert TrialState.RUNNING in states  # trial 2: its result found the disk full
        filler.unlink()  # the cause, fixed

        again = launch(path)
        assert again.returncode == 0, again.stderr
        trials = trials_of(storage)
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 4


def test_a_read_only_database_file_ends_launch_with_one_line(tmp_path):
    path = write_study(tmp_path, f"sqlite:///{tmp_path / 'tuner.db'}")
    assert launch(path, "--trials", "2").returncode == 0
    db = tmp_path / "tuner.db"
    # Root writes through file modes; a read-only bind mount of the file stops even root.
    with mounted(db, "--bind", str(db), source="bind"):
        remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(db)], capture_output=True)
        assert remount.returncode == 0, remount.stderr
        assert not os.access(db, os.W_OK)
        proc = launch(path)
        assert_one_line(
            proc,
            f"error: the database file {db} is read-only "
            "(SQLite: attempt to write a readonly database)",
        )
    again = launch(path)
    assert again.returncode == 0, again.stderr
    trials = trials_of(f"sqlite:///{db}")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4


def test_a_missing_folder_is_named(make_study, tmp_path):
    missing = tmp_path / "no" / "such"
    path = make_study(storage=f"sqlite:///{missing / 'tuner.db'}")
    code, _, err = run("launch", str(path))
    assert code == 1
    assert err.rstrip().splitlines()[-1] == (
        f"error: the folder of the database {missing / 'tuner.db'} does not exist: {missing} "
        "(SQLite: unable to open database file)"
    )
    assert not missing.parent.exists()  # nothing was created on the way


NOBODY = 65534


def test_permission_denied_is_named_for_a_user_who_may_not_write_there():
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv, to run the launch as the user nobody")
    # Outside pytest's own temporary folders, which only their owner may enter.
    folder = Path(tempfile.mkdtemp(prefix="tuner-permission-"))
    try:
        path = write_study(folder, f"sqlite:///{folder / 'tuner.db'}")
        folder.chmod(0o755)  # root's folder: nobody may read it, not write in it
        proc = launch(path, user=NOBODY)
        assert_one_line(
            proc,
            f"error: permission denied: this user cannot write beside the database "
            f"{folder / 'tuner.db'} (Permission denied: {folder / 'tuner.db.lock'})",
        )
        # The cause, fixed: the folder is the launching user's again. (Root relaunches: the
        # interpreter of a virtual environment in root's home is not nobody's to run.)
        folder.chmod(0o777)
        again = launch(path)
        assert again.returncode == 0, again.stderr
        trials = trials_of(f"sqlite:///{folder / 'tuner.db'}")
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_postgres_too_many_connections_is_named_without_the_password(
    make_study, fresh_postgres_url
):
    role, password = f"tuner_limit_{uuid.uuid4().hex[:8]}", "s3cret-limit-pw"
    database = fresh_postgres_url.rpartition("/")[2]
    admin = ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' CONNECTION LIMIT 0")
        conn.execute(f"ALTER DATABASE {database} OWNER TO {role}")
    try:
        url = f"postgresql://{role}:{password}@127.0.0.1:5432/{database}"
        path = make_study(storage=url)
        code, out, err = run("launch", str(path))
        assert code == 1
        assert err.rstrip().splitlines()[-1] == (
            f"error: PostgreSQL at postgresql://{role}:***@127.0.0.1:5432/{database} has too "
            f'many connections (PostgreSQL: too many connections for role "{role}")'
        )
        assert password not in out + err
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"ALTER ROLE {role} CONNECTION LIMIT -1")  # the cause, fixed
        code, out, err = run("launch", str(path))
        assert code == 0, err
        study = optuna.load_study(study_name="test-study", storage=url)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            # The role owns the database and its tables: both go before the role can.
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            conn.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # ask() outside optimize
def test_a_running_trial_that_never_recorded_a_heartbeat_is_failed_after_the_grace_period(
    tmp_path,
):
    # A worker whose first heartbeat write failed (a full disk) and which then died leaves such
    # a trial; Optuna's own stale check only looks at trials with a heartbeat.
    from tuner.db.storage import open_storage
    from tuner.db.trialdb import fail_stale_trials

    storage = open_storage(
        f"sqlite:///{tmp_path / 'tuner.db'}", heartbeat_interval=1, grace_period=2
    )
    study = optuna.create_study(storage=storage, study_name="orphans")
    orphan = study.ask()  # no heartbeat: ask() records none
    fail_stale_trials(study)
    assert study.trials[orphan.number].state == TrialState.RUNNING  # too young to judge
    time.sleep(2.2)
    young = study.ask()
    fail_stale_trials(study)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING]
    assert young.number == 1
