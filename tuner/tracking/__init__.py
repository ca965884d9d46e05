"""Experiment tracking: MLflow runs for a study and its trials, logged off the training path.

MLflow itself is imported only when a tracker for it is made (it takes seconds to import, and
``mlflow.tracking_uri: off`` or ``tuner status`` should not pay for it).

>>> tracker = make_tracker(None, experiment="digits")
>>> tracker.start_trial(number=0, params={"lr": 0.1}, tags={}).run_id is None
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.tracking._base import (
    HTTP_DEFAULTS,
    OUTCOME_STATUS,
    OUTCOMES,
    NullRecorder,
    NullTracker,
    Tracker,
    TrialRecorder,
    flatten_params,
    safe_text,
)
from tuner.tracking._relay import RelayRecorder, RelayTracker, TrackRelay

if TYPE_CHECKING:
    from tuner.tracking._mlflow import MlflowRecorder, MlflowTracker

__all__ = [
    "HTTP_DEFAULTS",
    "OUTCOMES",
    "OUTCOME_STATUS",
    "MlflowRecorder",
    "MlflowTracker",
    "NullRecorder",
    "NullTracker",
    "RelayRecorder",
    "RelayTracker",
    "TrackRelay",
    "Tracker",
    "TrialRecorder",
    "flatten_params",
    "make_tracker",
    "safe_text",
    "tracking_off",
]

_LAZY = {
    "MlflowRecorder": "tuner.tracking._mlflow",
    "MlflowTracker": "tuner.tracking._mlflow",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tuner.tracking' has no attribute {name!r}")


def make_tracker(tracking_uri: str | None, *, experiment: str) -> Tracker:
    """The tracker for ``mlflow.tracking_uri``: None or ``off`` tracks nothing.

    >>> type(make_tracker("off", experiment="digits")).__name__
    'NullTracker'
    """
    if tracking_off(tracking_uri):
        return NullTracker()
    from tuner.tracking._mlflow import MlflowTracker

    return MlflowTracker(tracking_uri, experiment=experiment)


def tracking_off(tracking_uri: str | None) -> bool:
    """Whether ``mlflow.tracking_uri`` turns tracking off (unset or ``off``).

    >>> tracking_off("off"), tracking_off("sqlite:///mlflow.db")
    (True, False)
    """
    return tracking_uri is None or tracking_uri.strip().lower() == "off"
