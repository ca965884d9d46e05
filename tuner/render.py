"""An exported configuration as plain, runnable torch code (``tuner best --format python``).

The printed code needs no tuner (except for Yogi, which torch lacks): a ``torch.optim``
optimizer and a ``LambdaLR`` whose ``lr_factor`` repeats, operation for operation, the factor
:func:`tuner.export.build_optimizer` schedules, so both give the same learning rates to the bit.

Example::

    >>> from tuner.export import OptimizerConfig, _document_order
    >>> cfg = OptimizerConfig("sgd", {"lr": 0.1}, {"name": "constant"})
    >>> print(render_torch_code(cfg, total_steps=100))  # doctest: +ELLIPSIS
    # Exported by tuner: sgd, constant schedule.
    import torch
    ...
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=0.1,
    )
    ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import torch

from tuner.export import OptimizerConfig, _document_order
from tuner.optim import get_optimizer
from tuner.schedules import SCHEDULES

__all__ = ["render_torch_code"]

# Each renderer returns the body of lr_factor after warmup, in terms of `s` (the schedule's
# step, already clamped) and `schedule_steps`, using the same float operations in the same
# order as tuner.schedules._factors; literals are repr()s, which round-trip exactly.
_Body = Callable[[Mapping[str, Any]], list[str]]


def _constant(values: Mapping[str, Any]) -> list[str]:
    return ["return 1.0"]


def _step(values: Mapping[str, Any]) -> list[str]:
    milestones = tuple(float(m) for m in values["milestones"])
    return [
        f"milestones = [round(m * schedule_steps) for m in {milestones!r}]",
        f"return {float(values['gamma'])!r} ** sum(1 for m in milestones if m <= s)",
    ]


def _exponential(values: Mapping[str, Any]) -> list[str]:
    return [f"return ({float(values['final_lr_ratio'])!r} ** (1.0 / schedule_steps)) ** s"]


def _linear(values: Mapping[str, Any]) -> list[str]:
    r = float(values["final_lr_ratio"])
    return [f"return 1.0 - {1.0 - r!r} * s / schedule_steps"]


def _polynomial(values: Mapping[str, Any]) -> list[str]:
    r, power = float(values["final_lr_ratio"]), float(values["power"])
    return [f"return {r!r} + {1.0 - r!r} * (1.0 - s / schedule_steps) ** {power!r}"]


def _cosine(values: Mapping[str, Any]) -> list[str]:
    r = float(values["final_lr_ratio"])
    return [f"return {r!r} + {1.0 - r!r} * (1.0 + math.cos(math.pi * s / schedule_steps)) / 2.0"]


def _onecycle(values: Mapping[str, Any]) -> list[str]:
    div, final_div = float(values["div_factor"]), float(values["final_div_factor"])
    return [
        "# torch's OneCycleLR lr curve (cosine annealing) with max_lr = the base lr;",
        "# no momentum cycling.",
        f"start = 1.0 / {div!r}",
        f"end = start / {final_div!r}",
        f"peak = float({float(values['pct_start'])!r} * schedule_steps) - 1",
        "last = schedule_steps - 1",
        "if peak > 0 and s <= peak:",
        "    frm, to, pct = start, 1.0, s / peak",
        "else:",
        "    frm, to = 1.0, end",
        "    pct = 1.0 if last - peak <= 0 else min((s - peak) / (last - peak), 1.0)",
        "return to + (frm - to) / 2.0 * (math.cos(math.pi * pct) + 1)",
    ]


def _custom(values: Mapping[str, Any]) -> list[str]:
    attr = values["function"].split(":")[1]
    return [f"return float({attr}(s, schedule_steps))"]


_BODIES: dict[str, _Body] = {
    "constant": _constant,
    "step": _step,
    "exponential": _exponential,
    "linear": _linear,
    "polynomial": _polynomial,
    "cosine": _cosine,
    "onecycle": _onecycle,
    "custom": _custom,
}


def _optimizer_class(cls: type) -> tuple[str, list[str]]:
    """How the code names the optimizer class, and the import lines it needs."""
    if getattr(torch.optim, cls.__name__, None) is cls:
        return f"torch.optim.{cls.__name__}", []
    # Not in torch (Yogi): import it from the shortest public module that exports it.
    parts = cls.__module__.split(".")
    for i in range(2, len(parts) + 1):
        module = ".".join(parts[:i])
        if getattr(importlib.import_module(module), cls.__name__, None) is cls:
            break
    return cls.__name__, [
        f"# torch has no {cls.__name__}: this is tuner's implementation (needs tuner installed).",
        f"from {module} import {cls.__name__}",
    ]


def _literal(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(v) for v in value) + ")"
    return repr(value)  # floats: repr round-trips exactly


def _factor_lines(schedule: Mapping[str, Any], warmup: Mapping[str, Any] | None) -> list[str]:
    """``lr_factor``: the same warmup and schedule arithmetic as tuner.schedules.Curve."""
    body = [f"    {line}" for line in _BODIES[schedule["name"]](schedule)]
    if warmup is None:
        return [
            "schedule_steps = total_steps",
            "",
            "",
            "def lr_factor(step: int) -> float:",
            '    """Multiplier of each param group\'s base lr at optimizer step `step`."""',
            "    s = min(step, schedule_steps)  # past the end: hold the final lr",
            *body,
        ]
    if "steps" in warmup:
        lines = [f"warmup_steps = {int(warmup['steps'])}"]
    else:
        fraction = float(warmup["fraction"])
        lines = [f"warmup_steps = min(round({fraction!r} * total_steps), total_steps - 1)"]
    lines += ["schedule_steps = total_steps - warmup_steps", ""]
    begin_lr = float(warmup["begin_lr"])
    if begin_lr != 0.0:
        lines += [
            f"begin_lr = {begin_lr!r}",
            "",
            "",
            "def lr_factor(step: int, base_lr: float) -> float:",
            '    """Multiplier of a group\'s base lr: linear warmup from begin_lr, then the '
            'schedule."""',
            "    if step < warmup_steps:",
            "        begin = begin_lr / base_lr",
            "        return begin + (1.0 - begin) * step / warmup_steps",
        ]
    else:
        lines += [
            "",
            "def lr_factor(step: int) -> float:",
            '    """Multiplier of each param group\'s base lr: linear warmup from 0, then the '
            'schedule."""',
            "    if step < warmup_steps:",
            "        return step / warmup_steps",
        ]
    lines.append(
        "    s = min(step - warmup_steps, schedule_steps)  # past the end: hold the final lr"
    )
    return lines + body


def render_torch_code(
    config: OptimizerConfig, *, params: str = "model.parameters()", total_steps: int = 10_000
) -> str:
    """Plain torch code that builds the same optimizer and lr schedule as ``build_optimizer``.

    ``params`` is the expression the code passes to the optimizer (a ``model`` is assumed by
    default; param-group lists work too, each group scheduled from its own lr);
    ``total_steps`` is printed as a variable the user sets to the run's optimizer steps.

    Example::

        >>> from tuner.export import OptimizerConfig, _document_order
        >>> cfg = OptimizerConfig("adamw", {"lr": 1e-3}, {"name": "cosine", "final_lr_ratio": 0.0},
        ...                       {"fraction": 0.05, "begin_lr": 0.0})
        >>> "LambdaLR(optimizer, lr_factor)" in render_torch_code(cfg)
        True
    """
    spec = get_optimizer(config.optimizer)
    schedule = dict(config.schedule)
    if schedule["name"] not in _BODIES:
        raise ValueError(f"no renderer for schedule {schedule['name']!r}; known: {list(SCHEDULES)}")
    class_name, class_imports = _optimizer_class(spec.factory)
    warmup = config.warmup
    begin_lr = 0.0 if warmup is None else float(warmup["begin_lr"])
    # With begin_lr 0 warmup is the same ratio for every group; otherwise it depends on each
    # group's base lr, so each group gets its own factor.
    per_group = begin_lr != 0.0

    stdlib = ["import math"] if schedule["name"] in ("cosine", "onecycle") else []
    if per_group:
        stdlib.append("from functools import partial")
    user: list[str] = list(class_imports)
    if schedule["name"] == "custom":
        module, attr = schedule["function"].split(":")
        user.append(f"from {module} import {attr.split('.')[0]}  # your schedule function")
    lines = [
        f"# Exported by tuner: {config.optimizer}, {schedule['name']} schedule"
        + ("" if warmup is None else f", warmup {dict(warmup)}")
        + ".",
        *stdlib,
        *([""] if stdlib else []),
        "import torch",
        *([""] if user else []),
        *user,
        "",
        f"total_steps = {total_steps}  # set to the number of optimizer steps of your run",
        "",
        f"optimizer = {class_name}(",
        f"    {params},",
        *(
            f"    {key}={_literal(config.kwargs[key])},"
            for key in _document_order(config.optimizer, config.kwargs)
        ),
        ")",
        "",
    ]
    lines += _factor_lines(schedule, warmup)
    lines += ["", "", "# Call scheduler.step() once after every optimizer.step()."]
    if per_group:
        lines.append(
            "scheduler = torch.optim.lr_scheduler.LambdaLR(\n"
            '    optimizer, [partial(lr_factor, base_lr=g["lr"]) for g in optimizer.param_groups]\n'
            ")"
        )
    else:
        lines.append("scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)")
    return "\n".join(lines) + "\n"
