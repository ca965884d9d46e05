"""Wall-clock durations as a study file writes them: ``90s``, ``30m``, ``2h``, ``1h30m``.

Example::

    >>> parse_duration("1h30m")
    5400.0
    >>> format_duration(5400)
    '1h30m'
"""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "parse_duration"]

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_NUMBER = r"\d+(?:\.\d*)?|\.\d+"
# Units in decreasing order, each at most once, optional spaces between them: "1h 30m", "2h", "90s".
_DURATION = re.compile(
    r"^\s*" + r"\s*".join(rf"(?:(?P<{u}>{_NUMBER})\s*{u})?" for u in _UNITS) + r"\s*$"
)
_RULE = "must be a duration like 90s, 30m, 2h or 1h30m, or a number of seconds"


def parse_duration(value: str | float) -> float:
    """Seconds in ``value``: a number of seconds, or a string of ``d``/``h``/``m``/``s`` parts.

    Raises ``ValueError`` with the rule and the value when ``value`` is not a positive duration.

    >>> parse_duration("90s"), parse_duration("30m"), parse_duration(45)
    (90.0, 1800.0, 45.0)
    """
    if isinstance(value, bool):
        raise ValueError(f"{_RULE}, but got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION.match(text)
            if match is None or not any(match.groupdict().values()):
                raise ValueError(f"{_RULE}, but got {value!r}") from None
            seconds = sum(float(n) * _UNITS[u] for u, n in match.groupdict().items() if n)
    else:
        raise ValueError(f"{_RULE}, but got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"must be a positive duration, but got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest ``parse_duration`` string for ``seconds``, rounded to whole seconds.

    >>> format_duration(3725), format_duration(42.4), format_duration(0)
    ('1h2m5s', '42s', '0s')
    """
    rest = max(0, round(seconds))
    parts = []
    for unit in ("h", "m", "s"):
        count, rest = divmod(rest, int(_UNITS[unit]))
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
