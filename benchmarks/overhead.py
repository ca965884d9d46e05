"""Per-trial overhead of tuner against raw Optuna, on a no-op objective, in one run.

Both arms search the same conditional space with the same seeded TPE sampler on the same
storage kind (a fresh SQLite file per study):

- ``raw``: the space written by hand with Optuna's ``suggest_*`` calls and ``study.optimize``,
  the parameter names and ranges exactly those ``tuner.space.sample_config`` uses;
- ``tuner``: a study file driven through tuner's real path (``open_session`` and the
  ``Worker`` loop that ``tuner launch`` and ``tuner worker`` run: budget lock, counts,
  heartbeats, outcome records), MLflow tracking off;
- ``launch`` (with ``--launch``): ``tuner.launch.launch`` itself, progress lines included.

The arms alternate round by round so that the noise of a shared machine hits them alike; each
round is a whole fresh study (storage creation included, amortized over the trials). The ratio
is that of the per-arm medians. Target: tuner/raw <= 1.15.

    python benchmarks/overhead.py [--trials 300] [--rounds 3] [--launch]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
import yaml

from tuner.launch import open_session
from tuner.runner import Worker
from tuner.studyfile import load_study_file

TARGET = 1.15

# The search section both arms explore: three optimizers with their catalog ranges, three
# schedules, a searched warmup fraction.
SEARCH = {
    "optimizers": {"adamw": {}, "sgd": {}, "nesterov": {}},
    "schedules": ["constant", "cosine", "step"],
    "warmup": {"fraction": {"low": 0.0, "high": 0.1}},
}


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


def run_raw(workdir: Path, trials: int) -> tuple[float, optuna.Study]:
    """Seconds for a fresh raw-Optuna study of ``trials`` no-op trials."""
    started = time.perf_counter()
    study = optuna.create_study(
        storage=f"sqlite:///{workdir / 'raw.db'}",
        study_name="raw",
        sampler=optuna.samplers.TPESampler(seed=0),
    )
    study.optimize(raw_objective, n_trials=trials)
    return time.perf_counter() - started, study


def write_study_file(workdir: Path, trials: int) -> Path:
    (workdir / "noop.py").write_text("def objective(trial):\n    return 0.0\n")
    doc = {
        "name": "tuner",
        "objective": "noop.py:objective",
        "direction": "minimize",
        "metric": "loss",
        "budget": {"trials": trials, "epochs": 1},
        "storage": f"sqlite:///{workdir / 'tuner.db'}",
        "sampler": {"name": "tpe", "seed": 0},
        "pruner": {"name": "none"},
        "search": SEARCH,
        "mlflow": {"tracking_uri": "off"},
        "workers": {"devices": ["cpu"]},
    }
    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_tuner(workdir: Path, trials: int) -> tuple[float, optuna.Study]:
    """Seconds for a fresh study through open_session + Worker (what ``tuner worker`` runs)."""
    from tuner.objective import load_objective

    path = write_study_file(workdir, trials)
    started = time.perf_counter()
    study_file = load_study_file(path)
    objective = load_objective(study_file.objective, base_dir=study_file.path.parent)
    study, tracker = open_session(study_file)
    try:
        reason = Worker(study_file, study, objective, tracker, device="cpu").run()
    finally:
        tracker.close(timeout=30.0)
    elapsed = time.perf_counter() - started
    assert reason == "budget", reason
    return elapsed, study


def run_launch(workdir: Path, trials: int) -> tuple[float, optuna.Study]:
    """Seconds for a fresh study through ``tuner.launch.launch`` (progress lines discarded)."""
    from tuner.launch import launch

    path = write_study_file(workdir, trials)
    started = time.perf_counter()
    study_file = load_study_file(path)
    launch(study_file, echo=lambda line: None)
    elapsed = time.perf_counter() - started
    study = optuna.load_study(study_name="tuner", storage=study_file.storage)
    return elapsed, study


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
    parser.add_argument("--rounds", type=int, default=3, help="studies per arm, alternated (3)")
    parser.add_argument("--launch", action="store_true", help="also time tuner.launch.launch")
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("tuner").setLevel(logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)

    arms: dict[str, Callable[[Path, int], tuple[float, optuna.Study]]] = {
        "raw": run_raw,
        "tuner": run_tuner,
    }
    if args.launch:
        arms["launch"] = run_launch
    per_trial: dict[str, list[float]] = {name: [] for name in arms}
    print(
        f"no-op objective, TPE(seed=0), fresh SQLite file per study, {args.trials} trials, "
        f"{args.rounds} rounds per arm (alternated)"
    )
    for r in range(args.rounds):
        # Alternate the order too, so neither arm always runs right after the other.
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        studies: dict[str, optuna.Study] = {}
        for name in order:
            with tempfile.TemporaryDirectory(prefix=f"overhead-{name}-") as tmp:
                seconds, study = arms[name](Path(tmp), args.trials)
                studies[name] = study
                per_trial[name].append(seconds / args.trials * 1000)
        check_same_space(studies["raw"], studies["tuner"])
        line = "  ".join(f"{name} {per_trial[name][-1]:6.2f} ms" for name in arms)
        ratio = per_trial["tuner"][-1] / per_trial["raw"][-1]
        print(f"round {r + 1}: {line}  tuner/raw {ratio:.3f}")

    medians = {name: statistics.median(values) for name, values in per_trial.items()}
    print()
    print(f"{'arm':<8} {'median ms/trial':>16} {'min':>8} {'max':>8}")
    for name, values in per_trial.items():
        print(f"{name:<8} {medians[name]:16.2f} {min(values):8.2f} {max(values):8.2f}")
    ratio = medians["tuner"] / medians["raw"]
    verdict = "meets" if ratio <= TARGET else "misses"
    print(f"\ntuner/raw = {ratio:.3f} (median per-trial time; target <= {TARGET}: {verdict})")
    if "launch" in medians:
        print(f"launch/raw = {medians['launch'] / medians['raw']:.3f} (with progress lines)")


if __name__ == "__main__":
    main()
