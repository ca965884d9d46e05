"""Optimizers tuner can search over: the registry and tuner's own Yogi.

Example::

    >>> import torch
    >>> from tuner.catalog.optim import get_optimizer
    >>> spec = get_optimizer("yogi")
    >>> optimizer = spec.build(torch.nn.Linear(2, 1).parameters(), spec.to_kwargs(spec.defaults()))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.catalog.optim._registry import OPTIMIZERS, OptimizerSpec, get_optimizer
from tuner.core.lazy import lazy_attributes

if TYPE_CHECKING:
    from tuner.catalog.optim._yogi import Yogi, yogi

__all__ = ["OPTIMIZERS", "OptimizerSpec", "Yogi", "get_optimizer", "yogi"]

# Yogi imports torch: only on use, so the catalog can be read without it.
__getattr__ = lazy_attributes(
    __name__, {"Yogi": "tuner.catalog.optim._yogi", "yogi": "tuner.catalog.optim._yogi"}
)
