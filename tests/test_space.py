"""The study file's ``search:`` section: parsing, its error messages, and sampling with Optuna."""

from __future__ import annotations

from collections import Counter

import optuna
import pytest
import torch

from tuner.catalog.export import build_optimizer, load_optimizer_config
from tuner.catalog.hparams import Choice, Fixed, Range
from tuner.catalog.optim import OPTIMIZERS
from tuner.catalog.schedules import SCHEDULES
from tuner.config.space import parse_search, sample_config
from tuner.core.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(seed: int = 0) -> optuna.Study:
    # Random sampling reaches every corner (weight_decay 0, every optimizer) in few trials.
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))


def test_no_search_section_is_the_whole_catalog_with_default_ranges() -> None:
    space = parse_search(None)
    assert [o.name for o in space.optimizers] == list(OPTIMIZERS)
    assert [s.name for s in space.schedules] == [n for n in SCHEDULES if n != "custom"]
    assert space.warmup is not None and space.warmup.unit == "fraction"
    assert space.warmup.length == Range(0.0, 0.1)
    for o in space.optimizers:
        assert dict(o.domains) == {hp.name: hp.default for hp in OPTIMIZERS[o.name].hparams}


def test_overrides_give_fixed_choice_and_range_domains() -> None:
    space = parse_search(
        {
            "optimizers": {
                "adam": {"lr": {"low": 1e-5, "high": 1e-2, "log": True}, "amsgrad": [True, False]},
                "yogi": {"eps": 1e-3},
            },
            "schedules": {"step": {"gamma": 0.5, "milestones": [0.3, 0.6, 0.9]}, "cosine": {}},
            "warmup": {"steps": {"low": 0, "high": 50}, "begin_lr": 1e-4},
        }
    )
    adam, yogi = space.optimizers
    assert adam.domains["lr"] == Range(1e-5, 1e-2, log=True)
    assert adam.domains["amsgrad"] == Choice((True, False))
    assert yogi.domains["eps"] == Fixed(1e-3)
    assert yogi.domains["lr"] == OPTIMIZERS["yogi"].hparam("lr").default
    step = space.schedules[0]
    assert step.domains["gamma"] == Fixed(0.5) and step.settings["milestones"] == [0.3, 0.6, 0.9]
    assert space.warmup is not None
    assert (space.warmup.unit, space.warmup.length) == ("steps", Range(0.0, 50.0))
    assert space.warmup.begin_lr == Fixed(1e-4)


@pytest.mark.parametrize("zero", [0, 0.0, {"fraction": 0}, {"steps": 0}])
def test_a_fixed_zero_disables_warmup(zero: object) -> None:
    raw = zero if isinstance(zero, dict) else {"fraction": zero}
    assert parse_search({"warmup": raw}).warmup is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"optimizers": {"adam": {"lr": {"low": 3, "high": 1}}}},
            ["search.optimizers.adam.lr", "`low <= high` must hold", "(low=3, high=1)"],
        ),
        (
            {"optimizers": {"adam": {"lr": {"low": 1e-5, "high": "big"}}}},
            ["search.optimizers.adam.lr.high", "must be a number", "'big'"],
        ),
        (
            {"optimizers": {"adam": {"lr": {"low": 1e-5, "hi": 1}}}},
            ["search.optimizers.adam.lr", "unknown key 'hi'"],
        ),
        (
            {"optimizers": {"adam": {"lr": {"low": -1.0, "high": 0.1}}}},
            ["search.optimizers.adam.lr.low", "-1.0"],
        ),
        (
            {"optimizers": {"adam": {"amsgrad": ["yes"]}}},
            ["search.optimizers.adam.amsgrad[0]", "true or false", "'yes'"],
        ),
        (
            {"optimizers": {"adamx": {}}},
            ["search.optimizers.adamx", "unknown optimizer 'adamx'", *OPTIMIZERS],
        ),
        (
            {"optimizers": {"adam": {"momentum": 0.9}}},
            ["search.optimizers.adam.momentum", "no hyperparameter 'momentum'", "lr", "eps"],
        ),
        ({"optimizers": {}}, ["search.optimizers", "at least one optimizer"]),
        (
            {"optimizers": {"nesterov": {"momentum": 0.0}}},
            ["search.optimizers.nesterov.momentum", "`momentum > 0`", "momentum=0.0"],
        ),
        (
            {"optimizers": {"nesterov": {"momentum": {"low": 0.0, "high": 0.9}}}},
            ["search.optimizers.nesterov.momentum", "`momentum > 0`", "momentum=0.0"],
        ),
        (
            {"schedules": ["cosine", "cosin"]},
            ["search.schedules.cosin", "unknown schedule 'cosin'", *SCHEDULES],
        ),
        ({"schedules": ["custom"]}, ["search.schedules[0]", "pkg.module:function"]),
        ({"schedules": []}, ["search.schedules", "at least one schedule"]),
        (
            {"schedules": {"cosine": {"gamma": 0.1}}},
            ["search.schedules.cosine.gamma", "takes final_lr_ratio", "'gamma'"],
        ),
        (
            {"schedules": {"cosine": {"final_lr_ratio": {"low": 0.0, "high": 2.0}}}},
            ["search.schedules.cosine.final_lr_ratio.high", "`0 <= final_lr_ratio <= 1`", "2.0"],
        ),
        (
            {"schedules": {"step": {"milestones": [0.8, 0.2]}}},
            ["search.schedules.step.milestones", "increasing", "[0.8, 0.2]"],
        ),
        (
            {"schedules": {"custom": "no_such_module_xyz:f"}},
            ["search.schedules.custom.function", "cannot import module 'no_such_module_xyz'"],
        ),
        (
            {"warmup": {"fraction": 0.1, "steps": 10}},
            ["search.warmup", "exactly one of `fraction` or `steps`"],
        ),
        (
            {"warmup": {"fraction": {"low": 0.0, "high": 1.5}}},
            ["search.warmup.fraction.high", "`0 <= fraction < 1`", "1.5"],
        ),
        ({"warmup": {"begin_lr": -1.0, "fraction": 0.1}}, ["search.warmup.begin_lr", "-1.0"]),
        ({"optimisers": {}}, ["search.optimisers", "unknown key", "optimizers"]),
    ],
)
def test_parse_errors_name_field_rule_and_value(raw: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_search(raw)
    for text in expected:
        assert text in str(info.value)


def test_sampled_configs_are_valid_and_each_optimizer_has_its_own_parameters() -> None:
    space = parse_search({"warmup": {"steps": {"low": 0, "high": 5}}})
    study = _study()
    chosen: Counter[str] = Counter()
    for _ in range(120):
        trial = study.ask()
        config = sample_config(trial, space)
        chosen[config.optimizer] += 1
        # Conditional structure: only the chosen optimizer's and schedule's parameters exist.
        for key in trial.params:
            head = key.split(".")[0]
            assert (
                key in ("optimizer", "schedule")
                or head in (config.optimizer, "warmup")
                or (key.startswith(f"schedule.{config.schedule['name']}."))
            ), (key, config)
        # The config is a valid exported document and builds plain torch objects.
        assert load_optimizer_config(config.to_dict()) == config
        optimizer, scheduler = build_optimizer([torch.zeros(3, requires_grad=True)], config, 10)
        assert isinstance(optimizer, OPTIMIZERS[config.optimizer].factory)
        assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
        study.tell(trial, 0.0)
    assert set(chosen) == set(OPTIMIZERS)
    distributions: dict = {}
    for t in study.trials:
        distributions |= t.distributions
    # adam.lr and sgd.lr are distinct Optuna parameters, each with its catalog range.
    assert "adam.lr" in distributions and "sgd.lr" in distributions
    assert "lr" not in distributions


def test_fixed_scalars_are_respected_and_not_optuna_parameters() -> None:
    space = parse_search(
        {
            "optimizers": {"yogi": {"eps": 1e-3, "lr": 0.02}},
            "schedules": {"cosine": {"final_lr_ratio": 0.01}},
            "warmup": {"fraction": 0.05},
        }
    )
    study = _study()
    for _ in range(5):
        trial = study.ask()
        config = sample_config(trial, space)
        assert config.kwargs["eps"] == 1e-3 and config.kwargs["lr"] == 0.02
        assert config.schedule == {"name": "cosine", "final_lr_ratio": 0.01}
        assert config.warmup == {"fraction": 0.05, "begin_lr": 0.0}
        # One optimizer, one schedule, fixed warmup: nothing to choose there.
        assert not {"optimizer", "schedule", "yogi.eps", "yogi.lr", "warmup.fraction"} & set(
            trial.params
        )
        study.tell(trial, 0.0)


def test_weight_decay_zero_is_reachable_with_default_ranges() -> None:
    space = parse_search({"optimizers": {"adamw": {}}, "schedules": ["constant"]})
    study = _study(seed=1)
    decays = []
    for _ in range(40):
        trial = study.ask()
        decays.append(sample_config(trial, space).kwargs["weight_decay"])
        study.tell(trial, 0.0)
    assert 0.0 in decays
    assert any(d > 0 for d in decays)


def test_schedule_and_warmup_parameters_are_prefixed_and_conditional() -> None:
    space = parse_search(
        {
            "optimizers": {"sgd": {}},
            "schedules": {"cosine": {}, "step": {}, "custom": "math:cos"},
            "warmup": {"steps": {"low": 1, "high": 20}},
        }
    )
    study = _study()
    seen = set()
    for _ in range(30):
        trial = study.ask()
        config = sample_config(trial, space)
        name = config.schedule["name"]
        seen.add(name)
        assert trial.params["schedule"] == name
        assert 1 <= trial.params["warmup.steps"] <= 20 and config.warmup is not None
        assert config.warmup["steps"] == trial.params["warmup.steps"]
        if name == "step":
            assert config.schedule["gamma"] == trial.params["schedule.step.gamma"]
            assert config.schedule["milestones"] == [0.5, 0.75]
        if name == "custom":
            assert config.schedule == {"name": "custom", "function": "math:cos"}
        sched_params = {k for k in trial.params if k.startswith("schedule.")}
        assert all(k.startswith(f"schedule.{name}.") for k in sched_params)
        study.tell(trial, 0.0)
    assert seen == {"cosine", "step", "custom"}
