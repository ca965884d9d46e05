"""How tuner scales: worker throughput on PostgreSQL, and per-trial overhead as a study grows.

1. Throughput. ``tuner worker`` processes (1, 4 and 16) share one study in a fresh PostgreSQL
   database; each trial sleeps 2 s, so what is measured is coordination (budget lock, counts,
   ask/tell, heartbeats, sampling), not compute. Start-up is left out: measurement begins once
   every worker has finished a trial, and each worker's rate is (completions - 1) / (time from
   its first to its last completion inside the window); throughput is the sum over workers. The
   ideal for N workers is N x the one-worker rate (measured first and again last, averaged, so
   that drift in the machine's load shows). Target: at least 0.9 of ideal at 16 workers.

2. Growth. One worker in this process runs a no-op objective with TPE for ``--trials`` trials
   (fresh PostgreSQL database). Each trial's time is split into the sampler's part (inside
   ``sample_config``: TPE's own computation plus the writes of the suggested parameters),
   Optuna's ``ask``/``tell``, and the rest, tuner's own code (budget lock and counts, heartbeat
   and records, seeding), reported around trials 100, 500, 1000 and 2000. tuner's own part must
   stay flat: it counts trials in SQL and never loads them.

3. Backends. ``tuner launch`` runs the same two studies, a no-op objective and 2-second trials
   (random sampler, no range test, portfolio or replicates: trials only), first with
   ``--backend-workers`` local worker processes, then with as many Ray actors
   (``workers.backend: ray``) on a local Ray cluster, each in a fresh PostgreSQL database.
   Per run: the time from launch's start to its first trial (Ray's includes connecting to the
   cluster, shipping the objective's folder and starting the actors), the steady rate in trials
   per minute (from the moment every worker has finished a trial, summed over workers, as in
   part 1) and the wall time. Starting the Ray cluster itself, which a user does once, is shown
   on its own line and is in none of the figures. Needs Ray (``pip install -e '.[ray]'``).

    python benchmarks/scaling.py [--quick] [--workers 1 4 16] [--window 20] [--trials 2000]
                                 [--sampler tpe|random] [--skip throughput|growth|backends ...]
                                 [--backend-workers 3] [--noop-trials 300]
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
import yaml
from optuna.trial import TrialState

from benchmarks._study import write_study
from tests.pgutil import fresh_postgres_database, postgres_unavailable_reason
from tuner.config.studyfile import load_study_file
from tuner.db.session import open_study
from tuner.db.storage import open_storage

TARGET = 0.9
SLEEP_S = 2.0


def write_scaling_study(
    workdir: Path, url: str, *, trials: int, sleep_s: float, sampler: str = "tpe"
) -> Path:
    objective = (
        f"import time\n\ndef objective(trial):\n    time.sleep({sleep_s!r})\n    return 0.0\n"
    )
    return write_study(
        workdir, name="scaling", storage=url, trials=trials, objective=objective, sampler=sampler
    )


# --- 1. throughput ----------------------------------------------------------------------------


def completions_by_worker(url: str) -> dict[str, list[datetime]]:
    try:
        study = optuna.load_study(study_name="scaling", storage=url)
    except KeyError:  # no worker has created the study yet
        return {}
    out: dict[str, list[datetime]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        assert t.datetime_complete is not None
        out.setdefault(t.user_attrs["tuner:worker"], []).append(t.datetime_complete)
    return {w: sorted(times) for w, times in out.items()}


def throughput(n_workers: int, window_s: float, sampler: str) -> dict[str, float]:
    """Trials per second of ``n_workers`` worker processes in their steady state."""
    with fresh_postgres_database("tuner_bench") as url, tempfile.TemporaryDirectory() as tmp:
        path = write_scaling_study(Path(tmp), url, trials=100_000, sleep_s=SLEEP_S, sampler=sampler)
        # Tables and study first: workers that all create the schema of an empty database at
        # once can collide in PostgreSQL's catalog (a known race of concurrent CREATE TABLE).
        study_file = load_study_file(path)
        open_study(study_file, open_storage(study_file.storage))
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "tuner", "worker", str(path), "--quiet"],
                cwd=tmp,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(n_workers)
        ]
        try:
            started = time.monotonic()
            while True:  # steady state: every worker has finished a trial
                time.sleep(0.5)
                done = completions_by_worker(url)
                if len(done) >= n_workers:
                    break
                if any(p.poll() is not None for p in procs):
                    raise SystemExit(f"a worker exited early: {procs[0].stderr.read()[-2000:]}")
                if time.monotonic() - started > 300:
                    raise SystemExit(f"only {len(done)} of {n_workers} workers got going in 300 s")
            t0 = max(times[0] for times in done.values())
            time.sleep(window_s)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(timeout=120)
        done = completions_by_worker(url)
    t_end = max(times[-1] for times in done.values())
    rates = []
    in_window = 0
    for times in done.values():
        mine = [c for c in times if c >= t0]
        in_window += sum(1 for c in mine if c > t0)
        if len(mine) >= 2:
            rates.append((len(mine) - 1) / (mine[-1] - mine[0]).total_seconds())
    cycle = statistics.mean(1 / r for r in rates) if rates else float("nan")
    return {
        "rate": sum(rates),
        "window_rate": in_window / max(1e-9, (t_end - t0).total_seconds()),
        "cycle_s": cycle,
        "measured": float(len(rates)),
        "trials": float(sum(len(v) for v in done.values())),
    }


def run_throughput(workers: list[int], window_s: float, sampler: str) -> None:
    print(
        f"\n== throughput: trials sleep {SLEEP_S:g} s, {sampler} sampler, PostgreSQL, "
        f"steady state {window_s:g} s"
    )
    order = [1, *[n for n in workers if n != 1], 1]
    results: dict[int, list[dict[str, float]]] = {}
    for n in order:
        r = throughput(n, window_s, sampler)
        results.setdefault(n, []).append(r)
        print(
            f"  {n:>2} workers: {r['rate']:.3f} trials/s (window count {r['window_rate']:.3f}), "
            f"mean cycle {r['cycle_s']:.3f} s per trial, {r['measured']:.0f} workers measured"
        )
    one = statistics.mean(r["rate"] for r in results[1])
    print(f"\n  one worker: {one:.3f} trials/s (ideal cycle {SLEEP_S:g} s -> {1 / SLEEP_S:.3f})")
    print(f"  {'workers':>7} {'trials/s':>9} {'ideal':>7} {'of ideal':>9}")
    for n in workers:
        rate = statistics.mean(r["rate"] for r in results[n])
        fraction = rate / (n * one)
        print(f"  {n:>7} {rate:9.3f} {n * one:7.3f} {fraction:9.3f}")
    top = max(workers)
    fraction = statistics.mean(r["rate"] for r in results[top]) / (top * one)
    verdict = "meets" if fraction >= TARGET else "misses"
    print(f"  at {top} workers: {fraction:.3f} of ideal (target >= {TARGET}: {verdict})")


# --- 2. growth --------------------------------------------------------------------------------


class Timers:
    """Seconds spent inside wrapped functions, per trial."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}

    def wrap(self, owner: Any, name: str, label: str) -> Callable[[], None]:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                self.current[label] = self.current.get(label, 0.0) + elapsed

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, original)


def checkpoints(trials: int) -> tuple[int, ...]:
    """Trial numbers to report: 100, 500, 1000, 2000 as far as the study goes, and its end."""
    points = [c for c in (100, 500, 1000, 2000) if c < trials]
    return (*points, trials)


def run_growth(trials: int) -> None:
    import tuner.config.space
    import tuner.worker.runner
    from tuner.db.session import open_session
    from tuner.worker.objective import load_objective
    from tuner.worker.runner import Worker

    print(f"\n== per-trial time as the study grows: no-op objective, TPE, {trials} trials")
    timers = Timers()
    undo = [
        timers.wrap(tuner.config.space, "sample_config", "sampler"),
        timers.wrap(optuna.samplers.TPESampler, "sample_independent", "tpe"),
        timers.wrap(optuna.Study, "ask", "ask_tell"),
        timers.wrap(tuner.worker.runner, "tell", "ask_tell"),
        # tuner's own database work, timed directly: the budget counts and the trial records.
        timers.wrap(tuner.worker.runner, "budget_counts", "own_sql"),
        timers.wrap(tuner.worker.runner, "set_user_attrs", "own_sql"),
    ]
    rows: list[dict[str, float]] = []
    mark = time.perf_counter()
    half = 10
    # Each point's figures print as soon as its window (trials point-10 .. point+9) is done,
    # so a run cut short still reports the points it reached.
    points = {min(p + half, trials): p for p in checkpoints(trials)}
    print(
        f"  ms per trial, mean of trials around each point (+-{half}); sampler = inside "
        "sample_config (TPE + writes of its parameters), (TPE) = TPE's computation, tuner = "
        "the rest of the loop (budget lock and counts, heartbeat, records, seeding; also garbage "
        "collection and noise), (own SQL) = tuner's counting and record writes, timed directly"
    )
    print(
        f"  {'trial':>6} {'total':>8} {'sampler':>8} {'(TPE)':>8} {'ask+tell':>9} {'tuner':>8} "
        f"{'(own SQL)':>9}"
    )

    def trial_ended(result: object) -> None:
        nonlocal mark
        now = time.perf_counter()
        row = {"total": now - mark, **timers.current}
        row["tuner"] = row["total"] - row.get("sampler", 0.0) - row.get("ask_tell", 0.0)
        rows.append(row)
        if len(rows) in points:
            window = rows[-2 * half :]

            def mean(key: str) -> float:
                return statistics.mean(r.get(key, 0.0) for r in window) * 1000

            print(
                f"  {points[len(rows)]:>6} {mean('total'):8.2f} {mean('sampler'):8.2f} "
                f"{mean('tpe'):8.2f} {mean('ask_tell'):9.2f} {mean('tuner'):8.2f} "
                f"{mean('own_sql'):9.2f}",
                flush=True,
            )
        timers.current = {}
        mark = time.perf_counter()

    try:
        with fresh_postgres_database("tuner_bench") as url, tempfile.TemporaryDirectory() as tmp:
            study_file = load_study_file(
                write_scaling_study(Path(tmp), url, trials=trials, sleep_s=0)
            )
            objective = load_objective(study_file.objective, base_dir=study_file.path.parent)
            session = open_session(study_file)
            study, tracker = session.study, session.tracker
            worker = Worker(study_file, study, objective, tracker, on_trial_end=trial_ended)
            mark = time.perf_counter()
            worker.run()
            tracker.close(timeout=10.0)
    finally:
        for restore in undo:
            restore()


# --- 3. launch backends: local worker processes and Ray actors --------------------------------


def steady_rate(done: dict[str, list[datetime]]) -> float:
    """Trials per second summed over workers, from when every worker has finished a trial."""
    t0 = max(times[0] for times in done.values())
    rate = 0.0
    for times in done.values():
        mine = [c for c in times if c >= t0]
        if len(mine) >= 2:
            rate += (len(mine) - 1) / (mine[-1] - mine[0]).total_seconds()
    return rate


def launch_once(
    backend: str, n_workers: int, trials: int, sleep_s: float, env: dict[str, str]
) -> dict[str, float]:
    """One ``tuner launch`` of a fresh study; its start-up, steady rate and wall time."""
    with fresh_postgres_database("tuner_bench") as url, tempfile.TemporaryDirectory() as tmp:
        path = write_scaling_study(Path(tmp), url, trials=trials, sleep_s=sleep_s, sampler="random")
        doc = yaml.safe_load(path.read_text())
        doc["search"] = {**doc["search"], "lr_range_test": "off", "portfolio": False}
        doc["compare"] = {"seeds": 0}
        doc["workers"] = (
            {"backend": "ray", "count": n_workers}
            if backend == "ray"
            else {"devices": ["cpu"], "per_device": n_workers}
        )
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        started = datetime.now()
        done = subprocess.run(
            [sys.executable, "-m", "tuner", "launch", str(path), "--quiet"],
            cwd=tmp, env=env, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        wall = (datetime.now() - started).total_seconds()
        if done.returncode != 0:
            raise SystemExit(f"{backend} launch failed:\n{done.stderr[-3000:]}")
        study = optuna.load_study(study_name="scaling", storage=url)
        trials_run = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        first = min(t.datetime_start for t in trials_run if t.datetime_start is not None)
        by_worker = completions_by_worker(url)
    return {
        "first_s": (first - started).total_seconds(),
        "per_min": steady_rate(by_worker) * 60,
        "wall_s": wall,
        "trials": float(len(trials_run)),
        "workers": float(len(by_worker)),
    }


def run_backends(n_workers: int, noop_trials: int, sleep_trials: int) -> None:
    try:
        from ray.cluster_utils import Cluster
    except ImportError:
        raise SystemExit("part 3 needs Ray: pip install -e '.[ray]' (or --skip backends)") from None

    print(
        f"\n== launch backends: {n_workers} local worker processes vs {n_workers} Ray actors, "
        "PostgreSQL, tuner launch --quiet"
    )
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a throwaway cluster on this machine
    started = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": n_workers})
    print(
        f"  Ray cluster start (once per cluster, in no figure below): "
        f"{time.perf_counter() - started:.1f} s ({n_workers} CPUs, one node)"
    )
    ray_env = {**os.environ, "RAY_ADDRESS": cluster.address}
    studies = [("no-op", noop_trials, 0.0), (f"{SLEEP_S:g} s trials", sleep_trials, SLEEP_S)]
    print(
        f"  {'study':<12} {'backend':<7} {'trials':>6} {'to 1st trial':>12} "
        f"{'trials/min':>10} {'wall':>7}"
    )
    try:
        for label, trials, sleep_s in studies:
            rows = {}
            for backend, env in (("local", dict(os.environ)), ("ray", ray_env)):
                r = launch_once(backend, n_workers, trials, sleep_s, env)
                rows[backend] = r
                print(
                    f"  {label:<12} {backend:<7} {r['trials']:>6.0f} {r['first_s']:>10.1f} s "
                    f"{r['per_min']:>10.1f} {r['wall_s']:>5.1f} s",
                    flush=True,
                )
            ratio = rows["ray"]["per_min"] / rows["local"]["per_min"]
            print(f"  {'':<12} ray / local trials per minute: {ratio:.2f}")
    finally:
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 4 workers, 500 trials")
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts (1 4 16)")
    parser.add_argument("--window", type=float, help="steady-state seconds per count (20)")
    parser.add_argument("--trials", type=int, help="trials of the growth study (2000)")
    parser.add_argument(
        "--skip", action="append", choices=("throughput", "growth", "backends"), default=[],
        help="leave a part out (repeatable)",
    )  # fmt: skip
    parser.add_argument("--backend-workers", type=int, default=3, help="part 3's workers (3)")
    parser.add_argument("--noop-trials", type=int, help="part 3's no-op study (300; quick 100)")
    parser.add_argument(
        "--sampler",
        default="tpe",
        help="sampler of the throughput study (tpe); random takes the sampler's growth out",
    )
    args = parser.parse_args()
    workers = args.workers or ([1, 4] if args.quick else [1, 4, 16])
    window = args.window or (10.0 if args.quick else 20.0)
    trials = args.trials or (500 if args.quick else 2000)

    reason = postgres_unavailable_reason()
    if reason is not None:
        raise SystemExit(reason)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("tuner").setLevel(logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    if "throughput" not in args.skip:
        run_throughput(workers, window, args.sampler)
    if "growth" not in args.skip:
        run_growth(trials)
    if "backends" not in args.skip:
        noop = args.noop_trials or (100 if args.quick else 300)
        per_worker = 3 if args.quick else 6  # 2-second trials per worker
        run_backends(args.backend_workers, noop, per_worker * args.backend_workers)


if __name__ == "__main__":
    main()
