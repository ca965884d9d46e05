"""The optimizer registry: every optimizer a study can choose, one :class:`OptimizerSpec` each.

A spec knows its torch class (by name, imported on first use), its searchable hyperparameters
with default search ranges from the literature, the kwargs it always passes, and its validity
rules. Adding an optimizer is a class plus a row in :data:`OPTIMIZERS`; the contract suite in
``tests/test_optimizers.py`` then covers it.

Sources for the default ranges:

- **AlgoPerf**: the paper baselines of Dahl et al. 2023, "Benchmarking Neural Network Training
  Algorithms" (``reference_algorithms/paper_baselines/*/tuning_search_space.json``). AdamW: lr
  [1e-4, 1e-2], 1-beta1 [2e-2, 0.5], beta2 0.999, decoupled weight decay [5e-3, 1]; momentum and
  Nesterov: lr [2e-2, 5], 1-momentum [5e-3, 0.3], L2 weight decay [1e-7, 5e-5]; all log scales.
- **Choi et al. 2019**, "On Empirical Comparisons of Optimizers for Deep Learning": tune lr,
  1-beta1, 1-beta2 and eps of adaptive methods on log scales, eps far above its default.
- **Schmidt et al. 2021**, "Descending through a Crowded Valley": learning rates tuned
  log-uniformly over [1e-4, 1], other hyperparameters at their defaults.

Example::

    >>> spec = get_optimizer("adam")
    >>> spec.to_kwargs({"lr": 3e-4, "beta1": 0.9, "beta2": 0.99})["betas"]
    (0.9, 0.99)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuner.catalog.hparams import Choice, Fixed, HyperParam, Range
from tuner.core.errors import CatalogError, ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["OPTIMIZERS", "CrossRule", "OptimizerSpec", "get_optimizer"]

Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class CrossRule:
    """A rule over several hyperparameters; errors are reported at the first name in ``names``."""

    names: tuple[str, ...]
    rule: str
    holds: Callable[..., bool]

    def violation(self, values: Mapping[str, Any]) -> str | None:
        """The rule text if ``values`` (holding every name) break it, else None."""
        if self.holds(*(values[n] for n in self.names)):
            return None
        got = ", ".join(f"{n}={values[n]!r}" for n in self.names)
        return f"{self.rule}, but got ({got})"


@dataclass(frozen=True)
class OptimizerSpec:
    """One registry entry: how to search, validate and build one optimizer.

    ``packed`` maps a torch kwarg to the hyperparameters it is made of (``betas`` from ``beta1``
    and ``beta2``): the study file and Optuna see scalars, torch sees its tuple.
    ``default_values`` is what :meth:`defaults` returns; ``rules`` are the cross rules.
    ``fusable``: the torch class takes ``fused=True`` on CUDA (one kernel per step).

    Example::

        >>> spec = get_optimizer("nesterov")
        >>> spec.to_kwargs(spec.defaults())
        {'lr': 0.01, 'momentum': 0.9, 'weight_decay': 0.0, 'dampening': 0.0, 'nesterov': True}
    """

    name: str
    # The optimizer class as "module.Class", imported on first use: the catalog is read where
    # torch is not needed (``tuner launch`` validates a study file and starts its workers
    # without importing torch, about 1.3 s of its start-up).
    class_path: str
    hparams: tuple[HyperParam, ...]
    fixed: Mapping[str, Any]
    source: str
    default_values: Mapping[str, Any] = field(default_factory=dict)
    packed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rules: tuple[CrossRule, ...] = ()
    fusable: bool = False

    def _names(self) -> str:
        return ", ".join(hp.name for hp in self.hparams)

    def hparam(self, name: str) -> HyperParam:
        """The hyperparameter called ``name``; CatalogError listing the known ones otherwise."""
        for hp in self.hparams:
            if hp.name == name:
                return hp
        raise CatalogError(
            f"optimizer {self.name!r} has no hyperparameter {name!r}; known: {self._names()}"
        )

    def defaults(self) -> dict[str, Any]:
        """One complete, valid set of values: torch's defaults, or the paper's where torch's
        would defeat the entry (``momentum`` and ``nesterov`` start at momentum 0.9)."""
        return {hp.name: self.default_values[hp.name] for hp in self.hparams}

    def to_kwargs(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Hyperparameter values -> torch kwargs, plus ``fixed``; missing values take defaults.

        Example::

            >>> get_optimizer("adamw").to_kwargs({"lr": 1e-3, "beta2": 0.95})["betas"]
            (0.9, 0.95)
        """
        complete = {**self.defaults(), **values}
        kwargs: dict[str, Any] = {}
        for hp in self.hparams:
            value = complete[hp.name]
            # torch wants floats (Adam rejects betas mixing int and float).
            kwargs[hp.name] = value if hp.kind is bool else hp.kind(value)
        for torch_name, parts in self.packed.items():
            kwargs[torch_name] = tuple(kwargs.pop(part) for part in parts)
        kwargs.update(self.fixed)
        return kwargs

    def from_kwargs(self, kwargs: Mapping[str, Any], *, path: str | None = None) -> dict[str, Any]:
        """Torch kwargs -> hyperparameter values (``betas`` -> ``beta1``, ``beta2``), without
        ``fixed``. A fixed kwarg given with another value, or an unknown kwarg, is an error."""
        path = path or self.name
        names = {hp.name for hp in self.hparams}
        values: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in self.packed:
                parts = self.packed[key]
                if not isinstance(value, (list, tuple)) or len(value) != len(parts):
                    raise CatalogError(
                        f"{path}.{key}: must be a pair ({', '.join(parts)}), but got "
                        f"{key}={value!r}"
                    )
                values.update(zip(parts, value, strict=True))
            elif key in self.fixed:
                if value != self.fixed[key]:
                    raise CatalogError(
                        f"{path}.{key}: is fixed to {self.fixed[key]!r} for {self.name}, "
                        f"but got {key}={value!r}"
                    )
            elif key in names:
                values[key] = value
            else:
                raise CatalogError(
                    f"{path}.{key}: unknown argument for {self.name}; known: "
                    f"{', '.join([*self._torch_names(), *self.fixed])}"
                )
        return values

    def _torch_names(self) -> list[str]:
        packed_parts = {part for parts in self.packed.values() for part in parts}
        return [hp.name for hp in self.hparams if hp.name not in packed_parts] + list(self.packed)

    def check(self, values: Mapping[str, Any], *, path: str) -> None:
        """Raise CatalogError "{path}.{name}: rule, but got name=value" for the first invalid
        value, unknown name or broken cross rule. Missing values are checked at their default."""
        for name in values:
            if not any(hp.name == name for hp in self.hparams):
                raise CatalogError(
                    f"{path}.{name}: unknown hyperparameter for {self.name}; known: {self._names()}"
                )
        for hp in self.hparams:
            if hp.name in values:
                try:
                    hp.validate_value(values[hp.name], path=f"{path}.{hp.name}")
                except CatalogError:
                    raise
                except ConfigError as error:
                    raise CatalogError(str(error)) from None
        complete = {**self.defaults(), **values, **self.fixed}
        for rule in self.rules:
            violation = rule.violation(complete)
            if violation is not None:
                raise CatalogError(f"{path}.{rule.names[0]}: {violation}")

    def build(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        kwargs: Mapping[str, Any],
        *,
        path: str | None = None,
        fused: bool = False,
    ) -> torch.optim.Optimizer:
        """Check torch ``kwargs`` (as :meth:`to_kwargs` makes them), then build the optimizer.

        ``fused=True`` asks for the fused implementation (torch's for Adam and AdamW, tuner's
        Triton kernel for Yogi) when the optimizer has one and every parameter is on CUDA;
        otherwise the usual one is built. It changes speed, not the update.

        Example::

            >>> import torch
            >>> spec = get_optimizer("yogi")
            >>> spec.build(torch.nn.Linear(2, 1).parameters(), spec.to_kwargs({"lr": 1e-3}))
            Yogi (...)
        """
        path = path or self.name
        values = self.from_kwargs(kwargs, path=path)
        self.check(values, path=path)
        kwargs = self.to_kwargs(values)
        if fused and self.fusable:
            params = list(params)
            if _all_on_cuda(params):
                kwargs["fused"] = True
        return self.factory(params, **kwargs)

    @property
    def factory(self) -> Callable[..., torch.optim.Optimizer]:
        """The optimizer class (importing torch, or tuner's Yogi, on first use)."""
        module, _, name = self.class_path.rpartition(".")
        return getattr(importlib.import_module(module), name)


def _all_on_cuda(params: list[Any]) -> bool:
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    return bool(tensors) and all(t.device.type == "cuda" for t in tensors)


# Validity rules: each returns the rule's text when broken, else None.


def _at_least_zero(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def _in_unit_open(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _in_unit_closed(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be in [0, 1]"


def _any_bool(value: bool) -> str | None:
    return None


_SCHMIDT = "Schmidt et al. 2021 (lr log-uniform over [1e-4, 1])"
_CHOI = "Choi et al. 2019 (eps searched on a log scale, far above its default)"
_ALGOPERF_ADAMW = "AlgoPerf AdamW baseline"
_ALGOPERF_MOMENTUM = "AlgoPerf momentum/Nesterov baselines"


def _lr(low: float, high: float, source: str) -> HyperParam:
    return HyperParam("lr", Range(low, high, log=True), source, _at_least_zero, doc="learning rate")


def _eps(low: float, high: float, source: str = _CHOI) -> HyperParam:
    return HyperParam("eps", Range(low, high, log=True), source, _positive)


def _decay(name: str, low: float, high: float, source: str, check: Check) -> HyperParam:
    """A decay rate (beta, momentum, rho, alpha): natural units, sampled as 1-x on a log scale."""
    return HyperParam(name, Range(low, high, log=True), source, check, one_minus=True)


def _weight_decay(low: float, high: float, source: str) -> HyperParam:
    # include_zero: "no weight decay" is a real contender and a log range cannot reach 0.
    return HyperParam(
        "weight_decay", Range(low, high, log=True, include_zero=True), source, _at_least_zero
    )


def _flag(name: str, source: str) -> HyperParam:
    return HyperParam(name, Choice((False, True)), source, _any_bool, kind=bool)


def _fixed_at(name: str, value: float, source: str, check: Check) -> HyperParam:
    """Searchable when the study file asks, held at ``value`` by default."""
    return HyperParam(name, Fixed(value), source, check)


_L2_WEIGHT_DECAY = _weight_decay(
    1e-7, 1e-3, f"{_ALGOPERF_MOMENTUM} (L2 [1e-7, 5e-5]), widened to 1e-3 to hold the usual 5e-4"
)
_MOMENTUM_LR = _lr(
    1e-3, 5.0, f"{_ALGOPERF_MOMENTUM} ([2e-2, 5]), lower bound extended to 1e-3 for small models"
)
_MOMENTUM = _decay(
    "momentum", 0.7, 0.995, f"{_ALGOPERF_MOMENTUM} (1-momentum in [5e-3, 0.3])", _in_unit_open
)
_BETA1 = _decay("beta1", 0.5, 0.98, f"{_ALGOPERF_ADAMW} (1-beta1 in [2e-2, 0.5])", _in_unit_open)
_BETA2 = _decay(
    "beta2",
    0.9,
    0.9999,
    "Choi et al. 2019 (1-beta2 on a log scale); AlgoPerf fixes 0.999, the middle",
    _in_unit_open,
)
_ADAM_EPS = _eps(1e-10, 1e-2)
_ADAM_LR = _lr(1e-5, 1e-1, f"{_ALGOPERF_ADAMW} ([1e-4, 1e-2]), widened a decade each side")
_ADAM_VALUES = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}


def _nesterov_holds(momentum: float, dampening: float) -> bool:
    return momentum > 0 and dampening == 0


_SPECS = (
    OptimizerSpec(
        name="sgd",
        class_path="torch.optim.SGD",
        hparams=(_lr(1e-4, 1.0, _SCHMIDT), _L2_WEIGHT_DECAY),
        fixed={},
        source=f"torch.optim.SGD; lr: {_SCHMIDT}; weight decay: {_ALGOPERF_MOMENTUM}",
        default_values={"lr": 1e-2, "weight_decay": 0.0},
    ),
    OptimizerSpec(
        name="momentum",
        class_path="torch.optim.SGD",
        hparams=(
            _MOMENTUM_LR,
            _MOMENTUM,
            _fixed_at(
                "dampening",
                0.0,
                "torch default; AlgoPerf and Choi et al. keep 0",
                (_in_unit_closed),
            ),
            _L2_WEIGHT_DECAY,
        ),
        fixed={},
        source=f"torch.optim.SGD with momentum (heavy ball); {_ALGOPERF_MOMENTUM}",
        default_values={"lr": 1e-2, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0},
    ),
    OptimizerSpec(
        name="nesterov",
        class_path="torch.optim.SGD",
        hparams=(_MOMENTUM_LR, _MOMENTUM, _L2_WEIGHT_DECAY),
        fixed={"dampening": 0.0, "nesterov": True},
        source=f"torch.optim.SGD(nesterov=True); {_ALGOPERF_MOMENTUM}",
        default_values={"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.0},
        rules=(
            CrossRule(
                ("momentum", "dampening"),
                "nesterov needs `momentum > 0` and `dampening == 0`",
                _nesterov_holds,
            ),
        ),
    ),
    OptimizerSpec(
        name="adagrad",
        class_path="torch.optim.Adagrad",
        hparams=(
            _lr(1e-4, 1.0, _SCHMIDT),
            _fixed_at(
                "lr_decay",
                0.0,
                "torch default; not tuned in the literature cited",
                (_at_least_zero),
            ),
            HyperParam(
                "initial_accumulator_value",
                Choice((0.0, 0.1)),
                "torch's default 0 and TensorFlow/Keras's 0.1",
                _at_least_zero,
            ),
            _eps(1e-10, 1e-2),
            _L2_WEIGHT_DECAY,
        ),
        fixed={},
        source=f"torch.optim.Adagrad; lr: {_SCHMIDT}; eps: {_CHOI}",
        default_values={
            "lr": 1e-2,
            "lr_decay": 0.0,
            "initial_accumulator_value": 0.0,
            "eps": 1e-10,
            "weight_decay": 0.0,
        },
    ),
    OptimizerSpec(
        name="rmsprop",
        class_path="torch.optim.RMSprop",
        hparams=(
            _lr(1e-5, 1e-1, f"{_SCHMIDT}, shifted down a decade: RMSprop steps like Adam"),
            _decay(
                "alpha",
                0.9,
                0.999,
                "Choi et al. 2019 (decay rates on a 1-x log scale)",
                (_in_unit_closed),
            ),
            _eps(1e-10, 1e-2),
            HyperParam(
                "momentum",
                Choice((0.0, 0.9)),
                "torch's default 0 and the 0.9 of TensorFlow's RMSprop recipes",
                _in_unit_open,
            ),
            _flag("centered", "torch option (Graves 2013); both values are common"),
            _L2_WEIGHT_DECAY,
        ),
        fixed={},
        source=f"torch.optim.RMSprop; lr: {_SCHMIDT}; eps: {_CHOI}",
        default_values={
            "lr": 1e-2,
            "alpha": 0.99,
            "eps": 1e-8,
            "momentum": 0.0,
            "centered": False,
            "weight_decay": 0.0,
        },
    ),
    OptimizerSpec(
        name="adadelta",
        class_path="torch.optim.Adadelta",
        hparams=(
            _lr(1e-2, 10.0, "centred on torch's default 1.0 (Zeiler 2012 has no lr)"),
            _decay(
                "rho",
                0.8,
                0.999,
                "around Zeiler 2012's 0.95 and torch's 0.9, 1-rho log",
                (_in_unit_closed),
            ),
            _eps(1e-8, 1e-3, f"{_CHOI}; Zeiler 2012 uses 1e-6"),
            _L2_WEIGHT_DECAY,
        ),
        fixed={},
        source=f"torch.optim.Adadelta (Zeiler 2012); eps: {_CHOI}",
        default_values={"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0},
    ),
    OptimizerSpec(
        name="adam",
        class_path="torch.optim.Adam",
        hparams=(
            _ADAM_LR,
            _BETA1,
            _BETA2,
            _ADAM_EPS,
            _L2_WEIGHT_DECAY,
            _flag("amsgrad", "torch option (Reddi et al. 2018)"),
        ),
        fixed={},
        source=f"torch.optim.Adam; {_ALGOPERF_ADAMW} and Choi et al. 2019",
        default_values={**_ADAM_VALUES, "amsgrad": False},
        packed={"betas": ("beta1", "beta2")},
        fusable=True,
    ),
    OptimizerSpec(
        name="adamw",
        class_path="torch.optim.AdamW",
        hparams=(
            _ADAM_LR,
            _BETA1,
            _BETA2,
            _ADAM_EPS,
            _weight_decay(5e-3, 1.0, f"{_ALGOPERF_ADAMW} (decoupled, [5e-3, 1])"),
            _flag("amsgrad", "torch option (Reddi et al. 2018)"),
        ),
        fixed={},
        source=f"torch.optim.AdamW; {_ALGOPERF_ADAMW} and Choi et al. 2019",
        default_values={**_ADAM_VALUES, "weight_decay": 1e-2, "amsgrad": False},
        packed={"betas": ("beta1", "beta2")},
        fusable=True,
    ),
    OptimizerSpec(
        name="yogi",
        class_path="tuner.catalog.optim._yogi.Yogi",
        hparams=(
            _lr(1e-4, 1e-1, "around Zaheer et al. 2018's default 1e-2, log"),
            _BETA1,
            _BETA2,
            _eps(1e-5, 1e-1, f"{_CHOI}; Zaheer et al. 2018 default 1e-3"),
            HyperParam(
                "initial_accumulator",
                Range(1e-8, 1e-2, log=True),
                "around Zaheer et al. 2018's default 1e-6, log",
                _at_least_zero,
            ),
            _L2_WEIGHT_DECAY,
        ),
        fixed={},
        source="tuner.catalog.optim.Yogi (Zaheer et al. 2018); betas as for Adam",
        default_values={
            "lr": 1e-2,
            "beta1": 0.9,
            "beta2": 0.999,
            "eps": 1e-3,
            "initial_accumulator": 1e-6,
            "weight_decay": 0.0,
        },
        packed={"betas": ("beta1", "beta2")},
        fusable=True,
    ),
)

OPTIMIZERS: dict[str, OptimizerSpec] = {spec.name: spec for spec in _SPECS}
"""Every optimizer a study can choose, by name, in catalog order (docs/catalog.md)."""


def get_optimizer(name: str) -> OptimizerSpec:
    """The registry entry called ``name``; CatalogError listing the known names otherwise.

    Example::

        >>> get_optimizer("adamw").factory
        <class 'torch.optim.adamw.AdamW'>
    """
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise CatalogError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}") from None
