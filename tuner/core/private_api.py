"""The one module that touches Optuna's and MLflow's private names (docs/architecture.md).

Each function here is one private use: why no public API does the job (or what the public one
costs), and what tuner does when the installed library no longer has it. Every other module
calls these functions and never spells a private name of Optuna or MLflow.
``tests/test_private_api.py`` pins each one against the installed Optuna and MLflow, so an
upgrade that changes them fails there, by name, rather than somewhere in a study.

>>> study = optuna.create_study()
>>> trial = study.ask()
>>> trial_id(trial) == trial_id(study.trials[0])
True
>>> rdb_storage(study) is None  # in-memory: none of the SQL below applies
True
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "RETRIED_PRIVATE_METHODS",
    "RetriedPrivateMethods",
    "mlflow_run_store",
    "optuna_stale_trial_ids",
    "optuna_tables",
    "private_tell",
    "rdb_storage",
    "remember_user_attrs",
    "state_of",
    "study_id",
    "study_storage",
    "trial_id",
]


# --- Optuna: the handles of a study and a trial ---------------------------------------------


def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage object ``study`` reads and writes through.

    ``Study`` keeps it in ``_storage`` and has no public accessor; tuner needs the object
    itself (its engine for counting in SQL, its heartbeat calls), not a new one opened from
    the URL, which would be a second connection pool per study.
    """
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's row id in Optuna's tables (``Study._study_id``; no public accessor), which
    the SQL counts below filter on."""
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The trial's row id (``_trial_id``): the key of every storage call about one trial
    (``record_heartbeat``, ``check_trial_is_updatable``). Optuna exposes only ``number``, and
    mapping it back costs a query per call."""
    return trial._trial_id


def rdb_storage(study: optuna.Study) -> RDBStorage | None:
    """The study's ``RDBStorage``, or None for any other storage.

    ``optuna.load_study`` and ``create_study`` wrap an RDB storage in a private cache
    (``_CachedStorage``, holding it in ``_backend``); tuner's SQL needs the storage's engine.
    """
    storage = study_storage(study)
    inner = getattr(storage, "_backend", storage)
    return inner if isinstance(inner, RDBStorage) else None


def remember_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Make ``trial.user_attrs`` show ``attrs`` written by tuner's own one-commit upsert.

    ``Trial.user_attrs`` reads a per-trial cache (``_cached_frozen_trial``) that only
    ``Trial.set_user_attr`` keeps current (one commit per key, which tuner avoids). Without the
    cache attribute nothing is stale and there is nothing to do.
    """
    cached = getattr(trial, "_cached_frozen_trial", None)
    if cached is not None:
        cached.user_attrs.update(attrs)


def private_tell() -> Callable[..., Any] | None:
    """Optuna's internal tell, what ``Study.tell`` and ``Study.optimize`` call, if it has the
    signature tuner calls it with; else None, and callers use the public ``Study.tell``.

    ``Study.tell`` reads the finished trial back to return it: a query per trial that nobody
    uses (``benchmarks/overhead.py`` counts it); ``Study.optimize`` calls this function too.
    """
    try:
        from optuna.study._tell import _tell_with_warning
    except ImportError:  # another Optuna layout: the public tell
        return None
    wanted = {"study", "trial", "value_or_values", "state"}
    found = set(inspect.signature(_tell_with_warning).parameters)
    return _tell_with_warning if wanted <= found else None


# --- Optuna's tables ------------------------------------------------------------------------


def optuna_tables() -> tuple[sqlalchemy.Table, sqlalchemy.Table, sqlalchemy.Table]:
    """Optuna's ``trials``, ``trial_user_attributes`` and ``trial_heartbeats`` tables.

    tuner counts trials by state and outcome in SQL (a budget check per trial, flat as the
    study grows), writes several user attributes and a heartbeat in one commit, and finds
    RUNNING trials that never beat. Optuna's public API loads every trial for the first and
    commits once per attribute for the second; its table models are the schema Optuna itself
    migrates (``optuna storage upgrade``), so they are read from there, not restated.
    """
    from optuna.storages._rdb import models

    return (
        models.TrialModel.__table__,
        models.TrialUserAttributeModel.__table__,
        models.TrialHeartbeatModel.__table__,
    )


def optuna_stale_trial_ids(storage: RDBStorage, study_id: int) -> list[int]:
    """Optuna's own stale-trial query (``RDBStorage._get_stale_trial_ids``), which
    ``optuna.storages.fail_stale_trials`` calls; tuner's storage extends it with trials that
    never recorded a heartbeat (:mod:`tuner.db.storage`)."""
    return RDBStorage._get_stale_trial_ids(storage, study_id)


class RetriedPrivateMethods:
    """RDBStorage's private methods that ``Study`` and ``Trial`` call directly, retried.

    ``Study.ask``, ``Trial.suggest_*`` and ``Study.best_trial`` go through these private methods
    rather than the public ones, so a storage that retries transient errors (a PostgreSQL
    restart) must override them too. Mixed into :class:`tuner.db.storage.RetryingRDBStorage`,
    which provides ``_retry(method, *args, **kwargs)``; a name Optuna drops is simply never
    called, and ``tests/test_private_api.py`` says so.
    """

    _retry: Callable[..., Any]

    def _create_new_trial(self, *args: Any, **kwargs: Any) -> FrozenTrial:
        return self._retry(RDBStorage._create_new_trial, *args, **kwargs)

    def _set_trial_param(self, *args: Any, **kwargs: Any) -> None:
        return self._retry(RDBStorage._set_trial_param, *args, **kwargs)

    def _get_trials(self, *args: Any, **kwargs: Any) -> list[FrozenTrial]:
        return self._retry(RDBStorage._get_trials, *args, **kwargs)

    def _get_best_trial_id(self, *args: Any, **kwargs: Any) -> int:
        return self._retry(RDBStorage._get_best_trial_id, *args, **kwargs)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # What optuna.storages.fail_stale_trials asks; the subclass says which trials are stale.
        return self._retry(lambda storage: self.stale_trial_ids(storage, study_id))

    def stale_trial_ids(self, storage: RDBStorage, study_id: int) -> list[int]:
        return optuna_stale_trial_ids(storage, study_id)


#: The private RDBStorage methods :class:`RetriedPrivateMethods` overrides.
RETRIED_PRIVATE_METHODS = (
    "_create_new_trial",
    "_set_trial_param",
    "_get_trials",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
)


def state_of(value: Any) -> TrialState:
    """A ``trials.state`` column value (an enum name, as Optuna stores it) as a TrialState."""
    return TrialState[str(value).split(".")[-1]]


# --- MLflow ----------------------------------------------------------------------------------


def mlflow_run_store(client: Any) -> Any | None:
    """The tracking store behind an ``MlflowClient`` (``client._tracking_client.store``), or
    None when this MLflow keeps it elsewhere.

    ``MlflowClient.set_terminated``, the public way to end a run, fetches the run once more
    and prints "View run ... at <tracking URI>" for every run on a server (unless an
    environment variable a library user may not have set says not to), and ``update_run``
    leaves no end time. The store's ``update_run_info`` is the same write without either;
    callers fall back to ``set_terminated`` when this returns None.
    """
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    return store if store is not None and hasattr(store, "update_run_info") else None
