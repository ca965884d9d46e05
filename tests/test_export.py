"""The exported configuration (docs/answer.md): YAML/JSON round trip, build, rendered code."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from tuner.catalog.export import OptimizerConfig, build_optimizer, load_optimizer_config
from tuner.catalog.optim import OPTIMIZERS
from tuner.catalog.render import render_torch_code
from tuner.catalog.schedules import SCHEDULES
from tuner.core.errors import ConfigError

TESTS = Path(__file__).parent

DESIGN_YAML = """\
optimizer: adamw
lr: 0.0012
betas: [0.9, 0.995]
eps: 1.0e-08
weight_decay: 0.01
amsgrad: false
schedule: {name: cosine, final_lr_ratio: 0.01}
warmup: {fraction: 0.05, begin_lr: 0.0}
"""
DESIGN_DOC = yaml.safe_load(DESIGN_YAML)


@pytest.fixture(autouse=True)
def _custom_module_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))


def test_design_document_loads_and_exports_unchanged() -> None:
    config = load_optimizer_config(DESIGN_DOC)
    assert config.optimizer == "adamw"
    assert config.kwargs["betas"] == (0.9, 0.995)  # what torch receives
    assert config.schedule == {"name": "cosine", "final_lr_ratio": 0.01}
    assert config.warmup == {"fraction": 0.05, "begin_lr": 0.0}
    assert config.to_dict() == DESIGN_DOC
    assert list(config.to_dict()) == list(DESIGN_DOC)
    assert config.to_yaml() == DESIGN_YAML


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_file_round_trip_keeps_every_value(tmp_path: Path, suffix: str) -> None:
    config = load_optimizer_config(
        {
            "optimizer": "nesterov",
            "lr": 0.123456789012345,
            "momentum": 0.987654321,
            "schedule": {"name": "step", "gamma": 0.3, "milestones": [0.3, 0.7]},
            "warmup": {"steps": 17, "begin_lr": 1e-5},
        }
    )
    file = tmp_path / f"best{suffix}"
    file.write_text(config.to_json() if suffix == ".json" else config.to_yaml())
    loaded = load_optimizer_config(file)
    assert loaded == config
    assert loaded.kwargs["nesterov"] is True
    assert load_optimizer_config(str(file)).to_dict() == config.to_dict()
    if suffix == ".json":
        assert json.loads(file.read_text()) == config.to_dict()


def test_missing_values_take_defaults() -> None:
    config = load_optimizer_config({"optimizer": "adam", "lr": 1e-3})
    defaults = OPTIMIZERS["adam"].to_kwargs(OPTIMIZERS["adam"].defaults())
    assert config.kwargs == {**defaults, "lr": 1e-3}
    assert config.schedule == {"name": "constant"} and config.warmup is None


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"optimizer": "adamx"}, ["adamx", *OPTIMIZERS]),
        ({"lr": 0.1}, ["config.optimizer: is required"]),
        ({"optimizer": "adam", "lr": -1.0}, ["lr", "-1.0"]),
        ({"optimizer": "adam", "momentum": 0.9}, ["config.momentum", "unknown", "betas"]),
        ({"optimizer": "adam", "betas": [0.9]}, ["config.betas", "pair", "[0.9]"]),
        ({"optimizer": "nesterov", "nesterov": False}, ["config.nesterov", "fixed", "False"]),
        ({"optimizer": "adam", "schedule": "cosin"}, ["'cosin'", *SCHEDULES]),
        (
            {"optimizer": "adam", "schedule": {"name": "cosine", "final_lr_ratio": -0.5}},
            ["config.schedule.final_lr_ratio", "`0 <= final_lr_ratio <= 1`", "-0.5"],
        ),
        (
            {"optimizer": "adam", "warmup": {"fraction": 2}},
            ["config.warmup.fraction", "`0 <= fraction < 1`", "2"],
        ),
        (
            {"optimizer": "adam", "schedule": {"name": "custom", "function": "custom_lr:nope"}},
            ["config.schedule.function", "'custom_lr:nope' cannot be found"],
        ),
    ],
)
def test_invalid_documents_are_rejected_with_a_clear_message(doc: dict, expected: list) -> None:
    with pytest.raises(ConfigError) as info:
        load_optimizer_config(doc)
    for text in expected:
        assert text in str(info.value)


def test_unreadable_or_malformed_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_optimizer_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{optimizer: adam")
    with pytest.raises(ConfigError, match="not valid json"):
        load_optimizer_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("optimizer: adam\nlr: -3.0\n")
    with pytest.raises(ConfigError, match=r"wrong\.yaml") as info:
        load_optimizer_config(wrong)
    assert "-3.0" in str(info.value)


def test_build_optimizer_returns_plain_torch_objects_per_group() -> None:
    model = torch.nn.Linear(3, 2)
    groups = [{"params": [model.weight]}, {"params": [model.bias], "lr": 0.01}]
    optimizer, scheduler = build_optimizer(groups, DESIGN_DOC, total_steps=100)
    assert type(optimizer) is torch.optim.AdamW
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.995)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    # 5 warmup steps: from 0 to each group's own base lr.
    assert scheduler.get_last_lr() == pytest.approx([0.0012, 0.01])


# One config per schedule (so every renderer runs), spread over the optimizers, with and
# without warmup (from 0 and from begin_lr > 0) and with param groups.
RENDERED = [
    (
        DESIGN_DOC,
        False,
    ),
    (
        {
            "optimizer": "nesterov",
            "lr": 0.05,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "schedule": {"name": "step", "gamma": 0.3, "milestones": [0.4, 0.8]},
            "warmup": {"steps": 5, "begin_lr": 0.001},
        },
        True,
    ),
    ({"optimizer": "adam", "lr": 3e-3, "amsgrad": True, "schedule": "onecycle"}, True),
    (
        {
            "optimizer": "rmsprop",
            "lr": 1e-3,
            "centered": True,
            "momentum": 0.5,
            "schedule": {"name": "polynomial", "power": 2.0, "final_lr_ratio": 0.05},
            "warmup": {"steps": 3, "begin_lr": 0.0},
        },
        False,
    ),
    (
        {
            "optimizer": "yogi",
            "lr": 1e-2,
            "schedule": {"name": "exponential", "final_lr_ratio": 0.05},
            "warmup": {"fraction": 0.2, "begin_lr": 0.0},
        },
        True,
    ),
    (
        {
            "optimizer": "momentum",
            "lr": 0.05,
            "momentum": 0.8,
            "dampening": 0.1,
            "schedule": {"name": "linear", "final_lr_ratio": 0.0},
        },
        False,
    ),
    ({"optimizer": "adagrad", "lr": 0.05, "warmup": {"steps": 4, "begin_lr": 0.01}}, False),
    (
        {
            "optimizer": "adadelta",
            "lr": 1.0,
            "schedule": {"name": "custom", "function": "custom_lr:halving"},
            "warmup": {"steps": 5, "begin_lr": 0.0},
        },
        False,
    ),
    ({"optimizer": "sgd", "lr": 0.1, "weight_decay": 0.01, "schedule": "cosine"}, True),
]


def _groups(model: torch.nn.Module, lr: float) -> list[dict]:
    return [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": lr / 3}]


def test_every_schedule_and_optimizer_is_covered_by_the_render_test() -> None:
    docs = [doc for doc, _ in RENDERED]
    schedules = {load_optimizer_config(doc).schedule["name"] for doc in docs}
    assert schedules == set(SCHEDULES)
    assert {doc["optimizer"] for doc in docs} == set(OPTIMIZERS)


@pytest.mark.parametrize(("doc", "groups"), RENDERED, ids=lambda v: str(v)[:40])
def test_rendered_code_reproduces_build_optimizer_exactly(doc: dict, groups: bool) -> None:
    config = load_optimizer_config(doc)
    total = 50
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    twin = copy.deepcopy(model)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    lr = config.kwargs["lr"]

    optimizer, scheduler = build_optimizer(
        _groups(model, lr) if groups else model.parameters(), config, total_steps=total
    )
    code = render_torch_code(
        config, params="groups" if groups else "model.parameters()", total_steps=total
    )
    namespace: dict = {"model": twin, "groups": _groups(twin, lr) if groups else None}
    exec(compile(code, "<rendered>", "exec"), namespace)
    rendered_opt, rendered_sched = namespace["optimizer"], namespace["scheduler"]
    # Yogi is printed with the code (torch has none), so only its name matches.
    assert type(rendered_opt).__name__ == type(optimizer).__name__

    for step in range(total):
        assert [g["lr"] for g in rendered_opt.param_groups] == [
            g["lr"] for g in optimizer.param_groups
        ], step
        for net, opt, sched in (
            (model, optimizer, scheduler),
            (twin, rendered_opt, rendered_sched),
        ):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
            sched.step()
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.equal(a, b), step
    assert rendered_sched.get_last_lr() == scheduler.get_last_lr()


def test_rendered_code_reads_as_plain_torch() -> None:
    code = render_torch_code(load_optimizer_config(DESIGN_DOC))
    assert "optimizer = torch.optim.AdamW(\n    model.parameters(),\n    lr=0.0012," in code
    assert "betas=(0.9, 0.995)," in code
    assert "scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)" in code
    assert "total_steps = 10000" in code and "tuner" not in code.split("\n", 1)[1]
    yogi = render_torch_code(OptimizerConfig("yogi", {"lr": 0.01}))
    assert "class Yogi(torch.optim.Optimizer):" in yogi and "optimizer = Yogi(" in yogi
    assert "tuner" not in yogi.split("\n", 1)[1]
