"""``workers.backend: ray``: ``tuner launch``'s workers as Ray actors on a Ray cluster.

The same worker loop as a local worker (:func:`tuner.launch.worker_main.run_worker`) runs in each
actor,
under the same supervision contract (docs/distribution.md): a dead actor costs one trial, recorded
failed with Ray's reason, and a new actor takes its place; ``budget.trial_timeout`` applies;
stopping launch stops every actor it started. Progress, the summary, the answer and MLflow are
fed by the same events as a local worker's, carried by an actor instead of a pipe.

- :mod:`tuner.launch.ray_backend._cluster`: connecting, placement, what a cluster may not run;
- :mod:`tuner.launch.ray_backend._actor`: the cluster's side (the worker actor, the events'
mailbox);
- :mod:`tuner.launch.ray_backend._supervisor`: launch's side,
:class:`tuner.launch.supervisor.Supervisor`
  with actors in place of processes.

Ray is an optional extra (``pip install 'tuner[ray]'``); nothing here imports it at module level.
"""

from __future__ import annotations

from tuner.launch.ray_backend._actor import TunerEvents, TunerWorker
from tuner.launch.ray_backend._cluster import RayCluster, objective_folder, require_ray
from tuner.launch.ray_backend._supervisor import RaySupervisor, death_reason

__all__ = [
    "RayCluster",
    "RaySupervisor",
    "TunerEvents",
    "TunerWorker",
    "death_reason",
    "objective_folder",
    "require_ray",
]
