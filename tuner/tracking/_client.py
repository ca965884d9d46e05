"""Synchronous helpers on ``MlflowClient``, run ids passed explicitly (docs/mlflow.md).

Shared by the background tracker (:mod:`tuner.tracking._mlflow`, which calls them from its
flusher thread) and ``tuner sync`` (:mod:`tuner.apps.sync`, which calls them directly). The
fluent ``mlflow.*`` API is never used: its global active-run stack does not mix with threads and
many workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from tuner.core.errors import ConfigError
from tuner.core.keys import TAG
from tuner.core.private_api import mlflow_run_store
from tuner.core.redact import redact
from tuner.tracking._base import safe_text
from tuner.tracking._queue import MetricsOp, PermanentError

__all__ = [
    "Prober",
    "ensure_experiment",
    "find_run_by_key",
    "is_http",
    "is_transient",
    "log_artifacts",
    "log_entities",
    "log_together",
    "make_client",
    "now_ms",
    "open_parent_run",
    "points",
    "probe_server",
    "tag_dict",
    "terminate_run",
    "to_metric",
]

_log = logging.getLogger("tuner.tracking")

# MLflow's batch limits (mlflow.utils.validation): per log_batch call.
_MAX_METRICS = 1000
_MAX_PARAMS_TAGS = 100
_MAX_ENTITIES = 1000  # metrics, params and tags together
_MAX_PARAM_VALUE = 6000

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


def now_ms() -> int:
    """Wall-clock time in milliseconds, MLflow's timestamps."""
    return time.time_ns() // 1_000_000


def is_transient(exc: BaseException) -> bool:
    """True if ``exc`` may go away on retry (server down, database locked, 5xx)."""
    if isinstance(exc, PermanentError):
        return False
    if isinstance(exc, MlflowException):
        return exc.error_code not in _PERMANENT_CODES
    return True


def is_http(uri: str) -> bool:
    """True for a tracking server URI (``http(s)://``)."""
    return urlsplit(uri).scheme in ("http", "https")


def _sqlite_file(tracking_uri: str) -> Path | None:
    if urlsplit(tracking_uri).scheme != "sqlite" or ":///" not in tracking_uri:
        return None
    path = tracking_uri.split(":///", 1)[1].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def _schema_lock(tracking_uri: str) -> Iterator[None]:
    """Serialize the first opening of an SQLite MLflow store across processes.

    MLflow creates the schema of an empty database when it opens it, and two processes doing
    that at once collide ("table ... already exists"). A file lock beside the database (never
    on the database itself: closing any descriptor of a file drops SQLite's own locks on it)
    lets the first create the schema while the others wait, then find it made.
    """
    db = _sqlite_file(tracking_uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f"{db.name}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def make_client(tracking_uri: str) -> MlflowClient:
    """An ``MlflowClient`` for ``tracking_uri`` with its store open (an SQLite store's schema
    created under a file lock); a malformed URI is a :class:`ConfigError`."""
    try:
        with _schema_lock(tracking_uri):
            return MlflowClient(tracking_uri=tracking_uri)
    except MlflowException as exc:
        raise ConfigError(
            f"mlflow.tracking_uri: not a tracking URI MLflow accepts, but got "
            f"{redact(tracking_uri)!r} ({redact(exc.message, tracking_uri)})"
        ) from exc


def probe_server(tracking_uri: str, timeout: float = 2.0, session: object = None) -> bool:
    """One GET of ``/health``, no retries, ``timeout`` s at most; True when it answers 200.

    ``session`` (a ``requests.Session``) keeps the connection open between probes.
    """
    import requests  # an MLflow dependency; imported here so sqlite users never pay for it

    get = session.get if isinstance(session, requests.Session) else requests.get
    try:
        return get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout).ok
    except (requests.RequestException, OSError):
        return False


class Prober:
    """:func:`probe_server` over one kept-alive connection (the flusher probes a down server
    before each round)."""

    def __init__(self, tracking_uri: str, timeout: float = 1.0) -> None:
        import requests

        self._uri = tracking_uri
        self._timeout = timeout
        self._session = requests.Session()
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        with self._lock:
            return probe_server(self._uri, timeout=self._timeout, session=self._session)


def _artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a local SQLite store go beside the database, not into the working dir."""
    db = _sqlite_file(tracking_uri)
    return None if db is None else (db.resolve().parent / "mlartifacts").as_uri()


# MLflow 3 opens an experiment on its GenAI landing page unless this experiment tag says it holds
# model-training runs (the UI's ExperimentKind enum: "custom_model_development").
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """Return the id of experiment ``name``, creating (or restoring a deleted) one if needed.

    The experiment is tagged as holding training runs, so the UI opens on its runs table.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, _artifact_location(tracking_uri), tags=dict([EXPERIMENT_KIND])
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)  # another worker won the race
            assert experiment is not None
    if experiment.lifecycle_stage == "deleted":
        _log.warning("tracking: MLflow experiment %r was deleted; restoring it", name)
        client.restore_experiment(experiment.experiment_id)
    if EXPERIMENT_KIND[0] not in experiment.tags:  # an experiment from before tuner set it
        client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
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
    all_tags = {TAG.STUDY_NAME: study_name, TAG.ROLE: "study", **tags}
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
        experiment_id, tags=tag_dict(all_tags), run_name=safe_text(study_name, limit=250)
    )
    return run.info.run_id


def tag_dict(tags: Mapping[str, object]) -> dict[str, str]:
    """Tags as MLflow takes them: every value redacted and cut to MLflow's limit."""
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


def points(ops: Iterable[MetricsOp]) -> list[Metric]:
    """The metric entities of queued ``log`` calls (non-numbers skipped)."""
    return [
        m
        for op in ops
        for key, value in op.metrics.items()
        if (m := to_metric(key, value, op.timestamp_ms, op.step)) is not None
    ]


def log_entities(
    client: MlflowClient,
    run_id: str,
    *,
    metrics: Iterable[Metric] = (),
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, object] | None = None,
) -> None:
    """As few ``log_batch`` calls as MLflow's limits allow (per call: 100 params, 100 tags,
    1000 entities in all); no call when there is nothing to log.

    Always ``synchronous=True``: MLflow 3's own async logging (``synchronous=False``) keeps an
    unbounded queue per process, reports failures only to whoever waits on its futures, and
    drains that queue in an ``atexit`` hook with no time limit, so a hung server would hold the
    process's exit. tuner's flusher gives the same overlap with a bounded queue, a bounded exit
    and a circuit breaker.
    """
    metric_list = list(metrics)
    param_list = [Param(k, safe_text(v, limit=_MAX_PARAM_VALUE)) for k, v in (params or {}).items()]
    tag_list = [RunTag(k, v) for k, v in tag_dict(tags or {}).items()]
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


def log_together(
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
                     redact(exc))  # fmt: skip
    parts = {"metrics": {"metrics": metrics}, "params": {"params": params}, "tags": {"tags": tags}}
    for kind, part in parts.items():
        try:
            log_entities(client, run_id, **part)  # type: ignore[arg-type]
        except Exception as exc:
            if is_transient(exc):
                raise
            _log.warning("tracking: run %s: %s dropped: %s", run_id, kind, redact(exc))


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
                path.write_text(redact(content), encoding="utf-8")
            parent = rel.parent.as_posix()
            client.log_artifact(run_id, str(path), artifact_path=None if parent == "." else parent)


def terminate_run(client: MlflowClient, run_id: str, status: str, end_time: int | None) -> None:
    """End a run with ``status`` at ``end_time`` (ms).

    Through the store's ``update_run_info`` where this MLflow has it
    (:func:`tuner.core.private_api.mlflow_run_store` says why), else the public
    ``set_terminated``.
    """
    store = mlflow_run_store(client)
    if store is None:
        client.set_terminated(run_id, status=status, end_time=end_time)
        return
    store.update_run_info(
        run_id,
        run_status=RunStatus.from_string(status),
        end_time=end_time or now_ms(),
        run_name=None,
    )


def find_run_by_key(client: MlflowClient, experiment_id: str, run_key: str) -> str | None:
    """The run tagged ``tuner.run_key = run_key`` (a create whose answer was lost), if any."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG.RUN_KEY}` = '{run_key}'", max_results=1
    )
    return runs[0].info.run_id if runs else None
