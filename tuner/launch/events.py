"""The stream a worker reports on to the process that supervises it: one JSON line per event
(trial start, step, end, a tracking record, done), and the environment variable that gives a
supervised worker its index (docs/distribution.md)."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from typing import Any

from tuner.core.keys import EVENT

__all__ = ["WORKER_INDEX_ENV", "EventWriter"]

# Each worker learns its slot number (0, 1, ...) from this variable; a replacement keeps the
# number of the worker it replaces.
WORKER_INDEX_ENV = "TUNER_WORKER_INDEX"


class EventWriter:
    """The worker's end of its event pipe: one JSON line per event.

    A step event that does not fit in the pipe right now is dropped (the next one says more);
    a start or end event waits up to a second; a tracking record (tuner.tracking._relay) waits
    for room as long as the supervisor reads, since nothing else would deliver it. A supervisor
    that is gone is ignored: the worker's watchdog notices it and stops the worker.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        data = (json.dumps(event, default=str) + "\n").encode()
        kind = event.get("event")
        patience = 0.0 if kind == EVENT.STEP else math.inf if kind == EVENT.TRACK else 1.0
        give_up = time.monotonic() + patience
        with self._lock:
            while data:
                try:
                    data = data[os.write(self.fd, data) :]
                except BlockingIOError:
                    if time.monotonic() >= give_up:
                        return
                    time.sleep(0.005)
                except OSError:  # the supervisor is gone
                    return
