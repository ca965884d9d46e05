"""MLflow tracking on ``MlflowClient`` with run ids passed explicitly (DESIGN §6).

Layout: one experiment per study, one parent run per study (its id kept in the Optuna study's
user attrs by the runner), one child run ``trial-<number>`` per trial. The fluent ``mlflow.*``
API is never used: its global active-run stack does not mix with threads and many workers.

The functions at the top (``make_client``, ``ensure_experiment``, ``open_parent_run``,
``log_entities``, ``log_artifacts``) are synchronous and shared with ``tuner sync``; the
:class:`MlflowTracker` opens its study with them, then hands every later call, as plain data,
to its own sender process (:mod:`tuner.tracking._sender`), which runs them on a background
:class:`~tuner.tracking._queue.Flusher`: MLflow's CPU work never competes with training for
the trial process's GIL.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import multiprocessing
import os
import re
import sys
import tempfile
import threading
import time
import types
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from tuner.errors import ConfigError, TunerError
from tuner.storage import redact_url
from tuner.tracking._base import (
    OUTCOME_STATUS,
    OUTCOMES,
    PARENT_RUN_ATTR,
    flatten_params,
    safe_text,
)
from tuner.tracking._queue import MetricsOp, PermanentError

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


def _sender_context(tracking_uri: str) -> Any:
    """Where sender processes come from: a fork server with MLflow imported, else ``spawn``.

    Both start the sender from a clean, single-threaded interpreter (never a fork of this
    process with its threads and connections). A spawned sender first imports MLflow and its
    store (2-4 s of CPU); the fork server pays that once per process, and every tracker after
    the first (a study resumed in the same process) gets its sender forked ready at once.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    wanted = ["tuner.tracking._sender"]
    if not _is_http(tracking_uri):
        wanted.append("mlflow.store.tracking.sqlalchemy_store")
    # Added to what other users of the fork server asked it to preload, less the default
    # "__main__": the server would run the caller's main script (see ``_boot``).
    modules = list(getattr(forkserver._forkserver, "_preload_modules", []))
    if any(m not in modules for m in wanted) or "__main__" in modules:
        kept = [m for m in modules if m != "__main__"]
        ctx.set_forkserver_preload(kept + [m for m in wanted if m not in kept])
    forkserver.ensure_running()  # the slow part, outside the main-module swap
    return ctx


class _Sender:
    """The trial's side of the tracker's sender process (:mod:`tuner.tracking._sender`).

    Operations are plain tuples. The hot path, :meth:`put_log`, only appends to a deque (no
    lock, no I/O, no pickling); a shipper thread sends what accumulated as one message every
    ``interval`` seconds, and every other operation ships the lot at once, in order. A reader
    thread takes the sender's answers: run ids, progress, flush and close results, and the
    warnings to log here. Memory stays bounded: past ``max_queued`` operations not yet
    delivered, new metric points are dropped here (counted, warned once).
    """

    def __init__(self, tracking_uri: str, *, max_queued: int, interval: float,
                 max_backoff: float) -> None:  # fmt: skip
        self._uri = tracking_uri
        self._options = {"max_queued": max_queued, "interval": interval,
                         "max_backoff": max_backoff}  # fmt: skip
        self._max_queued = max_queued
        self._interval = interval
        self._outbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._ship_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._state = threading.Condition()
        self._wake = threading.Event()
        self._process: Any = None
        self._ops: Any = None
        self._answers: Any = None
        self._reader: threading.Thread | None = None
        self._shipper: threading.Thread | None = None
        self._closing = False
        self._gone = False  # the sender process ended (or could not be reached)
        self._requests = itertools.count()
        self._marks = itertools.count()
        self.shipped = 0
        # The sender's last status: operations received, still queued, points dropped.
        self._received = 0
        self._remote_pending = 0
        self._remote_dropped = 0
        self.last_error: str | None = None
        self._flushed: dict[int, bool | None] = {}  # awaited flushes: their answers
        self._closed: tuple[bool, int, int] | None = None
        self.run_ids: dict[str, str] = {}
        self.parent_run_id: str | None = None
        self.dropped = 0  # metric points dropped here, at the cap
        self.lost = 0  # operations queued after close or after the sender ended
        self._lost_seen = 0
        self._warned_cap = False

    # -- the trial's thread -----------------------------------------------------------------

    def put_log(self, key: str, metrics: dict[str, Any], step: int) -> None:
        """Queue one ``log`` call: a deque append (about a microsecond)."""
        if self._closing or self.pending >= self._max_queued:
            self._drop()
            return
        self._outbox.append(("log", key, dict(metrics), step, time.time_ns() // 1_000_000))
        if self._shipper is None:
            self._start()

    def put(self, op: tuple[Any, ...], *, ship: bool = True) -> None:
        """Queue a structural operation (never dropped for space); with ``ship``, ship
        everything now (else the shipper does, within ``interval``)."""
        if self._closing:
            self.lost += 1
            _log.warning("tracking: %s after close, not sent", op[0])
            return
        self._outbox.append(op)
        if self._shipper is None:
            self._start()
        if ship:
            self._ship()

    @property
    def pending(self) -> int:
        """Operations not yet delivered: the sender's count plus what is on its way there."""
        if self._closed is not None:
            return self._closed[1] + len(self._outbox)
        return self._remote_pending + self.shipped - self._received + len(self._outbox)

    @property
    def dropped_metrics(self) -> int:
        return self.dropped + self._remote_dropped

    def mark(self) -> int:
        mark = next(self._marks)
        if self._shipper is not None and not self._closing:
            self.put(("mark", mark), ship=False)  # a flush ships it (the runner's next)
        return mark

    def flush(self, timeout: float, *, upto: int | None = None) -> bool:
        """Ask the sender to deliver (what was queued before ``upto``) and wait for its answer."""
        if self._shipper is None:
            return self._clean()  # nothing was ever queued
        if self._closing:
            return self._clean() and self._closed is not None and self._closed[0]
        request = next(self._requests)
        with self._state:
            self._flushed[request] = None
        self.put(("flush", request, timeout, upto))
        # The sender keeps to ``timeout`` itself; the margin covers its answer's way back.
        deadline = time.monotonic() + max(0.0, timeout) + 2.0
        with self._state:
            while self._flushed[request] is None and not self._gone:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._state.wait(left)
            ok = bool(self._flushed.pop(request))
        return self._clean() and ok

    def close(self, timeout: float) -> bool:
        """Flush (bounded, through failures), then end the sender. True if all was delivered."""
        if self._closing:
            return self._closed is not None and self._closed[0]
        if self._shipper is None:
            self._closing = True
            return self._clean()
        self.put(("close", timeout))
        self._closing = True
        self._wake.set()
        deadline = time.monotonic() + max(0.0, timeout) + 5.0
        with self._state:
            while self._closed is None and not self._gone:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._state.wait(left)
        self._shipper.join(timeout=2.0)
        with self._ship_lock:
            process, ops = self._process, self._ops
            self._gone = True  # from here on nothing is sent
        if process is not None:
            process.join(timeout=5.0)
            if process.is_alive():
                process.kill()
                process.join(timeout=2.0)
            ops.close()
        if self._reader is not None:
            self._reader.join(timeout=2.0)
        return bool(self._closed and self._closed[0]) and self._clean()

    def _clean(self) -> bool:
        lost = self.lost + self.dropped
        clean = lost == self._lost_seen
        self._lost_seen = lost
        return clean

    def _drop(self) -> None:
        self.dropped += 1
        if not self._warned_cap:
            self._warned_cap = True
            _log.warning(
                "tracking: %d operations queued (tracking backend unreachable?): dropping new "
                "metric points until it drains; `tuner sync` backfills reported values later",
                self.pending,
            )

    # -- the sender process and the two threads that talk to it -----------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._shipper is None:
                # The sender process starts in the shipper thread: the caller never waits on it,
                # and what it queues meanwhile waits in the outbox.
                shipper = threading.Thread(
                    target=self._run_shipper, name="tuner-tracking-shipper", daemon=True
                )
                self._shipper = shipper
                shipper.start()

    def _run_shipper(self) -> None:
        try:
            self._boot()
        except Exception:
            _log.exception("tracking: cannot start the sender process; nothing reaches MLflow")
            with self._state:
                self._gone = True
                self._state.notify_all()
        self._ship()
        while not self._closing:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._outbox and not self._closing:
                self._ship()

    def _boot(self) -> None:
        from tuner.tracking._sender import serve

        ctx = _sender_context(self._uri)
        ops_out, ops_in = ctx.Pipe(duplex=False)
        answers_out, answers_in = ctx.Pipe(duplex=False)
        # Daemonic: it is killed if this process exits without closing the tracker, and it
        # ends by itself if this process is killed (end of file on its pipe).
        process = ctx.Process(
            target=serve,
            args=(ops_out, answers_in, os.getpid(), self._uri, self._options),
            name="tuner-tracking-sender",
            daemon=True,
        )
        # The child re-runs the caller's main script unless told otherwise, and a script
        # without an ``if __name__ == "__main__"`` guard would start over there. The sender
        # needs nothing from it: it gets a blank main module (swapped only for the instant
        # the start takes; the fork server, if any, is already up).
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            process.start()
        finally:
            sys.modules["__main__"] = main
        ops_out.close()
        answers_in.close()
        self._answers = answers_out
        self._reader = threading.Thread(
            target=self._read, name="tuner-tracking-answers", daemon=True
        )
        self._reader.start()
        with self._ship_lock:
            self._process, self._ops = process, ops_in
            if self._gone:  # closed while it started: end of file tells it to stop
                ops_in.close()

    def _ship(self) -> None:
        with self._ship_lock:
            batch = []
            try:
                while True:
                    batch.append(self._outbox.popleft())
            except IndexError:
                pass
            if not batch:
                return
            if self._ops is None and not self._gone:
                self._outbox.extendleft(reversed(batch))  # the sender is still starting
                return
            if not self._gone:
                try:
                    self._ops.send(batch)
                    self.shipped += len(batch)
                    return
                except (OSError, ValueError):
                    self._gone = True
            self.lost += len(batch)

    def _read(self) -> None:
        while True:
            try:
                message = self._answers.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "log":
                logging.getLogger(message[1]).log(message[2], "%s", message[3])
                continue
            with self._state:
                if kind == "run":
                    self.run_ids[message[1]] = message[2]
                elif kind == "parent":
                    self.parent_run_id = message[1]
                elif kind == "status":
                    (self._received, self._remote_pending, self._remote_dropped,
                     self.last_error) = message[1:]  # fmt: skip
                elif kind == "flushed" and message[1] in self._flushed:  # still awaited
                    self._flushed[message[1]] = message[2]
                elif kind == "closed":
                    self._closed = message[1:]
                self._state.notify_all()
        self._answers.close()
        with self._state:
            self._gone = True
            self._state.notify_all()


class MlflowRecorder:
    """Records one trial into its child run; every method only enqueues."""

    __slots__ = ("_finished", "_key", "_sender", "_start")

    def __init__(self, sender: _Sender, key: str) -> None:
        self._sender = sender
        self._key = key  # the run's tuner.run_key: the sender answers with the run id for it
        self._start = time.monotonic()
        self._finished = False

    @property
    def run_id(self) -> str | None:
        """The child run id once the sender created it (None before, or if it could not)."""
        return self._sender.run_ids.get(self._key)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Queue ``metrics`` at ``step`` (microseconds; never waits on MLflow, never raises)."""
        self._sender.put_log(self._key, metrics, step)

    def finish(self, outcome: str, *, tags: dict[str, str] | None = None) -> None:
        """Queue the outcome and duration tags and the run's end with the matching status."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, but got {outcome!r}")
        if self._finished:
            return
        self._finished = True
        end_tags = {
            # The runner may pass its own (more exact) duration; ours is the fallback.
            "tuner.duration_s": f"{time.monotonic() - self._start:.3f}",
            **(tags or {}),
            "tuner.outcome": outcome,
        }
        self._sender.put(("finish", self._key, end_tags, OUTCOME_STATUS[outcome], _now_ms()))


class MlflowTracker:
    """A :class:`~tuner.tracking.Tracker` that writes to MLflow from its own sender process.

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
        # Here only to open the study (synchronously, once); the sender has its own client.
        self._client = make_client(tracking_uri)
        self._http = _is_http(tracking_uri)
        self._flusher = _Sender(
            tracking_uri, max_queued=max_queued, interval=interval, max_backoff=max_backoff
        )

    # -- Tracker API ------------------------------------------------------------------------

    @property
    def parent_run_id(self) -> str | None:
        """The parent run id, once known (also after a deferred ``open_study``)."""
        return self._flusher.parent_run_id

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
        reachable = not self._http or probe_server(self.tracking_uri)
        try:
            if not reachable:
                raise ConnectionError(f"no answer from {self.tracking_uri}/health")
            experiment_id = ensure_experiment(self._client, experiment, self.tracking_uri)
            parent_run_id = open_parent_run(
                self._client,
                experiment_id=experiment_id,
                study_name=study_name,
                existing_run_id=existing_parent_run_id,
                tags=tags,
            )
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
            self._flusher.put(
                ("open_study", study_name, experiment, dict(tags), existing_parent_run_id)
            )
        else:
            self._flusher.parent_run_id = parent_run_id
            self._flusher.put(("opened", experiment_id, parent_run_id))
        self._flusher.put(("study_yaml", study_yaml_text))
        return self._flusher.parent_run_id

    def start_trial(
        self, *, number: int, params: Mapping[str, object], tags: dict[str, str]
    ) -> MlflowRecorder:
        """Queue the child run ``trial-<number>`` with its params and tags; return a recorder."""
        key = uuid.uuid4().hex
        self._flusher.put(
            ("start_trial", key, number, flatten_params(params), dict(tags), _now_ms())
        )
        return MlflowRecorder(self._flusher, key)

    def update_study(
        self,
        *,
        metrics: dict[str, float],
        tags: dict[str, str] | None = None,
        artifacts: dict[str, str | bytes] | None = None,
        step: int = 0,
    ) -> None:
        """Queue study-level metrics (at ``step``), tags and artifacts on the parent run."""
        self._flusher.put(
            (
                "update_study",
                dict(metrics),
                dict(tags or {}),
                dict(artifacts or {}),
                step,
                _now_ms(),
            )
        )

    def end_study(self) -> None:
        """Queue the parent run's end (FINISHED)."""
        self._flusher.put(("end_study", _now_ms()))

    def kill_trial(self, number: int, *, reason: str | None = None) -> None:
        """Queue the end of trial ``number``'s child run as KILLED (its worker died mid-trial).

        The run was made by the dead worker's tracker, so it is found by its tags under the
        parent run. Only a RUNNING run is ended; when none exists (the dead worker never
        delivered it) there is nothing to close, and ``tuner sync`` creates it as KILLED.
        """
        tags = {"tuner.outcome": "interrupted"}
        if reason:
            tags["tuner.reason"] = reason
        self._flusher.put(("kill_trial", number, tags, _now_ms()))

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
        """Flush (bounded), end the sender process; warn about anything left undelivered."""
        delivered = self._flusher.close(timeout)
        if not delivered:
            _log.warning(
                "tracking: %d operation(s) not delivered to MLflow at %s (%d metric points "
                "dropped); `tuner sync` backfills trials from the study database",
                self._flusher.pending,
                redact_url(self.tracking_uri),
                self._flusher.dropped_metrics,
            )


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
