"""Hyperparameter domains: how one hyperparameter is searched (fixed, a choice, or a range).

A study file gives a hyperparameter as a scalar (fixed), a list (choices) or a mapping
``{low, high, log, step}`` (a range). :func:`parse_domain` turns that raw value into a
:class:`Fixed`, :class:`Choice` or :class:`Range`, and :meth:`HyperParam.suggest` draws a value
from it through an ``optuna.Trial``.

Example::

    >>> parse_domain({"low": 1e-5, "high": 1e-2, "log": True}, path="search.optimizers.adam.lr")
    Range(low=1e-05, high=0.01, log=True, step=None, include_zero=False)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuner.core.errors import ConfigError

if TYPE_CHECKING:
    import optuna

__all__ = ["Choice", "Domain", "Fixed", "HyperParam", "Range", "parse_domain"]


@dataclass(frozen=True)
class Fixed:
    """A hyperparameter held at one value."""

    value: Any


@dataclass(frozen=True)
class Choice:
    """A categorical hyperparameter: one of ``choices``."""

    choices: tuple[Any, ...]


@dataclass(frozen=True)
class Range:
    """A numeric range. ``include_zero`` adds exact 0 to a log range (for weight decay)."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    include_zero: bool = False


Domain = Fixed | Choice | Range

_RANGE_KEYS = {"low", "high", "log", "step", "include_zero"}


def parse_domain(raw: Any, *, path: str) -> Domain:
    """Parse a study-file value into a domain; errors name ``path``, the rule and the value."""
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - _RANGE_KEYS)
        if unknown:
            raise ConfigError(
                f"{path}: unknown key {unknown[0]!r} in a range; a range takes "
                f"{sorted(_RANGE_KEYS)}, but got {dict(raw)!r}"
            )
        missing = [k for k in ("low", "high") if k not in raw]
        if missing:
            raise ConfigError(f"{path}: a range needs `low` and `high`, but got {dict(raw)!r}")
        low, high = raw["low"], raw["high"]
        for key, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{path}.{key}: must be a number, but got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{path}.{key}: must be finite, but got {value!r}")
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{path}.log: must be true or false, but got {log!r}")
        step = raw.get("step")
        if step is not None and (
            isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0
        ):
            raise ConfigError(f"{path}.step: must be a number > 0, but got {step!r}")
        include_zero = raw.get("include_zero", False)
        if not isinstance(include_zero, bool):
            raise ConfigError(
                f"{path}.include_zero: must be true or false, but got {include_zero!r}"
            )
        if low > high:
            raise ConfigError(f"{path}: `low <= high` must hold, but got (low={low}, high={high})")
        if log and low <= 0:
            raise ConfigError(
                f"{path}: a log range needs `low > 0`, but got (low={low}, high={high})"
            )
        if log and step is not None:
            raise ConfigError(f"{path}: `step` and `log: true` cannot be combined, but got both")
        if include_zero and not log:
            raise ConfigError(
                f"{path}: `include_zero` applies to log ranges (a linear range reaches 0 by "
                f"its `low`), but got log=false"
            )
        return Range(
            float(low), float(high), log, None if step is None else float(step), include_zero
        )
    if isinstance(raw, (list, tuple)):
        if len(raw) == 0:
            raise ConfigError(f"{path}: a list of choices must not be empty, but got []")
        return Choice(tuple(raw))
    return Fixed(raw)


@dataclass(frozen=True)
class HyperParam:
    """One searchable hyperparameter of a catalog entry.

    ``default`` is the domain searched when the study file does not override it; ``source``
    says where that range comes from. With ``one_minus`` the range is given in natural units
    (``beta2`` in [0.9, 0.9999]) but sampled as ``1 - value`` on a log scale, the way the
    literature searches betas, momentum and rho. ``check`` is the validity rule for one
    concrete value: it returns an error text (the rule) or None.
    """

    name: str
    default: Domain
    source: str
    check: Callable[[Any], str | None]
    one_minus: bool = False
    kind: type = float
    doc: str = ""
    choices_hint: Sequence[Any] = field(default_factory=tuple)

    def validate_value(self, value: Any, *, path: str) -> None:
        """Raise ConfigError naming ``path`` if ``value`` breaks this hyperparameter's rule."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: must be true or false, but got {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: must be a number, but got {value!r}")
        rule = self.check(value)
        if rule is not None:
            raise ConfigError(f"{path}: {rule}, but got {self.name}={value!r}")

    def validate_domain(self, domain: Domain, *, path: str) -> None:
        """Every value the domain can produce must be valid."""
        if isinstance(domain, Fixed):
            self.validate_value(domain.value, path=path)
        elif isinstance(domain, Choice):
            for i, choice in enumerate(domain.choices):
                self.validate_value(choice, path=f"{path}[{i}]")
        else:
            if self.kind is bool:
                raise ConfigError(
                    f"{path}: {self.name} is true/false; give a value or a list, but got a range"
                )
            self.validate_value(domain.low, path=f"{path}.low")
            self.validate_value(domain.high, path=f"{path}.high")
            if self.one_minus and domain.log and domain.high >= 1:
                raise ConfigError(
                    f"{path}.high: {self.name} is searched as 1-{self.name} on a log scale, so "
                    f"`high < 1` must hold, but got high={domain.high}"
                )

    def suggest(self, trial: optuna.Trial, domain: Domain, *, prefix: str) -> Any:
        """Draw a value from ``domain`` as the Optuna parameter ``f"{prefix}.{name}"``.

        Each catalog entry passes its own prefix (``adam.lr`` and ``sgd.lr`` are different
        Optuna parameters with their own distributions).
        """
        key = f"{prefix}.{self.name}"
        if isinstance(domain, Fixed):
            return domain.value
        if isinstance(domain, Choice):
            return trial.suggest_categorical(key, list(domain.choices))
        if domain.include_zero and trial.suggest_categorical(f"{key}_is_zero", [False, True]):
            return 0.0
        if self.one_minus and domain.log:
            # Search 1-x log-uniformly: 0.9 -> 0.99 is as big a step as 0.99 -> 0.999.
            rest = trial.suggest_float(
                f"{key}.one_minus", 1 - domain.high, 1 - domain.low, log=True
            )
            return 1.0 - rest
        if self.kind is int:
            return trial.suggest_int(
                key, int(domain.low), int(domain.high), log=domain.log, step=int(domain.step or 1)
            )
        return trial.suggest_float(key, domain.low, domain.high, log=domain.log, step=domain.step)
