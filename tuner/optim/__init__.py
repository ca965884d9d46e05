"""Optimizers tuner can search over: the registry and tuner's own Yogi.

Example::

    >>> import torch
    >>> from tuner.optim import get_optimizer
    >>> spec = get_optimizer("yogi")
    >>> optimizer = spec.build(torch.nn.Linear(2, 1).parameters(), spec.to_kwargs(spec.defaults()))
"""

from __future__ import annotations

from tuner.optim._registry import OPTIMIZERS, OptimizerSpec, get_optimizer
from tuner.optim._yogi import Yogi, yogi

__all__ = ["OPTIMIZERS", "OptimizerSpec", "Yogi", "get_optimizer", "yogi"]
