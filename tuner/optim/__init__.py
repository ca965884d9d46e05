"""Optimizers tuner can search over: the registry and tuner's own Yogi.

Example::

    >>> import torch
    >>> from tuner.optim import get_optimizer
    >>> spec = get_optimizer("yogi")
    >>> optimizer = spec.build(torch.nn.Linear(2, 1).parameters(), spec.to_kwargs(spec.defaults()))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.optim._registry import OPTIMIZERS, OptimizerSpec, get_optimizer

if TYPE_CHECKING:
    from tuner.optim._yogi import Yogi, yogi

__all__ = ["OPTIMIZERS", "OptimizerSpec", "Yogi", "get_optimizer", "yogi"]


def __getattr__(name: str) -> Any:
    # Yogi imports torch: only on use, so the catalog can be read without it (PEP 562).
    if name in ("Yogi", "yogi"):
        from tuner.optim import _yogi

        return getattr(_yogi, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
