"""The warm-start portfolio: known-good configurations as a study's first trials.

The entries are data (``portfolio.yaml`` beside this module, each with its sources).
:func:`portfolio_trials` adapts them to one study's search space and turns each into the Optuna
parameters that :func:`tuner.config.space.sample_config` would draw for it, ready for
``study.enqueue_trial``. Enqueued through Optuna, they are ordinary trials that the sampler
learns from.

Example::

    >>> from tuner.config.space import parse_search
    >>> space = parse_search({"optimizers": ["adamw", "sgd"], "schedules": ["cosine"]})
    >>> [(name, params["optimizer"]) for name, params in portfolio_trials(space, {})]
    [('adamw-cosine', 'adamw'), ('sgd-cosine', 'sgd')]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

import yaml

from tuner.catalog.hparams import Choice, Domain, Fixed, HyperParam
from tuner.catalog.optim import get_optimizer
from tuner.catalog.schedules import WARMUP_HPARAMS, get_schedule
from tuner.search._range_test import FAMILIES

if TYPE_CHECKING:
    from tuner.config.space import SearchSpace

__all__ = ["PORTFOLIO", "portfolio_trials"]

# An ambiguous rise adds a raised entry (``<name>@rise``) only where ``lr_fraction`` of the rise
# lies this far above the literature's rate: closer, the literature's entry already tells the
# sampler about that region, and one more trial there only costs the search a trial.
RAISE_DECADE = 10.0


def _load() -> tuple[dict[str, Any], ...]:
    text = resources.files("tuner.search").joinpath("portfolio.yaml").read_text()
    return tuple(yaml.safe_load(text))


PORTFOLIO = _load()
"""The portfolio entries in trial order, as ``portfolio.yaml`` gives them."""


def portfolio_trials(
    space: SearchSpace, rates: Mapping[str, tuple[float, str]]
) -> list[tuple[str, dict[str, Any]]]:
    """``(entry name, Optuna params)`` for each entry whose optimizer ``space`` searches.

    ``rates`` are the range test's points per probed optimizer, ``(point, verdict)``
    (:meth:`tuner.search.RangeTest.portfolio_rates`). Where the probe saw training blow up, the
    entry runs at ``lr_fraction`` of that ceiling. Where its signal rose without blowing up,
    the probe is uncertain and the entry keeps the literature's rate: a wrong low ceiling once
    put Adam's entries far below every good rate of a classifier, and a norm that rose late
    (after the loss had blown up and the units died) put momentum's at 70x its literature rate
    (benchmarks/RESULTS.md, issue 16). Where nothing happened up to the ramp's top, the rate
    may rise above the literature's, never fall below it.

    An uncertain rise can still say that the literature's rate is far too low for this run
    (Adam's 1e-3 over the 240 steps of a small transformer, where the best constant rate is
    near 1e-2): where ``lr_fraction`` of the rise lies :data:`RAISE_DECADE` times the
    literature's rate or more, the family's first entry with a constant schedule (else its
    first) also runs at that fraction of the rise, once per family, after every literature
    entry: a raised rate tried as it is, not decayed (char_transformer's median over 10 seeds
    2.626 -> 2.577 against the raised cosine entry; benchmarks/RESULTS.md). That widens the
    portfolio and never moves an entry (the literature's rates all still run).
    """
    by_name = {o.name: o for o in space.optimizers}
    schedules = {s.name: s for s in space.schedules}
    out, extra = [], []
    for entry in PORTFOLIO:
        name = entry["optimizer"]
        if name not in by_name:
            continue
        lr = entry["lr"]
        point, verdict = rates.get(name, (None, "ambiguous"))
        if point is not None and verdict == "diverged":
            lr = point * entry["lr_fraction"]
        elif point is not None and verdict == "stable":
            lr = max(entry["lr"], point * entry["lr_fraction"])
        out.append((entry["name"], _entry_params(space, by_name, schedules, entry, lr)))
        if (
            point is not None
            and verdict == "ambiguous"
            and point * entry["lr_fraction"] >= RAISE_DECADE * entry["lr"]
            and entry is _raised_entry(_family(name), by_name)
        ):
            # The probe is unsure, and its rise puts the rate a decade or more above the
            # literature's: the family's raised entry also runs at ``lr_fraction`` of the
            # rise, after every literature entry (a small budget's cap drops it first).
            rise = point * entry["lr_fraction"]
            params = _entry_params(space, by_name, schedules, entry, rise)
            extra.append((f"{entry['name']}@rise", params))
    return out + extra


def _raised_entry(family: str, by_name: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The family's entry that runs again at a raised rate: its first with a constant schedule
    (a raised rate tested as it is, not decayed), else its first."""
    mine = [e for e in PORTFOLIO if e["optimizer"] in by_name and _family(e["optimizer"]) == family]
    constant = [e for e in mine if e.get("schedule", {}).get("name", "constant") == "constant"]
    return (constant or mine or [None])[0]


def _family(optimizer: str) -> str:
    return next((k for k, members in FAMILIES.items() if optimizer in members), optimizer)


def _entry_params(
    space: SearchSpace,
    by_name: Mapping[str, Any],
    schedules: Mapping[str, Any],
    entry: Mapping[str, Any],
    lr: float,
) -> dict[str, Any]:
    """The Optuna parameters of one portfolio entry at learning rate ``lr``."""
    name = entry["optimizer"]
    spec = get_optimizer(name)
    values = {**spec.default_values, **entry.get("values", {}), "lr": lr}
    params: dict[str, Any] = {}
    if len(by_name) > 1:
        params["optimizer"] = name
    for hp in spec.hparams:
        params.update(_params(hp, by_name[name].domains[hp.name], values[hp.name], name))
    sched = entry.get("schedule", {"name": "constant"})
    chosen = schedules.get(sched["name"])
    if chosen is not None:  # else the sampler picks the schedule
        if len(schedules) > 1:
            params["schedule"] = chosen.name
        sched_spec = get_schedule(chosen.name)
        for hp in sched_spec.hparams:
            value = sched.get(hp.name, sched_spec.default_values.get(hp.name))
            prefix = f"schedule.{chosen.name}"
            params.update(_params(hp, chosen.domains[hp.name], value, prefix))
    warmup = space.warmup
    if warmup is not None and warmup.unit == "fraction":
        fraction = entry.get("warmup", {}).get("fraction", 0.0)
        params.update(_params(WARMUP_HPARAMS["fraction"], warmup.length, fraction, "warmup"))
    return params


def _params(hp: HyperParam, domain: Domain, value: Any, prefix: str) -> dict[str, Any]:
    """The Optuna parameters through which ``hp.suggest`` would return ``value``."""
    key = f"{prefix}.{hp.name}"
    if isinstance(domain, Fixed) or value is None:
        return {}
    if isinstance(domain, Choice):
        return {key: value} if value in domain.choices else {}
    out: dict[str, Any] = {}
    if domain.include_zero:
        out[f"{key}_is_zero"] = value == 0
        if value == 0:
            return out
    elif value == 0 and domain.log:
        value = domain.low
    if hp.one_minus and domain.log:
        out[f"{key}.one_minus"] = _clamp(1.0 - value, 1.0 - domain.high, 1.0 - domain.low)
        return out
    value = _clamp(float(value), domain.low, domain.high)
    out[key] = round(value) if hp.kind is int else value
    return out


def _clamp(value: float, low: float, high: float) -> float:
    if not math.isfinite(value):
        return low
    return min(max(value, low), high)
