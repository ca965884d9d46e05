"""Study names made safe to use as file names.

A study's ``name`` is any string Optuna accepts (``../../x``, ``/etc``, ``a/b``); wherever it
becomes part of a path, :func:`safe_filename` turns it into one plain path component, so that
nothing tuner writes lands outside the folder meant for it.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["safe_filename"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX = 100


def safe_filename(name: str) -> str:
    """One path component for ``name``: letters, digits, ``.``, ``_`` and ``-`` only, never
    ``.`` or ``..`` nor hidden; a name that had to change gets a short hash of the original,
    so two different names never share a file.

    >>> safe_filename("digits-cnn")
    'digits-cnn'
    >>> safe_filename("../../x")
    'x-9cdf6a50'
    >>> safe_filename("/")
    'study-8a5edab2'
    """
    cleaned = _UNSAFE.sub("_", name).strip("._-")[:_MAX] or "study"
    if cleaned == name:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{cleaned}-{digest}"
