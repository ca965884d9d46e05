"""MLflow tracking on real backends: a local SQLite store and a real ``mlflow server`` process.

Everything is read back through ``MlflowClient`` (and, for secrets, from the raw files the
backends write). No mocks: the fault tests stop and restart the real server.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from tests.mlflow_server import MlflowServer, free_port
from tuner.apps.sync import sync_study
from tuner.core.keys import ATTR
from tuner.launch.events import EventWriter
from tuner.tracking import (
    HTTP_DEFAULTS,
    MlflowTracker,
    RelayTracker,
    Tracker,
    TrackRelay,
    TrialRecorder,
    make_tracker,
)
from tuner.tracking._client import ensure_experiment, terminate_run

METRIC = "val_accuracy"
STUDY_YAML = "name: digits\nobjective: digits.py:objective\nmetric: val_accuracy\n"


@dataclass
class Backend:
    uri: str
    files: Path  # every file the backend writes lies under here (for the secret scan)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    # Starting a server costs seconds: one per module, shared by every server test.
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow-local")


@pytest.fixture(params=["sqlite", "server"])
def backend(request: pytest.FixtureRequest, local_dir: Path) -> Backend:
    if request.param == "sqlite":
        return Backend(f"sqlite:///{local_dir}/mlflow.db", local_dir)
    srv: MlflowServer = request.getfixturevalue("server")
    srv.start()  # no-op when up; brings it back if a fault test left it down
    return Backend(srv.url, srv.root)


@pytest.fixture
def experiment(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^\w-]", "-", request.node.name) + "-" + uuid.uuid4().hex[:6]


def open_study(tracker: MlflowTracker, experiment: str, existing: str | None = None) -> str | None:
    return tracker.open_study(
        study_name=experiment,
        experiment=experiment,
        study_yaml_text=STUDY_YAML,
        tags={"tuner.sampler": "tpe", "tuner.pruner": "hyperband", "tuner.db.storage": "sqlite"},
        existing_parent_run_id=existing,
    )


def children(client: MlflowClient, experiment: str, parent: str) -> list[Run]:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
    )


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.fixture(autouse=True)
def bounded_mlflow_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the CLI sets for tuner's processes (trackers made directly get MLflow's defaults).
    for name, value in HTTP_DEFAULTS.items():
        monkeypatch.setenv(name, value)


# -- the contract: one suite over every Tracker implementation --------------------------------


@dataclass
class Impl:
    """A Tracker implementation and how to read back what it recorded (None: it records
    nothing by design).

    ``relay`` is a worker's tracker under ``tuner launch``: a RelayTracker writing to a real
    pipe, read by a thread that replays the records into an MlflowTracker on the SQLite store,
    as the launch process does (its parent run is opened first, as launch opens it before its
    workers train).
    """

    name: str
    uri: str | None
    relayed: bool = False
    _launch: MlflowTracker | None = None
    _reader: threading.Thread | None = None
    _write_fd: int | None = None

    def make(self, experiment: str) -> Tracker:
        if not self.relayed:
            return make_tracker(self.uri, experiment=experiment)
        self._launch = MlflowTracker(self.uri, experiment=experiment)
        open_study(self._launch, experiment)
        read_fd, self._write_fd = os.pipe()
        relay = TrackRelay(lambda: self._launch)
        self._reader = threading.Thread(target=replay, args=(read_fd, relay), daemon=True)
        self._reader.start()
        return RelayTracker(EventWriter(self._write_fd))

    def parent(self, opened: str | None) -> str | None:
        """The parent run to read back: the launch side's for the relay."""
        return self._launch.parent_run_id if self._launch is not None else opened

    def settle(self) -> bool:
        """Wait until the launch side delivered what it was sent (nothing to do otherwise)."""
        if self._launch is None:
            return True
        assert self._write_fd is not None and self._reader is not None
        os.close(self._write_fd)  # the worker exits: the reader sees the end of the pipe
        self._reader.join(60)
        return self._launch.close(120)

    def runs(self, experiment: str, parent: str | None) -> dict[str, Run] | None:
        if self.uri is None:
            return None
        assert parent is not None
        client = MlflowClient(self.uri)
        return {r.info.run_name: r for r in children(client, experiment, parent)}


def replay(fd: int, relay: TrackRelay) -> None:
    """The launch process's reading of one worker's event pipe, as lines."""
    with os.fdopen(fd, "rb") as pipe:
        for line in pipe:
            event = json.loads(line)
            assert event["event"] == "track", event
            relay.apply(event)


@pytest.fixture(params=["off", "sqlite", "server", "relay"])
def impl(request: pytest.FixtureRequest, local_dir: Path) -> Impl:
    if request.param == "off":
        return Impl("off", None)
    if request.param in ("sqlite", "relay"):
        uri = f"sqlite:///{local_dir}/mlflow.db"
        return Impl(request.param, uri, relayed=request.param == "relay")
    srv: MlflowServer = request.getfixturevalue("server")
    srv.start()
    return Impl("server", srv.url)


def test_every_tracker_records_the_trial_lifecycle(impl: Impl, experiment: str) -> None:
    tracker = impl.make(experiment)
    assert isinstance(tracker, Tracker)
    opened = open_study(tracker, experiment)
    assert tracker.parent_run_id == opened
    outcomes = ["complete", "pruned", "failed", "diverged", "interrupted"]
    marks = []
    recorders = []
    for number, outcome in enumerate(outcomes):
        recorder = tracker.start_trial(number=number, params={"lr": 0.1, "n": number}, tags={})
        assert isinstance(recorder, TrialRecorder)
        for step in range(3):
            recorder.log({METRIC: step / 10 + number}, step=step)
        with pytest.raises(ValueError, match="outcome must be one of"):
            recorder.finish("exploded")
        recorder.finish(outcome)
        recorder.finish("complete")  # a second finish is ignored
        marks.append(tracker.mark())
        tracker.flush(5.0, upto=marks[-1])
        recorders.append(recorder)
    assert marks == sorted(marks)
    tracker.kill_trial(4, reason="its worker died")  # already ended: left alone
    tracker.update_study(metrics={"best_value": 0.5}, artifacts={"best_config.yaml": "lr: 1\n"})
    tracker.end_study()
    assert tracker.close(120) is True
    tracker.close(1)  # closing twice is harmless
    # After close nothing raises (a late report from a thread that did not notice).
    recorders[0].log({METRIC: 1.0}, step=9)
    assert impl.settle() is True

    parent = impl.parent(opened)
    runs = impl.runs(experiment, parent)
    if runs is None:  # tracking off: nothing recorded anywhere, and no run ids
        assert parent is None and all(r.run_id is None for r in recorders)
        return
    assert sorted(runs) == [f"trial-{n}" for n in range(5)]
    status = {name: (r.info.status, r.data.tags["tuner.outcome"]) for name, r in runs.items()}
    assert status == {
        "trial-0": ("FINISHED", "complete"),
        "trial-1": ("FINISHED", "pruned"),
        "trial-2": ("FAILED", "failed"),
        "trial-3": ("FAILED", "diverged"),
        "trial-4": ("KILLED", "interrupted"),
    }
    client = MlflowClient(impl.uri)
    for number, recorder in enumerate(recorders):
        run = runs[f"trial-{number}"]
        # A relayed run is made by the launch process: its id is known there only.
        assert recorder.run_id == (None if impl.relayed else run.info.run_id)
        assert run.data.params == {"lr": "0.1", "n": str(number)}
        assert sorted(history(client, run.info.run_id, METRIC)) == [0, 1, 2]
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(parent).data.metrics == {"best_value": 0.5}


def test_every_tracker_takes_a_report_in_microseconds(impl: Impl, experiment: str) -> None:
    tracker = impl.make(experiment)
    opened = open_study(tracker, experiment)
    recorder = tracker.start_trial(number=0, params={"lr": 0.1}, tags={})
    costs = []
    for step in range(3000):
        t0 = time.perf_counter()
        recorder.log({METRIC: step * 1e-3}, step=step)
        costs.append(time.perf_counter() - t0)
        if step % 100 == 0:
            time.sleep(0.01)  # let the flusher send meanwhile, as during real training
    recorder.finish("complete")
    p50, p99 = statistics.median(costs), percentile(costs, 0.99)
    print(f"\nreport cost, {impl.name}: p50={p50 * 1e6:.1f}us p99={p99 * 1e6:.1f}us")
    # Sanity bounds only (a synchronous log_metric costs 6-100 ms); speed is benchmarked.
    assert p50 < 1e-3 and p99 < 20e-3
    assert tracker.close(120) and impl.settle()
    runs = impl.runs(experiment, impl.parent(opened))
    if runs is not None:
        run_id = runs["trial-0"].info.run_id
        assert len(history(MlflowClient(impl.uri), run_id, METRIC)) == 3000


def test_ending_a_run_is_one_quiet_store_write(
    backend: Backend,
    experiment: str,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # terminate_run uses MLflow's private store API on purpose (its docstring says why): pin
    # that it is there, that it sets the status and end time, and that nothing is printed.
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    client = MlflowClient(backend.uri)
    assert callable(client._tracking_client.store.update_run_info)
    run = client.create_run(ensure_experiment(client, experiment, backend.uri))
    capfd.readouterr()
    terminate_run(client, run.info.run_id, "KILLED", 1_700_000_000_000)
    ended = client.get_run(run.info.run_id)
    assert (ended.info.status, ended.info.end_time) == ("KILLED", 1_700_000_000_000)
    out, err = capfd.readouterr()
    assert "View run" not in out + err


# -- the MLflow layout -------------------------------------------------------------------------


def test_open_study_finds_the_same_parent_run(backend: Backend, experiment: str) -> None:
    first = MlflowTracker(backend.uri, experiment=experiment)
    parent = open_study(first, experiment)
    assert parent is not None
    assert first.close(60)

    # A resume, or a worker in another process, passes the stored id back.
    second = MlflowTracker(backend.uri, experiment=experiment)
    assert open_study(second, experiment, existing=parent) == parent
    second.close()

    client = MlflowClient(backend.uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [parent]
    tags = runs[0].data.tags
    assert tags["tuner.sampler"] == "tpe" and tags["tuner.db.storage"] == "sqlite"
    assert runs[0].info.run_name == experiment
    assert [a.path for a in client.list_artifacts(parent)] == ["study.yaml"]
    local = client.download_artifacts(parent, "study.yaml", str(backend.files / uuid.uuid4().hex))
    assert Path(local).read_text() == STUDY_YAML


def test_one_child_run_per_trial_with_params_curves_and_status(
    backend: Backend, experiment: str
) -> None:
    tracker = MlflowTracker(backend.uri, experiment=experiment)
    parent = open_study(tracker, experiment)
    outcomes = ["complete", "pruned", "failed", "diverged", "interrupted"]
    for number, outcome in enumerate(outcomes):
        config = {"optimizer": "adamw", "lr": 10.0**-number, "schedule": {"name": "cosine"},
                  "betas": (0.9, 0.999)}  # fmt: skip
        recorder = tracker.start_trial(
            number=number,
            params=config,
            tags={"tuner.optimizer": "adamw", "tuner.worker_host": "h1", "tuner.device": "cpu"},
        )
        for step in range(10):
            recorder.log({METRIC: step / 10 + number, "lr": 0.1 / (step + 1)}, step=step)
        if outcome == "diverged":
            recorder.log({METRIC: math.nan, "loss": math.inf}, step=10)
        with pytest.raises(ValueError, match="outcome must be one of"):
            recorder.finish("exploded")
        recorder.finish(outcome)
    tracker.update_study(
        metrics={"best_value": 0.9, "n_complete": 1.0},
        tags={"tuner.best_trial": "0"},
        artifacts={"best_config.yaml": "optimizer: adamw\n", "plots/history.png": b"\x89PNG"},
        step=5,
    )
    assert tracker.close(120), tracker._flusher.last_error

    client = MlflowClient(backend.uri)
    runs = {r.info.run_name: r for r in children(client, experiment, parent)}
    assert sorted(runs) == [f"trial-{n}" for n in range(5)]
    expected_status = ["FINISHED", "FINISHED", "FAILED", "FAILED", "KILLED"]
    for number, (outcome, status) in enumerate(zip(outcomes, expected_status, strict=True)):
        run = runs[f"trial-{number}"]
        assert run.info.status == status, outcome
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["tuner.trial_number"] == str(number)
        assert run.data.tags["tuner.outcome"] == outcome
        assert run.data.tags["tuner.worker_host"] == "h1"
        assert float(run.data.tags["tuner.duration_s"]) >= 0
        assert run.data.params == {
            "optimizer": "adamw",
            "lr": repr(10.0**-number),
            "schedule.name": "cosine",
            "betas": "[0.9, 0.999]",
        }
        curve = history(client, run.info.run_id, METRIC)
        assert list(range(10)) == sorted(curve)[:10]
        assert curve[3] == pytest.approx(0.3 + number)
        assert sorted(history(client, run.info.run_id, "lr")) == list(range(10))
    diverged = runs["trial-3"].info.run_id
    assert math.isnan(history(client, diverged, METRIC)[10])
    assert history(client, diverged, "loss")[10] > 1e300

    parent_run = client.get_run(parent)
    assert parent_run.data.metrics == {"best_value": 0.9, "n_complete": 1.0}
    assert parent_run.data.tags["tuner.best_trial"] == "0"
    paths = {a.path for a in client.list_artifacts(parent)}
    assert {"study.yaml", "best_config.yaml", "plots"} <= paths
    assert [a.path for a in client.list_artifacts(parent, "plots")] == ["plots/history.png"]


def test_batches_respect_mlflow_limits(backend: Backend, experiment: str) -> None:
    tracker = MlflowTracker(backend.uri, experiment=experiment)
    parent = open_study(tracker, experiment)
    params = {f"p{i}": i for i in range(250)}  # > 100 params per log_batch
    tags = {f"tuner.t{i}": str(i) for i in range(130)}  # > 100 tags per log_batch
    recorder = tracker.start_trial(number=0, params=params, tags=tags)
    recorder.log({f"m{i}": float(i) for i in range(1500)}, step=0)  # > 1000 metrics per call
    for step in range(1, 1200):
        recorder.log({"loss": 1.0 / step}, step=step)
    recorder.finish("complete")
    assert tracker.close(120), tracker._flusher.last_error

    client = MlflowClient(backend.uri)
    (run,) = children(client, experiment, parent)
    assert len(run.data.params) == 250
    assert all(run.data.tags[f"tuner.t{i}"] == str(i) for i in range(130))
    assert len([k for k in run.data.metrics if k.startswith("m")]) == 1500
    assert sorted(history(client, run.info.run_id, "loss")) == list(range(1, 1200))


# -- an unreachable server -------------------------------------------------------------------


def test_server_down_mid_study_loses_nothing(
    server: MlflowServer, experiment: str, caplog: pytest.LogCaptureFixture
) -> None:
    # One stop/start cycle (a restart costs seconds) for two trackers: one that opened its
    # study before the outage, one that opens it during the outage.
    caplog.set_level(logging.WARNING, logger="tuner.tracking")
    server.start()
    before = MlflowTracker(server.url, experiment=experiment, max_backoff=2.0)
    parent = open_study(before, experiment)
    recorders = [before.start_trial(number=n, params={"lr": n}, tags={}) for n in range(2)]
    for recorder in recorders:
        for step in range(5):
            recorder.log({METRIC: step}, step=step)
    assert before.flush(60)
    late_experiment = experiment + "-late"
    try:
        server.stop()
        costs = []
        for recorder in recorders:
            for step in range(5, 10):
                t0 = time.perf_counter()
                recorder.log({METRIC: step}, step=step)
                costs.append(time.perf_counter() - t0)
            recorder.finish("complete")
        # Trials that start while the server is down are created later.
        for number in (2, 3):
            recorder = before.start_trial(number=number, params={"lr": number}, tags={})
            for step in range(10):
                t0 = time.perf_counter()
                recorder.log({METRIC: step}, step=step)
                costs.append(time.perf_counter() - t0)
            recorder.finish("pruned" if number == 2 else "failed")
        assert max(costs) < 0.5  # never waits on the dead server (its retries take seconds)
        assert before.flush(1.0) is False

        late = MlflowTracker(server.url, experiment=late_experiment, max_queued=50, max_backoff=1)
        t0 = time.monotonic()
        assert open_study(late, late_experiment) is None
        assert time.monotonic() - t0 < 10
        recorder = late.start_trial(number=0, params={"lr": 0.1}, tags={})
        for step in range(200):  # past the cap: metric points are dropped, nothing raises
            recorder.log({METRIC: step}, step=step)
        recorder.finish("complete")
        assert late.dropped_metrics > 0
        assert "dropping new metric points" in caplog.text
        assert late.flush(0.5) is False
    finally:
        server.start()
    assert before.close(120), before._flusher.last_error
    assert not late.close(120)  # it dropped points at the cap: not everything was delivered

    client = MlflowClient(server.url)
    runs = children(client, experiment, parent)
    names = sorted(r.info.run_name for r in runs)
    assert names == ["trial-0", "trial-1", "trial-2", "trial-3"]  # each trial exactly once
    status = {r.info.run_name: r.info.status for r in runs}
    assert status == {"trial-0": "FINISHED", "trial-1": "FINISHED", "trial-2": "FINISHED",
                      "trial-3": "FAILED"}  # fmt: skip
    for run in runs:
        assert history(client, run.info.run_id, METRIC) == {s: float(s) for s in range(10)}

    assert late.parent_run_id is not None
    (run,) = children(client, late_experiment, late.parent_run_id)
    assert run.info.run_name == "trial-0" and run.info.status == "FINISHED"
    curve = history(client, run.info.run_id, METRIC)
    assert 0 < len(curve) < 200 and sorted(curve) == list(range(len(curve)))


# -- tuner sync ------------------------------------------------------------------------------


def _untracked_study() -> optuna.Study:
    """A study run with tracking off: every outcome, plus one trial still running."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="sync-" + uuid.uuid4().hex[:6], direction="maximize")
    plan = [
        ("complete", optuna.trial.TrialState.COMPLETE, 5),
        ("pruned", optuna.trial.TrialState.PRUNED, 3),
        ("diverged", optuna.trial.TrialState.FAIL, 2),
        ("failed", optuna.trial.TrialState.FAIL, 1),
        ("interrupted", optuna.trial.TrialState.FAIL, 0),
    ]
    for outcome, state, reports in plan:
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.set_user_attr("tuner:config", {"optimizer": "adamw", "lr": lr,
                                             "schedule": {"name": "cosine"}})  # fmt: skip
        if outcome in ("diverged", "interrupted"):
            trial.set_user_attr("tuner:outcome", outcome)
        for step in range(reports):
            trial.report(math.nan if outcome == "diverged" else 0.1 * step, step)
        study.tell(trial, 0.99 if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    study.ask()  # still running: nothing final to sync
    return study


def test_sync_backfills_an_untracked_study_once(backend: Backend, experiment: str) -> None:
    study = _untracked_study()
    first = sync_study(study, backend.uri, experiment=experiment, metric=METRIC)
    assert (first.created, first.completed, first.already_ok, first.skipped) == (5, 0, 0, 1)
    assert study.user_attrs[ATTR.PARENT_RUN] == first.parent_run_id

    client = MlflowClient(backend.uri)
    runs = {r.info.run_name: r for r in children(client, experiment, first.parent_run_id)}
    assert sorted(runs) == [f"trial-{n}" for n in range(5)]
    status = {name: (r.info.status, r.data.tags["tuner.outcome"]) for name, r in runs.items()}
    assert status == {
        "trial-0": ("FINISHED", "complete"),
        "trial-1": ("FINISHED", "pruned"),
        "trial-2": ("FAILED", "diverged"),
        "trial-3": ("FAILED", "failed"),
        "trial-4": ("KILLED", "interrupted"),
    }
    complete = runs["trial-0"]
    assert complete.data.params["optimizer"] == "adamw"
    assert complete.data.params["schedule.name"] == "cosine"
    assert complete.data.params["lr"] == repr(study.trials[0].params["lr"])
    # Every intermediate value at its step, then the objective's value closing the curve.
    curve = history(client, complete.info.run_id, METRIC)
    assert curve == {**{s: pytest.approx(0.1 * s) for s in range(5)}, 5: 0.99}
    assert sorted(history(client, runs["trial-1"].info.run_id, METRIC)) == [0, 1, 2]
    assert all(math.isnan(v) for v in history(client, runs["trial-2"].info.run_id, METRIC).values())

    second = sync_study(study, backend.uri, experiment=experiment, metric=METRIC)
    assert (second.created, second.completed, second.already_ok) == (0, 0, 5)
    assert second.parent_run_id == first.parent_run_id
    assert len(children(client, experiment, first.parent_run_id)) == 5
    exp = client.get_experiment_by_name(experiment)
    assert len(client.search_runs([exp.experiment_id])) == 6  # one parent, five trials


def test_sync_completes_what_the_tracker_could_not_deliver(
    backend: Backend, experiment: str
) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=experiment)
    tracker = MlflowTracker(backend.uri, experiment=experiment)
    parent = open_study(tracker, experiment)
    study.set_user_attr(ATTR.PARENT_RUN, parent)
    for number, delivered in enumerate((5, 2)):  # trial 1 lost its last reports and its end
        trial = study.ask()
        config = {"optimizer": "sgd", "lr": 0.01 * (number + 1)}
        trial.set_user_attr("tuner:config", config)
        recorder = tracker.start_trial(number=trial.number, params=config, tags={})
        for step in range(5):
            trial.report(float(step), step)
            if step < delivered:
                recorder.log({METRIC: float(step)}, step=step)
        if delivered == 5:
            recorder.finish("complete")
        study.tell(trial, 4.0)
    assert tracker.close(60)

    report = sync_study(study, backend.uri, experiment=experiment, metric=METRIC)
    assert (report.created, report.completed, report.already_ok) == (0, 1, 1)
    client = MlflowClient(backend.uri)
    runs = {r.info.run_name: r for r in children(client, experiment, parent)}
    assert sorted(runs) == ["trial-0", "trial-1"]
    assert runs["trial-1"].info.status == "FINISHED"
    assert runs["trial-1"].data.tags["tuner.outcome"] == "complete"
    assert history(client, runs["trial-1"].info.run_id, METRIC) == {s: float(s) for s in range(5)}
    again = sync_study(study, backend.uri, experiment=experiment, metric=METRIC)
    assert (again.created, again.completed, again.already_ok) == (0, 0, 2)


# -- secrets ---------------------------------------------------------------------------------


SECRET = "s3cr3t-Pa55"


def test_a_password_in_a_url_never_reaches_mlflow(
    backend: Backend,
    experiment: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG, logger="tuner")
    storage = f"postgresql+psycopg://tuner:{SECRET}@db:5432/tuner"
    # A server URL may carry credentials too (MLflow prints run URLs with it unless avoided).
    uri = backend.uri.replace("http://", f"http://tuner:{SECRET}@")
    tracker = MlflowTracker(uri, experiment=experiment)
    parent = tracker.open_study(
        study_name=experiment,
        experiment=experiment,
        study_yaml_text=f"name: x\nstorage: {storage}\n",
        tags={"tuner.db.storage": storage},
        existing_parent_run_id=None,
    )
    recorder = tracker.start_trial(
        number=0,
        params={"data": {"url": f"https://reader:{SECRET}@data.example/digits"}},
        tags={"tuner.note": f"from {storage}"},
    )
    recorder.log({METRIC: 0.5}, step=0)
    recorder.finish("complete", tags={"tuner.worker": storage})
    tracker.update_study(
        metrics={"best_value": 0.5},
        tags={"tuner.storage_url": storage},
        artifacts={"best_config.yaml": f"# from {storage}\noptimizer: sgd\n"},
    )
    assert tracker.close(60)

    client = MlflowClient(backend.uri)
    (run,) = children(client, experiment, parent)
    assert run.data.params["data.url"] == "https://reader:***@data.example/digits"
    assert client.get_run(parent).data.tags["tuner.db.storage"].endswith("tuner:***@db:5432/tuner")
    # Every byte the backend wrote: its database and its artifact store.
    for path in backend.files.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text
    out, err = capfd.readouterr()
    assert SECRET not in out + err


def test_unreachable_tracking_url_is_redacted_in_log_lines(
    experiment: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tuner")
    tracker = MlflowTracker(
        f"http://user:{SECRET}@127.0.0.1:{free_port()}", experiment=experiment, max_backoff=0.2
    )
    assert open_study(tracker, experiment) is None
    tracker.start_trial(number=0, params={}, tags={}).finish("failed")
    assert tracker.flush(1.0) is False
    tracker.close(timeout=0.5)
    assert "unreachable" in caplog.text and "user:***@127.0.0.1" in caplog.text
    assert SECRET not in caplog.text
