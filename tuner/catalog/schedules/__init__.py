"""Learning-rate schedules: pure factors of the optimizer step, warmup, and the torch scheduler.

Every schedule is a pure function ``factor(step, total_steps, **hyperparameters)`` of the
optimizer step, registered in :data:`SCHEDULES`; warmup composes in front of any of them and
:class:`WarmupScheduleLR` applies the result to each param group from its own base lr.

Example::

    >>> import torch
    >>> from tuner.catalog.schedules import build_scheduler
    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    >>> sched = build_scheduler(opt, {"name": "cosine", "final_lr_ratio": 0.0}, None, 10)
    >>> sched.get_last_lr()
    [0.3]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.catalog.schedules._registry import (
    SCHEDULES,
    WARMUP_HPARAMS,
    Factor,
    ScheduleSpec,
    Setting,
    get_schedule,
    load_function,
)
from tuner.catalog.schedules._scheduler import (
    Curve,
    normalize_schedule,
    normalize_warmup,
    warmup_steps,
)
from tuner.core.lazy import lazy_attributes

if TYPE_CHECKING:
    from tuner.catalog.schedules._torch import WarmupScheduleLR, build_scheduler

__all__ = [
    "SCHEDULES",
    "WARMUP_HPARAMS",
    "Curve",
    "Factor",
    "ScheduleSpec",
    "Setting",
    "WarmupScheduleLR",
    "build_scheduler",
    "get_schedule",
    "load_function",
    "normalize_schedule",
    "normalize_warmup",
    "warmup_steps",
]

# The torch scheduler imports torch: only on use, so the catalog can be read without it.
__getattr__ = lazy_attributes(
    __name__,
    {
        "WarmupScheduleLR": "tuner.catalog.schedules._torch",
        "build_scheduler": "tuner.catalog.schedules._torch",
    },
)
