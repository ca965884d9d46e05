"""Each private name of Optuna and MLflow that tuner uses (tuner/core/private_api.py), pinned
against the installed libraries: an upgrade that moves or changes one fails here, by name.

Real parts: an SQLite study file, Optuna's own RDBStorage and a file-backed MLflow store.
"""

from __future__ import annotations

import ast
import inspect
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from tuner.core import private_api
from tuner.db.storage import RetryingRDBStorage, open_storage
from tuner.db.trialdb import budget_counts, count_outcome, count_states, set_user_attrs

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    return optuna.create_study(study_name="pinned", storage=storage)


def test_study_and_trial_handles(study: optuna.Study) -> None:
    trial = study.ask()
    storage = private_api.study_storage(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    sid = private_api.study_id(study)
    assert sid == storage.get_study_id_from_name("pinned")
    tid = private_api.trial_id(trial)
    assert tid == storage.get_trial_id_from_study_id_trial_number(sid, trial.number)
    assert private_api.trial_id(study.trials[0]) == tid


def test_rdb_storage_unwraps_optunas_cache(study: optuna.Study) -> None:
    # create_study wraps an RDB storage in its cache; tuner needs the storage with the engine.
    inner = private_api.rdb_storage(study)
    assert isinstance(inner, RetryingRDBStorage)
    assert private_api.study_storage(study) is not inner, "Optuna no longer wraps RDBStorage"
    assert private_api.rdb_storage(optuna.create_study()) is None


def test_remember_user_attrs_updates_what_trial_user_attrs_reads(study: optuna.Study) -> None:
    trial = study.ask()
    assert hasattr(trial, "_cached_frozen_trial"), "Optuna's Trial lost its per-trial cache"
    set_user_attrs(trial, {"tuner:device": "cpu"})  # one upsert, then the cache
    assert trial.user_attrs["tuner:device"] == "cpu"
    assert study.trials[0].user_attrs["tuner:device"] == "cpu"  # and it is in the database


def test_private_tell_is_found_and_finishes_the_trial(study: optuna.Study) -> None:
    tell = private_api.private_tell()
    assert tell is not None, "optuna.study._tell._tell_with_warning is gone or changed"
    trial = study.ask()
    tell(study=study, trial=trial, value_or_values=0.5, state=None)
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == 0.5


def test_optuna_tables_have_the_columns_tuner_reads() -> None:
    trials, attributes, heartbeats = private_api.optuna_tables()
    assert (trials.name, attributes.name, heartbeats.name) == (
        "trials",
        "trial_user_attributes",
        "trial_heartbeats",
    )
    assert {"trial_id", "study_id", "state", "datetime_start"} <= set(trials.c.keys())
    assert {"trial_id", "key", "value_json"} <= set(attributes.c.keys())
    assert {"trial_id", "heartbeat"} <= set(heartbeats.c.keys())


def test_the_counts_in_sql_agree_with_optunas_trials(study: optuna.Study) -> None:
    for value in (1.0, 2.0):
        study.tell(study.ask(), value)
    failed = study.ask()
    set_user_attrs(failed, {"tuner:outcome": "failed"})
    study.tell(failed, state=TrialState.FAIL)
    study.ask()  # running
    counts = {TrialState.COMPLETE: 2, TrialState.FAIL: 1, TrialState.RUNNING: 1}
    assert count_states(study) == counts
    assert count_outcome(study, "failed") == 1
    assert budget_counts(study) == (counts, 1)


def test_the_retried_private_methods_exist_on_rdbstorage() -> None:
    # Study.ask, Trial.suggest_* and Study.best_trial call these directly; a name Optuna drops
    # would leave an override that nothing calls, and a retry that never happens.
    for name in private_api.RETRIED_PRIVATE_METHODS:
        assert callable(getattr(RDBStorage, name, None)), f"RDBStorage.{name} is gone"
        assert getattr(RetryingRDBStorage, name) is not getattr(RDBStorage, name)
    params = inspect.signature(RDBStorage._get_stale_trial_ids).parameters
    assert list(params) == ["self", "study_id"]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_stale_trial_ids_are_optunas_own(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'beats.db'}"
    storage = RDBStorage(url, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="beats", storage=storage)
    trial = study.ask()
    storage.record_heartbeat(private_api.trial_id(trial))
    sid = private_api.study_id(study)
    assert private_api.optuna_stale_trial_ids(storage, sid) == []
    time.sleep(2.2)
    assert private_api.optuna_stale_trial_ids(storage, sid) == [private_api.trial_id(trial)]


def test_mlflow_run_store_ends_a_run(tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    store = private_api.mlflow_run_store(client)
    assert store is not None, "MlflowClient._tracking_client.store.update_run_info is gone"
    experiment = client.create_experiment("pinned")
    run = client.create_run(experiment)
    store.update_run_info(
        run.info.run_id, run_status=RunStatus.FINISHED, end_time=123, run_name=None
    )
    info = client.get_run(run.info.run_id).info
    assert (info.status, info.end_time) == ("FINISHED", 123)
    assert private_api.mlflow_run_store(object()) is None  # the fallback's trigger


# The private attributes and modules tuner uses (the functions above); any other module that
# spells one is a private use outside tuner/core/private_api.py.
PRIVATE_ATTRIBUTES = {
    "_storage",
    "_study_id",
    "_trial_id",
    "_backend",
    "_cached_frozen_trial",
    "_tracking_client",
    "_tell_with_warning",
    *private_api.RETRIED_PRIVATE_METHODS,
}


def test_no_other_module_touches_optunas_or_mlflows_private_names() -> None:
    package = Path(private_api.__file__).resolve().parents[1]
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "private_api.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            name = None
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
                name = node.attr
            elif isinstance(node, ast.ImportFrom) and node.module:
                root, *rest = node.module.split(".")
                if root in ("optuna", "mlflow") and any(p.startswith("_") for p in rest):
                    name = node.module
            if name is not None:
                found.append(f"{path.relative_to(package)}:{node.lineno}: {name}")
    assert not found, "use tuner.core.private_api instead:\n" + "\n".join(found)
