"""What MLflow tracking costs a study: tuner's tracking next to no tracking and Optuna's callback.

Two objectives. The realistic one (``--digits-trials`` trials, 0 skips it): the small CNN of
``studies/digits.py`` on scikit-learn's digits, ``--digits-epochs`` epochs per trial (short
trials, a report and a ``trial.log`` per epoch), run three ways: tracking off, to a local SQLite
store, to a real ``mlflow server``; target: tracking <= 1.05x off. Then the no-op one:
one study of ``--trials`` trials, ``--reports`` reports per trial, no-op training, SQLite study
storage, run four ways:

- (a) tuner, tracking off;
- (b) tuner, tracking to a local SQLite MLflow store;
- (c) tuner, tracking to a real ``mlflow server`` on loopback;
- (d) raw Optuna (``study.optimize``, the equivalent search space) with optuna-integration's
  ``MLflowCallback`` to a local SQLite MLflow store (it logs each trial's final value only), as
  a user's script run with ``python``: like ``tuner launch``, each run is a fresh process that
  pays its interpreter's start and its imports.

Arms (a)-(c) run through tuner's real code path, ``tuner launch`` on a study file, each run a
fresh process as a user runs it (so its MLflow start-up counts, as arm (d)'s does). To be
fair on a noisy machine the arms alternate: each study is grown in ``--rounds`` steps (a resume,
as ``tuner launch --trials`` does) and the order of the arms rotates every round. Printed: wall
time per arm, the ratios against the targets ((b), (c) <= 1.3x (a); (b) faster than (d)), and
the in-process cost of one ``trial.report`` in (b) and (c), p50 and p99, whole (Optuna's own
storage write included) and the tracking share alone (the recorder's ``log``). Targets: (b),
(c) <= 1.5x (a); (b) faster than (d); the tracking share of a report under 1 ms at p99.

    python benchmarks/tracking.py [--trials 200] [--reports 20] [--rounds 4]
                                  [--digits-trials 10] [--digits-epochs 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.mlflow_server import MlflowServer

TARGET_RATIO = 1.5
TARGET_DIGITS_RATIO = 1.05
TARGET_P99_S = 1e-3
OBJECTIVE_MODULE = "tuner_bench_tracking_obj"
DIGITS_MODULE = "tuner_bench_digits"
DIGITS_SOURCE = Path(__file__).resolve().parents[1] / "studies" / "digits.py"

# The objective the tuner arms run: no training, ``reports`` reports per trial. It times each
# ``trial.report`` whole, and the recorder's ``log`` inside it (the tracking share), into SAMPLES.
OBJECTIVE = textwrap.dedent(
    """
    import os
    import time


    class TimedRecorder:
        def __init__(self, inner, samples):
            self.inner = inner
            self.samples = samples

        @property
        def run_id(self):
            return self.inner.run_id

        def log(self, metrics, step):
            t0 = time.perf_counter()
            self.inner.log(metrics, step)
            self.samples.append(("log", time.perf_counter() - t0))

        def finish(self, outcome, *, tags=None):
            self.inner.finish(outcome, tags=tags)


    def objective(trial):
        # Workers are processes of their own: the samples go to a file the benchmark reads.
        samples = []
        if trial.recorder is not None:
            trial.recorder = TimedRecorder(trial.recorder, samples)
        lr = float(trial.config.to_dict()["lr"])
        value = 1.0
        for step in range(int(trial.params["reports"])):
            value = lr * (step + 1) ** -0.5
            t0 = time.perf_counter()
            trial.report(value, step=step)
            samples.append(("report", time.perf_counter() - t0))
        with open(os.environ["TUNER_BENCH_SAMPLES"], "a") as out:
            out.writelines(f"{kind} {cost!r}\\n" for kind, cost in samples)
        return value
    """
)


def percentile(samples: list[float], q: float) -> float:
    """The ``q`` quantile of ``samples`` (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class TunerArm:
    """One of arms (a)-(c): a study file in its own folder, grown by ``tuner launch``."""

    def __init__(
        self, name: str, root: Path, tracking_uri: str, reports: int, *, digits: bool = False
    ) -> None:
        self.name = name
        self.wall = 0.0
        self.report_costs: list[float] = []
        self.log_costs: list[float] = []
        folder = root / name
        folder.mkdir()
        self.path = folder / "study.yaml"
        doc = {
            "name": f"bench-{name}",
            "objective": f"{DIGITS_MODULE if digits else OBJECTIVE_MODULE}:objective",
            "direction": "maximize" if digits else "minimize",
            "metric": "val_accuracy" if digits else "loss",
            "budget": {"trials": 1, "epochs": reports},
            "storage": f"sqlite:///{folder / 'study.db'}",
            "sampler": {"name": "random", "seed": 0},
            "pruner": {"name": "none"},
            # The pre-search phase (range test, portfolio) is off: this measures tracking.
            "search": {
                "optimizers": {"adam": {}, "sgd": {}},
                "schedules": ["constant"],
                "lr_range_test": "off",
                "portfolio": False,
            },
            "params": {"batch_size": 64} if digits else {"reports": reports},
            "mlflow": {"tracking_uri": tracking_uri, "experiment": f"bench-{name}"},
            "workers": {"devices": ["cpu"]},
            # Nor the finalists' replicates (docs/answer.md): arm (d) has none.
            "compare": {"seeds": 0},
        }
        self.path.write_text(yaml.safe_dump(doc, sort_keys=False))

    def run_to(self, trials: int) -> None:
        """Resume the study up to ``trials`` finished trials with ``tuner launch`` in a fresh
        process, as a user runs it (it pays its own imports, MLflow's included, like arm (d));
        add the time and the samples."""
        samples = self.path.parent / "samples.txt"
        samples.write_text("")
        env = {**os.environ, "TUNER_BENCH_SAMPLES": str(samples)}  # the workers inherit it
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "tuner", "launch", str(self.path), "--trials", str(trials),
             "--quiet"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            sys.exit(f"tuner launch failed for arm {self.name}:\n{done.stdout}{done.stderr}")
        self.wall += time.perf_counter() - t0
        for line in samples.read_text().splitlines():
            kind, cost = line.split()
            (self.report_costs if kind == "report" else self.log_costs).append(float(cost))


def run_arms(arms: list[Any], trials: int, rounds: int, label: str) -> None:
    """One untimed trial per arm, then grow every arm to ``trials`` in ``rounds`` alternating
    steps (the order rotates each round, so no arm always runs on a warmer machine)."""
    warm_up(arms)
    for r in range(rounds):
        target = round(trials * (r + 1) / rounds)
        order = arms[r % len(arms) :] + arms[: r % len(arms)]
        for arm in order:
            arm.run_to(target)
        print(f"{label} round {r + 1}/{rounds}: {target} trials per arm", flush=True)


# Arm (d) as a user writes it: a script that opens the study and optimizes with the callback,
# run as its own process each round, as `tuner launch` runs its own (so both pay the start-up:
# the interpreter, the imports and MLflow's store).
OPTUNA_SCRIPT = textwrap.dedent(
    """
    import sys, time, warnings
    import optuna
    from optuna_integration.mlflow import MLflowCallback

    storage, tracking_uri, reports, trials, samples = sys.argv[1:6]
    reports, trials = int(reports), int(trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    costs = []

    def objective(trial):
        optimizer = trial.suggest_categorical("optimizer", ["adam", "sgd"])
        lr = trial.suggest_float(f"{optimizer}.lr", 1e-5, 1.0, log=True)
        value = 1.0
        for step in range(reports):
            value = lr * (step + 1) ** -0.5
            t0 = time.perf_counter()
            trial.report(value, step)
            costs.append(time.perf_counter() - t0)
        return value

    study = optuna.create_study(
        study_name="bench-optuna", storage=storage, load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(seed=0), pruner=optuna.pruners.NopPruner(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the callback is deprecated (and experimental)
        callback = MLflowCallback(tracking_uri=tracking_uri, metric_name="loss")
    missing = trials - len(study.trials)
    if missing > 0:
        study.optimize(objective, n_trials=missing, callbacks=[callback])
    with open(samples, "w") as out:
        out.writelines(f"report {c}\\n" for c in costs)
    """
)


class OptunaArm:
    """Arm (d): a user's script, ``study.optimize`` with optuna-integration's ``MLflowCallback``,
    one process per round like the tuner arms' launches."""

    def __init__(self, root: Path, tracking_uri: str, reports: int) -> None:
        self.name = "optuna"
        self.wall = 0.0
        self.report_costs: list[float] = []
        self.log_costs: list[float] = []
        self.reports = reports
        self.tracking_uri = tracking_uri
        self.folder = root / self.name
        self.folder.mkdir()
        self.script = self.folder / "optuna_study.py"
        self.script.write_text(OPTUNA_SCRIPT)

    def run_to(self, trials: int) -> None:
        """Run the script until the study has ``trials``; add the time and the samples."""
        samples = self.folder / "samples.txt"
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, str(self.script), f"sqlite:///{self.folder / 'study.db'}",
             self.tracking_uri, str(self.reports), str(trials), str(samples)],
            check=True,
        )  # fmt: skip
        self.wall += time.perf_counter() - t0
        for line in samples.read_text().splitlines():
            self.report_costs.append(float(line.split()[1]))


def quiet_logs() -> None:
    """Keep the per-trial chatter of Optuna, MLflow and alembic out of the figures' output."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("alembic", "mlflow", "tuner"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Run the arms side by side and print the figures; exit 1 if a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--reports", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4, help="alternate the arms this often")
    parser.add_argument("--digits-trials", type=int, default=10, help="0 skips the CNN arms")
    parser.add_argument("--digits-epochs", type=int, default=1)
    args = parser.parse_args(argv)
    quiet_logs()

    with tempfile.TemporaryDirectory(prefix="tuner-bench-tracking-") as tmp:
        root = Path(tmp)
        (root / f"{OBJECTIVE_MODULE}.py").write_text(OBJECTIVE)
        (root / f"{DIGITS_MODULE}.py").write_text(DIGITS_SOURCE.read_text())
        sys.path.insert(0, str(root))
        # Launch runs the objective in worker processes: they must import these modules too.
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(root), os.environ.get("PYTHONPATH")) if p
        )
        server = MlflowServer(root / "mlflow-server")
        print("starting mlflow server ...", flush=True)
        server.start()
        try:
            digits: list[TunerArm] = []
            if args.digits_trials:
                digits = [
                    TunerArm("digits-off", root, "off", args.digits_epochs, digits=True),
                    TunerArm(
                        "digits-local",
                        root,
                        f"sqlite:///{root / 'digits-mlflow.db'}",
                        args.digits_epochs,
                        digits=True,
                    ),
                    TunerArm("digits-server", root, server.url, args.digits_epochs, digits=True),
                ]
                run_arms(digits, args.digits_trials, args.rounds, "digits")
            arms: list[TunerArm | OptunaArm] = [
                TunerArm("off", root, "off", args.reports),
                TunerArm("local", root, f"sqlite:///{root / 'local-mlflow.db'}", args.reports),
                TunerArm("server", root, server.url, args.reports),
                OptunaArm(root, f"sqlite:///{root / 'optuna-mlflow.db'}", args.reports),
            ]
            run_arms(arms, args.trials, args.rounds, "no-op")
        finally:
            server.stop()
    ok = report_digits(digits, args.digits_trials, args.digits_epochs) if digits else True
    return report(arms, args.trials, args.reports) or (0 if ok else 1)


def report_digits(arms: list[TunerArm], trials: int, epochs: int) -> bool:
    """Print the realistic arms' wall times and ratios; True if the target holds."""
    off, local, server = arms
    timed = trials - 1
    print(f"\ndigits CNN: {trials} trials x {epochs} epochs, SQLite study storage")
    print(f"wall time of the {timed} timed trials (one warm-up trial per arm is not timed):")
    for arm, label in ((off, "tracking off"), (local, "-> local SQLite store"),
                       (server, "-> mlflow server")):  # fmt: skip
        print(f"  {label:<34} {arm.wall:8.2f} s  ({arm.wall / timed * 1000:7.1f} ms/trial)")
    ok = True
    for name, arm in (("local/off", local), ("server/off", server)):
        ratio = arm.wall / off.wall
        passes = ratio <= TARGET_DIGITS_RATIO
        ok &= passes
        target = f"<= {TARGET_DIGITS_RATIO}"
        print(f"  {name:<10} = {ratio:5.3f}  target {target:<7} {'ok' if passes else 'MISSED'}")
    return ok


def warm_up(arms: list[TunerArm | OptunaArm]) -> None:
    """One untimed trial per arm: imports, schema creation and the server's first requests."""
    for arm in arms:
        arm.run_to(1)
        arm.wall = 0.0
        arm.report_costs.clear()
        arm.log_costs.clear()


def report(arms: list[TunerArm | OptunaArm], trials: int, reports: int) -> int:
    """Print wall times, ratios against the targets and per-report costs; 0 if targets hold."""
    off, local, server, optuna_arm = arms
    labels = {
        off: "(a) tuner, tracking off",
        local: "(b) tuner -> local SQLite store",
        server: "(c) tuner -> mlflow server",
        optuna_arm: "(d) Optuna + MLflowCallback",
    }
    timed = trials - 1  # the warm-up trial is not timed
    print(f"\n{trials} trials x {reports} reports, no-op training, SQLite study storage")
    print(f"wall time of the {timed} timed trials (one warm-up trial per arm is not timed):")
    for arm in arms:
        per_trial = arm.wall / timed * 1000
        print(f"  {labels[arm]:<34} {arm.wall:8.2f} s  ({per_trial:6.1f} ms/trial)")
    checks: list[tuple[str, float, Callable[[float], bool], str]] = [
        ("(b)/(a)", local.wall / off.wall, lambda x: x <= TARGET_RATIO, f"<= {TARGET_RATIO}"),
        ("(c)/(a)", server.wall / off.wall, lambda x: x <= TARGET_RATIO, f"<= {TARGET_RATIO}"),
        ("(b)/(d)", local.wall / optuna_arm.wall, lambda x: x < 1.0, "< 1.0"),
        ("(c)/(d)", server.wall / optuna_arm.wall, lambda x: x < 1.0, "< 1.0"),
    ]
    for arm, name in ((local, "(b)"), (server, "(c)")):
        p99 = percentile(arm.log_costs, 0.99)
        checks.append((f"{name} report p99 (ms)", p99 * 1e3, lambda x: x < TARGET_P99_S * 1e3,
                       f"< {TARGET_P99_S * 1e3:g}"))  # fmt: skip
    ok = True
    print("ratios:")
    for name, value, passes, target in checks:
        ok &= passes(value)
        print(f"  {name:<19} = {value:6.3f}  target {target:<7} "
              f"{'ok' if passes(value) else 'MISSED'}")  # fmt: skip
    print("in-process cost of one trial.report (p50 / p99):")
    for arm in arms:
        whole = arm.report_costs
        line = f"  {labels[arm]:<34} whole {percentile(whole, 0.5) * 1e3:7.3f} / "
        line += f"{percentile(whole, 0.99) * 1e3:7.3f} ms"
        if arm.log_costs:
            line += f"   tracking share {percentile(arm.log_costs, 0.5) * 1e6:6.1f} / "
            line += f"{percentile(arm.log_costs, 0.99) * 1e6:6.1f} us"
            line += f" (max {max(arm.log_costs) * 1e3:.2f} ms, n={len(arm.log_costs)})"
        print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
