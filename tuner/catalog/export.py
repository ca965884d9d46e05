"""The exported configuration (docs/answer.md): a winning optimizer + schedule, replayable anywhere.

An :class:`OptimizerConfig` is what a trial samples and what ``tuner best`` writes. Its
:meth:`~OptimizerConfig.to_dict` is the flat document users keep next to their training code::

    optimizer: adamw
    lr: 0.0012
    betas: [0.9, 0.995]
    eps: 1.0e-08
    weight_decay: 0.01
    amsgrad: false
    schedule: {name: cosine, final_lr_ratio: 0.01}
    warmup: {fraction: 0.05, begin_lr: 0.0}

Example::

    >>> import torch
    >>> cfg = load_optimizer_config({"optimizer": "sgd", "lr": 0.1, "schedule": "cosine"})
    >>> optimizer, scheduler = build_optimizer([torch.zeros(3, requires_grad=True)], cfg, 100)
    >>> type(optimizer).__name__, scheduler.get_last_lr()
    ('SGD', [0.1])
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tuner.catalog.optim import get_optimizer
from tuner.catalog.schedules import normalize_schedule, normalize_warmup
from tuner.core.errors import ConfigError
from tuner.core.lazy import lazy_attributes

if TYPE_CHECKING:
    import torch

    from tuner.catalog.schedules import WarmupScheduleLR, build_scheduler

__all__ = [
    "OptimizerConfig",
    "build_optimizer",
    "build_scheduler",
    "load_optimizer_config",
]

_NON_KWARGS = ("optimizer", "schedule", "warmup")


@dataclass(frozen=True)
class OptimizerConfig:
    """One optimizer configuration: the catalog name, torch kwargs, schedule and warmup.

    ``kwargs`` are exactly what the torch class receives (``betas`` as a tuple, fixed flags
    such as ``nesterov=True`` included); ``schedule`` is a mapping with ``name`` and its
    hyperparameters; ``warmup`` is ``{"fraction": f, "begin_lr": b}``,
    ``{"steps": n, "begin_lr": b}`` or None.

    Example::

        >>> cfg = OptimizerConfig("adam", {"lr": 1e-3, "betas": (0.9, 0.99)},
        ...                       {"name": "cosine", "final_lr_ratio": 0.0})
        >>> cfg.to_dict()["betas"]
        [0.9, 0.99]
    """

    optimizer: str
    kwargs: Mapping[str, Any]
    schedule: Mapping[str, Any] = field(default_factory=lambda: {"name": "constant"})
    warmup: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The flat document of docs/answer.md (plain YAML/JSON data: tuples become lists)."""
        doc: dict[str, Any] = {"optimizer": self.optimizer}
        for key in _document_order(self.optimizer, self.kwargs):
            value = self.kwargs[key]
            doc[key] = list(value) if isinstance(value, tuple) else value
        doc["schedule"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in self.schedule.items()
        }
        if self.warmup is not None:
            doc["warmup"] = dict(self.warmup)
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str = "config") -> OptimizerConfig:
        """Validate a flat document and fill in defaults; ConfigError names field and value.

        Missing hyperparameters take the optimizer's defaults, a missing schedule is
        ``constant`` and a missing warmup is none.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: must be a mapping with `optimizer`, but got {data!r}")
        if "optimizer" not in data:
            raise ConfigError(f"{path}.optimizer: is required, but got keys {sorted(data)}")
        spec = get_optimizer(data["optimizer"])
        given = {k: v for k, v in data.items() if k not in _NON_KWARGS}
        # Unknown keys, a fixed flag given another value (nesterov: false) and a malformed
        # betas pair are the registry's errors; so are values breaking a rule.
        values = spec.from_kwargs(given, path=path)
        spec.check(values, path=path)
        return cls(
            spec.name,
            spec.to_kwargs(values),  # missing values take the optimizer's defaults
            normalize_schedule(data.get("schedule"), path=f"{path}.schedule"),
            normalize_warmup(data.get("warmup"), path=f"{path}.warmup"),
        )

    def to_yaml(self) -> str:
        """The document as YAML, laid out as in docs/answer.md (flow style: betas, schedule)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def to_json(self) -> str:
        """The document as indented JSON."""
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _document_order(optimizer: str, kwargs: Mapping[str, Any]) -> list[str]:
    """Kwargs in catalog order, a packed kwarg at its first part (lr, betas, eps, ...)."""
    spec = get_optimizer(optimizer)
    packed = {part: name for name, parts in spec.packed.items() for part in parts}
    order = [packed.get(hp.name, hp.name) for hp in spec.hparams]
    order = [*dict.fromkeys(order), *spec.fixed, *kwargs]
    return [key for key in dict.fromkeys(order) if key in kwargs]


def load_optimizer_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | OptimizerConfig,
) -> OptimizerConfig:
    """Load an exported configuration from a YAML or JSON file, or validate a dict.

    Example::

        >>> load_optimizer_config({"optimizer": "adamw", "lr": 3e-4}).kwargs["lr"]
        0.0003
    """
    if isinstance(source, OptimizerConfig):
        return source
    if isinstance(source, Mapping):
        return OptimizerConfig.from_dict(source)
    file = Path(source)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the configuration: {exc.strerror}") from exc
    try:
        # JSON is (nearly) YAML, but json.loads gives the better message for a .json file.
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{file}: not valid {file.suffix.lstrip('.') or 'YAML'}: {exc}") from exc
    return OptimizerConfig.from_dict(data, path=str(file))


def build_optimizer(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    config: OptimizerConfig | Mapping[str, Any],
    total_steps: int,
    *,
    fused: bool = False,
) -> tuple[torch.optim.Optimizer, WarmupScheduleLR]:
    """Plain torch objects for ``config``: the optimizer and its per-step lr scheduler.

    ``params`` may be tensors or param-group dicts; each group is scheduled from its own lr.
    Call ``scheduler.step()`` after every ``optimizer.step()``. ``fused=True`` builds Adam,
    AdamW and Yogi fused when the parameters are on CUDA (same update, one kernel per step).

    Example::

        >>> import torch
        >>> model = torch.nn.Linear(2, 1)
        >>> cfg = {"optimizer": "adamw", "lr": 1e-3, "warmup": {"steps": 10}}
        >>> optimizer, scheduler = build_optimizer(model.parameters(), cfg, total_steps=100)
        >>> scheduler.get_last_lr()
        [0.0]
    """
    # Lazy: the scheduler is torch code, and the catalog is read without torch (tuner launch
    # validates a study file without importing it).
    from tuner.catalog.schedules import build_scheduler

    config = load_optimizer_config(config)
    optimizer = get_optimizer(config.optimizer).build(params, dict(config.kwargs), fused=fused)
    return optimizer, build_scheduler(optimizer, config.schedule, config.warmup, total_steps)


# Re-exported from tuner.catalog.schedules, which imports torch for it only on use.
__getattr__ = lazy_attributes(__name__, {"build_scheduler": "tuner.catalog.schedules._torch"})
