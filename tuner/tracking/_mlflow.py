"""MLflow tracking on ``MlflowClient`` with run ids passed explicitly (DESIGN §6).

Layout: one experiment per study, one parent run per study (its id kept in the Optuna study's
user attrs by the runner), one child run ``trial-<number>`` per trial. The fluent ``mlflow.*``
API is never used: its global active-run stack does not mix with threads and many workers.

The functions at the top (``make_client``, ``ensure_experiment``, ``open_parent_run``,
``log_entities``, ``log_artifacts``) are synchronous and shared with ``tuner sync``; the
:class:`MlflowTracker` runs them on its background :class:`~tuner.tracking._queue.Flusher`.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tuner.errors import ConfigError, TunerError
from tuner.storage import redact_url
from tuner.tracking._base import (
    OUTCOME_STATUS,
    OUTCOMES,
    PARENT_RUN_ATTR,
    flatten_params,
    safe_text,
)
from tuner.tracking._queue import Flusher, MetricsOp, PermanentError, RunHandle

__all__ = [
    "PARENT_RUN_ATTR",
    "MlflowRecorder",
    "MlflowTracker",
    "ensure_experiment",
    "is_transient",
    "log_artifacts",
    "log_entities",
    "make_client",
    "open_parent_run",
    "terminate_run",
    "to_metric",
]

_log = logging.getLogger("tuner.tracking")

# MLflow's batch limits (mlflow.utils.validation): per log_batch call.
_MAX_METRICS = 1000
_MAX_PARAMS_TAGS = 100
_MAX_ENTITIES = 1000  # metrics, params and tags together

# Errors that no retry will fix: the request itself is wrong or its target is gone.
_PERMANENT_CODES = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_DOES_NOT_EXIST",
        "RESOURCE_ALREADY_EXISTS",
        "INVALID_STATE",
        "BAD_REQUEST",
        "NOT_FOUND",
        "ENDPOINT_NOT_FOUND",
        "PERMISSION_DENIED",
    }
)
_BAD_NAME_CHARS = re.compile(r"[^\w\-. /:]")


def is_transient(exc: BaseException) -> bool:
    """True if ``exc`` may go away on retry (server down, database locked, 5xx)."""
    if isinstance(exc, PermanentError):
        return False
    if isinstance(exc, MlflowException):
        return exc.error_code not in _PERMANENT_CODES
    return True


def _is_http(uri: str) -> bool:
    return urlsplit(uri).scheme in ("http", "https")


def make_client(tracking_uri: str) -> MlflowClient:
    """An ``MlflowClient`` for ``tracking_uri``; a malformed URI is a :class:`ConfigError`."""
    try:
        return MlflowClient(tracking_uri=tracking_uri)
    except MlflowException as exc:
        raise ConfigError(
            f"mlflow.tracking_uri: not a tracking URI MLflow accepts, but got "
            f"{redact_url(tracking_uri)!r} ({redact_url(exc.message)})"
        ) from exc


def probe_server(tracking_uri: str, timeout: float = 2.0, session: object = None) -> bool:
    """One quick GET of ``/health`` without retries; True when the server answers 200.

    ``session`` (a ``requests.Session``) keeps the connection open between probes.
    """
    import requests  # an MLflow dependency; imported here so sqlite users never pay for it

    get = session.get if isinstance(session, requests.Session) else requests.get
    try:
        return get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout).ok
    except (requests.RequestException, OSError):
        return False


class _Prober:
    """``probe_server`` over one kept-alive connection (the flusher probes before each round)."""

    def __init__(self, tracking_uri: str) -> None:
        import threading

        import requests

        self._uri = tracking_uri
        self._session = requests.Session()
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        with self._lock:
            return probe_server(self._uri, session=self._session)


def _artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a local SQLite store go beside the database, not into the working dir."""
    parts = urlsplit(tracking_uri)
    if parts.scheme != "sqlite":
        return None  # a server chooses (and proxies) its own artifact store
    db_path = tracking_uri.split(":///", 1)[-1]
    if not db_path or db_path == ":memory:":
        return None
    return (Path(db_path).resolve().parent / "mlartifacts").as_uri()


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """Return the id of experiment ``name``, creating (or restoring a deleted) one if needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, _artifact_location(tracking_uri))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)  # another worker won the race
            assert experiment is not None
    if experiment.lifecycle_stage == "deleted":
        _log.warning("tracking: MLflow experiment %r was deleted; restoring it", name)
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def open_parent_run(
    client: MlflowClient,
    *,
    experiment_id: str,
    study_name: str,
    existing_run_id: str | None,
    tags: Mapping[str, object],
    reopen: bool = True,
) -> str:
    """Return the study's parent run: ``existing_run_id`` if it still exists, else a new one.

    With ``reopen`` a finished parent is set back to RUNNING (the study is being resumed).
    """
    all_tags = {"tuner.study_name": study_name, "tuner.role": "study", **tags}
    if existing_run_id:
        try:
            run = client.get_run(existing_run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            run = None
        if run is not None and run.info.lifecycle_stage != "deleted":
            if run.info.experiment_id != experiment_id:
                _log.warning(
                    "tracking: parent run %s belongs to another experiment; using it anyway",
                    existing_run_id,
                )
            if reopen and run.info.status != "RUNNING":
                client.update_run(existing_run_id, status="RUNNING")
            log_entities(client, existing_run_id, tags=all_tags)
            return existing_run_id
        _log.warning(
            "tracking: parent run %s not found in MLflow; creating a new one", existing_run_id
        )
    run = client.create_run(
        experiment_id, tags=_tag_dict(all_tags), run_name=safe_text(study_name, limit=250)
    )
    return run.info.run_id


def _tag_dict(tags: Mapping[str, object]) -> dict[str, str]:
    # The redaction guard: every tag value that leaves tuner goes through safe_text.
    return {str(k): safe_text(v) for k, v in tags.items()}


def _metric_key(key: object) -> str:
    return _BAD_NAME_CHARS.sub("_", str(key))[:250] or "_"


def to_metric(key: object, value: object, timestamp_ms: int, step: int) -> Metric | None:
    """A ``Metric`` entity, or None when ``value`` is not a number (logged, never raised).

    NaN and infinities are kept: MLflow stores them (a diverged curve is worth seeing).
    """
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        _log.warning("tracking: metric %r is not a number (%r); skipped", key, type(value))
        return None
    if math.isinf(number):
        # The REST API carries only finite floats and NaN; MLflow stores inf as the float max.
        number = math.copysign(1.7976931348623157e308, number)
    return Metric(_metric_key(key), number, int(timestamp_ms), int(step))


def log_entities(
    client: MlflowClient,
    run_id: str,
    *,
    metrics: Iterable[Metric] = (),
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, object] | None = None,
) -> None:
    """As few ``log_batch`` calls as MLflow's limits allow (per call: 100 params, 100 tags,
    1000 entities in all); no call when there is nothing to log."""
    metric_list = list(metrics)
    param_list = [Param(k, safe_text(v, limit=6000)) for k, v in (params or {}).items()]
    tag_list = [RunTag(k, v) for k, v in _tag_dict(tags or {}).items()]
    m = p = t = 0
    while m < len(metric_list) or p < len(param_list) or t < len(tag_list):
        chunk_params = param_list[p : p + _MAX_PARAMS_TAGS]
        chunk_tags = tag_list[t : t + _MAX_PARAMS_TAGS]
        room = min(_MAX_METRICS, _MAX_ENTITIES - len(chunk_params) - len(chunk_tags))
        chunk_metrics = metric_list[m : m + room]
        client.log_batch(
            run_id, metrics=chunk_metrics, params=chunk_params, tags=chunk_tags, synchronous=True
        )
        m, p, t = m + len(chunk_metrics), p + len(chunk_params), t + len(chunk_tags)


def log_artifacts(client: MlflowClient, run_id: str, artifacts: Mapping[str, str | bytes]) -> None:
    """Log each ``{"dir/name.ext": text or bytes}`` as an artifact file; text is redacted."""
    with tempfile.TemporaryDirectory(prefix="tuner-artifacts-") as tmp:
        for name, content in artifacts.items():
            rel = Path(name)
            if rel.is_absolute() or ".." in rel.parts:
                raise PermanentError(f"artifact name must be a relative path, but got {name!r}")
            path = Path(tmp) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(redact_keeping_references(content), encoding="utf-8")
            parent = rel.parent.as_posix()
            client.log_artifact(run_id, str(path), artifact_path=None if parent == "." else parent)


# A ${VAR} that is a URL's whole password: after "user:", right before "@".
_PASSWORD_REFERENCE = re.compile(r"(?<=:)\$\{[A-Za-z_][A-Za-z0-9_]*\}(?=@)")


def redact_keeping_references(text: str) -> str:
    """:func:`redact_url`, except that a ``${VAR}`` written as a password stays as written.

    A study file names its secrets by reference; the reference is no secret and tells a reader
    of the artifact which variable to set.

    >>> redact_keeping_references("postgresql://u:${PGPW}@db/t sqlite://u:pw@db x://u:p${X}@h")
    'postgresql://u:${PGPW}@db/t sqlite://u:***@db x://u:***@h'
    """
    references: list[str] = []

    def hide(match: re.Match[str]) -> str:
        references.append(match.group(0))
        # A whitespace-delimited token: never part of a password as redact_url matches one.
        return f"\x1f{len(references) - 1}\x1f"

    redacted = redact_url(_PASSWORD_REFERENCE.sub(hide, text))
    return re.sub("\x1f(\\d+)\x1f", lambda m: references[int(m.group(1))], redacted)


def terminate_run(client: MlflowClient, run_id: str, status: str, end_time: int | None) -> None:
    """End a run with ``status`` at ``end_time`` (ms).

    ``MlflowClient.set_terminated`` also prints "View run ... at <tracking URI>" to stdout for
    every run on a server, URI password included, and fetches the run once more to do it; the
    store's ``update_run_info`` underneath is the same write without either.
    """
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if store is None or not hasattr(store, "update_run_info"):
        client.set_terminated(run_id, status=status, end_time=end_time)
        return
    store.update_run_info(
        run_id,
        run_status=RunStatus.from_string(status),
        end_time=end_time or _now_ms(),
        run_name=None,
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class MlflowRecorder:
    """Records one trial into its child run; every method only enqueues."""

    __slots__ = ("_client", "_finished", "_flusher", "_handle", "_start")

    def __init__(self, flusher: Flusher, handle: RunHandle, client: MlflowClient) -> None:
        self._flusher = flusher
        self._client = client  # used only by the flusher thread, inside the queued operations
        self._handle = handle
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
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, but got {outcome!r}")
        if self._finished:
            return
        self._finished = True
        end_ms = _now_ms()
        end_tags = {
            # The runner may pass its own (more exact) duration; ours is the fallback.
            "tuner.duration_s": f"{time.monotonic() - self._start:.3f}",
            **(tags or {}),
            "tuner.outcome": outcome,
        }
        status = OUTCOME_STATUS[outcome]
        handle, client = self._handle, self._client
        logged = False

        def end(batch: list[MetricsOp]) -> None:
            # One log_batch (params not sent yet, the last points, the end tags), one update.
            nonlocal logged
            assert handle.run_id is not None
            if not logged:
                _log_together(
                    client, handle.run_id, metrics=_points(batch), params=handle.params,
                    tags=end_tags,
                )  # fmt: skip
                logged = True
                handle.params = None
                for op in batch:
                    op.done = True  # a retry of the status update resends none of them
            terminate_run(client, handle.run_id, status, end_ms)

        self._flusher.put_call(handle, end, "end of a trial's run", wake=True, merge=True)


class MlflowTracker:
    """A :class:`~tuner.tracking.Tracker` that writes to MLflow from one background thread.

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
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self._client = make_client(tracking_uri)
        self._http = _is_http(tracking_uri)
        self._experiment_id: str | None = None
        self._parent = RunHandle()
        self._flusher = Flusher(
            self._send_metrics,
            is_transient=is_transient,
            probe=_Prober(tracking_uri) if self._http else None,
            max_queued=max_queued,
            interval=interval,
            max_backoff=max_backoff,
            # A local store's sends are this process's CPU; a server's are mostly waiting.
            eager=self._http,
        )

    # -- Tracker API ------------------------------------------------------------------------

    @property
    def parent_run_id(self) -> str | None:
        """The parent run id, once known (also after a deferred ``open_study``)."""
        return self._parent.run_id

    @property
    def dropped_metrics(self) -> int:
        """Metric points dropped because the queue was full (the backend was unreachable)."""
        return self._flusher.dropped_metrics

    @property
    def pending(self) -> int:
        """Operations queued and not yet delivered."""
        return self._flusher.pending

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

        def open_now() -> None:
            if self._parent.run_id is not None:
                return
            try:
                self._experiment_id = ensure_experiment(self._client, experiment, self.tracking_uri)
                self._parent.run_id = open_parent_run(
                    self._client,
                    experiment_id=self._experiment_id,
                    study_name=study_name,
                    existing_run_id=existing_parent_run_id,
                    tags=tags,
                )
            except Exception as exc:
                if not is_transient(exc):
                    self._parent.failed = True
                raise

        reachable = not self._http or probe_server(self.tracking_uri)
        try:
            if not reachable:
                raise ConnectionError(f"no answer from {self.tracking_uri}/health")
            open_now()
        except Exception as exc:
            if not is_transient(exc):
                raise TunerError(
                    f"MLflow: cannot open experiment {experiment!r}: {redact_url(str(exc))}"
                ) from exc
            _log.warning(
                "tracking: MLflow at %s unreachable (%s); the study runs on and its data is "
                "queued until it answers",
                redact_url(self.tracking_uri),
                redact_url(str(exc)),
            )
            self._flusher.put_call(self._parent, open_now, "open the study's parent run")
        self._flusher.put_call(
            self._parent,
            lambda: log_artifacts(
                self._client, self._need(self._parent), {"study.yaml": study_yaml_text}
            ),
            "log study.yaml",
        )
        return self._parent.run_id

    def start_trial(
        self, *, number: int, params: Mapping[str, object], tags: dict[str, str]
    ) -> MlflowRecorder:
        """Queue the child run ``trial-<number>`` with its params and tags; return a recorder."""
        handle = RunHandle()
        flat = flatten_params(params)
        run_key = uuid.uuid4().hex
        start_ms = _now_ms()
        run_tags = {
            **tags,
            "tuner.trial_number": str(number),
            "tuner.run_key": run_key,
        }
        tried = False

        def create() -> None:
            nonlocal tried
            try:
                if handle.run_id is None:
                    parent_id = self._need(self._parent)
                    if tried:
                        # The last attempt may have created the run before the connection
                        # dropped: look for it instead of making a duplicate.
                        handle.run_id = self._find_by_key(run_key)
                    if handle.run_id is None:
                        tried = True
                        run = self._client.create_run(
                            self._experiment_id or "",
                            start_time=start_ms,
                            tags=_tag_dict({MLFLOW_PARENT_RUN_ID: parent_id, **run_tags}),
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
        self._flusher.put_metrics(handle, {}, 0)
        return MlflowRecorder(self._flusher, handle, self._client)

    def update_study(
        self,
        *,
        metrics: dict[str, float],
        tags: dict[str, str] | None = None,
        artifacts: dict[str, str | bytes] | None = None,
        step: int = 0,
    ) -> None:
        """Queue study-level metrics (at ``step``), tags and artifacts on the parent run."""
        ts = _now_ms()
        points = [m for k, v in metrics.items() if (m := to_metric(k, v, ts, step)) is not None]
        tags = dict(tags or {})
        artifacts = dict(artifacts or {})

        def update() -> None:
            run_id = self._need(self._parent)
            log_entities(self._client, run_id, metrics=points, tags=tags)
            if artifacts:
                log_artifacts(self._client, run_id, artifacts)

        self._flusher.put_call(self._parent, update, "update the study's parent run")

    def end_study(self) -> None:
        """Queue the parent run's end (FINISHED)."""
        end_ms = _now_ms()
        self._flusher.put_call(
            self._parent,
            lambda: terminate_run(self._client, self._need(self._parent), "FINISHED", end_ms),
            "end the study's parent run",
            wake=True,
        )

    def kill_trial(self, number: int, *, reason: str | None = None) -> None:
        """Queue the end of trial ``number``'s child run as KILLED (its worker died mid-trial).

        The run was made by the dead worker's tracker, so it is found by its tags under the
        parent run. Only a RUNNING run is ended; when none exists (the dead worker never
        delivered it) there is nothing to close, and ``tuner sync`` creates it as KILLED.
        """
        end_ms = _now_ms()
        tags = {"tuner.outcome": "interrupted"}
        if reason:
            tags["tuner.reason"] = reason

        def kill() -> None:
            parent = self._need(self._parent)
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
                terminate_run(self._client, run.info.run_id, OUTCOME_STATUS["interrupted"], end_ms)
            if not runs:
                _log.info("tracking: trial %d has no running MLflow run to close", number)

        self._flusher.put_call(self._parent, kill, f"end run trial-{number} as KILLED", wake=True)

    def flush(self, timeout: float, *, upto: int | None = None) -> bool:
        """Wait up to ``timeout`` s for what was queued (before the mark ``upto``, if given);
        True if all of it reached MLflow.

        Gives up early once a send fails (the backend is down): the data stays queued.
        """
        return self._flusher.flush(timeout, upto=upto)

    def mark(self) -> int:
        """A position in the queue, for ``flush(upto=...)``."""
        return self._flusher.mark()

    def close(self, timeout: float = 30.0) -> None:
        """Flush (bounded) and stop the flusher; warn about anything left undelivered."""
        delivered = self._flusher.close(timeout)
        if not delivered:
            _log.warning(
                "tracking: %d operation(s) not delivered to MLflow at %s (%d metric points "
                "dropped); `tuner sync` backfills trials from the study database",
                self._flusher.pending,
                redact_url(self.tracking_uri),
                self._flusher.dropped_metrics,
            )

    # -- inside the flusher thread ----------------------------------------------------------

    @staticmethod
    def _need(handle: RunHandle) -> str:
        if handle.run_id is None:
            raise PermanentError("the study's parent run could not be opened")
        return handle.run_id

    def _find_by_key(self, run_key: str) -> str | None:
        runs = self._client.search_runs(
            [self._experiment_id or ""],
            filter_string=f"tags.`tuner.run_key` = '{run_key}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def _send_metrics(self, handle: RunHandle, ops: list[MetricsOp]) -> None:
        assert handle.run_id is not None
        _log_together(self._client, handle.run_id, metrics=_points(ops), params=handle.params)
        handle.params = None


def _log_together(
    client: MlflowClient,
    run_id: str,
    *,
    metrics: list[Metric],
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, object] | None = None,
) -> None:
    """:func:`log_entities` in one go; when MLflow rejects that for good (one bad value), each
    kind again on its own, so that a bad param costs neither the curve nor the end tags."""
    try:
        log_entities(client, run_id, metrics=metrics, params=params, tags=tags)
        return
    except Exception as exc:
        if is_transient(exc):
            raise
        _log.warning("tracking: run %s rejected a batch (%s); retrying it in parts", run_id,
                     redact_url(str(exc)))  # fmt: skip
    parts = {"metrics": {"metrics": metrics}, "params": {"params": params}, "tags": {"tags": tags}}
    for kind, part in parts.items():
        try:
            log_entities(client, run_id, **part)  # type: ignore[arg-type]
        except Exception as exc:
            if is_transient(exc):
                raise
            _log.warning("tracking: run %s: %s dropped: %s", run_id, kind, redact_url(str(exc)))


def _points(ops: list[MetricsOp]) -> list[Metric]:
    return [
        m
        for op in ops
        for key, value in op.metrics.items()
        if (m := to_metric(key, value, op.timestamp_ms, op.step)) is not None
    ]
