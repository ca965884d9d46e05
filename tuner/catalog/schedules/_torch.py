"""The torch side of the schedules: warmup then a catalog schedule as a torch ``LRScheduler``.

Apart from the pure curves of ``_scheduler`` so that reading the catalog needs no torch (``tuner
launch`` validates a study file without importing it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from tuner.catalog.schedules._scheduler import (
    Curve,
    _check_total_steps,
    normalize_schedule,
    normalize_warmup,
    warmup_steps,
)

__all__ = ["WarmupScheduleLR", "build_scheduler"]


class WarmupScheduleLR(LRScheduler):
    """Warmup then a catalog schedule, as a plain torch ``LRScheduler``.

    ``get_lr`` is a pure function of ``last_epoch`` (the number of ``step()`` calls), so
    ``state_dict()`` / ``load_state_dict()`` resume on the same curve. The state holds only
    plain data (the schedule mapping, the warmup, ``total_steps``); the custom function is
    imported again from its dotted name on load.

    Example::

        >>> import torch
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched = WarmupScheduleLR(opt, {"name": "linear", "final_lr_ratio": 0.0}, 4)
        >>> opt.step(); sched.step(); sched.get_last_lr()
        [0.75]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedule: str | Mapping[str, Any] | None,
        total_steps: int,
        warmup: Mapping[str, Any] | None = None,
        last_epoch: int = -1,
    ) -> None:
        self.schedule = normalize_schedule(schedule, path="schedule")
        self.warmup = normalize_warmup(warmup, path="warmup")
        self.total_steps = total_steps
        self.curve = self._make_curve()
        super().__init__(optimizer, last_epoch)

    def _make_curve(self) -> Curve:
        _check_total_steps(self.total_steps)
        return Curve(
            self.schedule,
            self.total_steps,
            warmup_steps(self.warmup, self.total_steps),
            0.0 if self.warmup is None else self.warmup["begin_lr"],
        )

    def get_lr(self) -> list[float]:
        """Each group's lr at step ``last_epoch``, from its own base lr."""
        # Same operation order as LambdaLR (base_lr * factor), so rendered code matches exactly.
        return [base * self.curve.factor(self.last_epoch, base) for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        """Plain, picklable state: the curve is rebuilt from it on load."""
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "curve")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume: restore the step count and rebuild the same curve."""
        self.__dict__.update(state_dict)
        self.curve = self._make_curve()


def build_scheduler(
    optimizer: Optimizer,
    schedule: str | Mapping[str, Any] | None,
    warmup: Mapping[str, Any] | None,
    total_steps: int,
) -> WarmupScheduleLR:
    """The torch scheduler for ``schedule`` with ``warmup`` in front, over ``total_steps``.

    Call ``scheduler.step()`` once per ``optimizer.step()``.

    Example::

        >>> import torch
        >>> opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-3)
        >>> sched = build_scheduler(opt, {"name": "cosine"}, {"fraction": 0.1}, 1000)
        >>> sched.curve.warmup_steps
        100
    """
    return WarmupScheduleLR(optimizer, schedule, total_steps, warmup)
