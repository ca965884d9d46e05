"""tuner: find the optimizer, learning rate, schedule and warmup to train a PyTorch model with.

The objective API (``Trial``, ``TrialPruned``, ``TrialDiverged``) and the exported configuration
(``load_optimizer_config``, ``build_optimizer``) are importable from here. Names load lazily so
that ``tuner --help`` does not pay for importing torch.

Example::

    cfg = tuner.load_optimizer_config("best.yaml")
    optimizer, scheduler = tuner.build_optimizer(model.parameters(), cfg, total_steps=10_000)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.core.lazy import lazy_attributes

__version__ = "0.1.0"

__all__ = [
    "CatalogError",
    "ConfigError",
    "OptimizerConfig",
    "StorageError",
    "Trial",
    "TrialDiverged",
    "TrialPruned",
    "TunerError",
    "Yogi",
    "build_optimizer",
    "load_optimizer_config",
    "render_torch_code",
]

_WHERE = {
    "CatalogError": "tuner.core.errors",
    "ConfigError": "tuner.core.errors",
    "StorageError": "tuner.core.errors",
    "TunerError": "tuner.core.errors",
    "Trial": "tuner.trial",
    "TrialDiverged": "tuner.trial",
    "TrialPruned": "tuner.trial",
    "Yogi": "tuner.catalog.optim",
    "OptimizerConfig": "tuner.catalog.export",
    "build_optimizer": "tuner.catalog.export",
    "load_optimizer_config": "tuner.catalog.export",
    "render_torch_code": "tuner.catalog.render",
}

if TYPE_CHECKING:
    from tuner.catalog.export import OptimizerConfig, build_optimizer, load_optimizer_config
    from tuner.catalog.optim import Yogi
    from tuner.catalog.render import render_torch_code
    from tuner.core.errors import CatalogError, ConfigError, StorageError, TunerError
    from tuner.trial import Trial, TrialDiverged, TrialPruned


__getattr__ = lazy_attributes(__name__, _WHERE)


def __dir__() -> list[str]:
    return sorted(__all__)
