"""The study database: Optuna RDB storage on SQLite or PostgreSQL, secrets kept out of sight."""

from __future__ import annotations

import re

__all__ = ["redact_url"]

_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)")


def redact_url(text: str) -> str:
    """Replace the password of every URL in ``text`` with ``***``.

    >>> redact_url("postgresql+psycopg://tuner:s3cret@db:5432/tuner")
    'postgresql+psycopg://tuner:***@db:5432/tuner'
    """
    return _PASSWORD.sub(r"\g<head>***\g<tail>", text)
