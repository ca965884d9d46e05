"""The schedule catalog: one :class:`ScheduleSpec` per schedule, and the warmup hyperparameters.

Example::

    >>> spec = get_schedule("cosine")
    >>> spec.normalize({"final_lr_ratio": 0.01}, path="schedule")
    {'name': 'cosine', 'final_lr_ratio': 0.01}
"""

from __future__ import annotations

import functools
import importlib
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tuner.catalog.hparams import Fixed, HyperParam, Range
from tuner.catalog.schedules import _factors
from tuner.core.errors import CatalogError, ConfigError

__all__ = [
    "SCHEDULES",
    "WARMUP_HPARAMS",
    "Factor",
    "ScheduleSpec",
    "Setting",
    "get_schedule",
    "load_function",
]

Factor = Callable[[int, int], float]
"""An lr factor bound to its hyperparameters: ``(step, total_steps) -> multiplier``."""

_REQUIRED = object()


@dataclass(frozen=True)
class Setting:
    """A fixed option of a schedule that is not searched (step's milestones, custom's function).

    In the study file a setting's value is taken as given: a list is the value itself, not a
    choice between values.
    """

    name: str
    default: Any
    check: Callable[[Any], str | None]
    doc: str = ""


@dataclass(frozen=True)
class ScheduleSpec:
    """One schedule: its pure factor, searchable hyperparameters and fixed settings.

    ``factor(step, total_steps, **values)`` is the multiplier of each group's base lr;
    ``default_values`` are the values used when an exported configuration leaves one out;
    each hyperparameter's ``default`` domain is what a study searches by default.

    Example::

        >>> get_schedule("step").bind({"gamma": 0.1, "milestones": [0.5]})(6, 10)
        0.1
    """

    name: str
    factor: Callable[..., float] | None
    hparams: tuple[HyperParam, ...]
    default_values: Mapping[str, Any]
    source: str
    settings: tuple[Setting, ...] = ()
    doc: str = ""

    def hparam(self, name: str) -> HyperParam:
        """The hyperparameter ``name``; CatalogError listing the known ones otherwise."""
        for hp in self.hparams:
            if hp.name == name:
                return hp
        known = ", ".join(hp.name for hp in self.hparams) or "none"
        raise CatalogError(f"schedule {self.name!r} has no hyperparameter {name!r}; known: {known}")

    def setting(self, name: str) -> Setting | None:
        """The fixed setting ``name``, or None."""
        return next((s for s in self.settings if s.name == name), None)

    def keys(self) -> list[str]:
        """Every key a schedule mapping of this kind may hold, besides ``name``."""
        return [hp.name for hp in self.hparams] + [s.name for s in self.settings]

    def defaults(self) -> dict[str, Any]:
        """Default values of the hyperparameters and settings (required settings left out)."""
        values = dict(self.default_values)
        for s in self.settings:
            if s.default is not _REQUIRED:
                values[s.name] = _plain(s.default)
        return values

    def normalize(self, values: Mapping[str, Any], *, path: str) -> dict[str, Any]:
        """Check ``values`` and fill in defaults: the schedule as exported, ``name`` first.

        Errors name ``path``, the rule and the value; unknown keys list the known ones.
        """
        keys = self.keys()
        unknown = sorted(k for k in values if k != "name" and k not in keys)
        if unknown:
            raise ConfigError(
                f"{path}.{unknown[0]}: schedule {self.name!r} takes "
                f"{', '.join(keys) or 'no hyperparameters'}, but got {unknown[0]!r}"
            )
        out: dict[str, Any] = {"name": self.name}
        merged = {**self.defaults(), **{k: v for k, v in values.items() if k != "name"}}
        for hp in self.hparams:
            hp.validate_value(merged[hp.name], path=f"{path}.{hp.name}")
            out[hp.name] = merged[hp.name]
        for s in self.settings:
            if s.name not in merged:
                raise ConfigError(f"{path}.{s.name}: schedule {self.name!r} needs {s.doc}")
            rule = s.check(merged[s.name])
            if rule is not None:
                raise ConfigError(f"{path}.{s.name}: {rule}, but got {merged[s.name]!r}")
            out[s.name] = _plain(merged[s.name])
        return out

    def bind(self, values: Mapping[str, Any]) -> Factor:
        """The factor with its values bound: ``(step, total_steps) -> multiplier``."""
        kwargs = {k: v for k, v in values.items() if k != "name"}
        if self.factor is None:  # custom: the user's function, found by its dotted name
            return load_function(kwargs["function"], path=f"schedule {self.name!r}")
        return functools.partial(self.factor, **kwargs)


def _plain(value: Any) -> Any:
    """Settings travel as plain YAML/JSON data: tuples become lists."""
    return list(value) if isinstance(value, tuple) else value


def load_function(dotted: str, *, path: str) -> Callable[..., Any]:
    """Import ``"pkg.module:function"`` (the function may be ``Class.attr``).

    Raises ConfigError naming ``path`` and the dotted name when the module cannot be imported,
    the attribute is missing or it is not callable.

    Example::

        >>> load_function("math:cos", path="schedule.function")(0.0)
        1.0
    """
    if not isinstance(dotted, str) or dotted.count(":") != 1 or not all(dotted.split(":")):
        raise ConfigError(
            f'{path}: a custom function is named "pkg.module:function", but got {dotted!r}'
        )
    module_name, attr = dotted.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure is the user's to fix
        raise ConfigError(
            f"{path}: cannot import module {module_name!r} for {dotted!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(
                f"{path}: {dotted!r} cannot be found: module {module_name!r} has no {attr!r}"
            ) from exc
    if not callable(obj):
        raise ConfigError(
            f"{path}: {dotted!r} must be a callable (step, total_steps) -> factor, "
            f"but got {type(obj).__name__}"
        )
    return obj


# --- validity rules (each returns the rule it breaks, or None) -----------------------------


def _ratio(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else "`0 <= final_lr_ratio <= 1` must hold"


def _positive_ratio(value: float) -> str | None:
    return None if 0.0 < value <= 1.0 else "`0 < final_lr_ratio <= 1` must hold"


def _gamma(value: float) -> str | None:
    return None if 0.0 < value <= 1.0 else "`0 < gamma <= 1` must hold"


def _power(value: float) -> str | None:
    return None if value > 0.0 and math.isfinite(value) else "`power > 0` must hold"


def _pct_start(value: float) -> str | None:
    return None if 0.0 < value < 1.0 else "`0 < pct_start < 1` must hold"


def _div(name: str) -> Callable[[float], str | None]:
    def check(value: float) -> str | None:
        return None if value >= 1.0 and math.isfinite(value) else f"`{name} >= 1` must hold"

    return check


def _milestones(value: Any) -> str | None:
    rule = "milestones are increasing fractions of the schedule length, each in (0, 1)"
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) == 0:
        return rule
    if any(isinstance(m, bool) or not isinstance(m, (int, float)) for m in value):
        return rule
    ok = all(0.0 < m < 1.0 for m in value) and all(a < b for a, b in itertools.pairwise(value))
    return None if ok else rule


def _dotted(value: Any) -> str | None:
    if not isinstance(value, str) or value.count(":") != 1 or not all(value.split(":")):
        return 'a custom schedule is named "pkg.module:function"'
    try:
        load_function(value, path="function")
    except ConfigError as exc:
        return str(exc).removeprefix("function: ")
    return None


def _fraction(value: float) -> str | None:
    return None if 0.0 <= value < 1.0 else "`0 <= fraction < 1` must hold"


def _steps(value: float) -> str | None:
    ok = value >= 0 and float(value).is_integer()
    return None if ok else "`steps` must be a whole number >= 0"


def _begin_lr(value: float) -> str | None:
    return None if value >= 0.0 and math.isfinite(value) else "`begin_lr >= 0` must hold"


# --- the catalog ------------------------------------------------------------------------------

# Decay to exactly 0 is common (SGDR's eta_min = 0), so it stays reachable on the log range.
_FINAL_RATIO = HyperParam(
    "final_lr_ratio",
    Range(1e-3, 1e-1, log=True, include_zero=True),
    "Loshchilov & Hutter 2017 (SGDR, eta_min = 0); AlgoPerf baselines decay to 0-1% of the peak",
    _ratio,
    doc="lr at the end of the schedule, as a fraction of the base lr",
)

_SPECS = (
    ScheduleSpec(
        "constant",
        _factors.constant,
        (),
        {},
        "no decay: the baseline every schedule must beat",
    ),
    ScheduleSpec(
        "step",
        _factors.step_decay,
        (
            HyperParam(
                "gamma",
                Range(0.05, 0.5, log=True),
                "He et al. 2016 divide by 10 at fixed points; Goyal et al. 2017",
                _gamma,
                doc="lr multiplier at each milestone",
            ),
        ),
        {"gamma": 0.1},
        "torch.optim.lr_scheduler.MultiStepLR with milestones as fractions of the schedule",
        (
            Setting(
                "milestones",
                (0.5, 0.75),
                _milestones,
                "milestones: fractions of the schedule length",
            ),
        ),
    ),
    ScheduleSpec(
        "exponential",
        _factors.exponential,
        (
            HyperParam(
                "final_lr_ratio",
                Range(1e-3, 1e-1, log=True),
                "torch ExponentialLR, parametrised by the lr ratio reached at the end",
                _positive_ratio,
            ),
        ),
        {"final_lr_ratio": 0.01},
        "torch.optim.lr_scheduler.ExponentialLR with gamma = final_lr_ratio ** (1 / T)",
    ),
    ScheduleSpec(
        "linear",
        _factors.linear,
        (_FINAL_RATIO,),
        {"final_lr_ratio": 0.0},
        "linear decay, as in AlgoPerf's and BERT's baselines",
    ),
    ScheduleSpec(
        "polynomial",
        _factors.polynomial,
        (
            HyperParam(
                "power",
                Range(0.5, 3.0),
                "torch PolynomialLR (power 1), DeepLab 'poly' (power 0.9)",
                _power,
            ),
            _FINAL_RATIO,
        ),
        {"power": 1.0, "final_lr_ratio": 0.0},
        "torch.optim.lr_scheduler.PolynomialLR, decaying to final_lr_ratio instead of 0",
    ),
    ScheduleSpec(
        "cosine",
        _factors.cosine,
        (_FINAL_RATIO,),
        {"final_lr_ratio": 0.0},
        "D2L CosineScheduler (Zhang et al., Dive into Deep Learning §12.11); Loshchilov & "
        "Hutter 2017",
    ),
    ScheduleSpec(
        "onecycle",
        _factors.onecycle,
        (
            HyperParam(
                "pct_start",
                Range(0.1, 0.5),
                "Smith & Topin 2019; torch OneCycleLR default 0.3",
                _pct_start,
            ),
            HyperParam("div_factor", Fixed(25.0), "torch OneCycleLR default", _div("div_factor")),
            HyperParam(
                "final_div_factor",
                Fixed(1e4),
                "torch OneCycleLR default",
                _div("final_div_factor"),
            ),
        ),
        {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4},
        "torch.optim.lr_scheduler.OneCycleLR's lr curve (cosine annealing, max_lr = base lr); "
        "no momentum cycling",
    ),
    ScheduleSpec(
        "custom",
        None,
        (),
        {},
        "the user's own function (step, total_steps) -> factor",
        (Setting("function", _REQUIRED, _dotted, 'function: "pkg.module:function"'),),
    ),
)

SCHEDULES: dict[str, ScheduleSpec] = {spec.name: spec for spec in _SPECS}
"""Every schedule, by name. ``custom`` needs a ``function`` and is not searched by default."""

WARMUP_HPARAMS: dict[str, HyperParam] = {
    hp.name: hp
    for hp in (
        HyperParam(
            "fraction",
            Range(0.0, 0.1),
            "Goyal et al. 2017 (5 of 90 epochs); transformer recipes warm up over 0-10% of steps",
            _fraction,
            doc="warmup length as a fraction of total_steps (rounded to a whole step)",
        ),
        HyperParam(
            "steps",
            Range(0, 1000),
            "a few hundred to a few thousand steps in transformer recipes",
            _steps,
            kind=int,
            doc="warmup length in optimizer steps",
        ),
        HyperParam(
            "begin_lr",
            Fixed(0.0),
            "D2L CosineScheduler warmup_begin_lr (default 0)",
            _begin_lr,
            doc="absolute lr at step 0 of the warmup",
        ),
    )
}
"""Warmup's hyperparameters: its length (``fraction`` of T or ``steps``) and ``begin_lr``."""


def get_schedule(name: str) -> ScheduleSpec:
    """The schedule ``name``; CatalogError listing the known names otherwise.

    Example::

        >>> get_schedule("cosine").name
        'cosine'
    """
    try:
        return SCHEDULES[name]
    except (KeyError, TypeError):
        raise CatalogError(
            f"unknown schedule {name!r}; known schedules: {', '.join(SCHEDULES)}"
        ) from None
