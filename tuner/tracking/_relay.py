"""Tracking through ``tuner launch``: workers never import MLflow, the launch process sends.

A worker under ``tuner launch`` already writes its trial events to the launch process on a pipe
(:class:`tuner.launch.events.EventWriter`). Its tracker, a :class:`RelayTracker`, writes its
records
to the same pipe as ``{"event": "track", ...}`` lines, and the launch process replays them into
its own :class:`~tuner.tracking.Tracker` (:class:`TrackRelay`). So each launch pays MLflow's
start-up once (``import mlflow`` is about 2.7 s and opening a store about 1.3 s on our machines),
overlapped with the workers' own start, instead of once per worker while trials wait.

The pipe is lossless while the launch process lives: a record waits for room in it (a step
event is the only one ever dropped). When the launch process is gone its workers stop too, and
what it had not delivered is in the study database, where ``tuner sync`` finds it.

Example::

    >>> sent = []
    >>> tracker = RelayTracker(sent.append)
    >>> tracker.start_trial(number=3, params={"lr": 0.1}, tags={}).log({"loss": 1.0}, step=0)
    >>> [(e["op"], e["number"]) for e in sent]
    [('start', 3), ('log', 3)]
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping
from typing import Any

from tuner.core.keys import EVENT, TAG, Outcome
from tuner.tracking._base import (
    NothingPending,
    Tracker,
    TrialRecorder,
    check_outcome,
    flatten_params,
)

__all__ = ["RelayRecorder", "RelayTracker", "TrackRelay"]

#: The ``event`` of a tracking record on a worker's event pipe.

_log = logging.getLogger("tuner.tracking")

Send = Callable[[dict[str, Any]], None]


class RelayRecorder:
    """A trial's :class:`~tuner.tracking.TrialRecorder` in a worker: each call is one line."""

    __slots__ = ("_finished", "_number", "_send")

    run_id: str | None = None  # the run is made by the launch process; its id stays there

    def __init__(self, send: Send, number: int) -> None:
        self._send = send
        self._number = number
        self._finished = False

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Send ``metrics`` at ``step`` (a pipe write: microseconds)."""
        self._send(_record("log", number=self._number, metrics=metrics, step=step))

    def finish(self, outcome: str, *, tags: dict[str, str] | None = None) -> None:
        """Send the trial's end; a second finish is ignored, as by the MLflow recorder."""
        check_outcome(outcome)
        if self._finished:
            return
        self._finished = True
        self._send(_record("finish", number=self._number, outcome=outcome, tags=tags or {}))


class RelayTracker(NothingPending):
    """A worker's :class:`~tuner.tracking.Tracker` under ``tuner launch``: records go to ``send``.

    The launch process opened the study's parent run before its workers trained, so
    :meth:`open_study` only keeps the id it is given, and :meth:`flush` and :meth:`close` have
    nothing to wait for here: delivery is the launch process's (bounded) business.
    """

    def __init__(self, send: Send) -> None:
        self._send = send
        self.parent_run_id: str | None = None

    def open_study(
        self,
        *,
        study_name: str,
        experiment: str,
        study_yaml_text: str,
        tags: dict[str, str],
        existing_parent_run_id: str | None,
    ) -> str | None:
        """Keep ``existing_parent_run_id``: the launch process finds or creates the parent."""
        self.parent_run_id = existing_parent_run_id
        return existing_parent_run_id

    def start_trial(
        self, *, number: int, params: Mapping[str, object], tags: dict[str, str]
    ) -> RelayRecorder:
        """Send the child run's creation (params flattened and redacted here); its recorder."""
        self._send(_record("start", number=number, params=flatten_params(params), tags=tags))
        return RelayRecorder(self._send, number)

    def update_study(
        self,
        *,
        metrics: dict[str, float],
        tags: dict[str, str] | None = None,
        artifacts: dict[str, str | bytes] | None = None,
        step: int = 0,
    ) -> None:
        """Send study-level metrics, tags and artifacts (bytes travel base64-encoded)."""
        files = {
            name: {"b64": base64.b64encode(data).decode()}
            if isinstance(data, bytes)
            else {"text": data}
            for name, data in (artifacts or {}).items()
        }
        self._send(
            _record("update_study", metrics=metrics, tags=tags or {}, artifacts=files, step=step)
        )

    def end_study(self) -> None:
        """Send the parent run's end."""
        self._send(_record("end_study"))

    def kill_trial(self, number: int, *, reason: str | None = None) -> None:
        """Send the end of trial ``number``'s run as KILLED (a stale trial found here)."""
        self._send(_record("kill", number=number, reason=reason))


class TrackRelay:
    """The launch process's side: replays workers' records into ``tracker()``.

    ``tracker`` is called per record, so records go to whichever tracker the launch has open
    (it opens MLflow after starting its workers). Recorders are kept by trial number until the
    trial's end; trial numbers are unique within a study, whichever worker runs the trial.
    """

    def __init__(self, tracker: Callable[[], Tracker]) -> None:
        self._tracker = tracker
        self._recorders: dict[int, TrialRecorder] = {}

    def apply(self, record: Mapping[str, Any]) -> None:
        """Replay one record; a malformed one is logged and dropped (never stops the launch)."""
        try:
            self._apply(record)
        except (KeyError, TypeError, ValueError) as exc:
            _log.warning("tracking: dropped a malformed record from a worker (%s)", exc)

    def end_lost(self, number: int, outcome: str, reason: str | None) -> bool:
        """End the run of a trial whose worker died before it could; False if none is open."""
        recorder = self._recorders.pop(number, None)
        if recorder is None:
            return False
        recorder.finish(outcome, tags={TAG.REASON: reason} if reason else None)
        return True

    def _apply(self, record: Mapping[str, Any]) -> None:
        op = record["op"]
        tracker = self._tracker()
        if op == "log":
            recorder = self._recorders.get(int(record["number"]))
            if recorder is not None:
                recorder.log(dict(record["metrics"]), step=int(record["step"]))
        elif op == "start":
            number = int(record["number"])
            self._recorders[number] = tracker.start_trial(
                number=number, params=dict(record["params"]), tags=dict(record["tags"])
            )
        elif op == "finish":
            recorder = self._recorders.pop(int(record["number"]), None)
            if recorder is not None:
                recorder.finish(str(record["outcome"]), tags=dict(record["tags"]))
        elif op == "kill":
            number, reason = int(record["number"]), record.get("reason")
            if not self.end_lost(number, Outcome.INTERRUPTED.value, reason):
                tracker.kill_trial(number, reason=reason)
        elif op == "update_study":
            tracker.update_study(
                metrics=dict(record["metrics"]),
                tags=dict(record["tags"]),
                artifacts={name: _artifact(f) for name, f in record["artifacts"].items()},
                step=int(record["step"]),
            )
        elif op == "end_study":
            tracker.end_study()
        else:
            raise ValueError(f"unknown op {op!r}")


def _record(op: str, **fields: Any) -> dict[str, Any]:
    return {"event": EVENT.TRACK, "op": op, **fields}


def _artifact(file: Mapping[str, str]) -> str | bytes:
    return base64.b64decode(file["b64"]) if "b64" in file else file["text"]
