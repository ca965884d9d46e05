"""Shared fixtures: a study-file factory over a tmp dir with small, real torch objectives."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import yaml
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from tests.pgutil import fresh_postgres_url  # noqa: F401 - a fixture for every test module

REPO = Path(__file__).resolve().parents[1]

# Least squares on 64 random points: real torch training, a few milliseconds per trial.
REGRESSION = textwrap.dedent(
    """
    import torch
    import tuner

    def objective(trial):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        y = x @ torch.tensor([1.0, -2.0, 3.0, 0.5]) + 0.1
        model = torch.nn.Linear(4, 1)
        steps = 10
        optimizer, scheduler = trial.build_optimizer(
            model.parameters(), total_steps=trial.max_epochs * steps
        )
        loss = None
        for epoch in range(trial.max_epochs):
            for _ in range(steps):
                loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
            trial.report(loss.item(), step=epoch)
        return loss.item()
    """
)

# The pre-search phase (range test, portfolio) is off here: these studies test other things;
# tests/test_search.py turns it on.
SMALL_SEARCH: dict[str, Any] = {
    "optimizers": {"adam": {}, "sgd": {}},
    "schedules": ["constant", "cosine"],
    "lr_range_test": "off",
    "portfolio": False,
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


@pytest.fixture
def make_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Write ``study.yaml`` plus ``obj.py`` (``source``) into a fresh dir (also the cwd).

    Keyword arguments are merged into the study document (None removes a key, an empty
    mapping replaces one). Returns the study file's path.
    """
    monkeypatch.chdir(tmp_path)

    def make(source: str = REGRESSION, **fields: Any) -> Path:
        (tmp_path / "obj.py").write_text(source)
        doc: dict[str, Any] = {
            "name": "test-study",
            "objective": "obj.py:objective",
            "direction": "minimize",
            "metric": "loss",
            "budget": {"trials": 4, "epochs": 3},
            "storage": f"sqlite:///{tmp_path / 'study.db'}",
            "sampler": {"name": "random", "seed": 0},
            "pruner": {"name": "none"},
            "search": SMALL_SEARCH,
            # Replicates (docs/answer.md) only where a test asks for them: tests/test_compare.py.
            "compare": {"seeds": 0},
            "mlflow": {"tracking_uri": "off"},
        }
        doc = _merge(doc, fields)
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return make


def study_reader(url: str) -> optuna.storages.RDBStorage | None:
    """A storage for reading a study that another process writes, once its schema is complete
    (None before). Optuna's ``RDBStorage`` stamps the schema version when it finds none, even
    with ``skip_table_creation``: built while launch creates the tables, it races launch's own
    stamp ("UNIQUE constraint failed: alembic_version.version_num" in launch). No pool: each
    call opens and closes its connection, so polling holds none open."""
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            ready = all(
                conn.execute(sqlalchemy.text(f"SELECT COUNT(*) FROM {table}")).scalar()
                for table in ("version_info", "alembic_version")
            )
    except SQLAlchemyError:
        ready = False  # no file, no tables yet
    finally:
        engine.dispose()
    if not ready:
        return None
    return optuna.storages.RDBStorage(
        url, engine_kwargs={"poolclass": NullPool}, skip_compatibility_check=True,
        skip_table_creation=True,
    )  # fmt: skip


def wait_for_study(
    storage: str,
    ready: Callable[[optuna.Study], bool],
    *,
    study_name: str = "test-study",
    timeout: float = 120.0,
) -> optuna.Study:
    """Poll the study (written by another process) until ``ready(study)``; fail on timeout."""
    deadline = time.monotonic() + timeout
    reader = None
    while time.monotonic() < deadline:
        time.sleep(0.2)
        reader = reader or study_reader(storage)
        if reader is None:
            continue
        try:
            study = optuna.load_study(study_name=study_name, storage=reader)
        except KeyError:  # not created yet
            continue
        if ready(study):
            return study
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for study {study_name!r}")


def complete_count(study: optuna.Study) -> int:
    return len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
