"""Connecting ``tuner launch`` to a Ray cluster, and what the study may ask of that cluster.

:meth:`RayCluster.connect` checks, before anything is written to the storage:

- Ray is installed (else a ConfigError naming the ``tuner[ray]`` extra);
- ``workers.count`` is set on a cluster without GPUs (its default is GPUs x ``per_device``);
- an SQLite storage is only used on a one-node cluster, with launch on that node: every actor
  is then pinned to it (a node that joins later gets none), since SQLite's file locks hold
  on one machine only.

It ships the objective's folder to the cluster as Ray's ``working_dir`` (study databases,
MLflow stores and caches left out), so a user's ``study.py`` needs no shared file system.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.config.objective_spec import is_file_spec, split_objective_spec
from tuner.core.errors import ConfigError, TunerError
from tuner.db.storage import dialect_of
from tuner.launch.slots import Slot

if TYPE_CHECKING:
    from tuner.config.studyfile import StudyFile

__all__ = ["WORKING_DIR_EXCLUDES", "RayCluster", "objective_folder"]

RAY_EXTRA_HINT = "pip install 'tuner[ray]'"
# The resource that marks a Ray cluster's head node in ray.nodes().
_HEAD = "node:__internal_head__"

# Left out of the objective's folder when Ray ships it (gitignore patterns, as Ray reads them):
# study databases and their lock files, local MLflow stores, caches and environments.
WORKING_DIR_EXCLUDES = [
    "*.db", "*.db-journal", "*.db-wal", "*.db-shm", "*.lock",
    "mlruns/", "mlartifacts/", "__pycache__/", ".git/", ".venv/", "venv/", ".tox/",
]  # fmt: skip


def require_ray() -> Any:
    """``import ray``, or the error a user without the extra sees."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "workers.backend: 'ray' needs Ray, but it is not installed",
            hint=f"{RAY_EXTRA_HINT}, or `backend: local` to run the workers on this machine",
        ) from None
    return ray


def objective_folder(study_file: StudyFile) -> tuple[Path, str]:
    """The folder to ship as Ray's ``working_dir``, and the objective spec inside it.

    A ``file.py:function`` objective ships its file's folder (its sibling modules and data come
    along) and is named by its file name there; a ``pkg.module:function`` objective ships the
    study file's folder, where a package next to the study file is found.

    >>> from types import SimpleNamespace
    >>> sf = SimpleNamespace(objective="models/net.py:objective", base_dir=Path("/s"))
    >>> objective_folder(sf)
    (PosixPath('/s/models'), 'net.py:objective')
    """
    target, attr = split_objective_spec(study_file.objective)
    if not is_file_spec(target):
        return study_file.base_dir, study_file.objective
    path = study_file.base_dir / Path(target).expanduser()
    return path.parent, f"{path.name}:{attr}"


_CONNECT_HINT = (
    "start a cluster with `ray start --head`, or set RAY_ADDRESS; a cluster with token "
    "authentication also needs RAY_AUTH_MODE=token and its token"
)
# How long a Ray address may take to accept a connection: ray.init itself retries for minutes.
CONNECT_TIMEOUT = 10.0


def _shown(address: str) -> str:
    env = os.environ.get("RAY_ADDRESS")
    return f"{env!r} (RAY_ADDRESS)" if address == "auto" and env else repr(address)


def _check_reachable(address: str) -> None:
    """A clear error at once when nothing answers at the address launch will connect to
    (``ray.init`` would retry for minutes): the ``host:port`` of ``address``, or of
    ``RAY_ADDRESS`` for ``auto``. Other forms (``local``, a cluster found on this machine)
    are left to Ray."""
    target = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    host, _, port = target.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise TunerError(
            f"workers.address: nothing answers at {_shown(address)} ({reason.lower()})",
            hint=_CONNECT_HINT,
        ) from None


@dataclass
class RayCluster:
    """Launch's connection to a Ray cluster: where the workers go and how they are placed.

    Made by :meth:`connect`; :meth:`close` disconnects (and stops a local cluster that
    ``ray.init`` started for this launch).
    """

    count: int
    options: dict[str, Any]  # the actor options of every worker (resources, placement)
    objective: str  # the objective spec inside the shipped folder
    runtime_env: dict[str, Any] | None  # per actor, when launch joined a Ray session already
    nodes: int
    cpus: float
    gpus: float
    address: str
    dashboard: str | None = None
    owns_connection: bool = True
    events_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def connect(cls, study_file: StudyFile) -> RayCluster:
        """Connect as ``workers.address`` says and check what the study asks of the cluster."""
        ray = require_ray()
        workers = study_file.workers
        folder, objective = objective_folder(study_file)
        runtime_env = {"working_dir": str(folder), "excludes": WORKING_DIR_EXCLUDES}
        owns = not ray.is_initialized()
        if owns:
            _check_reachable(workers.address)
            try:
                context = ray.init(
                    # auto: RAY_ADDRESS, else the cluster `ray start` left on this machine, else
                    # a new local one, stopped with this launch (Ray's own default).
                    address=None if workers.address == "auto" else workers.address,
                    runtime_env=runtime_env,
                    log_to_driver=False,  # launch relays its workers' output itself
                    logging_level=logging.WARNING,
                )
            except ConnectionError as exc:
                raise TunerError(
                    f"workers.address: cannot connect to Ray at {_shown(workers.address)}: {exc}",
                    hint=_CONNECT_HINT,
                ) from None
            except (RuntimeError, ValueError) as exc:  # e.g. the folder is too big to ship
                raise TunerError(
                    f"Ray refused to start launch's job (the objective's folder {folder} goes "
                    f"to the cluster as its working_dir): {exc}"
                ) from None
            address = context.address_info.get("gcs_address") or workers.address
            dashboard = context.dashboard_url or None
        else:
            address, dashboard = "the Ray session already open in this process", None
        try:
            cluster = cls._check(study_file, ray, objective, owns, address, dashboard)
        except BaseException:
            if owns:
                ray.shutdown()
            raise
        if not owns:
            cluster.runtime_env = runtime_env
        return cluster

    @classmethod
    def _check(
        cls,
        study_file: StudyFile,
        ray: Any,
        objective: str,
        owns: bool,
        address: str,
        dashboard: str | None,
    ) -> RayCluster:
        workers = study_file.workers
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        where = f"{len(nodes)} node{'s' * (len(nodes) != 1)}, {cpus:g} CPUs, {gpus:g} GPUs"
        if cpus < 1 and gpus < 1:
            raise ConfigError(
                "workers.backend: the Ray cluster must have a CPU or a GPU for the workers, but "
                f"it has {where}",
                hint="add a worker node to the cluster (`ray start --address ...`)",
            )
        count = workers.count
        if count is None:
            if gpus < 1:
                raise ConfigError(
                    "workers.count: is required on a Ray cluster without GPUs (it defaults to "
                    f"GPUs x per_device), but the study file does not set it (cluster: {where})",
                    hint=f"set workers.count, e.g. `count: {max(1, int(cpus))}` (one CPU each)",
                )
            count = int(gpus) * workers.per_device
        if gpus >= 1:
            options: dict[str, Any] = {"num_cpus": 0, "num_gpus": 1 / workers.per_device}
        else:
            options = {"num_cpus": 1}
        events_options: dict[str, Any] = {"num_cpus": 0}
        here = ray.get_runtime_context().get_node_id()
        if dialect_of(study_file.storage) == "sqlite":
            if len(nodes) > 1:
                raise ConfigError(
                    "storage: SQLite cannot be shared by the nodes of a Ray cluster (its file "
                    f"locks hold on one machine only), but the cluster has {where}",
                    hint="use PostgreSQL: `storage: postgresql://user:${TUNER_DB_PASSWORD}@host/db`"
                    " (see docker/README.md)",
                )
            if workers.address.startswith("ray://"):
                raise ConfigError(
                    "storage: SQLite is a file on this machine, which a cluster reached through "
                    f"Ray Client cannot open, but got workers.address {workers.address!r}",
                    hint="use PostgreSQL, or run launch on the cluster's head node",
                )
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if here and dialect_of(study_file.storage) == "sqlite":
            # Every worker on this node, the SQLite file's, whichever node joins later.
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(here, soft=False)
        # The mailbox on the head node, whose loss ends the cluster anyway, not on a worker node
        # that may be lost while the study goes on. (A soft affinity was placed elsewhere: tried.)
        head = next((n["NodeID"] for n in nodes if _HEAD in n.get("Resources", {})), here)
        if head:
            events_options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head, soft=False)
        return cls(
            count=count, options=options, objective=objective, runtime_env=None,
            nodes=len(nodes), cpus=cpus, gpus=gpus, address=address, dashboard=dashboard,
            owns_connection=owns, events_options=events_options,
        )  # fmt: skip

    @property
    def slots(self) -> list[Slot]:
        """One slot per worker: Ray decides the device when it places the actor."""
        return [Slot(device="ray", tag="ray")] * self.count

    def room(self) -> int:
        """How many workers the cluster runs at once, as it is now."""
        if "num_gpus" in self.options:
            return round(self.gpus / self.options["num_gpus"])
        return int(self.cpus)

    def describe(self) -> str:
        """What launch prints: the workers, their placement and the cluster."""
        share = self.options.get("num_gpus")
        each = "1 CPU" if share is None else "1 GPU" if share == 1 else f"1/{round(1 / share)} GPU"
        text = (
            f"{self.count} Ray actors, {each} each | Ray cluster {self.address}: {self.nodes} "
            f"node{'s' * (self.nodes != 1)}, {self.cpus:g} CPUs, {self.gpus:g} GPUs"
        )
        if self.dashboard:
            text += f" (dashboard {self.dashboard})"
        if self.count > self.room():
            text += f"; room for {self.room()} at once: the others wait for room"
        return text

    def close(self) -> None:
        """Disconnect, unless launch joined a Ray session it did not open."""
        import ray

        if self.owns_connection and ray.is_initialized():
            ray.shutdown()
