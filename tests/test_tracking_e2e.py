"""MLflow tracking end to end, through the real runner and CLI, read back with ``MlflowClient``.

The study runs with ``tuner launch`` in-process (or ``tuner worker`` as a subprocess where a
worker must die); MLflow is a local SQLite store or a real ``mlflow server`` on loopback. No
mocks: the fault tests stop the real server and SIGKILL a real worker.
"""

from __future__ import annotations

import logging
import math
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from click.testing import CliRunner, Result
from mlflow import MlflowClient
from mlflow.entities import Run
from optuna.trial import TrialState

from tests.mlflow_server import MlflowServer
from tuner.cli import cli
from tuner.config.studyfile import load_study_file
from tuner.core.keys import ATTR
from tuner.db.storage import open_storage
from tuner.tracking import flatten_params

# Outcome by trial number: 0 complete, 1 pruned after a report, 2 diverged (a NaN report),
# 3 failed (an exception). Three epochs; the learning rate is logged with every report.
OUTCOMES = textwrap.dedent(
    """
    import os
    import sys
    import time

    import torch
    import tuner

    def objective(trial):
        with open("mlflow_imported.txt", "a") as f:  # a worker under launch never imports it
            f.write(f"{'mlflow' in sys.modules}\\n")
        time.sleep(float(trial.params.get("sleep", 0)))
        if trial.number == int(trial.params.get("hang_trial", -1)):
            # A long trial that a test kills; its first report reaches MLflow first.
            trial.report(1.0, step=0)
            time.sleep(300)
        model = torch.nn.Linear(2, 1)
        optimizer, scheduler = trial.build_optimizer(model.parameters(), total_steps=10)
        kind = trial.number % 4
        for epoch in range(trial.max_epochs):
            optimizer.step()
            scheduler.step()
            if kind == 2 and epoch == 1:
                trial.report(float("nan"), step=epoch)
            trial.report(1.0 / (epoch + 2 + trial.number), step=epoch)
            if kind == 1 and epoch == 1:
                raise tuner.TrialPruned("pruned by the test")
            if kind == 3 and epoch == 1:
                secret = os.environ.get("TUNER_E2E_PGPW", "none")
                raise RuntimeError(f"cannot reach postgresql://postgres:{secret}@db:5432/x")
        return 1.0 / (trial.max_epochs + 2 + trial.number)
    """
)
KIND = ("complete", "pruned", "diverged", "failed")
STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "diverged": "FAILED", "failed": "FAILED"}
EPOCHS = 3


def outcome_of(number: int) -> str:
    return KIND[number % 4]


def reported_steps(number: int) -> list[int]:
    """Steps the objective reports for trial ``number`` (pruned, diverged, failed stop early)."""
    return [0, 1] if outcome_of(number) != "complete" else list(range(EPOCHS))


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output + result.stderr
    return result


def load(path: Path) -> optuna.Study:
    study_file = load_study_file(path)  # expands ${VAR} in the storage URL
    return optuna.load_study(study_name=study_file.name, storage=open_storage(study_file.storage))


def parent_runs(client: MlflowClient, experiment: str) -> list[Run]:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    return client.search_runs([exp.experiment_id], filter_string="tags.`tuner.role` = 'study'")


def child_runs(client: MlflowClient, experiment: str, parent: str) -> list[Run]:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
        max_results=1000,
    )


def by_number(runs: list[Run]) -> dict[int, Run]:
    numbers = [int(r.data.tags["tuner.trial_number"]) for r in runs]
    assert len(numbers) == len(set(numbers)), f"duplicate runs: {sorted(numbers)}"
    return {int(r.data.tags["tuner.trial_number"]): r for r in runs}


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def artifact_text(client: MlflowClient, run_id: str, name: str, dst: Path) -> str:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, name, str(dst))).read_text()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    # Starting a server costs seconds on a loaded machine: one per module.
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def local_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One SQLite store per module: creating its schema costs seconds.
    return tmp_path_factory.mktemp("mlflow-local")


@pytest.fixture(params=["sqlite", "server"])
def tracking_uri(request: pytest.FixtureRequest, local_store: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{local_store}/mlflow.db"
    srv: MlflowServer = request.getfixturevalue("server")
    srv.start()  # a no-op when up; brings it back if a fault test left it down
    return srv.url


@pytest.fixture
def experiment() -> str:
    return "e2e-" + uuid.uuid4().hex[:8]


def tracked_study(
    make_study: Callable[..., Path], uri: str, experiment: str, **fields: Any
) -> Path:
    doc: dict[str, Any] = {
        "mlflow": {"tracking_uri": uri, "experiment": experiment},
        "budget": {"trials": 4, "epochs": EPOCHS},
    }
    for key, value in fields.items():
        doc[key] = {**doc[key], **value} if key in doc else value
    return make_study(OUTCOMES, **doc)


# -- the layout, through the runner -----------------------------------------------------------


def test_a_launched_study_has_one_parent_and_a_run_per_trial(
    make_study: Callable[..., Path],
    tracking_uri: str,
    experiment: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TUNER_E2E_NOTE", "expanded-note")
    path = tracked_study(make_study, tracking_uri, experiment, params={"note": "${TUNER_E2E_NOTE}"})
    invoke("launch", str(path))
    study = load(path)
    parent_id = study.user_attrs[ATTR.PARENT_RUN]
    # 0 complete, 1 pruned, 2 diverged, 3 failed, 4 complete: four finished, the budget.
    outcomes = [t.user_attrs["tuner:outcome"] for t in study.trials]
    assert outcomes == [outcome_of(n) for n in range(5)]
    # The workers sent their records through launch (tuner.tracking._relay): none of them
    # imported MLflow, yet every trial is in it (below).
    assert (tmp_path / "mlflow_imported.txt").read_text().split() == ["False"] * 5

    invoke("launch", str(path), "--trials", "6")  # resumes: 5 pruned, 6 diverged
    study = load(path)
    assert study.user_attrs[ATTR.PARENT_RUN] == parent_id
    assert len(study.trials) == 7

    client = MlflowClient(tracking_uri)
    (parent,) = parent_runs(client, experiment)  # the relaunch reused it
    assert parent.info.run_id == parent_id
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert (tags["tuner.sampler"], tags["tuner.pruner"]) == ("random", "none")
    assert tags["tuner.storage_dialect"] == "sqlite"
    metrics = parent.data.metrics
    assert metrics["best_value"] == pytest.approx(study.best_value)
    assert metrics["trials_complete"] == 2 and metrics["trials_pruned"] == 2
    assert metrics["trials_diverged"] == 2 and metrics["trials_failed"] == 1
    study_yaml = artifact_text(client, parent_id, "study.yaml", tmp_path / "dl")
    assert "${TUNER_E2E_NOTE}" in study_yaml and "expanded-note" not in study_yaml
    best = yaml.safe_load(artifact_text(client, parent_id, "best_config.yaml", tmp_path / "dl"))
    assert best["optimizer"] == study.best_trial.user_attrs["tuner:config"]["optimizer"]

    runs = by_number(child_runs(client, experiment, parent_id))
    assert sorted(runs) == list(range(7))  # one run per trial, no more
    for trial in study.trials:
        run = runs[trial.number]
        outcome = outcome_of(trial.number)
        # The runs table tells a pruned, diverged or failed trial from a complete one by name.
        suffix = "" if outcome == "complete" else f" ({outcome})"
        assert run.info.run_name == f"trial-{trial.number}{suffix}"
        assert run.info.status == STATUS[outcome], (trial.number, outcome)
        assert run.data.params == flatten_params(trial.user_attrs["tuner:config"])
        tags = run.data.tags
        assert tags["tuner.outcome"] == outcome
        assert tags["tuner.optimizer"] == trial.user_attrs["tuner:config"]["optimizer"]
        assert tags["tuner.worker_host"] == trial.user_attrs["tuner:worker_host"]
        assert tags["tuner.device"] == "cpu"
        assert float(tags["tuner.duration_s"]) >= 0
        # Every report at its step (the diverged trial's NaN included), and lr at each one.
        curve = history(client, run.info.run_id, "loss")
        steps = reported_steps(trial.number)
        assert sorted(curve) == steps
        for step in steps:
            expected = 1.0 / (step + 2 + trial.number)
            if outcome == "diverged" and step == 1:
                assert math.isnan(curve[step])
            else:
                assert curve[step] == pytest.approx(expected)
        # The lr each optimizer step trained with (one step per epoch here; warmup starts at 0).
        lr = history(client, run.info.run_id, "lr")
        assert sorted(lr) == steps and all(v >= 0 for v in lr.values()) and lr[max(lr)] > 0


def test_report_is_logged_to_the_parent_run(
    make_study: Callable[..., Path], local_store: Path, experiment: str, tmp_path: Path
) -> None:
    uri = f"sqlite:///{local_store}/mlflow.db"
    path = tracked_study(make_study, uri, experiment)
    invoke("launch", str(path), "--quiet")
    out = tmp_path / "rep"
    result = invoke("report", str(path), "--out", str(out))
    assert "logged to MLflow run" in result.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written
    client = MlflowClient(uri)
    (parent,) = parent_runs(client, experiment)
    logged = sorted(Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report"))
    assert logged == written
    assert parent.info.status == "FINISHED"


# -- an MLflow outage in the middle of a study -----------------------------------------------


def test_server_stopped_mid_study_then_sync_holds_every_trial_once(
    make_study: Callable[..., Path], server: MlflowServer, experiment: str
) -> None:
    server.start()
    path = tracked_study(
        make_study, server.url, experiment, budget={"trials": 8}, params={"sleep": 0.3}
    )
    results: list[Result] = []
    launch = threading.Thread(
        target=lambda: results.append(CliRunner().invoke(cli, ["launch", str(path), "--quiet"]))
    )
    launch.start()
    try:

        def finished() -> int:
            # Plain reads: opening the storage here would race the launch creating its tables.
            if results and results[0].exit_code != 0:
                raise AssertionError(results[0].output + repr(results[0].exception))
            assert launch.is_alive() or results, "the launch thread died"
            try:
                with sqlite3.connect(path.parent / "study.db", timeout=30) as db:
                    (n,) = db.execute(
                        "SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED', 'FAIL')"
                    ).fetchone()
            except sqlite3.OperationalError:  # no tables yet
                return 0
            return int(n)

        wait_for(lambda: finished() >= 2, 180, "two trials before the outage")
        server.stop()
        down_at = finished()
        wait_for(lambda: finished() >= down_at + 2 or not launch.is_alive(), 120,
                 "two trials during the outage")  # fmt: skip
        server.start()
    finally:
        server.start()
        launch.join(timeout=300)
    assert not launch.is_alive()
    (result,) = results
    assert result.exit_code == 0, result.output
    study = load(path)
    # The study database lost nothing: the budget, every trial final with all its reports.
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 8
    for trial in study.trials:
        assert trial.state.is_finished()
        assert sorted(trial.intermediate_values) == reported_steps(trial.number)

    first = invoke("sync", str(path))
    assert "runs created" in first.output
    again = invoke("sync", str(path))
    assert "0 runs created, 0 completed" in again.output

    client = MlflowClient(server.url)
    (parent,) = parent_runs(client, experiment)
    runs = by_number(child_runs(client, experiment, parent.info.run_id))  # each exactly once
    assert sorted(runs) == [t.number for t in study.trials]
    for trial in study.trials:
        run = runs[trial.number]
        outcome = outcome_of(trial.number)
        assert (run.info.status, run.data.tags["tuner.outcome"]) == (STATUS[outcome], outcome)
        assert set(reported_steps(trial.number)) <= set(history(client, run.info.run_id, "loss"))


# -- secrets ----------------------------------------------------------------------------------

PASSWORD = "s3cretpw"


def test_a_storage_password_reaches_no_mlflow_field_file_or_log_line(
    make_study: Callable[..., Path],
    fresh_postgres_url: str,
    tmp_path: Path,
    experiment: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("TUNER_E2E_PGPW", PASSWORD)
    # The local server trusts loopback, so any password works; the file names it by ${VAR}.
    storage = fresh_postgres_url.replace("://postgres@", "://postgres:${TUNER_E2E_PGPW}@", 1)
    assert "${TUNER_E2E_PGPW}" in storage
    store = tmp_path / "mlflow"
    store.mkdir()
    uri = f"sqlite:///{store}/mlflow.db"
    path = tracked_study(make_study, uri, experiment, storage=storage)

    outputs = [invoke("launch", str(path))]
    outputs.append(invoke("report", str(path), "--out", str(tmp_path / "rep")))
    outputs.append(invoke("sync", str(path)))
    outputs.append(invoke("status", str(path)))

    client = MlflowClient(uri)
    (parent,) = parent_runs(client, experiment)
    runs = [parent, *child_runs(client, experiment, parent.info.run_id)]
    assert len(runs) == 1 + 5  # the failed trial's message held the password
    failed = [r for r in runs if r.data.tags.get("tuner.outcome") == "failed"]
    assert len(failed) == 1
    for run in runs:
        fields = [
            *run.data.params.items(),
            *run.data.tags.items(),
            *run.data.metrics,
            run.info.run_name,
        ]
        assert PASSWORD not in repr(fields), run.info.run_name
    assert parent.data.tags["tuner.storage_dialect"] == "postgresql"
    assert "${TUNER_E2E_PGPW}" in artifact_text(
        client, parent.info.run_id, "study.yaml", tmp_path / "dl"
    )
    # Every byte MLflow wrote (backend database, artifacts) and every report file.
    scanned = 0
    for root in (store, tmp_path / "rep"):
        for file in root.rglob("*"):
            if file.is_file():
                assert PASSWORD.encode() not in file.read_bytes(), file
                scanned += 1
    assert scanned >= 3
    captured = capfd.readouterr()
    text = "".join(r.output + r.stderr for r in outputs) + captured.out + captured.err
    text += "\n".join(r.getMessage() for r in caplog.records)
    assert "cannot reach postgresql://postgres:***@db" in text  # the failure was logged...
    assert PASSWORD not in text  # ...redacted


# -- a worker killed mid-trial ----------------------------------------------------------------


def test_a_killed_workers_trial_ends_killed_in_mlflow(
    make_study: Callable[..., Path], local_store: Path, experiment: str, tmp_path: Path
) -> None:
    uri = f"sqlite:///{local_store}/mlflow.db"
    path = tracked_study(
        make_study,
        uri,
        experiment,
        budget={"trials": 1},
        params={"hang_trial": 0},
        workers={"heartbeat_interval": 1, "grace_period": 3},
    )
    victim = subprocess.Popen(
        [sys.executable, "-m", "tuner", "worker", str(path), "--quiet"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = MlflowClient(uri)

    def trial_0_reported() -> bool:
        assert victim.poll() is None, victim.communicate()[1]
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return False
        runs = client.search_runs([exp.experiment_id], "tags.`tuner.trial_number` = '0'")
        return bool(runs) and bool(history(client, runs[0].info.run_id, "loss"))

    try:
        wait_for(trial_0_reported, 180, "the victim's first report in MLflow")
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=30)

    # Another worker finds the trial stale after the grace period, retries it and closes its run.
    invoke("launch", str(path), "--quiet")
    study = load(path)
    lost, retry = study.trials
    assert lost.state == TrialState.FAIL and "tuner:outcome" not in lost.user_attrs
    assert retry.params == lost.params
    assert retry.state == TrialState.PRUNED  # trial 1 of the objective prunes itself

    (parent,) = parent_runs(client, experiment)
    runs = by_number(child_runs(client, experiment, parent.info.run_id))
    assert runs[0].info.status == "KILLED"
    assert runs[0].data.tags["tuner.outcome"] == "interrupted"
    assert history(client, runs[0].info.run_id, "loss") == {0: 1.0}
    assert runs[1].info.status == "FINISHED"
    # The study database and MLflow agree: sync has nothing to change.
    assert "0 runs created, 0 completed, 2 already complete" in invoke("sync", str(path)).output
