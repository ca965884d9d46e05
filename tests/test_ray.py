"""``workers.backend: ray`` against a real local Ray cluster (CPU only), with real signals.

One cluster serves the module (3 logical CPUs); ``tuner launch`` runs as a subprocess that joins
it through ``RAY_ADDRESS``, as a user's launch joins theirs. Ray's state API tells which actors
ran the trials and that none outlives its launch. The last test adds a second node.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from tests.conftest import study_reader
from tests.test_supervisor import HANGS as LOCAL_HANGS

ray = pytest.importorskip("ray", reason="needs Ray: pip install 'tuner[ray]'")
pytestmark = pytest.mark.slow

# A trial reports once, then sleeps (long where a test needs a trial that is still running).
SLEEPS = textwrap.dedent(
    """
    import time

    def objective(trial):
        trial.report(1.0, step=0)
        time.sleep({sleep})
        return 1.0 / (trial.number + 1)
    """
)
LONG_TRIAL_1 = textwrap.dedent(
    """
    import time

    def objective(trial):
        trial.report(1.0, step=0)
        if trial.number == 1:
            time.sleep(600)
        return 1.0 / (trial.number + 1)
    """
)
# The first `parties` trials wait for each other: they run at once, on as many actors.
TOGETHER = textwrap.dedent(
    """
    import os, time

    def objective(trial):
        trial.report(1.0, step=0)
        print(f"trial {trial.number} at the barrier")
        barrier = trial.params["barrier"]
        open(os.path.join(barrier, str(trial.number)), "w").close()
        give_up = time.monotonic() + 120
        while len(os.listdir(barrier)) < trial.params["parties"] and time.monotonic() < give_up:
            time.sleep(0.05)
        return 1.0 / (trial.number + 1)
    """
)
# A trial reports, then waits for the test to create the release file.
RELEASED = textwrap.dedent(
    """
    import os, time

    def objective(trial):
        trial.report(1.0, step=0)
        give_up = time.monotonic() + 120
        while not os.path.exists(trial.params["release"]) and time.monotonic() < give_up:
            time.sleep(0.05)
        return 1.0 / (trial.number + 1)
    """
)
# Trial 0 hangs and the worker's own watchdog interrupts it; trial 1 is deaf to that, and launch
# kills its worker (here: its Ray actor).
HANGS = LOCAL_HANGS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A one-node Ray cluster with 3 CPUs; this process is connected to it (state API)."""
    from ray.cluster_utils import Cluster

    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a throwaway cluster; launch inherits the mode
    head = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 3, "dashboard_port": _free_port(), "include_dashboard": True},
    )
    try:
        ray.init(address=head.address, logging_level=logging.ERROR, log_to_driver=False)
        yield head
    finally:
        ray.shutdown()
        head.shutdown()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


def launch_env(cluster: Any) -> dict[str, str]:
    return {**os.environ, "RAY_ADDRESS": cluster.address}


def run_launch(path: Path, cluster: Any, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuner", "launch", str(path)], cwd=path.parent,
        env=launch_env(cluster), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def start_launch(path: Path, cluster: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tuner", "launch", str(path)], cwd=path.parent,
        env=launch_env(cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def ray_study(make_study: Any, source: str, **fields: Any) -> Path:
    workers = {"backend": "ray", "count": 1, **fields.pop("workers", {})}
    return make_study(source, workers=workers, **fields)


def reader(url: str) -> optuna.storages.RDBStorage:
    """A storage for this process's reads of a study that launch writes: every call opens its
    own connection and closes it (no pool, no tables created). ``optuna.load_study(url)``
    builds an engine whose pooled connection stays open until a garbage collection: polling
    five times a second for the minutes a loaded machine takes held more connections than
    PostgreSQL's ``max_connections`` ("too many clients already" in a CI run)."""
    return optuna.storages.RDBStorage(
        url, engine_kwargs={"poolclass": NullPool}, skip_compatibility_check=True,
        skip_table_creation=True,
    )  # fmt: skip


def load(path: Path) -> optuna.Study:
    return load_url(yaml.safe_load(path.read_text())["storage"])


def load_url(url: str) -> optuna.Study:
    return optuna.load_study(study_name="test-study", storage=reader(url))


def connections_to(url: str, timeout: float = 20.0) -> int:
    """How many connections the database of ``url`` has once ``timeout`` passed (or none)."""
    import psycopg

    from tests.pgutil import ADMIN_URL

    admin = ADMIN_URL.replace("postgresql+psycopg://", "postgresql://", 1)
    give_up = time.monotonic() + timeout
    while True:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            (count,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                (make_url(url).database,),
            ).fetchone()
        if count == 0 or time.monotonic() > give_up:
            return count
        time.sleep(0.5)


def wait_for_study(
    url: str,
    ready: Any,
    *,
    timeout: float = 120.0,
    launch: subprocess.Popen[str] | None = None,
) -> optuna.Study:
    """Poll the study that launch writes (one :func:`reader`) until ``ready(study)``.

    With ``launch`` (its process), a launch that exits first, or one still running at the
    timeout, fails the test with what launch printed: the reason is in its output, not here.
    """
    storage = None
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        time.sleep(0.2)
        if launch is not None and launch.poll() is not None:
            raise AssertionError(f"launch exited ({launch.returncode}) first:\n{_output(launch)}")
        storage = storage or study_reader(url)  # once launch has made the whole schema
        if storage is None:
            continue
        try:
            study = optuna.load_study(study_name="test-study", storage=storage)
        except (KeyError, optuna.exceptions.StorageInternalError, SQLAlchemyError):
            continue  # launch has not created the study (or its tables) yet
        if ready(study):
            return study
    said = f"; launch said:\n{_output(launch)}" if launch is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for the study{said}")


def _output(launch: subprocess.Popen[str]) -> str:
    if launch.poll() is None:
        launch.kill()
    _, err = launch.communicate(timeout=30)
    return err


def states(study: optuna.Study) -> dict[TrialState, int]:
    counts: dict[TrialState, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


def pid_of(trial: optuna.trial.FrozenTrial) -> int:
    return int(trial.user_attrs["tuner:worker"].rsplit("/", 1)[1])


def actors(class_name: str, state: str | None = None) -> list[Any]:
    """Every actor of the test cluster of ``class_name`` (alive and dead), per Ray's state API."""
    from ray.util.state import list_actors

    filters: list[Any] = [("class_name", "=", class_name)]
    if state is not None:
        filters.append(("state", "=", state))
    address = ray.get_runtime_context().gcs_address  # not another cluster on this machine
    return list_actors(
        address=address, filters=filters, limit=10_000, raise_on_missing_output=False
    )


def alive_tuner_actors(timeout: float = 20.0) -> list[Any]:
    """The tuner actors still alive once ``timeout`` passed (Ray reports deaths quickly)."""
    deadline = time.monotonic() + timeout
    while True:
        left = actors("TunerWorker", "ALIVE") + actors("TunerEvents", "ALIVE")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def running_in_objective(number: int) -> Any:
    """Ready once trial ``number`` runs and has reported (it is inside the objective)."""

    def ready(study: optuna.Study) -> bool:
        trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
        return (
            trial is not None
            and trial.state == TrialState.RUNNING
            and bool(trial.intermediate_values)
            and "tuner:worker" in trial.user_attrs
        )

    return ready


# --- the budget, the actors, MLflow -----------------------------------------------------------


def test_three_actors_finish_exactly_the_budget_and_mlflow_gets_every_run(
    cluster, make_study, tmp_path
):
    (tmp_path / "barrier").mkdir()
    path = ray_study(
        make_study, TOGETHER, budget={"trials": 6, "epochs": 1}, workers={"count": 3},
        params={"barrier": str(tmp_path / "barrier"), "parties": 3},
        mlflow={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )  # fmt: skip
    proc = run_launch(path, cluster)
    assert proc.returncode == 0, proc.stderr
    assert "workers: 3 Ray actors, 1 CPU each | Ray cluster" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "done: the budget is spent (6 of 6 trials finished)"
    )
    assert "[6/6] trial" in proc.stderr and "finished trials   6 of 6" in proc.stdout
    # What the objective prints on an actor is shown by launch, as a local worker's output.
    assert re.search(r"^\[worker [123]\] trial 5 at the barrier$", proc.stderr, re.M)
    study = load(path)
    assert states(study) == {TrialState.COMPLETE: 6}
    # Every trial ran in a TunerWorker actor's process, and the work was shared.
    actor_pids = {a.pid for a in actors("TunerWorker")}
    trial_pids = {pid_of(t) for t in study.trials}
    assert trial_pids <= actor_pids, (trial_pids, actor_pids)
    assert len(trial_pids) == 3
    assert alive_tuner_actors() == []

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("test-study")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == [f"trial-{n}" for n in range(6)]
    assert {r.info.status for r in children} == {"FINISHED"}
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert run.data.metrics["loss"] == 1.0  # the report at step 0, relayed by the actor
        assert int(run.data.tags["tuner.trial_number"]) in range(6)


# --- supervision: a dead actor, a hung trial, stopping launch -----------------------------


def test_sigkill_of_an_actor_mid_trial_costs_that_trial_and_its_replacement_finishes(
    cluster, make_study
):
    path = ray_study(make_study, LONG_TRIAL_1, budget={"trials": 3, "epochs": 1})
    proc = start_launch(path, cluster)
    try:
        study = wait_for_study(
            yaml.safe_load(path.read_text())["storage"], running_in_objective(1), timeout=120,
            launch=proc,
        )  # fmt: skip
        victim = pid_of(next(t for t in study.trials if t.number == 1))
        assert victim in {a.pid for a in actors("TunerWorker", "ALIVE")}
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    study = load(path)
    assert states(study) == {TrialState.COMPLETE: 3, TrialState.FAIL: 1}  # nothing RUNNING
    (lost,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert lost.number == 1 and lost.user_attrs["tuner:outcome"] == "failed"
    assert lost.user_attrs["tuner:reason"].startswith(
        "its Ray actor died during trial 1: its worker process has died"
    )
    assert "trial 1 failed: its Ray actor died during trial 1" in err
    # The replacement, another actor, ran the rest of the budget.
    after = [t for t in study.trials if t.number > 1]
    assert after and {pid_of(t) for t in after} <= {a.pid for a in actors("TunerWorker")}
    assert victim not in {pid_of(t) for t in after}
    assert "done: the budget is spent (3 of 3 trials finished, 1 failed)" in err
    assert alive_tuner_actors() == []


def test_trial_timeout_stops_a_hung_trial_on_an_actor(cluster, make_study):
    path = ray_study(make_study, HANGS, budget={"trials": 2, "trial_timeout": "2s", "epochs": 1})
    # Two actors start one after the other (each imports torch): minutes on a loaded machine.
    proc = run_launch(path, cluster, timeout=300)
    assert proc.returncode == 0, proc.stderr
    study = load(path)
    assert states(study) == {TrialState.COMPLETE: 2, TrialState.FAIL: 2}
    first, second = study.trials[0], study.trials[1]
    # Trial 0: the actor's own watchdog stopped it; trial 1 blocked that, so launch killed
    # its actor, and a new one finished the budget.
    assert first.user_attrs["tuner:reason"] == "timed out after 2s (budget.trial_timeout)"
    assert second.user_attrs["tuner:reason"] == (
        "timed out after 2s (budget.trial_timeout); its worker did not stop it and its Ray "
        "actor was killed"
    )
    assert pid_of(first) == pid_of(second) != pid_of(study.trials[2])
    assert "done: the budget is spent" in proc.stderr.strip().splitlines()[-1]


def test_sigterm_to_launch_stops_every_actor_and_queues_their_trials(cluster, make_study):
    path = ray_study(
        make_study, SLEEPS.format(sleep=600), budget={"trials": 4, "epochs": 1},
        workers={"count": 2},
    )  # fmt: skip
    storage = yaml.safe_load(path.read_text())["storage"]
    proc = start_launch(path, cluster)
    try:
        wait_for_study(
            storage, lambda s: running_in_objective(0)(s) and running_in_objective(1)(s),
            timeout=120, launch=proc,
        )  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err.strip().splitlines()[-1]
    study = load(path)
    assert states(study) == {TrialState.FAIL: 2, TrialState.WAITING: 2}  # nothing RUNNING
    for t in study.trials[:2]:
        assert t.user_attrs["tuner:outcome"] == "interrupted"
    assert alive_tuner_actors() == []


# --- what a cluster may not run ---------------------------------------------------------------


def test_count_is_required_on_a_cluster_without_gpus(cluster, make_study, tmp_path):
    path = make_study(workers={"backend": "ray"})
    proc = run_launch(path, cluster, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert (
        "error: workers.count: is required on a Ray cluster without GPUs (it defaults to GPUs "
        "x per_device), but the study file does not set it (cluster: 1 node, 3 CPUs, 0 GPUs)"
    ) in proc.stderr
    assert "hint: set workers.count, e.g. `count: 3` (one CPU each)" in proc.stderr
    assert not (tmp_path / "study.db").exists()  # nothing written before the check


@pytest.mark.postgres
def test_two_nodes_refuse_sqlite_share_postgresql_and_survive_a_lost_node(
    cluster, make_study, tmp_path, fresh_postgres_url
):
    node = cluster.add_node(num_cpus=1)
    removed = False
    try:
        cluster.wait_for_nodes()
        path = ray_study(make_study, SLEEPS.format(sleep=0), workers={"count": 4})
        proc = run_launch(path, cluster, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert (
            "error: storage: SQLite cannot be shared by the nodes of a Ray cluster (its file "
            "locks hold on one machine only), but the cluster has 2 nodes, 4 CPUs, 0 GPUs"
        ) in proc.stderr
        assert "hint: use PostgreSQL" in proc.stderr
        assert not (tmp_path / "study.db").exists()

        # PostgreSQL, 4 actors (3 CPUs here, 1 on the second node): the first 4 trials wait for
        # a release file, so all four run at once, on both nodes. The server trusts local
        # connections: the password is never checked, only carried (from the environment to
        # every actor) and never shown.
        password = "Zq8-not-shown"
        url = make_url(fresh_postgres_url).set(password=password)
        release = tmp_path / "release"
        path = ray_study(
            make_study, RELEASED, storage="${TUNER_TEST_STORAGE}",
            budget={"trials": 4, "epochs": 1}, workers={"count": 4},
            params={"release": str(release)},
        )  # fmt: skip
        env = {**launch_env(cluster), "TUNER_TEST_STORAGE": url.render_as_string(False)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuner", "launch", str(path)], cwd=path.parent, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            running = wait_for_study(
                fresh_postgres_url, lambda s: all(running_in_objective(n)(s) for n in range(4)),
                timeout=120, launch=proc,
            )  # fmt: skip
            node_of = {a.pid: a.node_id for a in actors("TunerWorker", "ALIVE")}
            on_node = {t.number: node_of[pid_of(t)] for t in running.trials}
            assert set(on_node.values()) == {cluster.head_node.node_id, node.node_id}
            (lost,) = [n for n, where in on_node.items() if where == node.node_id]
            cluster.remove_node(node)  # its raylet and its worker processes die
            removed = True
            release.touch()
            out, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == 0, out + err
        assert password not in out + err
        # Nothing launch started keeps a connection to the study's database once it returned,
        # and this process's reads hold none between calls.
        assert connections_to(fresh_postgres_url) == 0
        study = load_url(fresh_postgres_url)
        assert states(study) == {TrialState.COMPLETE: 4, TrialState.FAIL: 1}  # nothing RUNNING
        (failed,) = [t for t in study.trials if t.state == TrialState.FAIL]
        assert failed.number == lost
        assert failed.user_attrs["tuner:reason"].startswith(
            f"its Ray actor died during trial {lost}: "
        )
    finally:
        if not removed:
            cluster.remove_node(node)


@pytest.mark.parametrize("via", ["address", "RAY_ADDRESS"])
def test_an_address_where_nothing_answers_is_an_error_at_once(via, make_study, tmp_path):
    port = _free_port()  # closed again: nothing listens there
    workers = {"backend": "ray", "count": 2}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if via == "address":
        workers["address"] = f"127.0.0.1:{port}"
    else:
        env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    path = make_study(workers=workers)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", "launch", str(path)], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    shown = f"'127.0.0.1:{port}'" + (" (RAY_ADDRESS)" if via == "RAY_ADDRESS" else "")
    assert f"error: workers.address: nothing answers at {shown} (connection refused)" in (
        proc.stderr
    )
    assert "hint: start a cluster with `ray start --head`, or set RAY_ADDRESS" in proc.stderr
    assert time.monotonic() - started < 60  # not ray.init's minutes of retries
    assert not (tmp_path / "study.db").exists()


@pytest.mark.postgres
def test_a_gpu_cluster_gives_each_actor_a_gpu_share_and_count_defaults_to_gpus(
    cluster, make_study, fresh_postgres_url
):
    # A node that declares 2 GPUs (Ray schedules by declared resources) on a machine whose torch
    # has no CUDA: placement and the default count are Ray's and launch's; the actors then
    # refuse to train on a GPU they cannot use, with a clear error.
    node = cluster.add_node(num_cpus=0, num_gpus=2)
    try:
        cluster.wait_for_nodes()
        path = ray_study(
            make_study, SLEEPS.format(sleep=0), storage=fresh_postgres_url,
            workers={"count": None, "per_device": 2},
        )  # fmt: skip
        proc = run_launch(path, cluster, timeout=120)
        assert "workers: 4 Ray actors, 1/2 GPU each | Ray cluster" in proc.stderr
        assert "2 nodes, 3 CPUs, 2 GPUs" in proc.stderr
        assert proc.returncode == 2, proc.stderr
        assert re.search(
            r"error: a worker could not start: Ray gave this worker GPU [01] on \S+, but torch "
            r"there sees no CUDA device",
            proc.stderr,
        ), proc.stderr
        gpu_node = {a.pid: a.node_id for a in actors("TunerWorker")}
        assert set(gpu_node.values()) & {node.node_id}  # the actors went to the GPU node
    finally:
        cluster.remove_node(node)
