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

    python benchmarks/scaling.py [--quick] [--workers 1 4 16] [--window 20] [--trials 2000]
                                 [--sampler tpe|random] [--skip throughput|growth]
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
from optuna.trial import TrialState

from benchmarks._study import write_study
from tests.pgutil import fresh_postgres_database, postgres_unavailable_reason
from tuner.session import open_study
from tuner.storage import open_storage
from tuner.studyfile import load_study_file

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
    import tuner.runner
    import tuner.space
    from tuner.launch import open_session
    from tuner.objective import load_objective
    from tuner.runner import Worker

    print(f"\n== per-trial time as the study grows: no-op objective, TPE, {trials} trials")
    timers = Timers()
    undo = [
        timers.wrap(tuner.space, "sample_config", "sampler"),
        timers.wrap(optuna.samplers.TPESampler, "sample_independent", "tpe"),
        timers.wrap(optuna.Study, "ask", "ask_tell"),
        timers.wrap(tuner.runner, "tell", "ask_tell"),
        # tuner's own database work, timed directly: the budget counts and the trial records.
        timers.wrap(tuner.runner, "budget_counts", "own_sql"),
        timers.wrap(tuner.runner, "set_user_attrs", "own_sql"),
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
            study, tracker = open_session(study_file)
            worker = Worker(study_file, study, objective, tracker, on_trial_end=trial_ended)
            mark = time.perf_counter()
            worker.run()
            tracker.close(timeout=10.0)
    finally:
        for restore in undo:
            restore()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 4 workers, 500 trials")
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts (1 4 16)")
    parser.add_argument("--window", type=float, help="steady-state seconds per count (20)")
    parser.add_argument("--trials", type=int, help="trials of the growth study (2000)")
    parser.add_argument("--skip", choices=("throughput", "growth"), help="leave a part out")
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
    if args.skip != "throughput":
        run_throughput(workers, window, args.sampler)
    if args.skip != "growth":
        run_growth(trials)


if __name__ == "__main__":
    main()
