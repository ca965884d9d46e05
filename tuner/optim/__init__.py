"""Optimizers tuner can search over: the registry and tuner's own Yogi.

Example::

    >>> import torch
    >>> from tuner.optim import get_optimizer
    >>> spec = get_optimizer("yogi")
    >>> optimizer = spec.build(torch.nn.Linear(2, 1).parameters(), spec.to_kwargs(spec.defaults()))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner._lazy import lazy_attributes
from tuner.optim._registry import OPTIMIZERS, OptimizerSpec, get_optimizer

if TYPE_CHECKING:
    from tuner.optim._yogi import Yogi, yogi

__all__ = ["OPTIMIZERS", "OptimizerSpec", "Yogi", "get_optimizer", "yogi"]

# Yogi imports torch: only on use, so the catalog can be read without it.
__getattr__ = lazy_attributes(__name__, {"Yogi": "tuner.optim._yogi", "yogi": "tuner.optim._yogi"})
