"""Micro-benchmark: the in-process cost of one ``report`` (``TrialRecorder.log``), p50 and p99.

Measured against a local SQLite MLflow store and a real ``mlflow server`` on loopback, with the
background flusher sending meanwhile (the cost a training loop pays), next to one synchronous
``MlflowClient.log_metric`` per report (what logging on the training path would cost).

    python benchmarks/tracking_report_cost.py [--trials 20] [--reports 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow import MlflowClient

from tests.mlflow_server import MlflowServer
from tuner.tracking import MlflowTracker


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(uri: str, trials: int, reports: int) -> dict[str, float]:
    """Per-report cost (seconds) through the tracker, plus one synchronous log_metric baseline."""
    tracker = MlflowTracker(uri, experiment=f"bench-{time.time_ns()}")
    tracker.open_study(
        study_name="bench",
        experiment=tracker.experiment,
        study_yaml_text="name: bench\n",
        tags={},
        existing_parent_run_id=None,
    )
    costs: list[float] = []
    t_study = time.perf_counter()
    for number in range(trials):
        recorder = tracker.start_trial(number=number, params={"lr": 0.1}, tags={})
        for step in range(reports):
            t0 = time.perf_counter()
            recorder.log({"val_accuracy": step / reports, "lr": 0.1}, step=step)
            costs.append(time.perf_counter() - t0)
            time.sleep(0.0005)  # a sliver of "training" so the flusher runs concurrently
        recorder.finish("complete")
        tracker.flush(30.0)
    wall = time.perf_counter() - t_study
    tracker.close()

    client = MlflowClient(uri)
    run_id = recorder.run_id
    assert run_id is not None
    sync: list[float] = []
    for step in range(30):
        t0 = time.perf_counter()
        client.log_metric(run_id, "sync_metric", float(step), step=step)
        sync.append(time.perf_counter() - t0)
    return {
        "p50": statistics.median(costs),
        "p99": _pct(costs, 0.99),
        "max": max(costs),
        "sync_p50": statistics.median(sync),
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--reports", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        results = {"sqlite store": measure(f"sqlite:///{tmp}/mlflow.db", args.trials, args.reports)}
        with MlflowServer(Path(tmp) / "server") as server:
            results["mlflow server"] = measure(server.url, args.trials, args.reports)
    print(f"{args.trials} trials x {args.reports} reports each")
    print(f"{'backend':<14} {'p50 us':>8} {'p99 us':>8} {'max ms':>8} {'sync log_metric ms':>19}")
    for name, r in results.items():
        print(
            f"{name:<14} {r['p50'] * 1e6:8.1f} {r['p99'] * 1e6:8.1f} {r['max'] * 1e3:8.2f} "
            f"{r['sync_p50'] * 1e3:19.1f}"
        )


if __name__ == "__main__":
    main()
