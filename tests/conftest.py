"""Shared fixtures: a study-file factory over a tmp dir with small, real torch objectives."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

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


def wait_for_study(
    storage: str,
    ready: Callable[[optuna.Study], bool],
    *,
    study_name: str = "test-study",
    timeout: float = 120.0,
) -> optuna.Study:
    """Poll the study (written by another process) until ``ready(study)``; fail on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:  # not created yet
            continue
        if ready(study):
            return study
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for study {study_name!r}")


def complete_count(study: optuna.Study) -> int:
    return len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
