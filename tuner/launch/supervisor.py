"""``tuner launch``'s supervisor: it starts the workers, watches them, and never runs a trial.

Modelled on gunicorn's arbiter. Every slot (a device, ``per_device`` times) is a ``tuner worker``
process in a process group of its own. The supervisor's main loop waits on one ``select``: the
workers' event pipes (a trial started, reached a step, ended), their output (relayed with the
worker's name), and a wake-up pipe written by its signal handlers, which only queue the signal.
Each turn it then

- handles queued signals: the first SIGINT or SIGTERM asks every worker to stop (their running
  trials are recorded interrupted and queued again), a second one, or a worker still running
  after :data:`STOP_GRACE`, is killed with its whole process group;
- reaps workers that exited (``waitpid`` per pid, never ``-1``: the MLflow sender is a child of
  this process too). A worker that died in a trial costs that trial only: it is failed at once
  with the reason ("worker exited with SIGSEGV during trial 7") and a replacement starts;
- kills a worker whose trial outlived ``budget.trial_timeout`` (or ``budget.timeout``) by
  :data:`KILL_GRACE` after its own watchdog was due to stop it;
- fails trials whose heartbeats went stale (a paused worker; another machine's dead worker).

Workers watch for the opposite: once the supervisor is gone (SIGKILL), ``os.getppid()``
changes and they stop as on SIGTERM, re-queueing their trials.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from tuner.core.keys import ATTR, EVENT, Outcome
from tuner.core.trials import count_finished
from tuner.db.trialdb import budget_counts, fail_stale_trials, heartbeat_interval
from tuner.launch.events import WORKER_INDEX_ENV
from tuner.results.compare import replicate_counts
from tuner.tracking import TrackRelay
from tuner.worker.runner import DEADLINE_GRACE, timed_out_reason

if TYPE_CHECKING:
    from tuner.config.studyfile import StudyFile
    from tuner.db.session import Session
    from tuner.launch.progress import Progress
    from tuner.launch.slots import Slot

__all__ = ["KILL_GRACE", "STOP_GRACE", "Stop", "Supervisor"]

log = logging.getLogger("tuner")

# How long workers asked to stop (SIGINT/SIGTERM to launch) may take to record their trials.
STOP_GRACE = 5.0
# How long a worker's watchdog has, after a trial's time is up, before its process is killed.
KILL_GRACE = 5.0
# Longer lines of a worker's output are cut when relayed.
MAX_LINE = 240
# A worker's event pipe holds this much (Linux's default is 64 KiB): its tracking records wait
# in it while launch opens MLflow, which takes seconds.
EVENT_PIPE_SIZE = 1 << 20
# Consecutive failed starts of one slot (no trial begun) before the slot is given up.
MAX_BOOT_FAILURES = 3


@dataclass(frozen=True)
class Stop:
    """Why launch stopped: ``reason`` (budget, failures, timeout, signal, workers, config), the
    exit code and one line for the user."""

    reason: str
    exit_code: int
    line: str


@dataclass
class _Running:
    number: int
    trial_id: int
    started: float
    step: int | None = None


@dataclass
class _WorkerProcess:
    index: int
    slot: Slot
    proc: subprocess.Popen[bytes]
    events: int  # read ends of its pipes
    output: int
    running: _Running | None = None
    trials_started: int = 0
    killed_for: str | None = None  # why the supervisor killed it: "timeout", "deadline", "stop"
    done: bool = False  # it said its work is over; it may still be tearing down its modules
    pending: dict[int, bytes] = field(default_factory=dict)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    @property
    def pid(self) -> int:
        return self.proc.pid


class Supervisor:
    """Run ``slots`` worker processes on the study until it is done; see the module docstring.

    Collaborators are passed in: the session (its storage and study to fail the trials of dead
    workers, its tracker to close their MLflow runs) and the progress display. ``after_spawn``
    runs once the workers are started (launch opens MLflow then).
    """

    def __init__(
        self,
        study_file: StudyFile,
        *,
        session: Session,
        slots: list[Slot],
        progress: Progress,
        deadline: float | None,
        quiet: bool = False,
        after_spawn: Callable[[], None] | None = None,
    ) -> None:
        self.sf = study_file
        self.session = session
        self.storage = session.storage
        self.study = session.study
        self.after_spawn = after_spawn
        self.slots = slots
        self.progress = progress
        self.deadline = deadline
        self.quiet = quiet
        self.workers: dict[int, _WorkerProcess] = {}  # by pid
        self._signals: deque[int] = deque()
        self._stopping: int | None = None  # the signal that asked launch to stop
        self._stop_asked_at: float | None = None
        self._boot_failures: dict[int, int] = {}
        self._config_error: str | None = None
        self._storage_failure: str | None = None  # a worker's one line: a full disk...
        self._given_up: list[str] = []
        self._closing = False
        self._next_stale_check = 0.0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # The workers' MLflow records, sent on their event pipes (tuner.tracking._relay).
        self._relay = TrackRelay(lambda: self.session.tracker)

    # --- the main loop ---------------------------------------------------------------------

    def run(self) -> Stop:
        """Start the workers and supervise them until none is left; why it stopped."""
        with self._signal_handlers():
            try:
                for index, slot in enumerate(self.slots):
                    self._spawn(index, slot)
                if self.after_spawn is not None:
                    self.after_spawn()
                while any(not w.done for w in self.workers.values()):
                    self._wait(timeout=0.25)
                    self._handle_signals()
                    self._reap()
                    self._enforce_time_limits()
                    self._check_stale()
                    self.progress.tick(self._running())
            finally:
                # Workers that said they are done tear down while launch writes its summary;
                # close() reaps them. Any other is stopped now.
                self._kill_everything()
                os.close(self._wake_r)
                os.close(self._wake_w)
                # Closed: a later read or write (close() waiting on Ray actors, a late signal)
                # must not reach whatever file reuses the numbers.
                self._wake_r = self._wake_w = -1
        return self._conclude()

    def close(self, timeout: float = STOP_GRACE) -> None:
        """Reap the workers that finished their work (Python's teardown after torch takes about
        a second); one still there after ``timeout`` is killed. Nothing launch started
        outlives it."""
        self._closing = True
        give_up = time.monotonic() + timeout
        for w in list(self.workers.values()):
            try:
                w.proc.wait(timeout=max(0.0, give_up - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(w, "stop")
                w.proc.wait()
        self._reap()

    def _spawn(self, index: int, slot: Slot) -> None:
        events_r, events_w = os.pipe()
        output_r, output_w = os.pipe()
        with contextlib.suppress(OSError, AttributeError):
            # Room for the workers' tracking records while launch opens MLflow (Linux only;
            # elsewhere the default 64 KiB, and a record waits for room).
            fcntl.fcntl(events_w, fcntl.F_SETPIPE_SZ, EVENT_PIPE_SIZE)
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env[WORKER_INDEX_ENV] = str(index)
        if slot.visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.visible
        budget = self.sf.budget
        cmd = [
            sys.executable, "-m", "tuner", "worker", str(self.sf.path),
            "--supervised-by", str(os.getpid()), "--events-fd", str(events_w),
            "--device", slot.device, "--device-tag", slot.tag,
            "--trials", str(budget.trials), "--quiet",
        ]  # fmt: skip
        if budget.timeout is not None:
            cmd += ["--timeout", repr(budget.timeout)]
        if self.deadline is not None:
            cmd += ["--deadline", repr(self.deadline)]
        try:
            proc = subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=output_w, stderr=output_w,
                pass_fds=(events_w,), start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(events_w)
            os.close(output_w)
        for fd in (events_r, output_r):
            os.set_blocking(fd, False)
        self.workers[proc.pid] = _WorkerProcess(index, slot, proc, events_r, output_r)

    def _wait(self, timeout: float) -> None:
        """Sleep until a worker writes, a signal arrives, or ``timeout``; then read it all."""
        fds = [self._wake_r]
        for w in self.workers.values():
            fds += [w.events, w.output]
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries select itself
            ready = []
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        for w in list(self.workers.values()):
            if w.events in ready:
                self._read(w, w.events)
            if w.output in ready:
                self._read(w, w.output)

    def _read(self, w: _WorkerProcess, fd: int) -> None:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not chunk:  # end of file: flush a last line without its newline
                rest = w.pending.pop(fd, b"")
                if rest:
                    self._line(w, fd, rest)
                return
            data = w.pending.pop(fd, b"") + chunk
            *lines, rest = data.split(b"\n")
            if rest:
                w.pending[fd] = rest
            for line in lines:
                self._line(w, fd, line)

    def _line(self, w: _WorkerProcess, fd: int, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip()
        if fd == w.output:
            self._output(w, text)
            return
        try:
            event = json.loads(text)
        except ValueError:
            return
        self._event(w, event)

    def _output(self, w: _WorkerProcess, text: str) -> None:
        """A line of a worker's output: shown with the worker's number, kept for its errors."""
        if text:
            text = text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "..."
            w.tail.append(text)
            if not self.quiet:
                self.progress.line(f"[worker {w.index + 1}] {text}")

    def _event(self, w: _WorkerProcess, event: dict[str, Any]) -> None:
        """One event of a worker (its pipe here, its Ray actor in tuner.launch.ray_backend)."""
        kind = event.get("event")
        if kind == EVENT.TRACK:
            self._relay.apply(event)
        elif kind == EVENT.DONE:
            w.done = True
        elif kind == EVENT.STORAGE_FAILURE and self._storage_failure is None:
            # Every worker would meet it: stop them all, start none.
            self._storage_failure = str(event.get("message"))
            for other in self.workers.values():
                self._signal(other, signal.SIGTERM, group=False)
            self._stop_asked_at = time.monotonic()
        elif kind == EVENT.START:
            w.running = _Running(event["number"], event["trial_id"], time.monotonic())
            w.trials_started += 1
            self._boot_failures.pop(w.index, None)
        elif kind == EVENT.STEP and w.running is not None and w.running.number == event["number"]:
            w.running.step = event["step"]
        elif kind == EVENT.END:
            if w.running is not None and w.running.number == event["number"]:
                w.running = None
            self.progress.tick(self._running())
            self.progress.trial_ended(
                number=event["number"],
                outcome=event["outcome"],
                value=event.get("value"),
                reason=event.get("reason"),
                worker=w.index + 1,
            )

    # --- signals ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        """Queue SIGINT/SIGTERM for the main loop (gunicorn's way); only the main thread can."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, frame: object) -> None:
            self._signals.append(signum)
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"!")

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if self._stopping is None:
                self._stopping = signum
                self._stop_asked_at = time.monotonic()
                self.progress.line(
                    f"{signal.Signals(signum).name}: stopping {len(self.workers)} workers; "
                    "their running trials are queued again (again to stop at once)"
                )
                for w in self.workers.values():
                    self._signal(w, signal.SIGTERM, group=False)
            else:  # a second Ctrl-C: stop now
                for w in self.workers.values():
                    self._kill(w, "stop")
        if self._stop_asked_at is not None and time.monotonic() - self._stop_asked_at > STOP_GRACE:
            for w in self.workers.values():
                self._kill(w, "stop")

    def _signal(self, w: _WorkerProcess, signum: int, *, group: bool) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(w.pid, signum)
            else:
                os.kill(w.pid, signum)

    def _kill(self, w: _WorkerProcess, why: str) -> None:
        if w.killed_for is None:
            w.killed_for = why
        self._signal(w, signal.SIGKILL, group=True)

    # --- dead workers ----------------------------------------------------------------------

    def _reap(self) -> None:
        for w in list(self.workers.values()):
            code = w.proc.poll()
            if code is None:
                continue
            # Whatever it wrote before dying comes first: an "end" event means its trial
            # was recorded by the worker itself.
            self._read(w, w.events)
            self._read(w, w.output)
            os.close(w.events)
            os.close(w.output)
            del self.workers[w.pid]
            # Its own children (data loaders, an MLflow sender) go with it.
            self._signal(w, signal.SIGKILL, group=True)
            self._worker_exited(w, code)

    def _worker_exited(self, w: _WorkerProcess, code: int) -> None:
        how = _describe_exit(code)
        if w.running is not None:
            number = w.running.number
            if w.killed_for in ("stop", "deadline") or self._stopping is not None or self._closing:
                reason = (
                    "interrupted: budget.timeout passed (it runs again)"
                    if w.killed_for == "deadline"
                    else f"interrupted: its worker was stopped ({how})"
                )
                self._end_trial(w.running, Outcome.INTERRUPTED, reason)
            elif w.killed_for == "timeout":
                assert self.sf.budget.trial_timeout is not None
                reason = (
                    f"{timed_out_reason(self.sf.budget.trial_timeout)}; its worker did not "
                    "stop it and was killed"
                )
                self._end_trial(w.running, Outcome.FAILED, reason)
            else:
                self._end_trial(
                    w.running, Outcome.FAILED, f"worker exited with {how} during trial {number}"
                )
        elif code != 0 and w.trials_started == 0 and self._stopping is None:
            failures = self._boot_failures.get(w.index, 0) + 1
            self._boot_failures[w.index] = failures
            last = w.tail[-1] if w.tail else "no output"
            if code == 2:  # the worker's own config/objective check: no use retrying
                self._config_error = f"a worker could not start (exit code 2): {last}"
            elif failures >= MAX_BOOT_FAILURES:
                self._given_up.append(f"worker {w.index + 1} failed to start {failures} times "
                                      f"(last: {how}: {last})")  # fmt: skip
                self.progress.line(f"giving up on {self._given_up[-1]}")
                return
        if code != 0 and self._should_replace():
            self._spawn(w.index, w.slot)

    def _should_replace(self) -> bool:
        if self._closing or self._stopping is not None or self._config_error is not None:
            return False
        if self._storage_failure is not None:
            return False
        if self.deadline is not None and time.time() >= self.deadline:
            return False
        counts, failed, finished, replicates = self._tally()
        if failed >= self.sf.budget.max_failures:
            return False
        if finished < self.sf.budget.trials or counts.get(TrialState.WAITING, 0):
            return True
        return self._replicates_missing(replicates)

    def _tally(self) -> tuple[dict[TrialState, int], int, int, int]:
        """Trials by state, failures, finished search trials and finished replicates."""

        counts, failed = budget_counts(self.study)
        finished = count_finished(counts)
        replicates = 0
        if finished > self.sf.budget.trials:
            reps = replicate_counts(self.study)
            replicates = count_finished(reps)
        return counts, failed, finished - replicates, replicates

    def _replicates_missing(self, replicates: int) -> bool:
        """Whether replicates may be left to run (at most finalists x seeds of them); a worker
        that finds none exits at once, and is not replaced again."""
        compare = self.sf.compare
        return compare.seeds > 0 and replicates < compare.finalists * compare.seeds

    def _end_trial(self, running: _Running, outcome: Outcome, reason: str) -> None:
        """Record the trial of a worker that is gone, unless it got to record it itself."""
        try:
            trial = self.storage.get_trial(running.trial_id)
            if trial.state.is_finished():
                return
            attrs = {
                ATTR.OUTCOME: outcome.value,
                ATTR.REASON: reason,
                ATTR.DURATION: round(time.monotonic() - running.started, 3),
            }
            for key, value in attrs.items():
                self.storage.set_trial_user_attr(running.trial_id, key, value)
            self.storage.set_trial_state_values(running.trial_id, TrialState.FAIL)
            if outcome == Outcome.INTERRUPTED and ATTR.REPLICATE not in trial.user_attrs:
                # Runs again; a replicate is missing again, and tuner.results.compare queues it.
                self.study.enqueue_trial(trial.params, user_attrs={ATTR.RETRY_OF: trial.number})
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # finished meanwhile (a stale check elsewhere): nothing to correct
        except Exception as exc:  # the heartbeat check fails it after the grace period
            # After a storage failure the one line that ends launch says why already.
            say = log.debug if self._storage_failure is not None else log.warning
            say("could not record trial %d as %s: %s", running.number, outcome.value, exc)
            return
        if not self._relay.end_lost(running.number, outcome.value, reason):
            self.session.tracker.kill_trial(running.number, reason=reason)
        self.progress.tick(self._running())
        self.progress.trial_ended(
            number=running.number, outcome=outcome.value, value=None, reason=reason, worker=None
        )

    # --- time limits and silent workers ----------------------------------------------------

    def _enforce_time_limits(self) -> None:
        now = time.monotonic()
        trial_timeout = self.sf.budget.trial_timeout
        past_deadline = (
            self.deadline is not None and time.time() > self.deadline + DEADLINE_GRACE + KILL_GRACE
        )
        for w in self.workers.values():
            if w.running is None or w.killed_for is not None:
                continue
            if trial_timeout is not None and now - w.running.started > trial_timeout + KILL_GRACE:
                self._kill(w, "timeout")
            elif past_deadline:
                self._kill(w, "deadline")

    def _check_stale(self) -> None:
        now = time.monotonic()
        if now < self._next_stale_check:
            return
        interval = heartbeat_interval(self.study)
        self._next_stale_check = now + (interval or 5.0)
        try:
            fail_stale_trials(self.study)
        except Exception as exc:  # the workers' own checks do the same; try again later
            log.debug("stale-trial check failed: %s", exc)

    def _running(self) -> list[tuple[int, int | None, int]]:
        return sorted(
            (w.running.number, w.running.step, w.index + 1)
            for w in self.workers.values()
            if w.running is not None
        )

    # --- the end ---------------------------------------------------------------------------

    def _kill_everything(self) -> None:
        """Nothing that launch started outlives it (an exception in the loop included): every
        worker that has not said it is done is stopped; those that have are left to
        :meth:`close`, which reaps them."""
        self._closing = True

        def left() -> list[_WorkerProcess]:
            return [w for w in self.workers.values() if not w.done]

        for w in left():
            self._signal(w, signal.SIGTERM, group=False)
        deadline = time.monotonic() + STOP_GRACE
        while left() and time.monotonic() < deadline:
            self._wait(timeout=0.1)
            self._reap()
        for w in left():
            self._kill(w, "stop")
            w.proc.wait()
        self._reap()

    def _conclude(self) -> Stop:
        budget = self.sf.budget
        counts, failed, finished, replicates = self._tally()
        tally = f"{finished} of {budget.trials} trials finished"
        if replicates:
            tally += f", {replicates} replicates"
        if failed:
            tally += f", {failed} failed"
        if self._storage_failure is not None:
            return Stop("storage", 1, f"error: {self._storage_failure}")
        if self._stopping is not None:
            name = signal.Signals(self._stopping).name
            waiting = counts.get(TrialState.WAITING, 0)
            return Stop(
                "signal",
                128 + self._stopping,
                f"stopped by {name}: {tally}; {waiting} trials queued to run again; "
                "run the same command to resume",
            )
        if finished >= budget.trials:
            return Stop("budget", 0, f"done: the budget is spent ({tally})")
        if failed >= budget.max_failures:
            return Stop(
                "failures",
                1,
                f"stopped early: {failed} trials failed (budget.max_failures); {finished} of "
                f"{budget.trials} trials finished. See `tuner status` and the tracebacks in "
                "MLflow or the study database",
            )
        if self._config_error is not None:
            return Stop("config", 2, f"error: {self._config_error}")
        if self.deadline is not None and time.time() >= self.deadline:
            return Stop(
                "timeout",
                0,
                f"stopped: budget.timeout reached ({tally}); run the same command to go on",
            )
        why = "; ".join(self._given_up) or "the workers stopped"
        return Stop("workers", 1, f"error: {why} before the budget was spent ({tally})")


def _describe_exit(code: int) -> str:
    """``SIGSEGV`` for a signal, ``exit code 3`` otherwise (Popen's negative return codes)."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
