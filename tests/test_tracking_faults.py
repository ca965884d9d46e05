"""MLflow misbehaving as a user meets it, end to end: a hung server, a server gone for good,
two launches on a fresh store, passwords in every URL form, a hostile study name.

Real parts only: an ``mlflow server`` subprocess on loopback that is SIGSTOPped or killed, the
real CLI (in-process, or ``python -m tuner`` subprocesses), a real PostgreSQL for the
passwords, every byte that MLflow and tuner wrote scanned afterwards.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from click.testing import CliRunner, Result
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.mlflow_server import MlflowServer, free_port
from tests.test_tracking_e2e import (
    STATUS,
    artifact_text,
    by_number,
    child_runs,
    invoke,
    load,
    outcome_of,
    parent_runs,
    reported_steps,
    tracked_study,
    wait_for,
)
from tuner.cli import cli

# A trial end may wait 1 s for MLflow (the tracker's patience); the rest is tuner's own
# bookkeeping between two trials. Before the circuit breaker a hung server added 10 s.
MAX_GAP_S = 2.5


@pytest.fixture
def experiment() -> str:
    return "faults-" + uuid.uuid4().hex[:8]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MlflowServer]:
    # Its own server: these tests hang it or kill it.
    with MlflowServer(tmp_path / "mlflow-server") as srv:
        yield srv


class Launch:
    """``tuner launch`` in a thread of this process, and a count of its finished trials."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.results: list[Result] = []
        self.thread = threading.Thread(
            target=lambda: self.results.append(
                CliRunner().invoke(cli, ["launch", str(path), "--quiet"])
            )
        )
        self.thread.start()

    def finished(self) -> int:
        if self.results and self.results[0].exit_code != 0:
            raise AssertionError(self.results[0].output + repr(self.results[0].exception))
        assert self.thread.is_alive() or self.results, "the launch thread died"
        try:
            # Plain reads: opening the storage here would race the launch creating its tables.
            with sqlite3.connect(self.path.parent / "study.db", timeout=30) as db:
                (n,) = db.execute(
                    "SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED', 'FAIL')"
                ).fetchone()
        except sqlite3.OperationalError:  # no tables yet
            return 0
        return int(n)

    def result(self, timeout: float = 300) -> Result:
        self.thread.join(timeout=timeout)
        assert not self.thread.is_alive(), "the launch did not end"
        (result,) = self.results
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result


def check_every_trial_once(client: MlflowClient, experiment: str, path: Path) -> str:
    """Every trial of the study has exactly one run with its outcome; returns the parent id."""
    study = load(path)
    (parent,) = parent_runs(client, experiment)
    runs = by_number(child_runs(client, experiment, parent.info.run_id))  # each exactly once
    assert sorted(runs) == [t.number for t in study.trials]
    for trial in study.trials:
        run = runs[trial.number]
        outcome = outcome_of(trial.number)
        assert (run.info.status, run.data.tags["tuner.outcome"]) == (STATUS[outcome], outcome)
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "loss")}
        assert set(reported_steps(trial.number)) <= steps
    return parent.info.run_id


# -- a hung server ---------------------------------------------------------------------------


def test_a_hung_server_stalls_no_trial_end_and_sync_holds_every_trial_once(
    make_study: Callable[..., Path], server: MlflowServer, experiment: str
) -> None:
    path = tracked_study(
        make_study, server.url, experiment, budget={"trials": 10}, params={"sleep": 0.3}
    )
    launch = Launch(path)
    try:
        wait_for(lambda: launch.finished() >= 2, 180, "two trials before the server hangs")
        server.pause()  # it accepts connections and answers nothing
        hung_at = launch.finished()
        wait_for(lambda: launch.finished() >= hung_at + 4 or not launch.thread.is_alive(), 120,
                 "four trials while the server hangs")  # fmt: skip
    finally:
        server.resume()
    launch.result()
    study = load(path)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 10

    # The time from one trial's end to the next one's start holds the wait for MLflow.
    trials = sorted(study.trials, key=lambda t: t.number)
    gaps = [
        (b.datetime_start - a.datetime_complete).total_seconds()
        for a, b in itertools.pairwise(trials)
    ]
    print(f"\ngaps between trials (s): {[round(g, 2) for g in gaps]}")
    assert max(gaps) < MAX_GAP_S, gaps

    invoke("sync", str(path))
    client = MlflowClient(server.url)
    check_every_trial_once(client, experiment, path)
    again = invoke("sync", str(path))
    assert "0 runs created, 0 completed" in again.output
    assert "parent already up to date, FINISHED" in again.output


# -- a server gone for good ------------------------------------------------------------------


def test_sync_to_a_new_server_on_the_same_backend_completes_the_parent(
    make_study: Callable[..., Path], server: MlflowServer, experiment: str, tmp_path: Path
) -> None:
    path = tracked_study(
        make_study, server.url, experiment, budget={"trials": 6}, params={"sleep": 0.2}
    )
    launch = Launch(path)
    try:
        wait_for(lambda: launch.finished() >= 2, 180, "two trials before the server dies")
    finally:
        server.stop()  # for good: this launch never sees it again
    t0 = time.monotonic()
    result = launch.result()
    print(f"\nlaunch ended {time.monotonic() - t0:.1f} s after the server died")
    said = result.output + result.stderr
    assert "not delivered to MLflow" in said and "tuner sync" in said, said

    # A new server (another port) on the same backend database and artifact store.
    with MlflowServer(server.root) as revived:
        doc = yaml.safe_load(path.read_text())
        doc["mlflow"]["tracking_uri"] = revived.url
        path.write_text(yaml.safe_dump(doc))
        # A new process, as a user runs it (this one cached the old server's artifact client).
        synced = sync_in_subprocess(path)
        assert "FINISHED" in synced
        client = MlflowClient(revived.url)
        parent_id = check_every_trial_once(client, experiment, path)
        study = load(path)
        parent = client.get_run(parent_id)
        assert parent.info.status == "FINISHED"
        metrics = parent.data.metrics
        assert metrics["best_value"] == pytest.approx(study.best_value)
        assert metrics["best_trial"] == study.best_trial.number
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
        assert metrics["trials_finished"] == finished == 6
        assert metrics["trials_failed"] == sum(t.state == TrialState.FAIL for t in study.trials)
        best = yaml.safe_load(artifact_text(client, parent_id, "best_config.yaml", tmp_path / "a"))
        assert best == study.best_trial.user_attrs["tuner:config"]

        again = sync_in_subprocess(path)
        assert "0 runs created, 0 completed" in again
        assert "parent already up to date, FINISHED" in again


def sync_in_subprocess(path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tuner", "sync", str(path)],
        capture_output=True, text=True, timeout=300, cwd=path.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_with_no_server_at_all_launch_says_what_is_left_and_sync_fails_clearly(
    make_study: Callable[..., Path], experiment: str
) -> None:
    url = f"http://tuner:pw-{uuid.uuid4().hex[:6]}@127.0.0.1:{free_port()}"
    path = tracked_study(make_study, url, experiment, budget={"trials": 2})
    launched = invoke("launch", str(path))
    said = launched.output + launched.stderr
    assert "not delivered to MLflow" in said and "`tuner sync" in said, said
    assert sum(t.state.is_finished() for t in load(path).trials) >= 2  # the study went on
    failed = CliRunner().invoke(cli, ["sync", str(path)])
    message = failed.output + failed.stderr
    assert failed.exit_code == 1, message
    assert "did not answer" in message and "run `tuner sync` again" in message
    assert "Traceback" not in message and "pw-" not in message + said


# -- two launches on a fresh store -----------------------------------------------------------

QUADRATIC = """
def objective(trial):
    x = float(trial.config.to_dict()["lr"])
    for epoch in range(trial.max_epochs):
        trial.report((x - 0.01) ** 2, step=epoch)
    return (x - 0.01) ** 2
"""


def test_two_launches_on_a_fresh_default_mlflow_db_both_succeed(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for attempt in range(5):
        folder = tmp_path / f"try-{attempt}"
        folder.mkdir()
        (folder / "obj.py").write_text(QUADRATIC)
        # Defaults: sqlite:///tuner.db and sqlite:///mlflow.db, both fresh in the cwd.
        doc = {
            "name": "race",
            "objective": "obj.py:objective",
            "budget": {"trials": 2, "epochs": 1},
            "sampler": {"name": "random", "seed": attempt},
            "pruner": {"name": "none"},
            "search": {"optimizers": {"sgd": {}}, "schedules": ["constant"],
                       "lr_range_test": "off", "portfolio": False},
            "workers": {"devices": ["cpu"]},
            "compare": {"seeds": 0},  # the race is in opening the stores, not in replicates
        }  # fmt: skip
        (folder / "study.yaml").write_text(yaml.safe_dump(doc))
        cmd = [sys.executable, "-m", "tuner", "launch", "study.yaml", "--quiet"]
        procs = [
            subprocess.Popen(
                cmd,
                cwd=folder,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        for p, out in zip(procs, outputs, strict=True):
            assert p.returncode == 0, f"attempt {attempt}:\n{out}"
            assert "Traceback" not in out, out
        client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
        exp = client.get_experiment_by_name("race")
        assert exp is not None
        # Two launches and their workers opened the study together: one parent run for it.
        parents = client.search_runs(
            [exp.experiment_id], filter_string="tags.`tuner.role` = 'study'"
        )
        assert len(parents) == 1, f"attempt {attempt}: {len(parents)} parent runs"


# -- passwords in every URL form -------------------------------------------------------------

# The characters that need percent-encoding in a URL's userinfo, and a plain one for a query.
SPECIAL = "Pw@1:%{x}"
PLAIN = "QuerySecret42"


@pytest.mark.parametrize("form", ["query", "sslpassword", "userinfo-encoded"])
def test_a_password_in_any_url_form_reaches_no_output_log_or_mlflow_byte(
    form: str,
    make_study: Callable[..., Path],
    fresh_postgres_url: str,
    tmp_path: Path,
    experiment: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO)
    # The local server trusts loopback, so any password works; the file holds it literally.
    if form == "query":
        secret, storage = PLAIN, f"{fresh_postgres_url}?password={PLAIN}"
    elif form == "sslpassword":
        secret, storage = PLAIN, f"{fresh_postgres_url}?sslmode=disable&sslpassword={PLAIN}"
    else:
        secret = SPECIAL
        storage = fresh_postgres_url.replace(
            "://postgres@", f"://postgres:{quote(SPECIAL, safe='')}@", 1
        )
    forms = {secret, quote(secret, safe=""), quote(secret)}
    store = tmp_path / "mlflow"
    store.mkdir()
    uri = f"sqlite:///{store}/mlflow.db"
    path = tracked_study(make_study, uri, experiment, storage=storage)
    assert secret in path.read_text() or quote(secret, safe="") in path.read_text()

    outputs = [invoke("launch", str(path))]
    outputs.append(invoke("report", str(path), "--out", str(tmp_path / "rep")))
    outputs.append(invoke("sync", str(path)))
    outputs.append(invoke("status", str(path)))
    # An error message that names the storage URL: a database that does not exist.
    broken = path.parent / "broken.yaml"
    broken.write_text(path.read_text().replace(fresh_postgres_url.rsplit("/", 1)[1], "nodb_x"))
    failed = CliRunner().invoke(cli, ["status", str(broken)])
    assert failed.exit_code != 0 and "nodb_x" in failed.output + failed.stderr
    outputs.append(failed)

    client = MlflowClient(uri)
    (parent,) = parent_runs(client, experiment)
    study_yaml = artifact_text(client, parent.info.run_id, "study.yaml", tmp_path / "dl")
    assert "***" in study_yaml
    scanned = 0
    for root in (store, tmp_path / "rep", tmp_path / "dl"):
        for file in root.rglob("*"):
            if file.is_file():
                data = file.read_bytes()
                for text in forms:
                    assert text.encode() not in data, (file, text)
                scanned += 1
    assert scanned >= 4
    captured = capfd.readouterr()
    said = "".join(r.output + r.stderr for r in outputs) + captured.out + captured.err
    said += "\n".join(r.getMessage() for r in caplog.records)
    assert "***" in said
    for text in forms:
        assert text not in said, text


# -- a hostile study name --------------------------------------------------------------------


def test_report_on_a_study_named_dot_dot_writes_only_under_its_report_folder(
    make_study: Callable[..., Path], tmp_path: Path
) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    path = make_study(name="../../x", mlflow={"tracking_uri": "off"}, budget={"trials": 3})
    invoke("launch", str(path), "--quiet")
    before = set(tmp_path.rglob("*"))
    os.chdir(work)  # reports/../../x from here would be tmp_path/x (make_study restores the cwd)
    result = invoke("report", str(path))
    written = set(tmp_path.rglob("*")) - before
    assert written, result.output
    reports = work / "reports"
    assert all(reports in p.parents for p in written if p != reports), sorted(written)
    assert not (tmp_path / "x").exists() and not (work.parent.parent / "x").exists()
