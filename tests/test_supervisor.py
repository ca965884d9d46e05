"""`tuner launch` as a supervisor, with real subprocesses, signals and a real SQLite study file.

A worker that crashes or hangs costs one trial; stopping launch (SIGTERM, SIGKILL) leaves no
process behind and re-queues the running trials; a paused worker comes back without a
traceback; overrides reach every worker; two launches on one fresh file both work.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import socketserver
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import wait_for_study

pytestmark = pytest.mark.slow

# Tiny objectives: no torch, no data; a trial costs milliseconds unless it is meant to hang.
CRASHES_IN_TRIAL_1 = textwrap.dedent(
    """
    import ctypes, os, sys

    def objective(trial):
        trial.report(1.0, step=0)
        if trial.number == 1:
            {crash}
        return 1.0 / (trial.number + 1)
    """
)

SLEEPS = textwrap.dedent(
    """
    import time

    def objective(trial):
        for step in range(int(trial.params.get("steps", 1000))):
            time.sleep(float(trial.params.get("sleep", 0.05)))
            trial.report(1.0, step=step)
        return 1.0 / (trial.number + 1)
    """
)


def launch(path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuner", "launch", str(path), *args],
        cwd=path.parent, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def start_launch(path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tuner", "launch", str(path), *args],
        cwd=path.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def storage_of(path: Path) -> str:
    return yaml.safe_load(path.read_text())["storage"]


def load(path: Path) -> optuna.Study:
    return optuna.load_study(study_name="test-study", storage=storage_of(path))


def states(study: optuna.Study) -> dict[TrialState, int]:
    counts: dict[TrialState, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


# --- /proc: every process that launch started, and whether any is left ------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, session id) of ``pid``, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[3])


def descendants(root: int) -> set[int]:
    """Every live process below ``root``, and every process in the sessions they lead."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            table[int(entry)] = stat
    found: set[int] = set()
    frontier = {root}
    while frontier:
        children = {pid for pid, (_, ppid, _) in table.items() if ppid in frontier} - found
        found |= children
        frontier = children
    sessions = {pid for pid in found if table[pid][2] == pid}
    found |= {pid for pid, (_, _, sid) in table.items() if sid in sessions}
    return found


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if (stat := _stat(pid)) is not None and stat[0] not in "ZX"}


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive(pids)


# --- a worker that dies mid-trial costs that trial only --------------------------------------


@pytest.mark.parametrize(
    ("crash", "reason"),
    [
        ("sys.exit(3)", "the objective called sys.exit(3)"),
        ("os._exit(1)", "worker exited with exit code 1 during trial 1"),
        ("ctypes.string_at(0)", "worker exited with SIGSEGV during trial 1"),
    ],
    ids=["sys.exit", "os._exit", "segfault"],
)
def test_a_crashing_objective_fails_its_trial_and_the_study_goes_on(make_study, crash, reason):
    path = make_study(CRASHES_IN_TRIAL_1.format(crash=crash), budget={"trials": 3})
    proc = launch(path)
    assert proc.returncode == 0, proc.stderr
    study = load(path)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [1]
    assert reason in failed[0].user_attrs["tuner:reason"]
    assert failed[0].user_attrs["tuner:outcome"] == "failed"
    assert states(study) == {TrialState.COMPLETE: 3, TrialState.FAIL: 1}  # nothing RUNNING
    assert f"trial 1 failed: {reason}" in proc.stderr
    assert last_line(proc.stderr) == "done: the budget is spent (3 of 3 trials finished, 1 failed)"
    assert "finished trials   3 of 3" in proc.stdout


# --- timeouts ---------------------------------------------------------------------------------

HANGS = textwrap.dedent(
    """
    import signal, time

    def objective(trial):
        if trial.number == 0:
            time.sleep(3600)              # the worker's own watchdog interrupts this
        if trial.number == 1:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
            time.sleep(3600)              # deaf to it: launch kills the worker
        return 1.0
    """
)


def test_a_hanging_trial_is_failed_as_timed_out_and_the_study_finishes(make_study):
    path = make_study(HANGS, budget={"trials": 2, "trial_timeout": "2s"})
    proc = launch(path)
    assert proc.returncode == 0, proc.stderr
    study = load(path)
    assert states(study) == {TrialState.COMPLETE: 2, TrialState.FAIL: 2}
    first, second = study.trials[0], study.trials[1]
    assert first.user_attrs["tuner:reason"] == "timed out after 2s (budget.trial_timeout)"
    assert second.user_attrs["tuner:reason"] == (
        "timed out after 2s (budget.trial_timeout); its worker did not stop it and was killed"
    )
    assert "done: the budget is spent" in last_line(proc.stderr)


def test_budget_timeout_stops_running_trials_after_a_grace_and_requeues_them(make_study):
    # A trial would run 200 s. budget.timeout (15 s, time for the workers to start) passes, then
    # the grace (10 s) runs out: the running trials are stopped as interrupted, to run again on
    # resume, and launch says so.
    path = make_study(
        SLEEPS, budget={"trials": 4, "timeout": "15s"}, params={"steps": 2000, "sleep": 0.1},
        workers={"devices": ["cpu"], "per_device": 2},
    )  # fmt: skip
    started = time.monotonic()
    proc = launch(path)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert last_line(proc.stderr).startswith("stopped: budget.timeout reached"), proc.stderr
    assert "run the same command to go on" in last_line(proc.stderr)
    assert took < 90, took  # not the 200 s a trial would take
    study = load(path)
    cut = [t for t in study.trials if t.state == TrialState.FAIL]
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert cut and states(study) == {TrialState.FAIL: len(cut), TrialState.WAITING: len(cut)}
    assert {t.user_attrs["tuner:outcome"] for t in cut} == {"interrupted"}
    assert {t.user_attrs["tuner:retry_of"] for t in waiting} == {t.number for t in cut}


# --- stopping launch stops everything it started ----------------------------------------------

THREE_SLOW_WORKERS = {"devices": ["cpu"], "per_device": 3, "heartbeat_interval": 1,
                      "grace_period": 8}  # fmt: skip


def _three_running(path: Path) -> tuple[subprocess.Popen[str], set[int]]:
    proc = start_launch(path)
    wait_for_study(
        storage_of(path),
        lambda s: (
            sum("tuner:config" in t.user_attrs for t in s.get_trials(states=(TrialState.RUNNING,)))
            == 3
        ),
        timeout=60,
    )
    started = descendants(proc.pid)
    assert len(started) >= 3, started
    return proc, started


def test_sigterm_stops_every_worker_and_requeues_their_trials(make_study):
    path = make_study(SLEEPS, budget={"trials": 6}, workers=THREE_SLOW_WORKERS)
    proc, started = _three_running(path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 143, err
    assert not wait_gone(started, timeout=1)
    assert last_line(err).startswith("stopped by SIGTERM: 0 of 6 trials finished")
    study = load(path)
    assert states(study) == {TrialState.FAIL: 3, TrialState.WAITING: 3}
    assert {t.user_attrs["tuner:outcome"] for t in study.trials if t.state == TrialState.FAIL} == {
        "interrupted"
    }


def test_sigkill_of_launch_stops_its_workers_within_the_grace_period(make_study):
    path = make_study(SLEEPS, budget={"trials": 6}, workers=THREE_SLOW_WORKERS)
    proc, started = _three_running(path)
    proc.kill()
    proc.communicate(timeout=10)
    assert not wait_gone(started, timeout=THREE_SLOW_WORKERS["grace_period"])
    study = load(path)
    # The workers re-queued their own trials before they went.
    assert states(study) == {TrialState.FAIL: 3, TrialState.WAITING: 3}


# --- a paused worker comes back -----------------------------------------------------------------


def test_a_worker_paused_past_the_grace_period_goes_on_without_a_traceback(make_study):
    path = make_study(
        SLEEPS, budget={"trials": 4}, params={"steps": 10, "sleep": 0.1},
        workers={"devices": ["cpu"], "per_device": 2, "heartbeat_interval": 1,
                 "grace_period": 3},
    )  # fmt: skip
    proc = start_launch(path)

    def configured(s: optuna.Study) -> list[optuna.trial.FrozenTrial]:
        running = s.get_trials(states=(TrialState.RUNNING,))
        return [t for t in running if "tuner:config" in t.user_attrs]

    paused = configured(wait_for_study(storage_of(path), configured, timeout=60))[0]
    pid = int(paused.user_attrs["tuner:worker"].rsplit("/", 1)[1])
    os.kill(pid, signal.SIGSTOP)
    try:
        # Its trial is failed for silence and queued again, while the worker is still paused.
        wait_for_study(
            storage_of(path),
            lambda s: s.trials[paused.number].state == TrialState.FAIL,
            timeout=30,
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "UpdateFinishedTrialError" not in err, err
    assert err.count(f"trial {paused.number}: another process failed this trial") == 1, err
    study = load(path)
    again = study.trials[paused.number]
    assert again.state == TrialState.FAIL  # the late result was not recorded over it
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == paused.number]
    assert [t.state for t in retries] == [TrialState.COMPLETE]
    assert states(study).get(TrialState.COMPLETE) == 4
    assert TrialState.RUNNING not in states(study)


# --- overrides, concurrent launches ------------------------------------------------------------


def test_the_trials_override_reaches_every_worker(make_study):
    path = make_study(
        SLEEPS, budget={"trials": 6}, params={"steps": 2, "sleep": 0.01},
        workers={"devices": ["cpu"], "per_device": 2},
    )  # fmt: skip
    proc = launch(path, "--trials", "2")
    assert proc.returncode == 0, proc.stderr
    assert states(load(path)) == {TrialState.COMPLETE: 2}
    assert "finished trials   2 of 2" in proc.stdout


def test_launch_shows_the_summary_then_waits_for_its_workers_own_exit_handlers(make_study):
    # A worker says it is done before Python tears it down (about a second after torch), so
    # the summary need not wait; but launch exits only once its workers have, and their exit
    # handlers (the user's, here a slow one that writes a file) still run in full.
    source = SLEEPS + textwrap.dedent(
        """
        import atexit, os

        def _last_words():
            time.sleep(2)
            with open(f"exit-{os.getpid()}.txt", "w") as f:
                f.write("ran")

        atexit.register(_last_words)
        """
    )
    path = make_study(source, budget={"trials": 2}, params={"steps": 1, "sleep": 0.01})
    proc = start_launch(path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "finished trials   2 of 2" in out
    assert last_line(err).startswith("done: the budget is spent")
    written = list(path.parent.glob("exit-*.txt"))
    # Written 2 s into the worker's exit, and there when launch has exited: launch waited.
    assert len(written) == 1 and written[0].read_text() == "ran"


def test_two_launches_on_a_fresh_sqlite_file_both_work(make_study, tmp_path):
    path = make_study(SLEEPS, budget={"trials": 2}, params={"steps": 1, "sleep": 0.01})
    for attempt in range(5):
        db = Path(storage_of(path).removeprefix("sqlite:///"))
        for leftover in db.parent.glob(db.name + "*"):
            leftover.unlink()
        procs = [start_launch(path) for _ in range(2)]
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], (attempt, results)
        assert states(load(path)) == {TrialState.COMPLETE: 2}


# --- a worker that starts while the database is unreachable -------------------------------------


class _Forwarder(socketserver.ThreadingTCPServer):
    """A TCP forwarder to PostgreSQL: a database server that comes up when this starts."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.target = target
        super().__init__(("127.0.0.1", port), _Forward)


class _Forward(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        upstream = socket.create_connection(self.server.target)  # type: ignore[attr-defined]
        pair = [self.request, upstream]
        try:
            while True:
                ready, _, _ = select.select(pair, [], [], 30)
                if not ready:
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is self.request else self.request).sendall(data)
        finally:
            upstream.close()


@pytest.mark.postgres
def test_a_worker_started_while_the_database_is_down_waits_for_it(make_study, fresh_postgres_url):
    with socket.socket() as probe:  # a free port, where no server listens yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    parts = urllib.parse.urlsplit(fresh_postgres_url)
    down = parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{port}".lstrip("@"))
    path = make_study(
        SLEEPS, storage=urllib.parse.urlunsplit(down), budget={"trials": 2},
        params={"steps": 2, "sleep": 0.01},
    )  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "tuner", "worker", str(path)],
        cwd=path.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert worker.stderr is not None
    for line in worker.stderr:  # the worker says it waits, and keeps waiting
        if "the study storage is not reachable yet" in line:
            break
    else:
        pytest.fail(f"worker exited {worker.wait()} without waiting for the storage")
    time.sleep(2)
    assert worker.poll() is None
    target = urllib.parse.urlsplit(fresh_postgres_url)
    forwarder = _Forwarder(port, (target.hostname or "127.0.0.1", target.port or 5432))
    threading.Thread(target=forwarder.serve_forever, daemon=True).start()
    try:
        _, err = worker.communicate(timeout=120)
    finally:
        forwarder.shutdown()
        forwarder.server_close()
    assert worker.returncode == 0, err
    study = optuna.load_study(study_name="test-study", storage=fresh_postgres_url)
    assert states(study) == {TrialState.COMPLETE: 2}
