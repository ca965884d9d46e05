"""Every bad input a user can give `tuner launch`, and the message they see.

Each row: how to break the study, the exit code, and the parts of the message that must be
there (the field path, the rule, the value). A config error writes nothing: no study database.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tuner.cli import cli


def launch(path: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["launch", str(path), *extra], catch_exceptions=False)
    return result.exit_code, result.stderr


# (id, study-file fields to merge, expected exit code, expected message parts)
CONFIG_ERRORS = [
    ("unknown-key", {"budgett": {"trials": 3}}, ["budgett"]),
    ("nested-unknown-key", {"budget": {"trails": 3}}, ["budget: unknown key 'trails'", "'trials'"]),
    ("wrong-type", {"budget": {"trials": "many"}}, ["budget.trials", "'many'"]),
    ("trials-zero", {"budget": {"trials": 0}}, ["budget.trials", "0"]),
    ("bad-duration", {"budget": {"timeout": "5 minutes"}}, ["budget.timeout", "5 minutes"]),
    ("bad-direction", {"direction": "up"}, ["direction", "'up'"]),
    (
        "low-above-high",
        {"search": {"optimizers": {"adam": {"lr": {"low": 0.1, "high": 0.001}}}}},
        ["search.optimizers.adam.lr", "`low <= high` must hold", "low=0.1, high=0.001"],
    ),
    (
        "log-range-low-zero",
        {"search": {"optimizers": {"adam": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}}},
        ["search.optimizers.adam.lr", "low > 0", "low=0.0"],
    ),
    (
        "unknown-optimizer",
        {"search": {"optimizers": {"adamx": {}}}},
        ["adamx", "known", "adamw", "yogi"],
    ),
    (
        "unknown-hyperparameter",
        {"search": {"optimizers": {"sgd": {"betas": 0.9}}}},
        ["search.optimizers.sgd", "betas", "lr"],
    ),
    (
        "invalid-hyperparameter-value",
        {"search": {"optimizers": {"adam": {"eps": -1.0}}}},
        ["search.optimizers.adam.eps", "-1.0"],
    ),
    (
        "unknown-schedule",
        {"search": {"schedules": ["cosine", "cosinus"]}},
        ["cosinus", "known", "onecycle"],
    ),
    (
        "empty-optimizer-set",
        {"search": {"optimizers": {}}},
        ["search.optimizers", "at least one optimizer", "got none"],
    ),
    ("unknown-sampler", {"sampler": {"name": "bayes"}}, ["sampler", "bayes", "tpe"]),
    ("missing-env-var", {"storage": "postgresql://u:${NO_SUCH_VAR_X}@h/db"}, ["NO_SUCH_VAR_X"]),
    (
        "in-memory-sqlite",
        {"storage": "sqlite:///:memory:", "workers": {"per_device": 2}},
        ["storage: must be a database that outlives the process", "sqlite:///:memory:"],
    ),
    (
        "per-device-too-many",
        {"workers": {"per_device": 100000}},
        ["workers.per_device", "<= 64", "100000"],
    ),
    (
        "grace-period-too-long",
        {"workers": {"grace_period": 86400}},
        ["workers.grace_period", "<= 3600", "86400"],
    ),
    ("bad-trial-timeout", {"budget": {"trial_timeout": "soon"}}, ["budget.trial_timeout", "soon"]),
]


@pytest.mark.parametrize(
    ("fields", "parts"), [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS]
)
def test_config_errors_name_the_field_the_rule_and_the_value(make_study, tmp_path, fields, parts):
    path = make_study(**fields)
    code, err = launch(path)
    assert code == 2, err
    assert err.splitlines()[1].startswith("error: ")  # after "tuner launch: checking <file>"
    for part in parts:
        assert part in err, f"{part!r} not in {err!r}"
    assert not (tmp_path / "study.db").exists()  # nothing written before the file validates


def test_malformed_yaml_points_at_the_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("name: x\nobjective: obj.py:objective\nbudget: {trials: 3\n")
    code, err = launch(path)
    assert code == 2
    assert "study.yaml" in err and "line" in err


def test_missing_study_file(tmp_path):
    code, err = launch(tmp_path / "nope.yaml")
    assert code == 2
    assert "nope.yaml" in err


def test_missing_objective_file(make_study, tmp_path):
    path = make_study(objective="missing.py:objective")
    code, err = launch(path)
    assert code == 2
    assert str(tmp_path / "missing.py") in err
    assert not (tmp_path / "study.db").exists()


def test_objective_function_not_found_lists_what_is_there(make_study):
    path = make_study("def train(trial):\n    return 1.0\n", objective="obj.py:objectiv")
    code, err = launch(path)
    assert code == 2
    assert "objectiv" in err and "train" in err


def test_objective_that_is_not_callable(make_study):
    path = make_study("objective = 3\n")
    code, err = launch(path)
    assert code == 2 and "'obj.py:objective' must be callable" in err and "got 3" in err


def test_objective_module_that_fails_to_import(make_study):
    path = make_study("import no_such_module_xyz\n")
    code, err = launch(path)
    assert code == 2
    assert "no_such_module_xyz" in err and "obj.py" in err


def test_objective_that_raises_fails_the_trial_with_its_message(make_study):
    path = make_study(
        "def objective(trial):\n    raise ValueError('bad batch')\n", budget={"max_failures": 2}
    )
    code, err = launch(path)
    assert code == 1
    assert "trial 0 failed: ValueError: bad batch" in err


def test_objective_that_returns_nan_is_diverged_not_an_error(make_study):
    path = make_study("def objective(trial):\n    return float('nan')\n", budget={"trials": 1})
    code, err = launch(path)
    assert code == 0
    assert "trial 0 diverged" in err and "the objective returned nan" in err


def test_objective_that_returns_a_string(make_study):
    path = make_study("def objective(trial):\n    return 'high'\n", budget={"max_failures": 1})
    code, err = launch(path)
    assert code == 1
    assert "must return a number, but it returned 'high'" in err


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://tuner:s3cretpw@127.0.0.1:1/tuner",
        "postgresql+psycopg://tuner:s3cretpw@127.0.0.1:5432/no_such_database_tuner",
    ],
)
def test_unreachable_database_is_a_clear_error_without_the_password(make_study, url):
    path = make_study(storage=url)
    code, err = launch(path)
    assert code == 1
    assert "s3cretpw" not in err
    assert "tuner:***@127.0.0.1" in err


def test_password_from_an_env_var_is_never_echoed(make_study, monkeypatch):
    monkeypatch.setenv("TUNER_TEST_PW", "hunter2-pw")
    path = make_study(storage="postgresql://tuner:${TUNER_TEST_PW}@127.0.0.1:1/tuner")
    code, err = launch(path)
    assert code == 1
    assert "hunter2-pw" not in err


def test_bad_cli_flags_exit_2(make_study):
    path = make_study()
    code, err = launch(path, "--trials", "0")
    assert code == 2 and "--trials" in err
    code, err = launch(path, "--timeout", "soon")
    assert code == 2 and "soon" in err


def test_cuda_device_without_cuda(make_study):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = make_study(workers={"devices": ["cuda:0"]})
    code, err = launch(path)
    assert code == 2
    assert "sees no CUDA device" in err and "hint:" in err
