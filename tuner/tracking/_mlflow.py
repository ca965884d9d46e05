"""The MLflow tracker: a study's parent run and a child run per trial, logged off the hot path.

Layout (docs/mlflow.md): one experiment per study, one parent run per study (its id kept in the
Optuna study's user attrs by the runner), one child run ``trial-<number>`` per trial.

The design is one background daemon thread per tracker, in the trial's own process: the
:class:`~tuner.tracking._queue.Flusher`, which owns the bounded queue, the batching, the
backoff and the circuit breaker, and calls the :mod:`~tuner.tracking._client` helpers. A
report crosses one hand-off (a deque append) before the flusher sends it. ``open_study`` is the
one synchronous call (it needs the parent run id); everything after it is queued.

Not MLflow 3's own async logging (``log_batch(..., synchronous=False)``): its queue is unbounded,
its failures reach only whoever waits on its futures, and it drains in an ``atexit`` hook with
no time limit, so a hung server would hold the process's exit (see ``log_entities``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tuner.core.errors import TunerError
from tuner.core.keys import TAG, Outcome
from tuner.core.redact import redact
from tuner.tracking._base import OUTCOME_STATUS, check_outcome, flatten_params
from tuner.tracking._client import (
    Prober,
    ensure_experiment,
    find_run_by_key,
    is_http,
    is_transient,
    log_artifacts,
    log_entities,
    log_together,
    make_client,
    now_ms,
    open_parent_run,
    points,
    probe_server,
    tag_dict,
    terminate_run,
    to_metric,
)
from tuner.tracking._queue import Flusher, MetricsOp, PermanentError, RunHandle

__all__ = ["MlflowRecorder", "MlflowTracker"]

_log = logging.getLogger("tuner.tracking")


class MlflowRecorder:
    """Records one trial into its child run; every method only enqueues."""

    __slots__ = ("_finish", "_finished", "_flusher", "_handle", "_start")

    def __init__(self, flusher: Flusher, handle: RunHandle, finish: Callable[..., None]) -> None:
        self._flusher = flusher
        self._handle = handle
        self._finish = finish  # the tracker's way to queue this run's end
        self._start = time.monotonic()
        self._finished = False

    @property
    def run_id(self) -> str | None:
        """The child run id once the flusher created it (None before, or if it could not)."""
        return self._handle.run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Queue ``metrics`` at ``step`` (microseconds; never waits on MLflow, never raises)."""
        self._flusher.put_metrics(self._handle, metrics, step)

    def finish(self, outcome: str, *, tags: dict[str, str] | None = None) -> None:
        """Queue the outcome and duration tags and the run's end with the matching status."""
        check_outcome(outcome)
        if self._finished:
            return
        self._finished = True
        end_tags = {
            # The runner may pass its own (more exact) duration; ours is the fallback.
            TAG.DURATION: f"{time.monotonic() - self._start:.3f}",
            **(tags or {}),
            TAG.OUTCOME: outcome,
        }
        self._finish(self._handle, end_tags, OUTCOME_STATUS[outcome], now_ms())


class MlflowTracker:
    """A :class:`~tuner.tracking.Tracker` that writes to MLflow from a background thread.

    ``patience`` bounds how long a trial's end waits on a hung MLflow (see the Flusher);
    ``exit_grace`` how long :meth:`close` waits for an unhealthy one.

    >>> tracker = MlflowTracker("sqlite:///mlflow.db", experiment="digits")  # doctest: +SKIP
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        experiment: str,
        max_queued: int = 100_000,
        interval: float = 0.2,
        max_backoff: float = 15.0,
        patience: float = 1.0,
        exit_grace: float = 5.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self._client = make_client(tracking_uri)
        self._experiment_id: str | None = None
        self._parent = RunHandle()
        self._flusher = Flusher(
            self._send_metrics,
            is_transient=is_transient,
            probe=Prober(tracking_uri) if is_http(tracking_uri) else None,
            max_queued=max_queued,
            interval=interval,
            max_backoff=max_backoff,
            patience=patience,
            down_grace=exit_grace,
        )

    # -- Tracker API ------------------------------------------------------------------------

    @property
    def parent_run_id(self) -> str | None:
        """The parent run id, once known (also after a deferred ``open_study``)."""
        return self._parent.run_id

    @property
    def experiment_id(self) -> str | None:
        """The MLflow experiment's id, once the study is open there."""
        return self._experiment_id

    @property
    def dropped_metrics(self) -> int:
        """``log`` calls dropped because the queue was full (the backend was unreachable)."""
        return self._flusher.dropped_metrics

    @property
    def pending(self) -> int:
        """Operations queued and not yet delivered."""
        return self._flusher.pending

    @property
    def healthy(self) -> bool:
        """False while MLflow is failing or hung (trials do not wait for it then)."""
        return self._flusher.healthy

    def open_study(
        self,
        *,
        study_name: str,
        experiment: str,
        study_yaml_text: str,
        tags: dict[str, str],
        existing_parent_run_id: str | None,
    ) -> str | None:
        """Find or create the experiment and the parent run; log study.yaml and the tags.

        Returns the parent run id, or None when MLflow cannot be reached now: the opening is
        then queued and retried like everything else (read :attr:`parent_run_id` later).
        """
        self.experiment = experiment
        try:
            if is_http(self.tracking_uri) and not probe_server(self.tracking_uri):
                raise ConnectionError(f"no answer from {self.tracking_uri}/health")
            self._open(study_name, experiment, tags, existing_parent_run_id)
        except Exception as exc:
            if not is_transient(exc):
                raise TunerError(
                    f"MLflow: cannot open experiment {experiment!r}: "
                    f"{redact(exc, self.tracking_uri)}"
                ) from exc
            _log.warning(
                "tracking: MLflow at %s unreachable (%s); the study runs on and its data is "
                "queued until it answers",
                redact(self.tracking_uri),
                redact(exc, self.tracking_uri),
            )
            self._flusher.put_call(
                self._parent,
                lambda: self._open(study_name, experiment, tags, existing_parent_run_id),
                "open the study's parent run",
            )
        self._flusher.put_call(
            self._parent,
            lambda: log_artifacts(self._client, self._need(), {"study.yaml": study_yaml_text}),
            "log study.yaml",
        )
        return self._parent.run_id

    def _open(
        self, study_name: str, experiment: str, tags: dict[str, str], existing: str | None
    ) -> None:
        if self._parent.run_id is not None:
            return
        try:
            self._experiment_id = ensure_experiment(self._client, experiment, self.tracking_uri)
            self._parent.run_id = open_parent_run(
                self._client,
                experiment_id=self._experiment_id,
                study_name=study_name,
                existing_run_id=existing,
                tags=tags,
            )
        except Exception as exc:
            if not is_transient(exc):
                self._parent.failed = True
            raise

    def start_trial(
        self, *, number: int, params: Mapping[str, object], tags: dict[str, str]
    ) -> MlflowRecorder:
        """Queue the child run ``trial-<number>`` with its params and tags; return a recorder."""
        handle = RunHandle()
        key = uuid.uuid4().hex
        flat = flatten_params(params)
        run_tags = {**tags, TAG.TRIAL_NUMBER: str(number), TAG.RUN_KEY: key}
        start_ms = now_ms()
        tried = False

        def create() -> None:
            nonlocal tried
            try:
                if handle.run_id is None:
                    parent_id = self._need()
                    if tried:
                        # The last attempt may have created the run before its answer was lost
                        # (a timeout): look for it instead of making a duplicate.
                        handle.run_id = find_run_by_key(
                            self._client, self._experiment_id or "", key
                        )
                    if handle.run_id is None:
                        tried = True
                        run = self._client.create_run(
                            self._experiment_id or "",
                            start_time=start_ms,
                            tags=tag_dict({MLFLOW_PARENT_RUN_ID: parent_id, **run_tags}),
                            run_name=f"trial-{number}",
                        )
                        handle.run_id = run.info.run_id
                # The params go with the run's first batch of points, or with its end.
                handle.params = flat
            except Exception as exc:
                if not is_transient(exc) and handle.run_id is None:
                    handle.failed = True
                raise

        self._flusher.put_call(handle, create, f"create run trial-{number}")
        # No points: it carries the params to MLflow once ``interval`` passed without a report
        # (a long trial shows its params while it runs; a short one sends them with its end).
        self._flusher.put_metrics(handle, {}, 0, start_ms)
        return MlflowRecorder(self._flusher, handle, self._queue_end)

    def _queue_end(
        self, handle: RunHandle, end_tags: dict[str, str], status: str, end: int
    ) -> None:
        logged = False

        def end_run(batch: list[MetricsOp]) -> None:
            # One log_batch (params not sent yet, the last points, the end tags), one update.
            nonlocal logged
            assert handle.run_id is not None
            if not logged:
                log_together(
                    self._client, handle.run_id, metrics=points(batch), params=handle.params,
                    tags=end_tags,
                )  # fmt: skip
                logged = True
                handle.params = None
                for op in batch:
                    op.done = True  # a retry of the status update resends none of them
            terminate_run(self._client, handle.run_id, status, end)

        self._flusher.put_call(handle, end_run, "end of a trial's run", wake=True, merge=True)

    def update_study(
        self,
        *,
        metrics: dict[str, float],
        tags: dict[str, str] | None = None,
        artifacts: dict[str, str | bytes] | None = None,
        step: int = 0,
    ) -> None:
        """Queue study-level metrics (at ``step``), tags and artifacts on the parent run."""
        ts = now_ms()
        entities = [m for k, v in metrics.items() if (m := to_metric(k, v, ts, step)) is not None]
        tags, artifacts = dict(tags or {}), dict(artifacts or {})

        def update() -> None:
            run_id = self._need()
            log_entities(self._client, run_id, metrics=entities, tags=tags)
            if artifacts:
                log_artifacts(self._client, run_id, artifacts)

        self._flusher.put_call(self._parent, update, "update the study's parent run")

    def end_study(self) -> None:
        """Queue the parent run's end (FINISHED)."""
        end = now_ms()
        self._flusher.put_call(
            self._parent,
            lambda: terminate_run(self._client, self._need(), "FINISHED", end),
            "end the study's parent run",
            wake=True,
        )

    def kill_trial(self, number: int, *, reason: str | None = None) -> None:
        """Queue the end of trial ``number``'s child run as KILLED (its worker died mid-trial).

        The run was made by the dead worker's tracker, so it is found by its tags under the
        parent run. Only a RUNNING run is ended; when none exists (the dead worker never
        delivered it) there is nothing to close, and ``tuner sync`` creates it as KILLED.
        """
        tags = {TAG.OUTCOME: Outcome.INTERRUPTED.value}
        if reason:
            tags[TAG.REASON] = reason
        end = now_ms()

        def kill() -> None:
            parent = self._need()
            runs = self._client.search_runs(
                [self._experiment_id or ""],
                filter_string=(
                    f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}' "
                    f"AND tags.`tuner.trial_number` = '{int(number)}' "
                    "AND attributes.status = 'RUNNING'"
                ),
                max_results=10,
            )
            for run in runs:
                log_entities(self._client, run.info.run_id, tags=tags)
                terminate_run(
                    self._client, run.info.run_id, OUTCOME_STATUS[Outcome.INTERRUPTED.value], end
                )
            if not runs:
                _log.info("tracking: trial %d has no running MLflow run to close", number)

        self._flusher.put_call(self._parent, kill, f"end run trial-{number} as KILLED", wake=True)

    def flush(self, timeout: float, *, upto: int | None = None) -> bool:
        """Wait up to ``timeout`` s for what was queued (before the mark ``upto``, if given);
        True if all of it reached MLflow.

        Waits not at all while MLflow is failing, and gives up when it hangs (the data stays
        queued and is retried in the background); :meth:`close` is the patient wait.
        """
        return self._flusher.flush(timeout, upto=upto)

    def mark(self) -> int:
        """A position in the queue, for ``flush(upto=...)``."""
        return self._flusher.mark()

    def close(self, timeout: float = 30.0) -> bool:
        """Deliver what is queued (bounded: ``timeout``, or ``exit_grace`` once MLflow keeps
        failing or hangs), stop the flusher, and say what did not reach MLflow.

        Returns True when everything queued was delivered.
        """
        if self._flusher.close(timeout):
            return True
        points_left, calls_left = self._flusher.undelivered()
        _log.warning(
            "tracking: %d metric point(s) and %d run update(s) not delivered to MLflow at %s%s; "
            "the study database has the trials: `tuner sync STUDY.yaml` delivers their runs, "
            "params, status and reported values",
            points_left,
            calls_left,
            redact(self.tracking_uri),
            f" ({self._flusher.last_error})" if self._flusher.last_error else "",
        )
        return False

    # -- inside the flusher thread ----------------------------------------------------------

    def _need(self) -> str:
        if self._parent.run_id is None:
            raise PermanentError("the study's parent run could not be opened")
        return self._parent.run_id

    def _send_metrics(self, handle: RunHandle, ops: list[MetricsOp]) -> None:
        assert handle.run_id is not None
        log_together(self._client, handle.run_id, metrics=points(ops), params=handle.params)
        handle.params = None
