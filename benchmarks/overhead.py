"""Per-trial overhead of tuner against raw Optuna, on a no-op objective, in one run.

The arms search the same conditional space with the same seeded sampler settings on the same
storage kind (a fresh SQLite file per study):

- ``raw``: the space written by hand with Optuna's ``suggest_*`` calls, run by
  ``study.optimize``; parameter names, ranges and order exactly those of
  ``tuner.config.space.sample_config`` (checked after each round: both studies must hold the same
  distributions), and TPE with tuner's settings (``tuner.sampling.sampler.tpe_defaults``:
  multivariate,
  grouped, constant liar, the budget's startup count);
- ``tuner``: a study file driven through tuner's real path, ``open_session`` and the ``Worker``
  loop that ``tuner launch`` and ``tuner worker`` run (budget lock and counts, heartbeats,
  trial records), MLflow tracking off, and the range test and portfolio off (a no-op objective
  cannot be probed, and the portfolio's enqueued trials are not sampled: neither is machinery
  per trial);
- ``raw-default``: the raw arm with Optuna's default ``TPESampler(seed=0)``. It is not part of
  the target: ``raw`` / ``raw-default`` is the price of tuner's sampler settings themselves,
  printed on its own line.

The machine is shared and its load swings by 2x within a minute, so the arms run in lockstep:
one tuner trial, then one trial of each raw arm, and so on, each timed on its own; noise lands
on every arm alike. A round is a fresh set of studies; setup (creating the storage) is left out
of the per-trial figures. Target: tuner/raw <= 1.15 (tuner's machinery, like for like).

    python benchmarks/overhead.py [--trials 300] [--rounds 2] [--raw-wal]
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna

from benchmarks._study import write_study
from tuner.config.studyfile import load_study_file
from tuner.db.session import open_session
from tuner.sampling.sampler import tpe_defaults
from tuner.worker.runner import Worker

TARGET = 1.15


def raw_objective(trial: optuna.Trial) -> float:
    """SEARCH written by hand, as ``sample_config`` suggests it (same names, ranges, order)."""
    optimizer = trial.suggest_categorical("optimizer", ["adamw", "sgd", "nesterov"])
    if optimizer == "adamw":
        trial.suggest_float("adamw.lr", 1e-5, 1e-1, log=True)
        trial.suggest_float("adamw.beta1.one_minus", 1 - 0.98, 1 - 0.5, log=True)
        trial.suggest_float("adamw.beta2.one_minus", 1 - 0.9999, 1 - 0.9, log=True)
        trial.suggest_float("adamw.eps", 1e-10, 1e-2, log=True)
        if not trial.suggest_categorical("adamw.weight_decay_is_zero", [False, True]):
            trial.suggest_float("adamw.weight_decay", 5e-3, 1.0, log=True)
        trial.suggest_categorical("adamw.amsgrad", [False, True])
    elif optimizer == "sgd":
        trial.suggest_float("sgd.lr", 1e-4, 1.0, log=True)
        if not trial.suggest_categorical("sgd.weight_decay_is_zero", [False, True]):
            trial.suggest_float("sgd.weight_decay", 1e-7, 1e-3, log=True)
    else:
        trial.suggest_float("nesterov.lr", 1e-3, 5.0, log=True)
        trial.suggest_float("nesterov.momentum.one_minus", 1 - 0.995, 1 - 0.7, log=True)
        if not trial.suggest_categorical("nesterov.weight_decay_is_zero", [False, True]):
            trial.suggest_float("nesterov.weight_decay", 1e-7, 1e-3, log=True)
    schedule = trial.suggest_categorical("schedule", ["constant", "cosine", "step"])
    if schedule == "cosine":
        if not trial.suggest_categorical("schedule.cosine.final_lr_ratio_is_zero", [False, True]):
            trial.suggest_float("schedule.cosine.final_lr_ratio", 1e-3, 1e-1, log=True)
    elif schedule == "step":
        trial.suggest_float("schedule.step.gamma", 0.05, 0.5, log=True)
    trial.suggest_float("warmup.fraction", 0.0, 0.1)
    return 0.0


def write_study_file(workdir: Path, trials: int) -> Path:
    return write_study(
        workdir,
        name="tuner",
        storage=f"sqlite:///{workdir / 'tuner.db'}",
        trials=trials,
        objective="def objective(trial):\n    return 0.0\n",
        search={"lr_range_test": "off", "portfolio": False},
    )


class Lockstep:
    """Both arms in one process, one trial each in turn: tuner's worker loop drives, and after
    each of its trials (``on_trial_end``) one raw-Optuna trial runs. Load on the machine then
    lands on both arms alike, trial by trial, however it varies."""

    def __init__(self, raw_study: optuna.Study, default_study: optuna.Study) -> None:
        self.raw_study = raw_study
        self.default_study = default_study
        self.raw_s: list[float] = []
        self.default_s: list[float] = []
        self.tuner_s: list[float] = []
        self.mark = time.perf_counter()

    def after_tuner_trial(self, result: object) -> None:
        now = time.perf_counter()
        self.tuner_s.append(now - self.mark)
        self.raw_study.optimize(raw_objective, n_trials=1)
        mid = time.perf_counter()
        self.raw_s.append(mid - now)
        self.default_study.optimize(raw_objective, n_trials=1)
        self.mark = time.perf_counter()
        self.default_s.append(self.mark - mid)


def run_round(workdir: Path, trials: int, *, raw_wal: bool = False) -> Lockstep:
    """One fresh raw study and one fresh tuner study of ``trials`` trials each, in lockstep.

    tuner keeps SQLite studies in write-ahead-log mode; with ``raw_wal`` raw Optuna's file is
    put in that mode too, so that the ratio isolates tuner's own code from the journal mode.
    """
    from tuner.worker.objective import load_objective

    studies = []
    for name, sampler in (
        ("raw", optuna.samplers.TPESampler(seed=0, **tpe_defaults(trials))),
        ("raw-default", optuna.samplers.TPESampler(seed=0)),
    ):
        if raw_wal:
            with sqlite3.connect(workdir / f"{name}.db") as conn:
                conn.execute("PRAGMA journal_mode=WAL")
        studies.append(
            optuna.create_study(
                storage=f"sqlite:///{workdir / f'{name}.db'}", study_name=name, sampler=sampler
            )
        )
    raw_study, default_study = studies
    study_file = load_study_file(write_study_file(workdir, trials))
    objective = load_objective(study_file.objective, base_dir=study_file.path.parent)
    session = open_session(study_file)
    study, tracker = session.study, session.tracker
    steps = Lockstep(raw_study, default_study)
    worker = Worker(
        study_file, study, objective, tracker, device="cpu", on_trial_end=steps.after_tuner_trial
    )
    try:
        steps.mark = time.perf_counter()
        reason = worker.run()
    finally:
        tracker.close(timeout=30.0)
    assert reason == "budget", reason
    check_same_space(raw_study, study)
    check_same_space(default_study, study)
    return steps


def check_same_space(raw: optuna.Study, tuned: optuna.Study) -> None:
    """Both arms must have searched the same parameters with the same distributions."""
    raw_dists: dict[str, object] = {}
    tuner_dists: dict[str, object] = {}
    for t in raw.trials:
        raw_dists.update(t.distributions)
    for t in tuned.trials:
        tuner_dists.update(t.distributions)
    if raw_dists != tuner_dists:
        diff = set(raw_dists.items()) ^ set(tuner_dists.items())
        raise SystemExit(f"the arms searched different spaces: {sorted(map(str, diff))}")
    finished = [t for t in tuned.trials if t.state.is_finished()]
    if len(finished) != len(raw.trials):
        raise SystemExit(f"tuner ran {len(finished)} trials, raw Optuna {len(raw.trials)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300, help="trials per study (300)")
    parser.add_argument("--rounds", type=int, default=2, help="fresh study pairs (2)")
    parser.add_argument(
        "--raw-wal",
        action="store_true",
        help="put raw Optuna's SQLite file in WAL mode too (tuner uses WAL): tuner's code alone",
    )
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("tuner").setLevel(logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)

    print(
        f"no-op objective, TPE(seed=0) with tuner's settings in both arms (raw-default: Optuna's "
        f"default TPE), a fresh SQLite file per study, {args.trials} trials per "
        f"study, {args.rounds} rounds, arms in lockstep (one trial each in turn); raw Optuna's "
        f"journal: {'WAL, as tuner' if args.raw_wal else 'SQLite default (tuner: WAL)'}"
    )
    raw_all: list[float] = []
    default_all: list[float] = []
    tuner_all: list[float] = []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
            steps = run_round(Path(tmp), args.trials, raw_wal=args.raw_wal)
        raw_all += steps.raw_s
        default_all += steps.default_s
        tuner_all += steps.tuner_s
        raw_ms = sum(steps.raw_s) / len(steps.raw_s) * 1000
        tuner_ms = sum(steps.tuner_s) / len(steps.tuner_s) * 1000
        print(
            f"round {r + 1}: raw {raw_ms:7.2f} ms/trial  tuner {tuner_ms:7.2f} ms/trial  "
            f"tuner/raw {tuner_ms / raw_ms:.3f}"
        )

    raw_ms = statistics.fmean(raw_all) * 1000
    tuner_ms = statistics.fmean(tuner_all) * 1000
    paired = statistics.median(t / r for t, r in zip(tuner_all, raw_all, strict=True))
    print()
    print(f"{'arm':<6} {'mean ms/trial':>14} {'median':>8}")
    print(f"{'raw':<6} {raw_ms:14.2f} {statistics.median(raw_all) * 1000:8.2f}")
    print(f"{'tuner':<6} {tuner_ms:14.2f} {statistics.median(tuner_all) * 1000:8.2f}")
    default_ms = statistics.fmean(default_all) * 1000
    print(f"{'raw-default':<6} {default_ms:9.2f} {statistics.median(default_all) * 1000:8.2f}")
    ratio = tuner_ms / raw_ms
    verdict = "meets" if ratio <= TARGET else "misses"
    print(
        f"\ntuner/raw = {ratio:.3f} (total time; median of per-trial pairs {paired:.3f}); "
        f"target <= {TARGET}: {verdict}"
    )
    print(
        f"sampler settings alone: raw (tuner's TPE settings) / raw-default (Optuna's default "
        f"TPE) = {raw_ms / default_ms:.3f} (not part of the target)"
    )


if __name__ == "__main__":
    main()
