"""The background flusher: one daemon thread that owns the tracking client and sends queued work.

The trial's thread only appends to a deque (``put_metrics``, ``put_call``: no lock, no I/O). The
flusher wakes every ``interval`` seconds (or at once on ``flush``/``close`` or a run's end),
sends what accumulated in order, merging each run's metrics into batches, and on a transient
failure keeps everything queued and backs off. Past ``max_queued`` operations new metric
points are dropped (counted, warned once): run creations, ends, params and tags are never
dropped, so the run layout survives a long outage and ``tuner sync`` can backfill the curves
from the study database.

A circuit breaker keeps an unhealthy backend from costing the trials time. It opens on a
failed round, or when a waiter sees a round hang for ``patience`` seconds (a server that
accepts connections but never answers); while it is open, ``flush`` returns at once, and the
flusher probes the backend (``probe``, one cheap bounded request) before it tries real work
again. The first round that succeeds closes it. So a trial's end waits for MLflow at most
``patience`` seconds in all, and after the first failure not at all.

Every operation is marked done once sent, so a retry after a partial failure resends nothing that
already arrived (run creation, the one non-idempotent call, also guards itself).

Calls are kept few, since the flusher's CPU work competes with training for the GIL and the
cores (and, for a server, the server's work too): a run's metric points wait while they are
younger than ``interval`` and nothing asked for them (a ``flush`` does), so a short trial's
points all go with its end, and an operation queued with ``merge`` (a run's end) takes its
run's pending points along in the same request.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from tuner.core.redact import redact

__all__ = ["CallOp", "Flusher", "MetricsOp", "PermanentError", "RunHandle"]

_log = logging.getLogger("tuner.tracking")


class PermanentError(Exception):
    """Raised by a send function for an operation that can never succeed (dropped, not retried)."""


class RunHandle:
    """A run whose id the flusher learns in the background; recorders refer to it meanwhile."""

    __slots__ = ("failed", "params", "run_id")

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id
        # Set when the run could not be created for good: its later operations are dropped.
        self.failed = False
        # What the tracker has yet to send with the run's next batch (its params).
        self.params: dict[str, str] | None = None


class MetricsOp:
    """One ``log(metrics, step)`` call, stamped at enqueue time (so a resend is idempotent)."""

    __slots__ = ("done", "handle", "metrics", "seq", "step", "timestamp_ms")

    def __init__(
        self, seq: int, handle: RunHandle, metrics: dict[str, Any], step: int, ts: int
    ) -> None:
        self.seq = seq
        self.handle = handle
        self.metrics = metrics
        self.step = step
        self.timestamp_ms = ts
        self.done = False


class CallOp:
    """A structural operation (create a run, set tags, end a run, log an artifact).

    With ``merge`` its ``fn`` takes the run's pending :class:`MetricsOp` list (maybe empty)
    and sends those points itself, in the same request as its own data.
    """

    __slots__ = ("done", "fn", "handle", "merge", "seq", "timestamp_ms", "what")

    def __init__(
        self,
        seq: int,
        handle: RunHandle | None,
        fn: Callable[..., None],
        what: str,
        merge: bool = False,
    ) -> None:
        self.seq = seq
        self.handle = handle
        self.fn = fn
        self.what = what
        self.merge = merge
        self.timestamp_ms = time.time_ns() // 1_000_000
        self.done = False


Op = MetricsOp | CallOp


class Flusher:
    """Owns the queue, the thread that drains it and the circuit breaker.

    ``send_metrics(handle, ops)`` sends a run's metric ops (in batches it chooses) and raises on
    failure; ``is_transient(exc)`` says whether a failure is worth retrying; ``probe()``, when
    given, is a cheap bounded reachability check made before each round while the breaker is
    open, so that an outage costs one refused (or timed-out) probe per round, not a whole
    batch's requests. ``patience``: how long a waiter lets one round run before it counts the
    backend as hung. ``down_grace``: how long ``close`` waits for an unhealthy backend.
    """

    def __init__(
        self,
        send_metrics: Callable[[RunHandle, list[MetricsOp]], None],
        *,
        is_transient: Callable[[BaseException], bool],
        probe: Callable[[], bool] | None = None,
        max_queued: int = 100_000,
        interval: float = 0.2,
        max_backoff: float = 15.0,
        ops_per_round: int = 20_000,
        patience: float = 1.0,
        down_grace: float = 5.0,
    ) -> None:
        self._send_metrics = send_metrics
        self._is_transient = is_transient
        self._probe = probe
        self._max_queued = max_queued
        self._interval = interval
        self._max_backoff = max_backoff
        self._ops_per_round = ops_per_round
        self._patience = patience
        self._down_grace = down_grace
        # deque.append and len are atomic under the GIL: the hot path needs no lock. Producers
        # append to the inbox; only the flusher pops it (under _progress) into its own list.
        self._queue: collections.deque[Op] = collections.deque()
        self._pending: collections.deque[Op] = collections.deque()
        self._head_seq: int | None = None  # oldest unsent op the flusher holds, under _progress
        self._seq = itertools.count()
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._closing = False
        self._draining = False  # close() is waiting: retry the backend often
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.dropped_metrics = 0  # log calls refused at the cap
        self.dropped_points = 0  # the metric points in them
        self.lost_ops = 0  # operations dropped after a permanent failure
        self._lost_seen = 0
        self._warned_cap = False
        self._last_error: str | None = None
        # The breaker: closed (healthy) until a round fails or hangs; the next good round
        # closes it again. _round_started is when the round in flight began (None when idle).
        self._healthy = True
        self._warned_failure = False  # an outage is warned about once, and its end too
        self._round_started: float | None = None
        # Every op up to this sequence number goes out in the next round, young or not.
        self._flush_upto = -1

    # -- producer side (any thread) ---------------------------------------------------------

    def put_metrics(
        self, handle: RunHandle, metrics: dict[str, Any], step: int, ts: int | None = None
    ) -> None:
        """Queue one ``log`` call (made at ``ts`` ms, default now); drop it (counted) when the
        queue is full or closed."""
        if len(self._queue) + len(self._pending) >= self._max_queued or self._closing:
            self._drop_metrics(len(metrics))
            return
        ts = time.time_ns() // 1_000_000 if ts is None else ts
        op = MetricsOp(next(self._seq), handle, dict(metrics), step, ts)
        self._queue.append(op)
        if self._thread is None:
            self._start()

    def put_call(
        self,
        handle: RunHandle | None,
        fn: Callable[..., None],
        what: str,
        *,
        wake: bool = False,
        merge: bool = False,
    ) -> None:
        """Queue a structural operation; these are never dropped for space.

        With ``merge``, ``fn(metric_ops)`` receives the run's points still unsent (see CallOp).
        """
        if self._closing:
            self.lost_ops += 1
            _log.warning("tracking: %s after close, not sent", what)
            return
        self._queue.append(CallOp(next(self._seq), handle, fn, what, merge))
        if self._thread is None:
            self._start()
        if wake:
            self._wake.set()

    def _drop_metrics(self, points: int) -> None:
        self.dropped_metrics += 1
        self.dropped_points += points
        if not self._warned_cap:
            self._warned_cap = True
            _log.warning(
                "tracking: %d operations queued (tracking backend unreachable?): dropping new "
                "metric points until it drains; `tuner sync` backfills reported values later",
                len(self._queue),
            )

    def mark(self) -> int:
        """A sequence number later than every operation queued so far."""
        return next(self._seq)

    @property
    def healthy(self) -> bool:
        """False while the breaker is open: the last round failed or hung."""
        return self._healthy

    def flush(self, timeout: float, *, upto: int | None = None) -> bool:
        """Wait up to ``timeout`` s for the operations queued before this call to be sent.

        The wait ends early when the breaker opens (a round fails, or hangs past ``patience``),
        and does not start while it is open: a trial's end must not stall on a backend that is
        down (the data stays queued and is retried; :meth:`close` is the patient wait). With
        ``upto`` (a :meth:`mark`) it waits only for the operations queued before that mark.
        Returns True when they were all delivered and nothing was dropped since the last flush.
        """
        target = next(self._seq) if upto is None else upto
        if target > self._flush_upto:
            self._flush_upto = target
        self._wake.set()
        drained = self._wait(target, time.monotonic() + max(0.0, timeout), grace=None)
        lost = self.lost_ops + self.dropped_metrics
        clean = lost == self._lost_seen
        self._lost_seen = lost
        return drained and clean

    def _wait(self, target: int, deadline: float, grace: float | None) -> bool:
        """Wait until everything up to ``target`` was sent, or ``deadline``.

        With ``grace`` None (a trial's flush) give up as soon as the backend is unhealthy, or
        once a round hangs past ``patience`` (which opens the breaker). With a ``grace`` (close)
        wait through failures and slow rounds, but give up once the backend has kept failing,
        or one round has hung, for ``grace`` seconds.
        """
        failing_since: float | None = None
        with self._progress:
            while not self._drained_up_to(target):
                now = time.monotonic()
                if self._thread is None or not self._thread.is_alive():
                    break
                started = self._round_started
                age = now - started if started is not None else 0.0
                if age >= self._patience:
                    self._trip(f"no answer within {self._patience:g} s")
                if grace is None:
                    if not self._healthy:
                        break
                elif age >= grace:
                    break
                elif not self._healthy and started is None:  # failed, backing off
                    failing_since = failing_since or now
                    if now - failing_since >= grace:
                        break
                if now >= deadline:
                    break
                left = deadline - now
                if started is not None and age < self._patience:
                    left = min(left, self._patience - age)
                self._progress.wait(max(0.001, min(left, 0.5)))
            return self._drained_up_to(target)

    def _trip(self, why: str) -> None:
        # Only INFO: a busy store can be slow and fine. A hang turns into a failure (the
        # request's timeout), and that one is a warning.
        if self._healthy:
            self._healthy = False
            _log.info("tracking: %s; trials do not wait for MLflow until it answers", why)
        self._last_error = self._last_error or why

    def _drained_up_to(self, target: int) -> bool:
        # Called under _progress: the flusher moves ops from the inbox only under it too.
        head = self._head_seq
        if head is not None and head <= target:
            return False
        return not self._queue or self._queue[0].seq > target

    @property
    def pending(self) -> int:
        """Operations still queued (not yet sent)."""
        with self._progress:
            return len(self._queue) + sum(1 for op in self._pending if not op.done)

    def undelivered(self) -> tuple[int, int]:
        """``(metric points, other operations)`` not delivered: still queued, or dropped."""
        with self._progress:
            ops = [op for op in (*self._pending, *list(self._queue)) if not op.done]
        points = sum(len(op.metrics) for op in ops if isinstance(op, MetricsOp))
        calls = sum(1 for op in ops if isinstance(op, CallOp))
        return points + self.dropped_points, calls

    @property
    def last_error(self) -> str | None:
        """The last send failure, redacted, or None once sends succeed again."""
        return self._last_error

    def close(self, timeout: float) -> bool:
        """Flush, then stop the thread. Returns True if everything was delivered.

        Waits at most ``timeout`` s in all, through failures and slow rounds, but at most
        ``down_grace`` s once the backend keeps failing or one round hangs: the last chance to
        deliver, yet an exit that no hung server holds.
        """
        target = next(self._seq)
        self._flush_upto = target
        self._draining = True
        self._wake.set()
        delivered = self._wait(target, time.monotonic() + max(0.0, timeout), self._down_grace)
        self._closing = True
        self._wake.set()
        if self._thread is not None and self._healthy:
            self._thread.join(timeout=2.0)
        return delivered and self.lost_ops == 0 and self.dropped_metrics == 0

    # -- the flusher thread -----------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tuner-tracking-flusher", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        # The flusher's own loop, not tenacity's: it is not one call retried until it succeeds
        # but a thread that sleeps on a wake event (close(), new records), whose delay also
        # shortens while close() drains and resets after every success.
        delay = self._interval
        backoff = self._interval
        while True:
            self._wake.wait(timeout=delay)
            self._wake.clear()
            if self._closing:
                return
            if not self._queue and not self._pending:
                delay = self._interval
                continue
            if self._round():
                backoff = delay = self._interval
            else:
                backoff = min(self._max_backoff, backoff * 2)
                # While close() waits, retry often: its grace is short.
                delay = min(backoff, 0.5) if self._draining else backoff

    def _round(self) -> bool:
        """Send one round of queued ops in order. False on a transient failure (retry later)."""
        with self._progress:
            while self._queue and len(self._pending) < self._ops_per_round:
                self._pending.append(self._queue.popleft())
            self._head_seq = self._pending[0].seq if self._pending else None
        try:
            # While the breaker is open, a cheap bounded probe says whether to try for real.
            if self._probe is not None and not self._healthy and not self._probe():
                self._note_failure("tracking server unreachable")
                return False
            self._round_started = time.monotonic()
            self._send(list(self._pending))
        except Exception as exc:  # the flusher must survive anything a backend raises
            if not self._is_transient(exc):
                _log.exception("tracking: unexpected error in the flusher")
            self._note_failure(f"{type(exc).__name__}: {exc}")
            return False
        finally:
            with self._progress:
                self._round_started = None
                while self._pending and self._pending[0].done:
                    self._pending.popleft()
                self._head_seq = self._pending[0].seq if self._pending else None
                self._progress.notify_all()
        if self._warned_failure:
            _log.warning("tracking: backend reachable again, sending queued data")
        self._warned_failure = False
        self._healthy = True
        self._last_error = None
        return True

    def _note_failure(self, message: str) -> None:
        message = redact(message)
        if not self._warned_failure:
            self._warned_failure = True
            _log.warning("tracking: send failed, will retry with backoff: %s", message)
        with self._progress:
            self._healthy = False
            self._last_error = message
            self._progress.notify_all()

    def _send(self, ops: list[Op]) -> None:
        # Per run, order matters (create < metrics < end); across runs it does not. So metrics
        # accumulate per run and go out with, or just before, that run's next structural op.
        upto = self._flush_upto
        old_enough = time.time_ns() // 1_000_000 - int(self._interval * 1000)
        batches: dict[RunHandle, list[MetricsOp]] = {}
        for op in ops:
            if op.done:
                continue
            if isinstance(op, MetricsOp):
                batches.setdefault(op.handle, []).append(op)
                continue
            batch = batches.pop(op.handle, None) if op.handle is not None else None
            if op.merge:
                self._call(op, batch or [])
                continue
            if batch:
                self._send_batch(op.handle, batch)  # type: ignore[arg-type]
            self._call(op)
        for handle, batch in batches.items():
            # A running trial's young points wait for more (or for its end), unless a flush or
            # close asked for them: fewer, larger requests.
            if self._closing or batch[0].seq <= upto or batch[0].timestamp_ms <= old_enough:
                self._send_batch(handle, batch)

    def _send_batch(self, handle: RunHandle, batch: list[MetricsOp]) -> None:
        if handle.failed or handle.run_id is None:
            # Creation failed for good (a never-created run cannot get points).
            self._give_up(batch, "metrics for a run that could not be created")
            return
        try:
            self._send_metrics(handle, batch)
        except Exception as exc:
            if self._is_transient(exc):
                raise
            self._give_up(batch, f"metrics rejected: {exc}")
            return
        for op in batch:
            op.done = True

    def _call(self, op: CallOp, batch: list[MetricsOp] | None = None) -> None:
        ops: list[Op] = [op, *(batch or [])]
        if op.handle is not None and op.handle.failed:
            self._give_up(ops, op.what)
            return
        try:
            if op.merge:
                op.fn(batch or [])
            else:
                op.fn()
        except Exception as exc:
            if self._is_transient(exc):
                raise
            self._give_up([o for o in ops if not o.done], f"{op.what}: {exc}")
            return
        for o in ops:
            o.done = True

    def _give_up(self, ops: list[Op], why: str) -> None:
        self.lost_ops += len(ops)
        _log.warning("tracking: dropped %d operation(s): %s", len(ops), redact(str(why)))
        for op in ops:
            op.done = True
