"""The cluster's side of ``backend: ray``: the worker actor and the actor that carries its events.

:class:`TunerWorker` runs :func:`tuner.launch.worker_main.run_worker`, the same worker loop as a
local worker, in its own Ray worker process. Ray runs a plain actor's methods on that process's main
thread, so the loop's signal handling works as in a ``tuner worker`` process: its watchdog cuts
a trial short past ``budget.trial_timeout`` (SIGUSR1 to itself), and SIGTERM stops it with the
running trial recorded interrupted and queued again.

What a local worker writes on its event pipe (a trial started, reached a step, ended; its
MLflow records; its output) an actor sends to :class:`TunerEvents`, an actor that ``tuner
launch`` created and drains. The sending happens on a daemon thread in batches
(:class:`_EventSender`), so a ``trial.report`` costs a deque append in the trial's process, not
an actor call (about 0.2 ms each on our machines). A second thread (:class:`_StopWatch`) asks
``TunerEvents`` twice a second whether launch wants this worker to stop, and stops it with
SIGTERM when so, or when that actor is gone with its launch.

Neither class imports Ray at module level: tuner without the ``ray`` extra imports this module
(its doctests), and ``tuner.launch.ray_backend._cluster`` wraps the classes with ``ray.remote``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import socket
import sys
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.core.errors import ConfigError, TunerError
from tuner.core.keys import EVENT
from tuner.core.redact import redact
from tuner.launch.events import WORKER_INDEX_ENV
from tuner.launch.worker_main import run_worker

if TYPE_CHECKING:
    from tuner.config.studyfile import StudyFile

__all__ = ["TunerEvents", "TunerWorker"]

# How often an actor's sender thread sends what its worker emitted; a trial's start and end go
# at once.
SEND_INTERVAL = 0.05
# How often an actor asks whether launch wants it to stop.
STOP_POLL = 0.5
# Events that launch acts on at once (a trial's start is what lets it fail the trial of an
# actor that dies).
_URGENT = frozenset({EVENT.START, EVENT.END, EVENT.DONE})


class TunerEvents:
    """The launch process's mailbox on the cluster: worker actors put their events here, launch
    drains them every turn of its loop and says here which workers should stop.

    Events are kept by worker key (one per actor, never reused): in the order each actor sent
    them, since Ray runs one caller's calls to an actor in order.

    >>> box = TunerEvents()
    >>> box.put(1, [{"event": "start", "number": 0}])
    >>> box.drain(), box.drain()
    ([(1, [{'event': 'start', 'number': 0}])], [])
    >>> box.stop(1); box.stopping(1), box.stopping(2)
    (True, False)
    """

    def __init__(self) -> None:
        self._events: list[tuple[int, list[dict[str, Any]]]] = []
        self._stop: set[int] = set()

    def put(self, key: int, events: list[dict[str, Any]]) -> None:
        if events:
            self._events.append((key, events))

    def drain(self) -> list[tuple[int, list[dict[str, Any]]]]:
        events, self._events = self._events, []
        return events

    def stop(self, key: int) -> None:
        self._stop.add(key)

    def stopping(self, key: int) -> bool:
        return key in self._stop


class TunerWorker:
    """One worker of ``tuner launch`` on a Ray cluster: :meth:`run` is the worker loop."""

    def run(
        self,
        study_file: StudyFile,
        *,
        key: int,
        index: int,
        events: Any,
        objective: str,
        deadline: float | None,
    ) -> dict[str, Any]:
        """Run trials until the study is done or launch says stop; what became of it.

        ``study_file`` is launch's, validated there (with ``${VAR}`` expanded and the CLI's
        overrides applied); ``objective`` names the objective inside this process's working
        directory, Ray's copy of the objective's folder. Returns ``{"reason": ...}`` (why the
        loop stopped), or ``{"error": ..., "exit_code": ...}`` for a TunerError (the objective
        cannot be loaded, the storage cannot be reached): launch reports it like a local
        worker's exit code.
        """

        # The loop numbers its sampler seed from this, as a local worker does.
        os.environ[WORKER_INDEX_ENV] = str(index)
        try:
            device, tag = _device()
        except TunerError as exc:
            return {"error": str(exc), "exit_code": exc.exit_code}
        study_file = study_file.model_copy(
            update={"objective": objective, "path": Path.cwd() / study_file.path.name}
            if study_file.path is not None
            else {"objective": objective}
        )
        sender = _EventSender(events, key)
        watch = _StopWatch(events, key)
        try:
            with _output_to(sender, secrets=(study_file.storage,)):
                watch.start()
                try:
                    reason = run_worker(
                        study_file, echo=lambda _: None, device=device, device_tag=tag,
                        deadline=deadline, events=sender,
                    )  # fmt: skip
                except KeyboardInterrupt:  # launch asked it to stop; the trial is recorded
                    return {"reason": "stopped"}
                except TunerError as exc:
                    return {"error": redact(str(exc)), "exit_code": exc.exit_code}
                return {"reason": reason}
        finally:
            watch.close()
            sender.close()

    def pid(self) -> int:
        return os.getpid()


def _device() -> tuple[str, str]:
    """The device the objective sees and the one recorded: the GPU Ray gave this actor (Ray
    sets ``CUDA_VISIBLE_DEVICES`` to it), else the CPU."""
    import ray

    gpus = ray.get_gpu_ids()
    if not gpus:
        return "cpu", "cpu"
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"Ray gave this worker GPU {gpus[0]} on {socket.gethostname()}, but torch there sees "
            f"no CUDA device (torch {torch.__version__})",
            hint="install a CUDA build of torch on the cluster's GPU nodes (see the README)",
        )
    return "cuda:0", f"cuda:{gpus[0]}"


class _EventSender:
    """The worker's event callable: a deque append, sent in batches by a daemon thread.

    :meth:`close` sends what is left and waits until ``TunerEvents`` has it all (Ray runs one
    caller's calls in order), so launch finds every event once :meth:`TunerWorker.run` returned.
    """

    def __init__(self, events: Any, key: int) -> None:
        self._events = events
        self._key = key
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="tuner-events", daemon=True)
        self._thread.start()

    def __call__(self, event: dict[str, Any]) -> None:
        self._queue.append(event)
        if event.get("event") in _URGENT:
            self._wake.set()

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(SEND_INTERVAL)
            self._wake.clear()
            self._send()

    def _send(self) -> None:
        batch = []
        while self._queue:
            batch.append(self._queue.popleft())
        if batch:
            self._events.put.remote(self._key, batch)

    def close(self, timeout: float = 30.0) -> None:
        import ray

        self._closed = True
        self._wake.set()
        self._thread.join()
        self._send()
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(self._events.put.remote(self._key, []), timeout=timeout)


class _StopWatch:
    """Stops the worker (SIGTERM to this process, handled by the worker loop) once launch asks,
    or once ``TunerEvents`` is gone: its launch is gone, and nothing would read the results."""

    def __init__(self, events: Any, key: int) -> None:
        self._events = events
        self._key = key
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tuner-stop-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        import ray

        while not self._done.wait(STOP_POLL):
            try:
                stop = ray.get(self._events.stopping.remote(self._key), timeout=30)
            except ray.exceptions.GetTimeoutError:
                continue  # a busy mailbox is not a stop
            except ray.exceptions.RayError:
                stop = True
            if stop:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    def close(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()


class _Lines(io.TextIOBase):
    """A text stream whose lines become ``output`` events: what the objective prints reaches
    launch, which shows it as ``[worker N] ...``, as a local worker's output. Passwords of
    ``secrets`` (URLs) are hidden wherever they appear in a line."""

    def __init__(self, send: _EventSender, secrets: tuple[str, ...] = ()) -> None:
        self._send = send
        self._secrets = secrets
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self._send({"event": EVENT.OUTPUT, "text": redact(line, *self._secrets)})
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._send({"event": EVENT.OUTPUT, "text": redact(self._pending, *self._secrets)})
            self._pending = ""


@contextlib.contextmanager
def _output_to(send: _EventSender, *, secrets: tuple[str, ...]) -> Iterator[None]:
    """Python's stdout, stderr and tuner's log lines as ``output`` events while the loop runs
    (Ray's own log streaming is off: launch shows its workers' output itself)."""
    stream = _Lines(send, secrets)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_RedactingFormatter("tuner: %(message)s"))
    logger = logging.getLogger("tuner")
    saved = (sys.stdout, sys.stderr, logger.level, logger.propagate)
    sys.stdout = sys.stderr = stream
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)  # as a local worker under launch (--quiet)
    logger.propagate = False
    try:
        yield
    finally:
        stream.flush()
        logger.removeHandler(handler)
        sys.stdout, sys.stderr, level, logger.propagate = saved
        logger.setLevel(level)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
