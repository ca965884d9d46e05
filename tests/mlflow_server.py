"""A real ``mlflow server`` for tests: loopback, a free port, its own SQLite backend and artifacts.

``stop()`` and ``start()`` take the same server down and bring it back on the same port and
backend, so a fault test can cut the tracking server in the middle of a study; ``pause()`` and
``resume()`` (SIGSTOP, SIGCONT) make it hang instead.

    with MlflowServer(tmp_path) as server:
        client = MlflowClient(server.url)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

__all__ = ["MlflowServer", "free_port"]


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """An ``mlflow server`` subprocess; ``url`` is valid between ``start()`` and ``stop()``."""

    def __init__(self, root: Path, *, port: int | None = None, start_timeout: float = 120.0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.backend_db = self.root / "backend.db"
        self.artifacts = self.root / "artifacts"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self.root / "server.log"

    def start(self) -> None:
        """Start the server and wait until ``/health`` answers."""
        if self._proc is not None:
            return
        env = {
            **os.environ,
            # The job runner is a second heavy process the tests never use.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.backend_db}",
            "--artifacts-destination", str(self.artifacts),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", "1",
        ]  # fmt: skip
        with open(self._log, "ab") as log:
            # A new session: stop() signals the server's whole process group, and only it.
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited early:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {self.start_timeout}s:\n"
                           f"{self.log_tail()}")  # fmt: skip

    def healthy(self) -> bool:
        """True if the server answers ``/health`` right now."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1.0) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM to its process group, SIGKILL if it lingers)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        # The port must really be free before a restart binds it again.
        deadline = time.monotonic() + 10
        while self.healthy() and time.monotonic() < deadline:
            time.sleep(0.1)

    def pause(self) -> None:
        """SIGSTOP the server: it keeps its port and accepts connections, but answers nothing
        (a hung server), until :meth:`resume`."""
        assert self._proc is not None, "the server is not running"
        os.killpg(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGCONT)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return self._log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
