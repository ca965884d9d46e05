"""The study file the overhead and scaling benchmarks run: one search space, one writer."""

from __future__ import annotations

from pathlib import Path

import yaml

# Three optimizers with their catalog ranges, three schedules, a searched warmup fraction.
SEARCH = {
    "optimizers": {"adamw": {}, "sgd": {}, "nesterov": {}},
    "schedules": ["constant", "cosine", "step"],
    "warmup": {"fraction": {"low": 0.0, "high": 0.1}},
}


def write_study(
    workdir: Path,
    *,
    name: str,
    storage: str,
    trials: int,
    objective: str,
    sampler: str = "tpe",
    search: dict | None = None,
) -> Path:
    """Write ``obj.py`` (``objective``, the module's source) and ``study.yaml``; return its path.

    Tracking is off and the pruner none: the benchmarks measure the runner and the storage.
    """
    (workdir / "obj.py").write_text(objective)
    doc = {
        "name": name,
        "objective": "obj.py:objective",
        "direction": "minimize",
        "metric": "loss",
        "budget": {"trials": trials, "epochs": 1},
        "storage": storage,
        "sampler": {"name": sampler, "seed": 0},
        "pruner": {"name": "none"},
        "search": {**SEARCH, **(search or {})},
        "mlflow": {"tracking_uri": "off"},
        "workers": {"devices": ["cpu"]},
    }
    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
