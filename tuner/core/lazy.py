"""Names a module exports but imports only on first use (PEP 562 module ``__getattr__``).

tuner's modules that export torch-backed names load them lazily, so that reading the catalog
(``tuner launch`` validating a study file) and ``tuner --help`` never import torch.

Example::

    >>> __getattr__ = lazy_attributes("mypkg", {"sqrt": "math"})
    >>> __getattr__("sqrt")(4.0)
    2.0
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(module: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A ``__getattr__`` for ``module``: each name in ``where`` is imported from the module
    named there on first use, then kept in ``module``'s namespace."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        owner = sys.modules.get(module)
        if owner is not None:
            vars(owner)[name] = value  # the next lookup finds it without this hook
        return value

    return __getattr__
