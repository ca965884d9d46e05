"""The study file: defaults, durations, ${ENV} expansion, and the message for every bad input."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import optuna
import pytest

from tuner.config.studyfile import (
    PrunerConfig,
    SamplerConfig,
    StudyFile,
    load_study_file,
    with_overrides,
)
from tuner.core.durations import format_duration, parse_duration
from tuner.core.errors import ConfigError
from tuner.sampling.pruner import ScheduleMedianPruner
from tuner.sampling.registry import PRUNERS, SAMPLERS, make_pruner, make_sampler

try:
    from tuner.config.space import SearchSpace, parse_search
except ImportError as exc:  # the search space is another module, built alongside this one
    SPACE_MISSING: str | None = f"tuner.config.space is not importable yet ({exc})"
else:
    SPACE_MISSING = None

needs_space = pytest.mark.skipif(SPACE_MISSING is not None, reason=SPACE_MISSING or "")

BASE = "name: demo\nobjective: obj.py:objective\n"
SECRET = "hunter2secret"


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_study_file(write(tmp_path, text))
    assert info.value.exit_code == 2
    return str(info.value) + (info.value.hint or "")


# --------------------------------------------------------------------------------------------
# Bad inputs: (id, file text, environment, parts of the message the user must see)

BAD_INPUTS = [
    (
        "malformed-yaml",
        "name: x\n  objective: [\n",
        {},
        ["study.yaml:2:12: malformed YAML: mapping values are not allowed here"],
    ),
    (
        "duplicate-key",
        BASE + "budget: {trials: 3}\nbudget: {trials: 4}\n",
        {},
        ["study.yaml:4:1: malformed YAML: duplicate key 'budget' (first at line 3)"],
    ),
    ("empty-file", "", {}, ["study.yaml: must be a mapping", "but the file is empty"]),
    ("top-level-list", "- name\n", {}, ["the top level must be a mapping", "but got a list"]),
    (
        "unknown-top-level-key",
        BASE + "budgett: {trials: 3}\n",
        {},
        [
            "study.yaml: unknown key 'budgett', did you mean 'budget'?",
            "(known: name, objective, direction, metric, budget, storage, sampler, pruner, "
            "search, compare, params, mlflow, workers)",
        ],
    ),
    (
        "unknown-nested-key",
        BASE + "budget: {trials: 3, epoch: 5}\n",
        {},
        [
            "budget: unknown key 'epoch', did you mean 'epochs'? "
            "(known: trials, timeout, epochs, max_failures, trial_timeout)"
        ],
    ),
    ("reserved-key", BASE + "raw_text: hi\n", {}, ["unknown key 'raw_text'"]),
    (
        "wrong-type",
        BASE + "budget: {trials: many}\n",
        {},
        ["budget.trials: must be an integer, but got 'many'"],
    ),
    ("wrong-type-section", BASE + "budget: 5\n", {}, ["budget: must be a mapping, but got 5"]),
    (
        "bool-is-not-int",
        BASE + "budget: {epochs: yes}\n",
        {},
        ["budget.epochs: must be an integer"],
    ),
    ("fraction", BASE + "budget: {epochs: 2.5}\n", {}, ["budget.epochs: must be a whole number"]),
    ("trials-0", BASE + "budget: {trials: 0}\n", {}, ["budget.trials: must be >= 1, but got 0"]),
    (
        "max-failures-0",
        BASE + "budget: {max_failures: 0}\n",
        {},
        ["budget.max_failures: must be >= 1, but got 0"],
    ),
    (
        "bad-duration",
        BASE + "budget: {timeout: 5 minutes}\n",
        {},
        [
            "budget.timeout: must be a duration like 90s, 30m, 2h or 1h30m, or a number of "
            "seconds, but got '5 minutes'"
        ],
    ),
    (
        "zero-duration",
        BASE + "budget: {timeout: 0s}\n",
        {},
        ["budget.timeout: must be a positive duration, but got '0s'"],
    ),
    (
        "direction",
        BASE + "direction: up\n",
        {},
        ["direction: must be 'minimize' or 'maximize', but got 'up'"],
    ),
    (
        "missing-name",
        "objective: obj.py:objective\n",
        {},
        ["name: is required, but the study file does not set it"],
    ),
    (
        "objective-without-colon",
        "name: demo\nobjective: obj.py\n",
        {},
        ["objective: must be 'file.py:function' or 'pkg.module:function', but got 'obj.py'"],
    ),
    (
        "missing-env-var",
        BASE + "storage: postgresql+psycopg://tuner:${TUNER_TEST_UNSET_VAR}@db/tuner\n",
        {},
        [
            "storage: environment variable TUNER_TEST_UNSET_VAR must be set, but it is not "
            "(the file writes ${TUNER_TEST_UNSET_VAR})"
        ],
    ),
    (
        "garbage-storage-url",
        BASE + f"storage: 'not a url admin:{SECRET}@db'\n",
        {},
        ["storage: must be an SQLAlchemy URL such as sqlite:///tuner.db", "admin:***@db"],
    ),
    (
        "unknown-dialect-password-not-echoed",
        BASE + f"storage: postgres://admin:{SECRET}@db:5432/tuner\n",
        {},
        [
            "storage: unknown database dialect 'postgres' (did you mean postgresql+psycopg?), "
            "but got 'postgres://admin:***@db:5432/tuner'"
        ],
    ),
    (
        "password-with-at-sign-not-echoed",
        BASE + "storage: postgres://admin:p@ss@db/tuner\n",
        {},
        ["'postgres://admin:***@db/tuner'"],
    ),
    (
        "tracking-uri-password-not-echoed",
        BASE + f"mlflow: {{tracking_uri: ['http://admin:{SECRET}@mlflow:5000']}}\n",
        {},
        ["mlflow.tracking_uri: must be a string, but got ['http://admin:***@mlflow:5000']"],
    ),
    (
        "expanded-secret-not-echoed",
        BASE + "budget: {trials: '${TUNER_TEST_SECRET}'}\n",
        {"TUNER_TEST_SECRET": SECRET},
        ["budget.trials: must be an integer, but got '${TUNER_TEST_SECRET}'"],
    ),
    (
        "unknown-sampler",
        BASE + "sampler: {name: tpee}\n",
        {},
        [
            "sampler.name: must be one of cmaes, gp, qmc, random, tpe, but got 'tpee' "
            "(did you mean 'tpe'?)"
        ],
    ),
    (
        "unknown-sampler-option",
        BASE + "sampler: {name: tpe, sedd: 0}\n",
        {},
        ["sampler.sedd: not an option of TPESampler (options: ", "seed", "but got sedd=0"],
    ),
    (
        "bad-sampler-value",
        BASE + "sampler: {name: qmc, qmc_type: bad}\n",
        {},
        ["sampler.qmc_type: QMCSampler rejects it", "halton", "but got 'bad'"],
    ),
    (
        "unknown-pruner",
        BASE + "pruner: {name: asha}\n",
        {},
        [
            "pruner.name: must be one of hyperband, median, none, schedule_median, "
            "successive_halving, but got 'asha'"
        ],
    ),
    (
        "option-for-nop-pruner",
        BASE + "pruner: {name: none, patience: 3}\n",
        {},
        ["pruner.patience: not an option of NopPruner (options: none), but got patience=3"],
    ),
    (
        "bad-device",
        BASE + "workers: {devices: [cpu, gpu0]}\n",
        {},
        ["workers.devices[1]: must be 'cpu', 'cuda', 'cuda:<index>' or 'mps', but got 'gpu0'"],
    ),
    (
        "per-device-0",
        BASE + "workers: {per_device: 0}\n",
        {},
        ["workers.per_device: must be >= 1, but got 0"],
    ),
    (
        "every-problem-listed",
        BASE + "direction: up\nbudget: {trials: 0}\nworkers: {per_device: 0}\n",
        {},
        [
            "study.yaml: 3 problems\n",
            "\n  direction: must be",
            "\n  budget.trials: must be >= 1",
            "\n  workers.per_device: must be >= 1",
        ],
    ),
]

SEARCH_INPUTS = [
    (
        "low-greater-than-high",
        BASE + "search: {optimizers: {adam: {lr: {low: 0.1, high: 0.01}}}}\n",
        {},
        ["search.optimizers.adam.lr: `low <= high` must hold, but got (low=0.1, high=0.01)"],
    ),
    (
        "log-range-low-not-positive",
        BASE + "search: {optimizers: {adam: {lr: {low: 0, high: 0.1, log: true}}}}\n",
        {},
        ["search.optimizers.adam.lr: a log range needs `low > 0`, but got (low=0, high=0.1)"],
    ),
    (
        "unknown-optimizer",
        BASE + "search: {optimizers: {adamx: {}}}\n",
        {},
        ["search.optimizers.adamx: unknown optimizer 'adamx'", "adamw"],
    ),
    (
        "unknown-schedule",
        BASE + "search: {schedules: [cosine, cosinus]}\n",
        {},
        ["search.schedules", "unknown schedule 'cosinus'", "cosine"],
    ),
    (
        "empty-optimizer-set",
        BASE + "search: {optimizers: {}}\n",
        {},
        ["search.optimizers: at least one optimizer must compete, but got none"],
    ),
    (
        "search-error-listed-with-others",
        BASE + "budget: {trials: 0}\nsearch: {optimizers: {adamx: {}}}\n",
        {},
        ["2 problems", "budget.trials: must be >= 1", "search.optimizers.adamx"],
    ),
]


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS]
    + [pytest.param(*case[1:], id=case[0], marks=needs_space) for case in SEARCH_INPUTS],
)
def test_bad_input_message(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    env: dict[str, str],
    expected: list[str],
) -> None:
    monkeypatch.delenv("TUNER_TEST_UNSET_VAR", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    message = load_error(tmp_path, text)
    for part in expected:
        assert part in message
    for secret in (SECRET, "p@ss"):
        assert secret not in message


def test_missing_file_names_the_resolved_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"study file not found \(.*nope\.yaml\)"):
        load_study_file(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------------------------
# What a valid file becomes


@needs_space
def test_defaults_are_filled(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    study = load_study_file(path)
    assert study.name == "demo"
    assert study.objective == "obj.py:objective"
    assert (study.direction, study.metric) == ("minimize", "value")
    assert study.budget.model_dump() == {
        "trials": 20,
        "timeout": None,
        "epochs": 10,
        "max_failures": 10,
        "trial_timeout": None,
    }
    # SQLite paths are made absolute once, at load, against the working directory.
    assert study.storage == f"sqlite:///{Path.cwd() / 'tuner.db'}"
    assert (study.sampler.name, study.sampler.options) == ("tpe", {})
    assert (study.pruner.name, study.pruner.options) == ("schedule_median", {})
    assert study.params == {}
    assert (study.mlflow.tracking_uri, study.mlflow.experiment) == ("sqlite:///mlflow.db", "demo")
    assert (study.workers.devices, study.workers.per_device) == ("auto", 1)
    assert study.path == path.resolve() and study.path.is_absolute()
    assert study.base_dir == tmp_path.resolve()
    assert study.raw_text == BASE
    assert study.search == parse_search(None)  # the whole catalog with its default ranges


@needs_space
def test_full_file(tmp_path: Path) -> None:
    text = BASE + (
        "direction: maximize\n"
        "metric: val_accuracy\n"
        "budget: {trials: 60, timeout: 2h, epochs: 20, max_failures: 3}\n"
        "storage: sqlite:///runs/tuner.db\n"
        "sampler: {name: tpe, seed: 0, n_startup_trials: 5}\n"
        "pruner: {name: median, n_startup_trials: 2}\n"
        "search: {optimizers: {adamw: {}, adam: {lr: {low: 1.0e-5, high: 1.0e-2, log: true}}}}\n"
        "params: {batch_size: 64}\n"
        "mlflow: {tracking_uri: 'http://mlflow:5000', experiment: digits}\n"
        "workers: {devices: [cuda:0, cuda:1, cpu], per_device: 2}\n"
    )
    study = load_study_file(write(tmp_path, text))
    assert study.direction == "maximize" and study.metric == "val_accuracy"
    assert (study.budget.trials, study.budget.timeout, study.budget.epochs) == (60, 7200.0, 20)
    assert study.budget.max_failures == 3
    # Relative SQLite paths are resolved against the cwd, as SQLAlchemy would, once at load.
    assert study.storage == f"sqlite:///{Path.cwd() / 'runs' / 'tuner.db'}"
    assert study.sampler.options == {"seed": 0, "n_startup_trials": 5}
    assert (study.pruner.name, study.pruner.options) == ("median", {"n_startup_trials": 2})
    assert isinstance(study.search, SearchSpace)
    assert study.params == {"batch_size": 64}
    assert (study.mlflow.tracking_uri, study.mlflow.experiment) == ("http://mlflow:5000", "digits")
    assert study.workers.devices == ("cuda:0", "cuda:1", "cpu")
    assert study.workers.per_device == 2


@needs_space
@pytest.mark.parametrize(
    "mlflow", ["mlflow: off", "mlflow: {tracking_uri: off}", "mlflow: {tracking_uri: 'off'}"]
)
def test_mlflow_off_disables_tracking(tmp_path: Path, mlflow: str) -> None:
    study = load_study_file(write(tmp_path, BASE + mlflow + "\n"))
    assert study.mlflow.tracking_uri is None
    assert study.mlflow.experiment == "demo"


@needs_space
def test_empty_sections_take_their_defaults(tmp_path: Path) -> None:
    study = load_study_file(write(tmp_path, BASE + "budget:\nsearch:\nworkers:\n"))
    assert study.budget.trials == 20 and study.workers.devices == "auto"


@needs_space
def test_single_device_string(tmp_path: Path) -> None:
    study = load_study_file(write(tmp_path, BASE + "workers: {devices: 'cuda:1'}\n"))
    assert study.workers.devices == ("cuda:1",)


@needs_space
def test_env_vars_expanded_but_raw_text_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNER_TEST_PW", SECRET)
    monkeypatch.setenv("TUNER_TEST_TRIALS", "7")
    text = BASE + (
        "storage: postgresql+psycopg://tuner:${TUNER_TEST_PW}@db:5432/tuner\n"
        "budget: {trials: '${TUNER_TEST_TRIALS}'}\n"
        "params: {note: 'costs $${TUNER_TEST_PW}', list: ['${TUNER_TEST_TRIALS}x']}\n"
    )
    study = load_study_file(write(tmp_path, text))
    assert study.storage == f"postgresql+psycopg://tuner:{SECRET}@db:5432/tuner"
    assert study.budget.trials == 7
    assert study.params == {"note": "costs ${TUNER_TEST_PW}", "list": ["7x"]}
    assert study.raw_text == text and SECRET not in study.raw_text
    assert SECRET not in repr(study)  # a logged StudyFile does not leak the password


@needs_space
def test_nothing_is_connected_while_validating(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    load_study_file(write(tmp_path, BASE + f"storage: sqlite:///{db}\n"))
    assert not db.exists()


# --------------------------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1h 30m 15s", 5415.0),
        ("1.5h", 5400.0),
        ("1d", 86400.0),
        ("120", 120.0),
        (45, 45.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "m", "", "30m2h", "-5", "0", "nan", True, None])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="but got"):
        parse_duration(text)  # type: ignore[arg-type]


def test_format_duration_round_trips() -> None:
    assert [format_duration(s) for s in (0, 42.4, 90, 3600, 5415)] == [
        "0s",
        "42s",
        "1m30s",
        "1h",
        "1h30m15s",
    ]
    assert parse_duration(format_duration(5415)) == 5415


# --------------------------------------------------------------------------------------------
# Samplers and pruners


SAMPLER_CLASSES = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "qmc": optuna.samplers.QMCSampler,
    "gp": optuna.samplers.GPSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
}


def test_every_sampler_is_tested() -> None:
    assert set(SAMPLERS) == set(SAMPLER_CLASSES)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("name", sorted(SAMPLER_CLASSES))
def test_make_sampler_builds_the_optuna_class(name: str) -> None:
    cfg = SamplerConfig(name=name, options={"seed": 3})
    if any(importlib.util.find_spec(p) is None for p in SAMPLERS[name].requires):
        with pytest.raises(ConfigError, match=rf"sampler.name: '{name}' needs .*not installed"):
            make_sampler(cfg)
        return
    sampler = make_sampler(cfg)
    assert type(sampler) is SAMPLER_CLASSES[name]


def test_sampler_options_reach_optuna() -> None:
    def first_values(sampler: optuna.samplers.BaseSampler) -> list[float]:
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        return [t.params["x"] for t in study.trials]

    cfg = SamplerConfig.model_validate({"name": "random", "seed": 7})
    assert first_values(make_sampler(cfg)) == first_values(make_sampler(cfg))
    other = SamplerConfig.model_validate({"name": "random", "seed": 8})
    assert first_values(make_sampler(cfg)) != first_values(make_sampler(other))
    tpe = make_sampler(SamplerConfig.model_validate({"name": "tpe", "n_startup_trials": 4}))
    assert tpe._n_startup_trials == 4


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_make_sampler_bad_kwarg_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^sampler\.seedd: not an option of RandomSampler"):
        make_sampler(SamplerConfig(name="random", options={"seedd": 1}))
    with pytest.raises(ConfigError, match=r"^sampler\.qmc_type: QMCSampler rejects it"):
        make_sampler(SamplerConfig(name="qmc", options={"qmc_type": "latin"}))


def test_every_pruner_is_tested() -> None:
    assert set(PRUNERS) == {"schedule_median", "hyperband", "median", "successive_halving", "none"}


def test_schedule_median_by_default_with_the_epoch_budget() -> None:
    default = make_pruner(PrunerConfig(), max_resource=20)
    assert type(default) is ScheduleMedianPruner
    assert default.rung_steps == (3, 9, 15)  # 20%, 50% and 80% of 20 epochs
    pruner = make_pruner(PrunerConfig(name="hyperband"), max_resource=20)
    assert type(pruner) is optuna.pruners.HyperbandPruner
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (1, 20, 3)
    custom = make_pruner(
        PrunerConfig.model_validate(
            {"name": "hyperband", "reduction_factor": 2, "min_resource": 2}
        ),
        max_resource=9,
    )
    assert (custom._min_resource, custom._max_resource, custom._reduction_factor) == (2, 9, 2)


def test_other_pruners() -> None:
    halving = make_pruner(
        PrunerConfig.model_validate({"name": "successive_halving", "reduction_factor": 2}),
        max_resource=10,
    )
    assert type(halving) is optuna.pruners.SuccessiveHalvingPruner
    assert (halving._min_resource, halving._reduction_factor) == (1, 2)
    median = make_pruner(
        PrunerConfig.model_validate({"name": "median", "n_startup_trials": 2}), max_resource=10
    )
    assert type(median) is optuna.pruners.MedianPruner
    assert median._n_startup_trials == 2
    assert type(make_pruner(PrunerConfig(name="none"), max_resource=10)) is (
        optuna.pruners.NopPruner
    )


def test_sampler_shorthand_and_unknown_name_in_code() -> None:
    assert SamplerConfig.model_validate("random").name == "random"
    with pytest.raises(ValueError, match="must be one of cmaes, gp, qmc, random, tpe"):
        SamplerConfig(name="anneal")


# --------------------------------------------------------------------------------------------
# CLI overrides


@needs_space
def test_with_overrides(tmp_path: Path) -> None:
    study = load_study_file(write(tmp_path, BASE + "budget: {trials: 60, epochs: 5}\n"))
    changed = with_overrides(study, trials=3, timeout="10m")
    assert (changed.budget.trials, changed.budget.timeout, changed.budget.epochs) == (3, 600.0, 5)
    assert study.budget.trials == 60  # the original is untouched (frozen)
    assert with_overrides(study) is study
    with pytest.raises(ConfigError, match=r"^--timeout: must be a duration .* but got '5 minutes'"):
        with_overrides(study, timeout="5 minutes")
    with pytest.raises(ConfigError, match=r"^--trials: must be >= 1, but got 0"):
        with_overrides(study, trials=0)


@needs_space
def test_study_file_is_frozen(tmp_path: Path) -> None:
    study = load_study_file(write(tmp_path, BASE))
    with pytest.raises(ValueError, match="frozen"):
        study.name = "other"  # type: ignore[misc]
    assert isinstance(study, StudyFile)
