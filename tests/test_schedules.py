"""Schedules: every catalog entry against its formula, against torch and D2L, warmup, resume."""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tuner.catalog.schedules import SCHEDULES, build_scheduler, get_schedule
from tuner.core.errors import CatalogError, ConfigError

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def _custom_module_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))


def _optimizer(*lrs: float) -> torch.optim.Optimizer:
    groups = [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def _lrs(sched: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[list[float]]:
    """Each group's lr at steps 0..steps-1, stepping the way a training loop does."""
    out = []
    for _ in range(steps):
        out.append(list(sched.get_last_lr()))
        sched.optimizer.step()
        sched.step()
    return out


# Independent transcriptions of each formula (step s of a schedule of length S), with the
# hyperparameter values used below. A schedule added to the registry without one here fails.
def _onecycle_ref(s: int, S: int) -> float:
    pct_start, div, final_div = 0.25, 10.0, 100.0
    lo, hi, end = 1 / div, 1.0, 1 / div / final_div
    up = pct_start * S - 1
    if s <= up:
        return hi + (lo - hi) * (1 + math.cos(math.pi * s / up)) / 2
    pct = min((s - up) / (S - 1 - up), 1.0)
    return end + (hi - end) * (1 + math.cos(math.pi * pct)) / 2


REFERENCES: dict[str, tuple[dict, Callable[[int, int], float]]] = {
    "constant": ({}, lambda s, S: 1.0),
    "step": (
        {"gamma": 0.3, "milestones": [0.25, 0.6]},
        lambda s, S: 0.3 ** ((s >= round(0.25 * S)) + (s >= round(0.6 * S))),
    ),
    "exponential": ({"final_lr_ratio": 0.05}, lambda s, S: 0.05 ** (s / S)),
    "linear": ({"final_lr_ratio": 0.1}, lambda s, S: 1 - 0.9 * s / S),
    "polynomial": (
        {"power": 2.0, "final_lr_ratio": 0.1},
        lambda s, S: 0.1 + 0.9 * (1 - s / S) ** 2,
    ),
    "cosine": (
        {"final_lr_ratio": 0.1},
        lambda s, S: 0.1 + 0.9 * (1 + math.cos(math.pi * s / S)) / 2,
    ),
    "onecycle": ({"pct_start": 0.25, "div_factor": 10.0, "final_div_factor": 100.0}, _onecycle_ref),
    "custom": ({"function": "custom_lr:halving"}, lambda s, S: 0.5 ** (4 * s // S)),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("warmup", [None, {"steps": 4, "begin_lr": 0.02}])
def test_every_schedule_follows_its_formula_at_every_step(name: str, warmup: dict | None) -> None:
    values, ref = REFERENCES[name]
    total, base = 24, 0.2
    sched = build_scheduler(_optimizer(base), {"name": name, **values}, warmup, total)
    w = 0 if warmup is None else 4
    length = total - w
    # Past total_steps the lr holds its final value.
    for t, (lr,) in enumerate(_lrs(sched, total + 3)):
        warming = t < w
        expected = (
            0.02 + (base - 0.02) * t / w if warming else base * ref(min(t - w, length), length)
        )
        assert lr == pytest.approx(expected, rel=1e-12, abs=1e-15), (name, t)


class D2LCosineScheduler:
    """Transcribed from Dive into Deep Learning §12.11 (d2l.ai, lr-scheduler)."""

    def __init__(self, max_update, base_lr=0.01, final_lr=0, warmup_steps=0, warmup_begin_lr=0):
        self.base_lr_orig = base_lr
        self.max_update = max_update
        self.final_lr = final_lr
        self.warmup_steps = warmup_steps
        self.warmup_begin_lr = warmup_begin_lr
        self.max_steps = self.max_update - self.warmup_steps

    def get_warmup_lr(self, epoch):
        increase = (
            (self.base_lr_orig - self.warmup_begin_lr) * float(epoch) / float(self.warmup_steps)
        )
        return self.warmup_begin_lr + increase

    def __call__(self, epoch):
        if epoch < self.warmup_steps:
            return self.get_warmup_lr(epoch)
        if epoch <= self.max_update:
            self.base_lr = (
                self.final_lr
                + (self.base_lr_orig - self.final_lr)
                * (1 + math.cos(math.pi * (epoch - self.warmup_steps) / self.max_steps))
                / 2
            )
        return self.base_lr


def test_warmup_cosine_reproduces_d2l_cosine_scheduler() -> None:
    d2l = D2LCosineScheduler(20, warmup_steps=5, base_lr=0.3, final_lr=0.01)
    sched = build_scheduler(
        _optimizer(0.3), {"name": "cosine", "final_lr_ratio": 0.01 / 0.3}, {"steps": 5}, 20
    )
    ours = [lrs[0] for lrs in _lrs(sched, 21)]
    assert ours == pytest.approx([d2l(t) for t in range(21)], rel=1e-12, abs=1e-15)
    assert ours[5] == pytest.approx(0.3) and ours[20] == pytest.approx(0.01)


def test_step_matches_torch_multisteplr() -> None:
    ours = build_scheduler(
        _optimizer(0.5, 0.1), {"name": "step", "gamma": 0.2, "milestones": [0.3, 0.8]}, None, 40
    )
    torch_sched = torch.optim.lr_scheduler.MultiStepLR(
        _optimizer(0.5, 0.1), milestones=[12, 32], gamma=0.2
    )
    np.testing.assert_allclose(_lrs(ours, 40), _lrs(torch_sched, 40), rtol=1e-12)


def test_exponential_matches_torch_exponentiallr() -> None:
    ours = build_scheduler(
        _optimizer(0.5, 0.1), {"name": "exponential", "final_lr_ratio": 0.01}, None, 30
    )
    torch_sched = torch.optim.lr_scheduler.ExponentialLR(
        _optimizer(0.5, 0.1), gamma=0.01 ** (1 / 30)
    )
    np.testing.assert_allclose(_lrs(ours, 31), _lrs(torch_sched, 31), rtol=1e-12)
    assert ours.get_last_lr()[0] == pytest.approx(0.5 * 0.01)


def test_onecycle_matches_torch_onecyclelr_lr_curve() -> None:
    values = {"name": "onecycle", "pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4}
    ours = build_scheduler(_optimizer(0.4, 0.04), values, None, 50)
    torch_sched = torch.optim.lr_scheduler.OneCycleLR(
        _optimizer(0.4, 0.04), max_lr=[0.4, 0.04], total_steps=50, cycle_momentum=False
    )
    np.testing.assert_allclose(_lrs(ours, 50), _lrs(torch_sched, 50), rtol=1e-12)


def test_param_groups_are_each_scaled_from_their_own_base_lr() -> None:
    sched = build_scheduler(
        _optimizer(1.0, 0.1, 0.01),
        {"name": "cosine", "final_lr_ratio": 0.0},
        {"fraction": 0.25, "begin_lr": 0.001},
        40,
    )
    lrs = _lrs(sched, 41)
    assert lrs[0] == pytest.approx([0.001, 0.001, 0.001])  # warmup starts at begin_lr for all
    assert lrs[10] == pytest.approx([1.0, 0.1, 0.01])  # and reaches each group's own base lr
    for t in range(10, 41):
        assert lrs[t][1] == pytest.approx(lrs[t][0] / 10, abs=1e-15)
        assert lrs[t][2] == pytest.approx(lrs[t][0] / 100, abs=1e-15)
    assert lrs[40] == pytest.approx([0.0, 0.0, 0.0], abs=1e-15)


@pytest.mark.parametrize(
    "schedule",
    [
        {"name": "cosine", "final_lr_ratio": 0.1},
        {"name": "custom", "function": "custom_lr:halving"},
    ],
)
def test_state_dict_resume_continues_the_same_curve(schedule: dict) -> None:
    warmup = {"steps": 3, "begin_lr": 0.0}
    straight = build_scheduler(_optimizer(0.3, 0.03), schedule, warmup, 20)
    expected = _lrs(straight, 20)

    first = build_scheduler(_optimizer(0.3, 0.03), schedule, warmup, 20)
    before = _lrs(first, 8)
    # Through pickle, as torch.save does: the state is plain data.
    buffer = io.BytesIO()
    pickle.dump((first.optimizer.state_dict(), first.state_dict()), buffer)
    opt_state, sched_state = pickle.loads(buffer.getvalue())

    optimizer = _optimizer(0.3, 0.03)
    resumed = build_scheduler(optimizer, schedule, warmup, 20)
    optimizer.load_state_dict(opt_state)
    resumed.load_state_dict(sched_state)
    np.testing.assert_allclose(before + _lrs(resumed, 12), expected, rtol=1e-12)


def test_custom_schedule_is_imported_by_dotted_name() -> None:
    sched = build_scheduler(
        _optimizer(1.0), {"name": "custom", "function": "custom_lr:halving"}, None, 8
    )
    assert [lr for (lr,) in _lrs(sched, 9)] == [1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.0625]


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("custom_lr", 'named "pkg.module:function"'),
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("custom_lr:missing", "'custom_lr:missing' cannot be found"),
        ("custom_lr:NOT_CALLABLE", "'custom_lr:NOT_CALLABLE' must be a callable"),
    ],
)
def test_custom_schedule_errors_name_the_dotted_path(function: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"schedule\.function") as info:
        build_scheduler(_optimizer(1.0), {"name": "custom", "function": function}, None, 8)
    assert message in str(info.value)


def test_unknown_schedule_lists_the_known_ones() -> None:
    with pytest.raises(CatalogError) as info:
        get_schedule("cosin")
    message = str(info.value)
    assert "'cosin'" in message
    for name in SCHEDULES:
        assert name in message


@pytest.mark.parametrize(
    ("schedule", "warmup", "total", "message"),
    [
        ({"name": "cosine", "final_lr_ratio": 2.0}, None, 10, "schedule.final_lr_ratio: `0 <= "),
        ({"name": "cosine", "gamma": 0.1}, None, 10, "schedule.gamma: schedule 'cosine' takes"),
        ({"name": "step", "milestones": [0.8, 0.2]}, None, 10, "schedule.milestones: "),
        ({"name": "cosine"}, {"steps": 10}, 10, "`steps < total_steps` must hold"),
        ({"name": "cosine"}, {"steps": 2, "fraction": 0.1}, 10, "exactly one of"),
        ({"name": "cosine"}, {"fraction": 1.5}, 10, "warmup.fraction: `0 <= fraction < 1`"),
        ({"name": "cosine"}, None, 0, "total_steps: `total_steps >= 1` must hold, but got 0"),
    ],
)
def test_invalid_schedules_are_rejected_with_field_rule_and_value(
    schedule: dict, warmup: dict | None, total: int, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_scheduler(_optimizer(1.0), schedule, warmup, total)
    assert message in str(info.value)


def test_fraction_warmup_rounds_to_whole_steps_and_zero_disables_it() -> None:
    assert (
        build_scheduler(_optimizer(1.0), "cosine", {"fraction": 0.07}, 100).curve.warmup_steps == 7
    )
    assert build_scheduler(_optimizer(1.0), "cosine", {"fraction": 0}, 100).warmup is None
    assert get_schedule("step").defaults() == {"gamma": 0.1, "milestones": [0.5, 0.75]}
