"""The study file's ``search:`` section as a typed :class:`SearchSpace`, and sampling from it.

``parse_search`` validates the section once, at the boundary; ``sample_config`` draws one
:class:`~tuner.catalog.export.OptimizerConfig` per Optuna trial with the conditional structure
optimizer -> its hyperparameters, schedule -> its hyperparameters, warmup. Each optimizer's
hyperparameters are Optuna parameters of their own (``adam.lr`` and ``sgd.lr``): the best
learning rate of one optimizer says little about another's.

Example::

    >>> import optuna
    >>> space = parse_search({"optimizers": {"adamw": {}}, "schedules": ["cosine"]})
    >>> study = optuna.create_study()
    >>> config = sample_config(study.ask(), space)
    >>> config.optimizer, config.schedule["name"]
    ('adamw', 'cosine')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.catalog.export import OptimizerConfig
from tuner.catalog.hparams import Choice, Domain, Fixed, HyperParam, Range, parse_domain
from tuner.catalog.optim import OPTIMIZERS, OptimizerSpec, get_optimizer
from tuner.catalog.schedules import SCHEDULES, WARMUP_HPARAMS, get_schedule
from tuner.core.errors import ConfigError

if TYPE_CHECKING:
    import optuna

__all__ = [
    "OptimizerSearch",
    "ScheduleSearch",
    "SearchSpace",
    "WarmupSearch",
    "parse_search",
    "sample_config",
]

_SEARCH_KEYS = ("optimizers", "schedules", "warmup", "lr_range_test", "portfolio")


@dataclass(frozen=True)
class OptimizerSearch:
    """One competing optimizer and the domain of each of its hyperparameters."""

    name: str
    domains: Mapping[str, Domain]


@dataclass(frozen=True)
class ScheduleSearch:
    """One competing schedule: domains of its hyperparameters and its fixed settings."""

    name: str
    domains: Mapping[str, Domain]
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class WarmupSearch:
    """Warmup length, searched in ``unit`` ("fraction" of total steps or "steps")."""

    unit: str
    length: Domain
    begin_lr: Domain


@dataclass(frozen=True)
class SearchSpace:
    """What a study searches. ``warmup`` None means no warmup.

    ``lr_range_test`` probes each optimizer whose ``lr`` is not in ``user_lr`` (the study file
    set it) before the search; ``portfolio`` runs known-good configurations first
    (:mod:`tuner.search`).
    """

    optimizers: tuple[OptimizerSearch, ...]
    schedules: tuple[ScheduleSearch, ...]
    warmup: WarmupSearch | None
    lr_range_test: bool = True
    portfolio: bool = True
    user_lr: frozenset[str] = frozenset()


def parse_search(raw: Mapping[str, Any] | None, *, path: str = "search") -> SearchSpace:
    """Validate the ``search:`` section; ``None`` searches the whole catalog with its defaults.

    Errors are ConfigError naming the field path, the rule and the value; unknown names list
    the known ones.

    Example::

        >>> space = parse_search({"optimizers": {"adam": {"lr": {"low": 1e-4, "high": 1e-2,
        ...     "log": True}}}, "schedules": ["constant"], "warmup": {"fraction": 0}})
        >>> space.optimizers[0].domains["lr"]
        Range(low=0.0001, high=0.01, log=True, step=None, include_zero=False)
        >>> space.warmup is None
        True
    """
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{path}: must be a mapping of {', '.join(_SEARCH_KEYS)}, but got {raw!r}"
        )
    unknown = sorted(k for k in raw if k not in _SEARCH_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}.{unknown[0]}: unknown key; `search` takes {', '.join(_SEARCH_KEYS)}, "
            f"but got {unknown[0]!r}"
        )
    optimizers = raw.get("optimizers")
    user_lr = (
        frozenset(k for k, v in optimizers.items() if isinstance(v, Mapping) and "lr" in v)
        if isinstance(optimizers, Mapping)
        else frozenset()
    )
    return SearchSpace(
        _parse_optimizers(optimizers, f"{path}.optimizers"),
        _parse_schedules(raw.get("schedules"), f"{path}.schedules"),
        _parse_warmup(raw.get("warmup"), f"{path}.warmup"),
        lr_range_test=_parse_switch(
            raw.get("lr_range_test", "auto"), f"{path}.lr_range_test", ("auto", "off")
        ),
        portfolio=_parse_switch(raw.get("portfolio", True), f"{path}.portfolio", (True, False)),
        user_lr=user_lr,
    )


def _parse_switch(raw: Any, path: str, allowed: tuple[Any, Any]) -> bool:
    """``auto``/``off`` or ``true``/``false``: on is the first of ``allowed``.

    YAML 1.1 reads a bare ``off`` as False and ``on`` as True, so those are accepted too.
    """
    on, off = allowed
    if raw is True or raw == on:
        return True
    if raw is False or raw == off:
        return False
    raise ConfigError(f"{path}: must be {on!r} or {off!r}, but got {raw!r}")


def _domains(
    hparams: tuple[HyperParam, ...], overrides: dict[str, Any], field: str
) -> dict[str, Domain]:
    """Each hyperparameter's domain: the study file's override, else the catalog default."""
    domains: dict[str, Domain] = {}
    for hp in hparams:
        sub = f"{field}.{hp.name}"
        domain = parse_domain(overrides[hp.name], path=sub) if hp.name in overrides else hp.default
        hp.validate_domain(domain, path=sub)
        domains[hp.name] = domain
    return domains


def _overrides(raw: Any, path: str, what: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{path}: {what} overrides are a mapping of hyperparameter to value, list or range, "
            f"but got {raw!r}"
        )
    return raw


def _parse_optimizers(raw: Any, path: str) -> tuple[OptimizerSearch, ...]:
    if raw is None:
        raw = {name: {} for name in OPTIMIZERS}
    elif isinstance(raw, list):  # a plain list of names: each with its default ranges
        for i, name in enumerate(raw):
            if not isinstance(name, str):
                raise ConfigError(f"{path}[{i}]: must be an optimizer name, but got {name!r}")
        raw = {name: {} for name in raw}
    elif not isinstance(raw, Mapping):
        raise ConfigError(
            f"{path}: must be a mapping of optimizer name to overrides, but got {raw!r}"
        )
    if not raw:
        raise ConfigError(
            f"{path}: at least one optimizer must compete, but got none; known: "
            f"{', '.join(OPTIMIZERS)}"
        )
    out = []
    for name, overrides in raw.items():
        if name not in OPTIMIZERS:
            raise ConfigError(
                f"{path}.{name}: unknown optimizer {name!r}; known optimizers: "
                f"{', '.join(OPTIMIZERS)}"
            )
        spec = get_optimizer(name)
        overrides = _overrides(overrides, f"{path}.{name}", f"optimizer {name!r}")
        known = [hp.name for hp in spec.hparams]
        for key in overrides:
            if key not in known:
                raise ConfigError(
                    f"{path}.{name}.{key}: optimizer {name!r} has no hyperparameter {key!r}; "
                    f"known: {', '.join(known)}"
                )
        domains = _domains(spec.hparams, overrides, f"{path}.{name}")
        _check_corners(spec, domains, f"{path}.{name}")
        out.append(OptimizerSearch(name, domains))
    return tuple(out)


def _check_corners(spec: OptimizerSpec, domains: Mapping[str, Domain], path: str) -> None:
    """Report cross-rule violations (nesterov with momentum 0) when the file is read.

    The fixed values are checked together, then each range end and each choice with the rest
    at their fixed values or defaults: a space that can produce an invalid combination this
    way is a ConfigError now rather than a failed trial later.
    """
    fixed = {k: d.value for k, d in domains.items() if isinstance(d, Fixed)}
    spec.check(fixed, path=path)
    for key, domain in domains.items():
        if isinstance(domain, Range):
            candidates: tuple[Any, ...] = (domain.low, domain.high)
        elif isinstance(domain, Choice):
            candidates = domain.choices
        else:
            continue
        for value in candidates:
            spec.check({**fixed, key: value}, path=path)


def _parse_schedules(raw: Any, path: str) -> tuple[ScheduleSearch, ...]:
    if raw is None:
        raw = {name: {} for name in SCHEDULES if name != "custom"}
    elif isinstance(raw, list):
        for i, name in enumerate(raw):
            if not isinstance(name, str):
                raise ConfigError(f"{path}[{i}]: must be a schedule name, but got {name!r}")
            if name == "custom":
                raise ConfigError(
                    f'{path}[{i}]: custom needs its function: write `custom: "pkg.module:'
                    f'function"` in a schedules mapping, but got a bare "custom"'
                )
        raw = {name: {} for name in raw}
    elif not isinstance(raw, Mapping):
        raise ConfigError(
            f"{path}: must be a list of schedule names or a mapping of name to overrides, "
            f"but got {raw!r}"
        )
    if not raw:
        raise ConfigError(
            f"{path}: at least one schedule is needed, but got none; known: {', '.join(SCHEDULES)}"
        )
    out = []
    for name, overrides in raw.items():
        field = f"{path}.{name}"
        if name not in SCHEDULES:
            raise ConfigError(
                f"{field}: unknown schedule {name!r}; known schedules: {', '.join(SCHEDULES)}"
            )
        spec = get_schedule(name)
        if name == "custom" and isinstance(overrides, str):
            overrides = {"function": overrides}
        overrides = _overrides(overrides, field, f"schedule {name!r}")
        known = spec.keys()
        for key in overrides:
            if key not in known:
                raise ConfigError(
                    f"{field}.{key}: schedule {name!r} takes "
                    f"{', '.join(known) or 'no hyperparameters'}, but got {key!r}"
                )
        domains = _domains(spec.hparams, overrides, field)
        # Settings are taken as given (a milestones list is the value, not a choice), and
        # checked now through the same rules as an exported configuration.
        settings = {s.name: overrides.get(s.name, s.default) for s in spec.settings}
        probe = {hp.name: spec.default_values[hp.name] for hp in spec.hparams}
        normalized = spec.normalize({**probe, **settings}, path=field)
        out.append(
            ScheduleSearch(name, domains, {s.name: normalized[s.name] for s in spec.settings})
        )
    return tuple(out)


def _parse_warmup(raw: Any, path: str) -> WarmupSearch | None:
    if raw is None:
        return WarmupSearch(
            "fraction", WARMUP_HPARAMS["fraction"].default, WARMUP_HPARAMS["begin_lr"].default
        )
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{path}: must be a mapping {{fraction: ...}} or {{steps: ...}}, but got {raw!r}"
        )
    unknown = sorted(k for k in raw if k not in WARMUP_HPARAMS)
    if unknown:
        raise ConfigError(
            f"{path}.{unknown[0]}: unknown key; warmup takes {', '.join(WARMUP_HPARAMS)}, "
            f"but got {unknown[0]!r}"
        )
    units = [k for k in ("fraction", "steps") if k in raw]
    if len(units) != 1:
        raise ConfigError(
            f"{path}: warmup needs exactly one of `fraction` or `steps`, but got {dict(raw)!r}"
        )
    unit = units[0]
    domains: dict[str, Domain] = {}
    for key in (unit, "begin_lr"):
        hp = WARMUP_HPARAMS[key]
        domain = parse_domain(raw[key], path=f"{path}.{key}") if key in raw else hp.default
        hp.validate_domain(domain, path=f"{path}.{key}")
        domains[key] = domain
    length = domains[unit]
    if isinstance(length, Fixed) and length.value == 0:
        return None  # a fixed 0 disables warmup
    return WarmupSearch(unit, length, domains["begin_lr"])


def sample_config(trial: optuna.Trial, space: SearchSpace) -> OptimizerConfig:
    """Draw one optimizer configuration for ``trial`` from ``space``.

    Optuna parameters: ``optimizer`` (only when several compete), ``<optimizer>.<hparam>``,
    ``schedule`` (only when several), ``schedule.<name>.<hparam>``, and ``warmup.fraction`` or
    ``warmup.steps`` (and ``warmup.begin_lr`` when searched). Fixed values are not Optuna
    parameters. The sampled values are checked against the optimizer's cross rules; a
    violation is a ConfigError naming the values, so a search space that allows one is
    reported rather than silently trained.

    Example::

        >>> import optuna
        >>> space = parse_search({"optimizers": {"sgd": {"lr": 0.1}}, "schedules": ["constant"],
        ...                       "warmup": {"steps": 0}})
        >>> trial = optuna.create_study().ask()
        >>> sample_config(trial, space).kwargs["lr"]
        0.1
    """
    by_name = {o.name: o for o in space.optimizers}
    name = _choose(trial, "optimizer", list(by_name))
    spec = get_optimizer(name)
    values = {
        hp.name: hp.suggest(trial, by_name[name].domains[hp.name], prefix=name)
        for hp in spec.hparams
    }
    try:
        spec.check(values, path=f"search.optimizers.{name}")
    except ConfigError as exc:
        raise ConfigError(
            f"trial {trial.number}: the search space allowed invalid {name} values {values!r}: "
            f"{exc}",
            hint="narrow the ranges in search.optimizers so that every combination is valid",
        ) from exc

    schedules = {s.name: s for s in space.schedules}
    chosen = schedules[_choose(trial, "schedule", list(schedules))]
    sched_spec = get_schedule(chosen.name)
    schedule: dict[str, Any] = {"name": chosen.name}
    for hp in sched_spec.hparams:
        schedule[hp.name] = hp.suggest(
            trial, chosen.domains[hp.name], prefix=f"schedule.{chosen.name}"
        )
    schedule.update(chosen.settings)

    return OptimizerConfig(name, spec.to_kwargs(values), schedule, _sample_warmup(trial, space))


def _choose(trial: optuna.Trial, key: str, names: list[str]) -> str:
    # A single candidate is not an Optuna parameter: nothing to learn, nothing to log.
    return names[0] if len(names) == 1 else trial.suggest_categorical(key, names)


def _sample_warmup(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any] | None:
    warmup = space.warmup
    if warmup is None:
        return None
    length = WARMUP_HPARAMS[warmup.unit].suggest(trial, warmup.length, prefix="warmup")
    if length == 0:
        return None
    begin_lr = WARMUP_HPARAMS["begin_lr"].suggest(trial, warmup.begin_lr, prefix="warmup")
    length = int(length) if warmup.unit == "steps" else float(length)
    return {warmup.unit: length, "begin_lr": float(begin_lr)}
