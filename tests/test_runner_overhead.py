"""The worker's bookkeeping stays cheap without losing what it records.

Per trial tuner writes two transactions of its own beyond Optuna's (ask, one per sampled
parameter, tell): the first heartbeat with where the trial runs, before sampling; the outcome
with the configuration, at the end (or the configuration a moment into a longer trial).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.trial import TrialState

import tuner.worker.runner
from tuner.config.studyfile import load_study_file
from tuner.core.private_api import rdb_storage, trial_id
from tuner.db.session import open_session
from tuner.db.trialdb import budget_counts, set_user_attrs
from tuner.worker.objective import load_objective
from tuner.worker.runner import ATTR, Worker

NOOP = "def objective(trial):\n    return 0.0\n"


def run_worker(path: Path) -> tuple[optuna.Study, str]:
    study_file = load_study_file(path)
    objective = load_objective(study_file.objective, base_dir=study_file.path.parent)
    session = open_session(study_file)
    study, tracker = session.study, session.tracker
    try:
        return study, Worker(study_file, study, objective, tracker).run()
    finally:
        tracker.close(timeout=10.0)


def count_write_transactions(engine: sqlalchemy.engine.Engine) -> Callable[[], int]:
    """Commits that wrote something (read-only commits cost nothing on SQLite)."""
    dirty: set[int] = set()
    writes = [0]

    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            dirty.add(id(conn))

    def on_commit(conn: Any) -> None:
        if id(conn) in dirty:
            dirty.discard(id(conn))
            writes[0] += 1

    sqlalchemy.event.listen(engine, "before_cursor_execute", on_execute)
    sqlalchemy.event.listen(engine, "commit", on_commit)
    return lambda: writes[0]


def test_bookkeeping_costs_two_write_transactions_per_trial(make_study, monkeypatch):
    path = make_study(NOOP, budget={"trials": 6}, workers={"heartbeat_interval": 5})
    # One optimizer, one schedule, fixed warmup: exactly one sampled parameter per trial.
    search = {
        "optimizers": {"sgd": {"weight_decay": 0.0}},
        "schedules": ["constant"],
        "warmup": {"fraction": 0},
        # The pre-search phase writes once per study, not per trial: off, to count trials alone.
        "lr_range_test": "off",
        "portfolio": False,
    }
    data = yaml.safe_load(path.read_text())
    data["search"] = search  # replaced, not merged as make_study's keywords are
    path.write_text(yaml.safe_dump(data))

    created: list[sqlalchemy.engine.Engine] = []
    original = optuna.storages.RDBStorage.__init__

    def spy(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        created.append(self.engine)

    monkeypatch.setattr(optuna.storages.RDBStorage, "__init__", spy)
    study_file = load_study_file(path)
    objective = load_objective(study_file.objective, base_dir=study_file.path.parent)
    session = open_session(study_file)
    study, tracker = session.study, session.tracker
    writes = count_write_transactions(created[0])
    assert Worker(study_file, study, objective, tracker).run() == "budget"
    tracker.close(timeout=10.0)

    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert all(len(t.params) == 1 for t in trials)
    # Optuna's own: create, one parameter, tell = 3; tuner's: first heartbeat, outcome = 2.
    # (Slack of 2 for a trial stalled past the configuration's write delay on a busy machine;
    # one commit per attribute, as before, would be 6 * 10.)
    assert writes() <= 6 * (3 + 2) + 2
    for t in trials:
        attrs = t.user_attrs
        assert attrs[ATTR.OUTCOME] == "complete"
        assert attrs[ATTR.CONFIG]["optimizer"] == "sgd"
        assert attrs[ATTR.DEVICE] == "cpu" and attrs[ATTR.HOST] and attrs[ATTR.WORKER]
        assert ATTR.DURATION in attrs


def test_the_first_heartbeat_and_host_are_stored_before_sampling(make_study, monkeypatch):
    path = make_study(NOOP, budget={"trials": 2}, workers={"heartbeat_interval": 5})
    seen: list[tuple[bool, dict[str, Any]]] = []
    original = tuner.worker.runner.sample_config  # the name the worker loop calls

    def checking(trial: optuna.Trial, space: Any) -> Any:
        backend = rdb_storage(trial.study)
        with backend.engine.connect() as conn:
            beats = conn.execute(
                sqlalchemy.text("SELECT COUNT(*) FROM trial_heartbeats WHERE trial_id = :t"),
                {"t": trial_id(trial)},
            ).scalar_one()
        fresh = optuna.load_study(study_name=trial.study.study_name, storage=backend)
        seen.append((beats == 1, fresh.trials[trial.number].user_attrs))
        return original(trial, space)

    monkeypatch.setattr(tuner.worker.runner, "sample_config", checking)
    _, reason = run_worker(path)
    assert reason == "budget"
    assert len(seen) == 2
    for has_beat, attrs in seen:
        assert has_beat  # a worker dying while it samples leaves a trial the stale check finds
        assert attrs[ATTR.DEVICE] == "cpu" and ATTR.WORKER in attrs


def test_a_running_trial_shows_its_configuration(make_study, tmp_path):
    # The objective looks at its own trial from another connection, as `tuner status` would.
    source = textwrap.dedent(
        f"""
        import time
        import optuna

        def objective(trial):
            time.sleep(0.8)
            study = optuna.load_study(study_name="test-study",
                                      storage="sqlite:///{tmp_path / "study.db"}")
            attrs = study.trials[trial.number].user_attrs
            assert study.trials[trial.number].state.name == "RUNNING"
            assert attrs["tuner:config"]["optimizer"] in ("adam", "sgd"), attrs
            return 1.0
        """
    )
    path = make_study(source, budget={"trials": 2})
    study, reason = run_worker(path)
    assert reason == "budget"
    assert [t.user_attrs[ATTR.OUTCOME] for t in study.trials] == ["complete", "complete"]


def test_set_user_attrs_refuses_a_finished_trial(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    trial = study.ask()
    set_user_attrs(trial, {"a": 1, "b": [1, 2]}, heartbeat=True)
    set_user_attrs(trial, {"a": 2})  # an upsert: written again, not duplicated
    assert study.trials[0].user_attrs == {"a": 2, "b": [1, 2]}
    study.tell(trial, 0.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_user_attrs(trial, {"a": 3})
    assert study.trials[0].user_attrs["a"] == 2


def test_budget_counts_count_only_the_objectives_own_failures(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    for outcome, state in [
        ("failed", TrialState.FAIL),
        ("failed", TrialState.FAIL),
        ("interrupted", TrialState.FAIL),
        ("complete", TrialState.COMPLETE),
    ]:
        trial = study.ask()
        set_user_attrs(trial, {ATTR.OUTCOME: outcome})
        study.tell(trial, 0.0 if state == TrialState.COMPLETE else None, state=state)
    study.ask()  # a running one
    counts, failed = budget_counts(study)
    assert failed == 2
    assert counts == {TrialState.FAIL: 3, TrialState.COMPLETE: 1, TrialState.RUNNING: 1}
