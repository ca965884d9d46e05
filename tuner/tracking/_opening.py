"""A tracker that opens in the background while the first trials run.

Importing MLflow and opening its store take about 4 s in a fresh process (2.7 s for the import,
1.3 s for a SQLite store's schema check, on our 2-core machine). A worker under ``tuner launch``
would spend them before its first trial, on every launch and resume. :class:`OpeningTracker`
runs that opening on a thread instead and keeps, in order, whatever the trials record meanwhile;
once the real tracker is open it replays those calls into it and forwards every later one.
Nothing recorded is lost, and MLflow receives the same runs, in the same order, as from a tracker
opened up front.

Trial ends do not wait for MLflow while it is still opening (``flush`` returns at once), so the
first trials may run ahead of it; :meth:`OpeningTracker.close` waits for the opening, then for
the delivery, within its one ``timeout``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from tuner.tracking._base import OUTCOMES, NullTracker, Tracker, TrialRecorder

__all__ = ["OpeningTracker"]

_log = logging.getLogger("tuner.tracking")

Call = Callable[[Tracker], None]


class _PendingRecorder:
    """A trial's recorder started before the real tracker was open; bound to a real recorder
    when it opens (its calls so far replayed in order)."""

    def __init__(self, owner: OpeningTracker, start: Callable[[Tracker], TrialRecorder]) -> None:
        self._owner = owner
        self._start = start
        self._real: TrialRecorder | None = None
        self._calls: list[Callable[[TrialRecorder], None]] = []

    @property
    def run_id(self) -> str | None:
        return self._real.run_id if self._real is not None else None

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._call(lambda r: r.log(dict(metrics), step))

    def finish(self, outcome: str, *, tags: dict[str, str] | None = None) -> None:
        if outcome not in OUTCOMES:  # at once, as the real recorder does
            raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, but got {outcome!r}")
        self._call(lambda r: r.finish(outcome, tags=tags))

    def _call(self, call: Callable[[TrialRecorder], None]) -> None:
        with self._owner.lock:
            if self._real is None:
                self._calls.append(call)
                return
        call(self._real)

    def bind(self, tracker: Tracker) -> None:
        """Start the real run and replay this recorder's calls (the owner's lock is held)."""
        self._real = self._start(tracker)
        for call in self._calls:
            call(self._real)
        self._calls.clear()


class OpeningTracker:
    """A :class:`~tuner.tracking.Tracker` whose real tracker ``open_real()`` returns, called on
    a background thread; see the module docstring.

    ``open_real`` also opens the study (its parent run). If it fails, the reason is logged once
    and this process tracks nothing (``tuner sync`` delivers its trials later).
    """

    def __init__(self, open_real: Callable[[], Tracker]) -> None:
        self.lock = threading.Lock()
        self._real: Tracker | None = None
        self._calls: list[Call] = []
        self._opened = threading.Event()
        self._thread = threading.Thread(
            target=self._open, args=(open_real,), name="tuner-tracking-open", daemon=True
        )
        self._thread.start()

    def _open(self, open_real: Callable[[], Tracker]) -> None:
        try:
            real = open_real()
        except Exception as exc:
            _log.warning(
                "tracking: MLflow could not be opened (%s); this worker's trials are not "
                "tracked (`tuner sync STUDY.yaml` delivers them from the study database)",
                exc,
            )
            real = NullTracker()
        with self.lock:
            for call in self._calls:  # only enqueues: microseconds each
                call(real)
            self._calls.clear()
            self._real = real
        self._opened.set()

    def _forward(self, call: Call) -> None:
        with self.lock:
            if self._real is None:
                self._calls.append(call)
                return
        call(self._real)

    # -- Tracker API ------------------------------------------------------------------------

    @property
    def parent_run_id(self) -> str | None:
        """The parent run id once open, else None."""
        return self._real.parent_run_id if self._real is not None else None

    @property
    def experiment_id(self) -> str | None:
        """The MLflow experiment's id once open, else None."""
        return getattr(self._real, "experiment_id", None)

    def open_study(
        self,
        *,
        study_name: str,
        experiment: str,
        study_yaml_text: str,
        tags: dict[str, str],
        existing_parent_run_id: str | None,
    ) -> str | None:
        """Not used: ``open_real`` opens the study. Returns the parent id if already known."""
        return self.parent_run_id or existing_parent_run_id

    def start_trial(
        self, *, number: int, params: Mapping[str, object], tags: dict[str, str]
    ) -> TrialRecorder:
        """The real recorder once open; before, one that is bound to it when it opens."""
        params, tags = dict(params), dict(tags)

        def start(tracker: Tracker) -> TrialRecorder:
            return tracker.start_trial(number=number, params=params, tags=tags)

        with self.lock:
            if self._real is None:
                pending = _PendingRecorder(self, start)
                self._calls.append(pending.bind)
                return pending
        return start(self._real)

    def update_study(
        self,
        *,
        metrics: dict[str, float],
        tags: dict[str, str] | None = None,
        artifacts: dict[str, str | bytes] | None = None,
        step: int = 0,
    ) -> None:
        """Forward, or keep until open."""
        self._forward(
            lambda t: t.update_study(metrics=metrics, tags=tags, artifacts=artifacts, step=step)
        )

    def end_study(self) -> None:
        """Forward, or keep until open."""
        self._forward(lambda t: t.end_study())

    def kill_trial(self, number: int, *, reason: str | None = None) -> None:
        """Forward, or keep until open."""
        self._forward(lambda t: t.kill_trial(number, reason=reason))

    def flush(self, timeout: float, *, upto: int | None = None) -> bool:
        """The real tracker's flush; while it is still opening, returns False at once (a
        trial's end never waits for MLflow's import)."""
        real = self._real
        return real.flush(timeout, upto=upto) if real is not None else False

    def mark(self) -> int:
        """The real tracker's mark; 0 (before everything) while it is still opening."""
        real = self._real
        return real.mark() if real is not None else 0

    def close(self, timeout: float = 30.0) -> bool:
        """Wait for the opening, then deliver (all within ``timeout``); True if all delivered."""
        deadline = time.monotonic() + timeout
        if not self._opened.wait(timeout):
            with self.lock:
                kept = len(self._calls)
            _log.warning(
                "tracking: MLflow did not open within %.0fs; %d record(s) not delivered: "
                "`tuner sync STUDY.yaml` delivers the trials from the study database",
                timeout,
                kept,
            )
            return False
        assert self._real is not None
        return self._real.close(timeout=max(0.0, deadline - time.monotonic()))
