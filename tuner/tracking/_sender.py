"""The sender process: the one place where a tracker's MLflow client, store and HTTP work run.

:class:`~tuner.tracking.MlflowTracker` starts one per tracker (on first use, from a fork server
with MLflow preloaded, or ``spawn`` where there is none) and feeds
it plain-data operations through a pipe, in order; the MLflow calls themselves (about 26 ms of
CPU per trial against a SQLite store) then run beside training instead of fighting it for the
GIL. Here a feeding thread turns each operation into a queued call on the
:class:`~tuner.tracking._queue.Flusher` (retries, backoff, the cap, the server probe, exactly as
in-process) and the sender answers over a second pipe:

- ``("run", key, run_id)`` once a trial's run exists, ``("parent", run_id)`` once the study's
  parent run does (when ``open_study`` could not open it itself);
- ``("status", received, pending, dropped, last_error)`` after every send round: the trial
  side bounds its own memory with it;
- ``("flushed", request, ok)`` for each flush and ``("closed", ok, pending, dropped)`` at close;
- ``("log", logger, level, text)`` for every warning raised here (any logger, redacted), logged
  again in the trial's process.

The sender ends after ``close``, and on its own once the trial's process is gone (the pipe's end
of file, or that process's pid vanishing): it never outlives its parent.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Mapping
from typing import Any

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tuner.storage import redact_url
from tuner.tracking._base import OUTCOME_STATUS
from tuner.tracking._mlflow import (
    _is_http,
    _log_together,
    _points,
    _Prober,
    _tag_dict,
    ensure_experiment,
    is_transient,
    log_artifacts,
    log_entities,
    make_client,
    open_parent_run,
    terminate_run,
    to_metric,
)
from tuner.tracking._queue import Flusher, MetricsOp, PermanentError, RunHandle

_log = logging.getLogger("tuner.tracking")


class _Answer:
    """The pipe back to the trial's process, shared by every thread here."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def __call__(self, message: tuple[Any, ...]) -> None:
        try:
            with self._lock:
                self._conn.send(message)
        except (OSError, ValueError):
            pass  # the trial's process is gone; the watch ends this process


class _Forward(logging.Handler):
    """Every warning of this process goes, redacted, to the trial's process to be logged there."""

    def __init__(self, answer: _Answer) -> None:
        super().__init__(logging.WARNING)
        self._answer = answer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self._answer(("log", record.name, record.levelno, redact_url(text)))
        except Exception:  # a log line must never break the sender
            pass


class _Engine:
    """Builds the flusher's calls from plain-data operations (the sender's half of a tracker)."""

    def __init__(
        self,
        answer: _Answer,
        tracking_uri: str,
        *,
        max_queued: int,
        interval: float,
        max_backoff: float,
    ) -> None:
        self._answer = answer
        self.tracking_uri = tracking_uri
        self._client = make_client(tracking_uri)
        self._experiment_id: str | None = None
        self._parent = RunHandle()
        self._handles: dict[str, RunHandle] = {}
        self._marks: dict[int, int] = {}
        self.received = 0
        self.flusher = Flusher(
            self._send_metrics,
            is_transient=is_transient,
            probe=_Prober(tracking_uri) if _is_http(tracking_uri) else None,
            max_queued=max_queued,
            interval=interval,
            max_backoff=max_backoff,
            on_round=self.report,
        )

    def report(self) -> None:
        f = self.flusher
        self._answer(("status", self.received, f.pending, f.dropped_metrics, f.last_error))

    # -- one operation from the trial's process ---------------------------------------------

    def handle(self, op: tuple[Any, ...]) -> bool:
        """Apply ``op``; False once it was the close."""
        self.received += 1
        kind, args = op[0], op[1:]
        if kind == "log":
            key, metrics, step, ts = args
            handle = self._handles.get(key)
            if handle is not None:
                self.flusher.put_metrics(handle, metrics, step, ts)
        elif kind == "mark":
            self._marks[args[0]] = self.flusher.mark()
        elif kind == "flush":
            request, timeout, upto = args
            mark = self._marks.pop(upto, None) if upto is not None else None
            for older in [m for m in self._marks if upto is not None and m < upto]:
                del self._marks[older]
            threading.Thread(target=self._flush, args=(request, timeout, mark), daemon=True).start()
        elif kind == "close":
            ok = self.flusher.close(args[0])
            self._answer(("closed", ok, self.flusher.pending, self.flusher.dropped_metrics))
            return False
        else:
            getattr(self, "_" + kind)(*args)
        return True

    def _flush(self, request: int, timeout: float, mark: int | None) -> None:
        ok = self.flusher.flush(timeout, upto=mark)
        self._answer(("flushed", request, ok))

    def _opened(self, experiment_id: str, parent_run_id: str) -> None:
        self._experiment_id = experiment_id
        self._parent.run_id = parent_run_id

    def _open_study(
        self,
        study_name: str,
        experiment: str,
        tags: dict[str, str],
        existing_parent_run_id: str | None,
    ) -> None:
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
            self._answer(("parent", self._parent.run_id))

        self.flusher.put_call(self._parent, open_now, "open the study's parent run")

    def _study_yaml(self, text: str) -> None:
        self.flusher.put_call(
            self._parent,
            lambda: log_artifacts(self._client, self._need(self._parent), {"study.yaml": text}),
            "log study.yaml",
        )

    def _start_trial(
        self, key: str, number: int, flat: dict[str, str], tags: dict[str, str], start_ms: int
    ) -> None:
        handle = self._handles[key] = RunHandle()
        run_tags = {**tags, "tuner.trial_number": str(number), "tuner.run_key": key}
        tried = False

        def create() -> None:
            nonlocal tried
            try:
                if handle.run_id is None:
                    parent_id = self._need(self._parent)
                    if tried:
                        # The last attempt may have created the run before the connection
                        # dropped: look for it instead of making a duplicate.
                        handle.run_id = self._find_by_key(key)
                    if handle.run_id is None:
                        tried = True
                        run = self._client.create_run(
                            self._experiment_id or "",
                            start_time=start_ms,
                            tags=_tag_dict({MLFLOW_PARENT_RUN_ID: parent_id, **run_tags}),
                            run_name=f"trial-{number}",
                        )
                        handle.run_id = run.info.run_id
                    self._answer(("run", key, handle.run_id))
                # The params go with the run's first batch of points, or with its end.
                handle.params = flat
            except Exception as exc:
                if not is_transient(exc) and handle.run_id is None:
                    handle.failed = True
                raise

        self.flusher.put_call(handle, create, f"create run trial-{number}")
        # No points: it carries the params to MLflow once ``interval`` passed without a report
        # (a long trial shows its params while it runs; a short one sends them with its end).
        self.flusher.put_metrics(handle, {}, 0, start_ms)

    def _finish(self, key: str, end_tags: dict[str, str], status: str, end_ms: int) -> None:
        handle, client = self._handles[key], self._client
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

        self.flusher.put_call(handle, end, "end of a trial's run", wake=True, merge=True)

    def _update_study(
        self,
        metrics: Mapping[str, float],
        tags: dict[str, str],
        artifacts: dict[str, str | bytes],
        step: int,
        ts: int,
    ) -> None:
        points = [m for k, v in metrics.items() if (m := to_metric(k, v, ts, step)) is not None]

        def update() -> None:
            run_id = self._need(self._parent)
            log_entities(self._client, run_id, metrics=points, tags=tags)
            if artifacts:
                log_artifacts(self._client, run_id, artifacts)

        self.flusher.put_call(self._parent, update, "update the study's parent run")

    def _end_study(self, end_ms: int) -> None:
        self.flusher.put_call(
            self._parent,
            lambda: terminate_run(self._client, self._need(self._parent), "FINISHED", end_ms),
            "end the study's parent run",
            wake=True,
        )

    def _kill_trial(self, number: int, tags: dict[str, str], end_ms: int) -> None:
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

        self.flusher.put_call(self._parent, kill, f"end run trial-{number} as KILLED", wake=True)

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


def _parent_alive(pid: int) -> bool:
    # Not os.getppid(): a sender forked by the fork server is that server's child.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve(ops: Any, answers: Any, parent_pid: int, tracking_uri: str, options: dict) -> None:
    """The sender process's main: apply operations from ``ops`` until close or the parent dies."""
    # Ctrl-C reaches the whole process group; the trial's process decides when this one stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answer = _Answer(answers)
    forward = _Forward(answer)
    root = logging.getLogger()
    root.handlers[:] = [forward]
    root.setLevel(logging.WARNING)
    for name in list(logging.root.manager.loggerDict):
        logger = logging.getLogger(name)
        logger.handlers[:] = []  # MLflow's own stderr handler too: all goes to the parent
        logger.propagate = True
    # The flusher retries with its own backoff (and probes a down server first); MLflow's own
    # retry loop (minutes, by default) would only hold a round that the flusher would retry.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    engine = _Engine(answer, tracking_uri, **options)
    running = True
    while running:
        try:
            if not ops.poll(1.0):
                if not _parent_alive(parent_pid):
                    break
                continue
            batch = ops.recv()
        except (EOFError, OSError):
            break  # the trial's process is gone: what it queued dies with it, as in-process
        for op in batch:
            try:
                if not engine.handle(op):
                    running = False
                    break
            except Exception:
                _log.exception("tracking: the sender could not apply an operation")
    answers.close()
    # Stop here: the flusher thread (daemonic) and anything left queued go with the process.
    os._exit(0)
