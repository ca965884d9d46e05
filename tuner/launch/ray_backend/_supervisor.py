"""``tuner launch``'s supervisor for workers that are Ray actors.

:class:`RaySupervisor` is :class:`tuner.launch.supervisor.Supervisor` with actors in place of worker
processes; the main loop, the signal handling, the time limits, the stale-trial check and the
conclusion are the same code. What differs is how a worker is started, heard and ended:

- a worker is a :class:`~tuner.launch.ray_backend._actor.TunerWorker` actor (``max_restarts=0``)
  whose ``run`` call is the worker loop; its events come through the ``TunerEvents`` actor,
  drained every turn of the loop and handled as a local worker's pipe;
- a worker's end is its ``run`` call's end: a result, or ``RayActorError`` when the actor
  died (its process killed, its node lost, out of memory), which costs the trial it was running:
  failed at once with Ray's reason, and a new actor takes the worker's place;
- SIGTERM to a worker becomes a stop request in ``TunerEvents`` (the actor stops its loop with
  SIGTERM to itself, so its trial is recorded interrupted and queued again); SIGKILL becomes
  ``ray.kill``. Every actor is killed once its ``run`` is over: nothing outlives launch.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuner.core.errors import TunerError
from tuner.core.keys import EVENT, Outcome
from tuner.launch.ray_backend._actor import TunerEvents, TunerWorker
from tuner.launch.supervisor import MAX_BOOT_FAILURES, STOP_GRACE, Supervisor, _Running
from tuner.worker.runner import timed_out_reason

if TYPE_CHECKING:
    from tuner.config.studyfile import StudyFile
    from tuner.launch.ray_backend._cluster import RayCluster
    from tuner.launch.slots import Slot

__all__ = ["RaySupervisor", "death_reason"]

# How long launch waits for the actors it killed to be reported dead when it closes.
DEATH_WAIT = 15.0


@dataclass
class _RayWorker:
    """A worker actor as the supervisor sees it (what ``_WorkerProcess`` is for a process)."""

    index: int
    slot: Slot
    key: int  # unique per actor: a replacement keeps the index, never the key
    actor: Any
    run: Any  # the ObjectRef of its run() call
    running: _Running | None = None
    trials_started: int = 0
    killed_for: str | None = None
    done: bool = False
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))


class RaySupervisor(Supervisor):
    """Run ``cluster.count`` worker actors on the study until it is done (see the module doc).

    ``slots`` are the cluster's (one per worker); the other arguments are
    :class:`~tuner.launch.supervisor.Supervisor`'s. :meth:`close` also disconnects from Ray.
    """

    def __init__(self, study_file: StudyFile, *, cluster: RayCluster, **kwargs: Any) -> None:
        import ray

        super().__init__(study_file, **kwargs)
        self.ray = ray
        self.cluster = cluster
        self.workers: dict[int, _RayWorker] = {}  # type: ignore[assignment]  # by key
        os.set_blocking(self._wake_r, False)  # only drained here, never waited on
        self._keys = itertools.count(1)
        options: dict[str, Any] = {"max_restarts": 0, **cluster.options}
        if cluster.runtime_env is not None:
            options["runtime_env"] = cluster.runtime_env
        self._worker_class = ray.remote(TunerWorker).options(**options)
        self._mailbox = ray.remote(TunerEvents).options(**cluster.events_options).remote()
        self._study_file = ray.put(study_file)  # sent once, not with every replacement
        self._mailbox_lost: str | None = None

    # --- starting and hearing workers --------------------------------------------------------

    def _spawn(self, index: int, slot: Slot) -> None:  # type: ignore[override]
        key = next(self._keys)
        actor = self._worker_class.remote()
        run = actor.run.remote(
            self._study_file, key=key, index=index, events=self._mailbox,
            objective=self.cluster.objective, deadline=self.deadline,
        )  # fmt: skip
        self.workers[key] = _RayWorker(index, slot, key, actor, run)

    def _wait(self, timeout: float) -> None:
        """Until a worker's run ends or ``timeout``; then handle every event sent meanwhile."""
        runs = [w.run for w in self.workers.values()]
        if runs:
            self.ray.wait(runs, num_returns=1, timeout=timeout)
        else:
            time.sleep(timeout)
        if self._wake_r >= 0:  # closed once run() ended; close() waits here too
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)  # a signal's wake-up byte (the loop handles it)
        self._drain()

    def _drain(self) -> None:
        if self._mailbox_lost is not None:
            return
        try:
            batches = self.ray.get(self._mailbox.drain.remote(), timeout=60)
        except self.ray.exceptions.RayError as exc:
            # Nothing the workers do can be heard any more: stop them all (their trials are
            # recorded interrupted and queued again as they end), and say why launch stops.
            self._mailbox_lost = (
                f"the Ray actor that carries the workers' events is gone: {death_reason(exc)}"
            )
            for w in self.workers.values():
                self._kill(w, "stop")  # type: ignore[arg-type]
            raise TunerError(self._mailbox_lost) from None
        for key, events in batches:
            w = self.workers.get(key)
            for event in events:
                if w is not None and event.get("event") == EVENT.OUTPUT:
                    self._output(w, str(event.get("text", "")))  # type: ignore[arg-type]
                elif w is not None:
                    self._event(w, event)  # type: ignore[arg-type]
                elif event.get("event") == EVENT.TRACK:
                    self._relay.apply(event)  # MLflow records of an actor already ended

    # --- ending workers --------------------------------------------------------------------

    def _signal(self, w: _RayWorker, signum: int, *, group: bool) -> None:  # type: ignore[override]
        if signum == signal.SIGKILL:
            self.ray.kill(w.actor, no_restart=True)
        else:  # a graceful stop: the actor stops its own loop (tuner.launch.ray_backend._actor)
            self._mailbox.stop.remote(w.key)

    def _reap(self) -> None:
        runs = {w.run: w for w in self.workers.values()}
        if not runs:
            return
        ended, _ = self.ray.wait(list(runs), num_returns=len(runs), timeout=0)
        if not ended:
            return
        self._drain()  # what they sent before their end comes first
        for run in ended:
            w = runs[run]
            del self.workers[w.key]
            self._actor_ended(w, run)
            self.ray.kill(w.actor, no_restart=True)  # idle now (or dead): its resources go back

    def _actor_ended(self, w: _RayWorker, run: Any) -> None:
        """What a local worker's exit code tells, from the end of an actor's ``run`` call."""
        died = failure = config_error = None
        try:
            result = self.ray.get(run)
        except self.ray.exceptions.RayActorError as exc:
            died = death_reason(exc)
            failure = f"its Ray actor died: {died}"
        except self.ray.exceptions.RayTaskError as exc:
            failure = f"its Ray actor failed: {_last_line(str(exc))}"
        else:
            if "error" in result:
                failure = f"error: {result['error']}"
                if result.get("exit_code") == 2:  # the study file or the objective: no retry
                    config_error = f"a worker could not start: {result['error']}"
        if w.running is not None:
            self._end_running(w, died, failure)
        elif failure is not None and w.trials_started == 0 and self._stopping is None:
            failures = self._boot_failures.get(w.index, 0) + 1
            self._boot_failures[w.index] = failures
            if config_error is not None:
                self._config_error = config_error
            elif failures >= MAX_BOOT_FAILURES:
                self._given_up.append(f"worker {w.index + 1} failed to start {failures} times "
                                      f"(last: {failure})")  # fmt: skip
                self.progress.line(f"giving up on {self._given_up[-1]}")
                return
        if failure is not None and self._should_replace():
            self._spawn(w.index, w.slot)

    def _end_running(self, w: _RayWorker, died: str | None, failure: str | None) -> None:
        """Record the trial of a worker whose actor ended before the trial did."""
        assert w.running is not None
        number = w.running.number
        if w.killed_for in ("stop", "deadline") or self._stopping is not None or self._closing:
            reason = (
                "interrupted: budget.timeout passed (it runs again)"
                if w.killed_for == "deadline"
                else "interrupted: its worker was stopped (its Ray actor was killed)"
            )
            self._end_trial(w.running, Outcome.INTERRUPTED, reason)
        elif w.killed_for == "timeout":
            assert self.sf.budget.trial_timeout is not None
            reason = (
                f"{timed_out_reason(self.sf.budget.trial_timeout)}; its worker did not stop it "
                "and its Ray actor was killed"
            )
            self._end_trial(w.running, Outcome.FAILED, reason)
        elif died is not None:
            reason = f"its Ray actor died during trial {number}: {died}"
            self._end_trial(w.running, Outcome.FAILED, reason)
        else:
            reason = f"{failure or 'its Ray actor ended'} during trial {number}"
            self._end_trial(w.running, Outcome.FAILED, reason)

    def _kill_everything(self) -> None:
        """Stop every worker that is not done (a stop request, then ``ray.kill`` after
        :data:`~tuner.launch.supervisor.STOP_GRACE`), and wait until their ends are recorded."""
        self._closing = True

        def left() -> list[_RayWorker]:
            return [w for w in self.workers.values() if not w.done]

        for w in left():
            self._signal(w, signal.SIGTERM, group=False)
        give_up = time.monotonic() + STOP_GRACE
        while left() and time.monotonic() < give_up:
            self._wait(timeout=0.1)
            self._reap()
        for w in left():
            self._kill(w, "stop")  # type: ignore[arg-type]
        give_up = time.monotonic() + DEATH_WAIT
        while left() and time.monotonic() < give_up:
            self._wait(timeout=0.1)
            self._reap()

    def close(self, timeout: float = STOP_GRACE) -> None:
        """Reap the workers that said they are done, kill whatever is left, disconnect."""
        self._closing = True
        try:
            give_up = time.monotonic() + timeout
            while self.workers and time.monotonic() < give_up:
                self._wait(timeout=0.1)
                self._reap()
            for w in list(self.workers.values()):
                self._kill(w, "stop")  # type: ignore[arg-type]
            give_up = time.monotonic() + DEATH_WAIT
            while self.workers and time.monotonic() < give_up:
                self._wait(timeout=0.1)
                self._reap()
        finally:
            with contextlib.suppress(Exception):  # dead already with its node: nothing to end
                self.ray.kill(self._mailbox, no_restart=True)
            self.cluster.close()


_BECAUSE = re.compile(r"The actor (?:is dead|died) because (.*)", re.DOTALL)
_EXIT = re.compile(r"\s*Worker exit type: (\S+) Worker exit detail: (.*)", re.DOTALL)
_NODE_ID = re.compile(r"Node Id: ([0-9a-f]{8})[0-9a-f]*")


def death_reason(exc: BaseException) -> str:
    """Ray's reason for an actor's death, in one line: its process died, its node died, it
    was killed by ``ray.kill``, the memory monitor killed it.

    >>> death_reason(Exception("The actor died unexpectedly before finishing this task.\\n\\t"
    ...     "pid: 7\\nThe actor is dead because its worker process has died. Worker exit type: "
    ...     "SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a connection error "
    ...     "code 2. End of file. Some common causes include: (1) the process was killed"))
    'its worker process has died (SYSTEM_ERROR: Worker unexpectedly exits with a connection error code 2. End of file)'
    >>> death_reason(Exception("The actor died unexpectedly before finishing this task.\\n"
    ...     "The actor died because its node has died. Node Id: d2b6757ad7ec10ae9e44\\n\\tthe "
    ...     "actor's node was terminated expectedly: received SIGTERM"))
    "its node has died (node d2b6757a): the actor's node was terminated expectedly: received SIGTERM"
    """  # noqa: E501
    text = str(getattr(exc, "error_msg", None) or exc)
    because = _BECAUSE.search(text)
    if because is None:
        lines = text.strip().splitlines()
        return lines[0].strip().rstrip(".") if lines else repr(exc)
    reason = because.group(1).split(" Some common causes")[0]
    parts = [line.strip() for line in reason.splitlines() if line.strip()]
    reason = parts[0] + "".join(f": {part}" for part in parts[1:])
    exit_info = _EXIT.search(reason)
    if exit_info is not None:
        head = reason[: exit_info.start()].rstrip(". ")
        reason = f"{head} ({exit_info.group(1)}: {exit_info.group(2).strip().rstrip('.')})"
    reason = _NODE_ID.sub(lambda m: f"(node {m.group(1)})", reason).replace(". (node", " (node")
    reason = reason.rstrip(".")
    return reason if len(reason) <= 300 else reason[:297] + "..."


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text
