"""The syntax of the study file's ``objective:`` (``"file.py:function"`` or
``"pkg.module:function"``), checked when the study file loads; :mod:`tuner.worker.objective`
imports what it names."""

from __future__ import annotations

import re

from tuner.core.errors import ObjectiveError

__all__ = ["is_file_spec", "split_objective_spec"]

_FORMS = "'file.py:function' or 'pkg.module:function'"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def split_objective_spec(spec: str, *, field: str = "objective") -> tuple[str, str]:
    """Split ``spec`` into (file or module, attribute), checking only its syntax.

    >>> split_objective_spec("digits.py:objective")
    ('digits.py', 'objective')
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ObjectiveError(f"{field}: must be {_FORMS}, but got {spec!r}")
    # rpartition: a Windows path "C:\\x\\y.py:f" keeps its drive colon in the target.
    target, _, attr = spec.strip().rpartition(":")
    if not target or not attr or not _MODULE_NAME.match(attr):
        raise ObjectiveError(f"{field}: must be {_FORMS}, but got {spec!r}")
    if not is_file_spec(target) and not _MODULE_NAME.match(target):
        raise ObjectiveError(
            f"{field}: {target!r} is neither a .py file nor a dotted module name; "
            f"must be {_FORMS}, but got {spec!r}"
        )
    return target, attr


def is_file_spec(target: str) -> bool:
    """True when the part before the colon names a file rather than a module."""
    return target.endswith(".py") or "/" in target or "\\" in target
