"""The tracking contract the trial runner talks to, and the tracker used when MLflow is off.

The runner never imports MLflow: it holds a :class:`Tracker` made by
:func:`tuner.tracking.make_tracker` and a :class:`TrialRecorder` per trial. Every value that
leaves tuner for a tracking backend goes through :func:`flatten_params` / :func:`safe_text`,
which apply the one redaction function, :func:`tuner.core.redact.redact`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from tuner.core.keys import Outcome
from tuner.core.redact import redact

__all__ = [
    "HTTP_DEFAULTS",
    "OUTCOMES",
    "OUTCOME_STATUS",
    "NothingPending",
    "NullRecorder",
    "NullTracker",
    "Tracker",
    "TrialRecorder",
    "check_outcome",
    "flatten_params",
    "safe_text",
]


#: Run status per trial outcome (docs/mlflow.md): a pruned trial ends normally, a diverged one not.
OUTCOME_STATUS: dict[str, str] = {
    Outcome.COMPLETE.value: "FINISHED",
    Outcome.PRUNED.value: "FINISHED",
    Outcome.FAILED.value: "FAILED",
    Outcome.DIVERGED.value: "FAILED",
    Outcome.INTERRUPTED.value: "KILLED",
}
OUTCOMES = frozenset(OUTCOME_STATUS)

#: MLflow's own HTTP settings for tuner's processes; the CLI sets each one the
#: user has not (a library user sets their own).
#: MLflow's defaults (a 120 s timeout, 7 retries with backoff) hold one request for up to 20
#: minutes against a hung server. tuner's flusher retries with its own backoff and probes first,
#: so one bounded attempt per request is all it needs; the URL printing would show the
#: tracking URI, userinfo included, on stdout.
HTTP_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

# MLflow rejects longer values; we truncate instead of losing the whole batch.
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000


def safe_text(value: object, *, limit: int = _MAX_TAG_VALUE) -> str:
    """``str(value)`` with URL passwords redacted and cut to MLflow's length ``limit``.

    >>> safe_text("postgresql://tuner:s3cret@db/tuner")
    'postgresql://tuner:***@db/tuner'
    """
    text = redact(_to_str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_str(value: object) -> str:
    if isinstance(value, float):
        # repr keeps every digit (str does too on py3, but be explicit: 1e-05 stays 1e-05).
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def flatten_params(params: Mapping[str, object], *, prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings into dotted keys and stringify values, passwords redacted.

    Lists and tuples stay one value (``betas: [0.9, 0.999]`` is one hyperparameter).

    >>> flatten_params({"lr": 0.001, "schedule": {"name": "cosine"}, "betas": (0.9, 0.99)})
    {'lr': '0.001', 'schedule.name': 'cosine', 'betas': '[0.9, 0.99]'}
    """
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = safe_text(
                "[" + ", ".join(_to_str(v) for v in value) + "]", limit=_MAX_PARAM_VALUE
            )
        else:
            flat[name] = safe_text(value, limit=_MAX_PARAM_VALUE)
    return flat


@runtime_checkable
class TrialRecorder(Protocol):
    """Records one trial. ``log`` and ``finish`` only enqueue: they never wait on the backend."""

    @property
    def run_id(self) -> str | None:
        """The MLflow run id once the background flusher created the run, else ``None``."""
        ...

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Queue ``metrics`` at ``step``. Costs microseconds whatever the backend."""
        ...

    def finish(self, outcome: str, *, tags: dict[str, str] | None = None) -> None:
        """Queue the end of the trial: outcome tag, duration and the run status it maps to."""
        ...


@runtime_checkable
class Tracker(Protocol):
    """One study's tracking: a parent run, a child run per trial, a background flusher.

    Example::

        tracker = make_tracker("sqlite:///mlflow.db", experiment="digits")
        parent = tracker.open_study(study_name="digits", experiment="digits",
                                    study_yaml_text=text, tags={}, existing_parent_run_id=None)
        rec = tracker.start_trial(number=0, params={"lr": 1e-3}, tags={})
        rec.log({"val_accuracy": 0.9}, step=0)
        rec.finish("complete")
        tracker.flush(timeout=1.0)  # a trial's end: never waits on a failing backend
        delivered = tracker.close(timeout=30.0)  # the patient, bounded wait at exit
    """

    @property
    def parent_run_id(self) -> str | None:
        """The study's parent run id, once known (``open_study`` may not know it when offline)."""
        ...

    def open_study(
        self,
        *,
        study_name: str,
        experiment: str,
        study_yaml_text: str,
        tags: dict[str, str],
        existing_parent_run_id: str | None,
    ) -> str | None:
        """Find or create the experiment and the study's one parent run; return its id."""
        ...

    def start_trial(
        self, *, number: int, params: Mapping[str, object], tags: dict[str, str]
    ) -> TrialRecorder:
        """Queue the creation of the child run ``trial-<number>``; return its recorder."""
        ...

    def update_study(
        self,
        *,
        metrics: dict[str, float],
        tags: dict[str, str] | None = None,
        artifacts: dict[str, str | bytes] | None = None,
        step: int = 0,
    ) -> None:
        """Queue study-level metrics, tags and artifacts (``{"best_config.yaml": text}``)."""
        ...

    def end_study(self) -> None:
        """Queue the parent run's end (status FINISHED); ``open_study`` reopens it on resume."""
        ...

    def kill_trial(self, number: int, *, reason: str | None = None) -> None:
        """Queue the end of trial ``number``'s child run as KILLED, outcome ``interrupted``.

        For a trial whose worker died: another process found it stale, so no recorder of its
        own will ever finish the run. A run that already ended is left alone.
        """
        ...

    def flush(self, timeout: float, *, upto: int | None = None) -> bool:
        """Wait at most ``timeout`` seconds for what was queued so far (or before the ``mark``
        ``upto``); True if all of it was sent. Returns at once while the backend is failing."""
        ...

    def mark(self) -> int:
        """A position in the queue: ``flush(upto=mark)`` waits only for what came before it."""
        ...

    def close(self, timeout: float = 30.0) -> bool:
        """Deliver what is queued (bounded by ``timeout``, and shorter when the backend keeps
        failing), stop the background flusher; True if everything was delivered."""
        ...


def check_outcome(outcome: str) -> None:
    """A recorder's ``finish`` takes only tuner's outcome names (a ValueError names them)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, but got {outcome!r}")


class NothingPending:
    """``flush``, ``mark`` and ``close`` of a tracker that keeps nothing queued in this process
    (one that records nothing, or one whose every record has left it)."""

    def flush(self, timeout: float, *, upto: int | None = None) -> bool:
        """Nothing is pending here: True."""
        return True

    def mark(self) -> int:
        """Nothing is queued here: 0."""
        return 0

    def close(self, timeout: float = 30.0) -> bool:
        """Nothing is pending here: True."""
        return True


class NullRecorder:
    """A :class:`TrialRecorder` that records nothing (``mlflow.tracking_uri: off``)."""

    run_id: str | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Do nothing."""

    def finish(self, outcome: str, *, tags: dict[str, str] | None = None) -> None:
        """Check ``outcome`` like the real recorder does, then do nothing."""
        check_outcome(outcome)


class NullTracker(NothingPending):
    """A :class:`Tracker` that tracks nothing: every method is a no-op."""

    parent_run_id: str | None = None

    def open_study(
        self,
        *,
        study_name: str,
        experiment: str,
        study_yaml_text: str,
        tags: dict[str, str],
        existing_parent_run_id: str | None,
    ) -> str | None:
        """Return ``existing_parent_run_id`` unchanged (keeps a stored id when tracking is off)."""
        return existing_parent_run_id

    def start_trial(
        self, *, number: int, params: Mapping[str, object], tags: dict[str, str]
    ) -> NullRecorder:
        """Return a recorder that records nothing."""
        return NullRecorder()

    def update_study(
        self,
        *,
        metrics: dict[str, float],
        tags: dict[str, str] | None = None,
        artifacts: dict[str, str | bytes] | None = None,
        step: int = 0,
    ) -> None:
        """Do nothing."""

    def end_study(self) -> None:
        """Do nothing."""

    def kill_trial(self, number: int, *, reason: str | None = None) -> None:
        """Do nothing."""
