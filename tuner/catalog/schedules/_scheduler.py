"""Warmup in front of any schedule, as a pure curve (the torch ``LRScheduler`` is in ``_torch``).

With ``W`` warmup steps out of ``total_steps`` ``T``, each param group's lr at optimizer step
``t`` is::

    t <  W:  begin_lr + (base_lr - begin_lr) * t / W        (linear warmup)
    t >= W:  base_lr * factor(min(t - W, T - W), T - W)      (the schedule over the rest)

Past ``T`` the lr holds its final value. Every group is scaled from its own base lr.

Example::

    >>> schedule = normalize_schedule({"name": "cosine"}, path="schedule")
    >>> curve = Curve(schedule, total_steps=10, warmup_steps=2, begin_lr=0.0)
    >>> [round(lr, 4) for lr in (curve.lr(t, 0.1) for t in (0, 1, 2, 10))]
    [0.0, 0.05, 0.1, 0.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tuner.catalog.schedules import _factors
from tuner.catalog.schedules._registry import WARMUP_HPARAMS, Factor, get_schedule
from tuner.core.errors import ConfigError

__all__ = [
    "Curve",
    "normalize_schedule",
    "normalize_warmup",
    "warmup_steps",
]


def normalize_schedule(schedule: str | Mapping[str, Any] | None, *, path: str) -> dict[str, Any]:
    """A schedule given as a name or a mapping with ``name``, checked, with defaults filled in.

    ``None`` is the constant schedule.

    Example::

        >>> normalize_schedule("step", path="schedule")
        {'name': 'step', 'gamma': 0.1, 'milestones': [0.5, 0.75]}
    """
    if schedule is None:
        schedule = "constant"
    if isinstance(schedule, str):
        schedule = {"name": schedule}
    if not isinstance(schedule, Mapping):
        raise ConfigError(
            f"{path}: a schedule is a name or a mapping with `name`, but got {schedule!r}"
        )
    if "name" not in schedule:
        raise ConfigError(f"{path}.name: a schedule mapping needs `name`, but got {schedule!r}")
    return get_schedule(schedule["name"]).normalize(schedule, path=path)


def normalize_warmup(warmup: Mapping[str, Any] | None, *, path: str) -> dict[str, Any] | None:
    """Warmup as ``{"fraction": f, "begin_lr": b}`` or ``{"steps": n, "begin_lr": b}``, or None.

    A length of 0 is no warmup (None).

    Example::

        >>> normalize_warmup({"steps": 100}, path="warmup")
        {'steps': 100, 'begin_lr': 0.0}
    """
    if warmup is None:
        return None
    if not isinstance(warmup, Mapping):
        raise ConfigError(
            f"{path}: warmup is a mapping {{fraction: ...}} or {{steps: ...}}, but got {warmup!r}"
        )
    unknown = sorted(set(warmup) - set(WARMUP_HPARAMS))
    if unknown:
        raise ConfigError(
            f"{path}.{unknown[0]}: warmup takes {', '.join(WARMUP_HPARAMS)}, but got {unknown[0]!r}"
        )
    units = [k for k in ("fraction", "steps") if k in warmup]
    if len(units) != 1:
        raise ConfigError(
            f"{path}: warmup needs exactly one of `fraction` or `steps`, but got {dict(warmup)!r}"
        )
    unit = units[0]
    for key, value in warmup.items():
        WARMUP_HPARAMS[key].validate_value(value, path=f"{path}.{key}")
    if warmup[unit] == 0:
        return None
    length = int(warmup[unit]) if unit == "steps" else float(warmup[unit])
    return {unit: length, "begin_lr": float(warmup.get("begin_lr", 0.0))}


def warmup_steps(warmup: Mapping[str, Any] | None, total_steps: int) -> int:
    """The number of warmup steps W for a normalized warmup; the schedule gets T - W >= 1.

    A fraction is rounded to the nearest step and, for tiny runs, shortened to leave the
    schedule one step; a step count that leaves none is an error.
    """
    if warmup is None:
        return 0
    if "steps" in warmup:
        steps = int(warmup["steps"])
        if steps >= total_steps:
            raise ConfigError(
                f"warmup.steps: `steps < total_steps` must hold, but got "
                f"(steps={steps}, total_steps={total_steps})"
            )
        return steps
    return min(round(warmup["fraction"] * total_steps), total_steps - 1)


def _check_total_steps(total_steps: Any) -> None:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int):
        raise ConfigError(f"total_steps: must be an integer, but got {total_steps!r}")
    if total_steps < 1:
        raise ConfigError(f"total_steps: `total_steps >= 1` must hold, but got {total_steps}")


@dataclass(frozen=True)
class Curve:
    """The lr of one param group as a pure function of the optimizer step.

    ``schedule`` is a normalized schedule mapping (see :func:`normalize_schedule`).

    Example::

        >>> curve = Curve({"name": "linear", "final_lr_ratio": 0.0}, total_steps=4)
        >>> [curve.factor(t, base_lr=1.0) for t in range(5)]
        [1.0, 0.75, 0.5, 0.25, 0.0]
    """

    schedule: Mapping[str, Any]
    total_steps: int
    warmup_steps: int = 0
    begin_lr: float = 0.0
    _factor: Factor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_total_steps(self.total_steps)
        if not 0 <= self.warmup_steps < self.total_steps:
            raise ConfigError(
                f"warmup: `0 <= warmup steps < total_steps` must hold, but got "
                f"(warmup steps={self.warmup_steps}, total_steps={self.total_steps})"
            )
        spec = get_schedule(self.schedule["name"])
        object.__setattr__(self, "_factor", spec.bind(self.schedule))

    def factor(self, step: int, base_lr: float) -> float:
        """The multiplier of ``base_lr`` at optimizer step ``step``."""
        w = self.warmup_steps
        if step < w:
            return _factors.warmup(step, w, self.begin_lr / base_lr if base_lr else 0.0)
        length = self.total_steps - w
        return float(self._factor(min(step - w, length), length))

    def lr(self, step: int, base_lr: float) -> float:
        """The lr at ``step`` for a group whose base lr is ``base_lr``."""
        return base_lr * self.factor(step, base_lr)
