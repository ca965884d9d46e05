"""End to end, as a user runs it: `tuner launch` as a subprocess on a fresh study file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import REGRESSION, REPO, complete_count, wait_for_study

pytestmark = pytest.mark.slow


def tuner(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuner", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_launch_subprocess_and_the_database_is_plain_optuna_storage(make_study, tmp_path):
    path = make_study(budget={"trials": 3})
    proc = tuner("launch", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "finished trials   3 of 3" in proc.stdout

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.load_study(study_name="test-study", storage=storage)
    assert len(study.trials) == 3
    # Optuna's own CLI reads the study database.
    optuna_cli = Path(sys.executable).with_name("optuna")
    listed = subprocess.run(
        [str(optuna_cli), "trials", "--storage", storage, "--study-name", "test-study",
         "-f", "yaml"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    rows = yaml.safe_load(listed.stdout)
    assert sorted(r["number"] for r in rows) == [0, 1, 2]
    assert {r["state"] for r in rows} == {"COMPLETE"}


SLOW_REGRESSION = REGRESSION.replace(
    "    g = torch.Generator()", "    import time\n    time.sleep(0.4)\n    g = torch.Generator()"
)


def test_ctrl_c_then_resume_gives_exactly_the_budget(make_study, tmp_path):
    path = make_study(SLOW_REGRESSION, budget={"trials": 8})
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner", "launch", str(path)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for_study(storage, lambda study: complete_count(study) >= 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command to resume" in err
    study = optuna.load_study(study_name="test-study", storage=storage)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    done_before = len(study.get_trials(states=(TrialState.COMPLETE,)))
    assert 2 <= done_before < 8

    again = tuner("launch", str(path), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="test-study", storage=storage)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 8
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_digits_reaches_97_percent_with_its_default_budget(tmp_path):
    """The README's main job, on embedded defaults: SQLite study, local MLflow store."""
    for name in ("digits.yaml", "digits.py"):
        shutil.copy(REPO / "studies" / name, tmp_path / name)
    # The search alone: the replicates after it (compare:) have their own tests, and would
    # double this test's time (tests/test_compare.py).
    doc = yaml.safe_load((tmp_path / "digits.yaml").read_text())
    assert doc["compare"]["seeds"] > 0
    doc["compare"]["seeds"] = 0
    (tmp_path / "digits.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", "launch", "digits.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="digits-cnn", storage=f"sqlite:///{tmp_path}/tuner.db")
    assert study.best_value >= 0.97, proc.stdout
    assert (tmp_path / "mlflow.db").exists()  # the default tracking store, in the cwd


def running_with_config(study: optuna.Study) -> bool:
    """A trial is inside its objective: sampled, its configuration recorded."""
    running = study.get_trials(states=(TrialState.RUNNING,))
    return bool(running) and "tuner:config" in running[0].user_attrs


def test_sigterm_stops_a_worker_cleanly_and_requeues_its_trial(make_study, tmp_path):
    """What `docker stop` or a Kubernetes eviction sends a worker."""
    slow = REGRESSION.replace(
        "    g = torch.Generator()",
        "    import time\n    time.sleep(30)\n    g = torch.Generator()",
    )
    path = make_study(slow, budget={"trials": 2})
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner", "worker", str(path)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for_study(storage, running_with_config)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    study = optuna.load_study(study_name="test-study", storage=storage)
    (first, retry) = study.trials
    assert first.state == TrialState.FAIL
    assert first.user_attrs["tuner:outcome"] == "interrupted"
    assert retry.state == TrialState.WAITING
    assert retry.system_attrs["fixed_params"] == first.params
