"""The registries a study file names its sampler and pruner from, and building them.

``sampler:`` and ``pruner:`` in the study file are a name and keyword options; here the name
becomes an Optuna class and the options its arguments, each checked against the class's
signature so a typo fails when the study file loads (see ``docs/study-file.md``).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import optuna

from tuner.core.errors import ConfigError
from tuner.core.redact import redact
from tuner.sampling.pruner import ScheduleMedianPruner
from tuner.sampling.sampler import tpe_defaults, worker_seed

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "Plugin",
    "PluginChoice",
    "make_pruner",
    "make_sampler",
    "show_value",
]


class PluginChoice(Protocol):
    """What a study file's ``sampler:`` or ``pruner:`` section gives: a name and its options."""

    @property
    def name(self) -> str: ...

    @property
    def options(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class Plugin:
    """A registry entry: the Optuna class to build and the packages it needs beyond tuner's.

    Calling the entry builds the object: ``SAMPLERS["tpe"](seed=0)`` is ``TPESampler(seed=0)``.
    """

    cls: Callable[..., Any]
    requires: tuple[str, ...] = ()

    def __call__(self, **options: Any) -> Any:
        return self.cls(**options)

    def options(self) -> tuple[str, ...]:
        """The keyword arguments the class accepts, which a study file may set."""
        params = inspect.signature(self.cls).parameters.values()
        return tuple(p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


SAMPLERS: dict[str, Plugin] = {
    "tpe": Plugin(optuna.samplers.TPESampler),
    "random": Plugin(optuna.samplers.RandomSampler),
    "qmc": Plugin(optuna.samplers.QMCSampler),
    "gp": Plugin(optuna.samplers.GPSampler, requires=("torch", "scipy")),
    "cmaes": Plugin(optuna.samplers.CmaEsSampler, requires=("cmaes",)),
}
"""Sampler name in the study file -> the Optuna sampler it builds."""

PRUNERS: dict[str, Plugin] = {
    "schedule_median": Plugin(ScheduleMedianPruner),
    "hyperband": Plugin(optuna.pruners.HyperbandPruner),
    "median": Plugin(optuna.pruners.MedianPruner),
    "successive_halving": Plugin(optuna.pruners.SuccessiveHalvingPruner),
    "none": Plugin(optuna.pruners.NopPruner),
}
"""Pruner name in the study file -> the Optuna pruner it builds."""


def make_sampler(
    cfg: PluginChoice, *, worker: int = 0, trials: int | None = None
) -> optuna.samplers.BaseSampler:
    """Build the Optuna sampler for ``cfg``; a bad option is a ConfigError naming ``sampler.<key>``.

    ``worker`` derives this worker's seed from the study's (worker 0 keeps it); with ``trials``
    TPE gets tuner's settings for the conditional space (:mod:`tuner.sampling.sampler`) unless
    the study file sets them.

    >>> from types import SimpleNamespace as Section  # what a study file's section gives
    >>> make_sampler(Section(name="random", options={"seed": 0})).__class__.__name__
    'RandomSampler'
    """
    options = dict(cfg.options)
    if cfg.name == "tpe" and trials is not None:
        options = {**tpe_defaults(trials), **options}
    if isinstance(options.get("seed"), int):
        options["seed"] = worker_seed(options["seed"], worker)
    with warnings.catch_warnings():
        # multivariate/group TPE are marked experimental; tuner chose them knowingly.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _build("sampler", SAMPLERS, cfg.name, options)


def make_pruner(cfg: PluginChoice, *, max_resource: int) -> optuna.pruners.BasePruner:
    """Build the Optuna pruner for ``cfg``.

    Pruners that take a resource range get ``min_resource=1`` and ``max_resource`` (the study's
    ``budget.epochs``) unless the study file sets them.

    >>> from types import SimpleNamespace as Section
    >>> make_pruner(Section(name="schedule_median", options={}), max_resource=20).max_resource
    20
    """
    plugin = PRUNERS.get(cfg.name)
    accepted = plugin.options() if plugin is not None else ()
    defaults = {"min_resource": 1, "max_resource": max_resource}
    options = {k: v for k, v in defaults.items() if k in accepted}
    options.update(cfg.options)
    return _build("pruner", PRUNERS, cfg.name, options)


def _build(field: str, registry: Mapping[str, Plugin], name: str, options: dict[str, Any]) -> Any:
    plugin = registry.get(name)
    if plugin is None:
        raise ConfigError(
            f"{field}.name: must be one of {', '.join(sorted(registry))}, but got {name!r}"
        )
    missing = [pkg for pkg in plugin.requires if importlib.util.find_spec(pkg) is None]
    if missing:
        raise ConfigError(
            f"{field}.name: {name!r} needs {', '.join(missing)}, but it is not installed",
            hint=f"pip install {' '.join(missing)}",
        )
    cls_name = getattr(plugin.cls, "__name__", name)
    known = plugin.options()
    for key, value in options.items():
        if key not in known:
            listing = ", ".join(known) if known else "none"
            raise ConfigError(
                redact(
                    f"{field}.{key}: not an option of {cls_name} (options: {listing}), "
                    f"but got {key}={show_value(value)}"
                )
            )
    try:
        return plugin(**options)
    except (TypeError, ValueError) as exc:
        blamed = [k for k in options if re.search(rf"\b{re.escape(k)}\b", str(exc))]
        where = f"{field}.{blamed[0]}" if blamed else field
        got = show_value(options[blamed[0]]) if blamed else show_value(options)
        raise ConfigError(redact(f"{where}: {cls_name} rejects it ({exc}), but got {got}")) from exc


def show_value(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut at 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
