"""Search quality: tuner's defaults against a hand-written five-minute Optuna study.

The hand-written study is what a user writes without tuner: Optuna's default TPE over
``{sgd, momentum 0.9, adam, rmsprop, adagrad} x lr in [1e-5, 1] (log)``, a constant learning
rate, no pruning. tuner's arm is a study file with no ``search:`` section (the whole catalog,
the range test and the portfolio on, the default pruner), driven through tuner's real worker loop
on a real SQLite file. Both arms get the same trial count and epochs per trial on the same
problems; a trial's cost is counted in optimizer steps, so range-test probes and pruned trials
count what they really trained.

Arms, side by side in one run:

- ``hand``: the hand-written study (the baseline);
- ``tuner``: tuner's defaults;
- ``tuner-nopr``: tuner's defaults with ``pruner: none`` (the pruner's effect);
- ``random``: random search over the hand-written space;
- ``tuner-k50``: the default pruner before 2026-11-28 (median rule at 20% and 50%);
- more with ``--arms`` (``tuner-hb``: tuner with Optuna's Hyperband pruner, ``tuner-sh``:
  successive halving; ``tuner-indep``: TPE with Optuna's default settings).

The problem suite (our own; none is used to tune a default alone):

- ``ill_conditioned``: least squares whose features span three decades of scale;
- ``large_lr``: least squares with small features and large weights: the best rates lie far
  above every catalog range (Adam near 2, SGD in the hundreds);
- ``noisy_regression``: an MLP on targets with heavy noise;
- ``digits``: an MLP on scikit-learn's 8x8 digits (validation accuracy);
- ``anneal``: small-batch least squares with label noise, where a decaying schedule beats any
  constant rate (the error floor of SGD is proportional to its rate);
- ``moons``: an MLP on two interleaved half-moons (non-convex, classification loss).

Target: tuner's median best at least as good as ``hand``'s on every problem, at most 0.7x its
epochs.

    python benchmarks/search_quality.py                 # 30 trials x 10 epochs x 5 seeds
    python benchmarks/search_quality.py --seeds 2 --problems digits,anneal   # a quick look
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import optuna
import torch
from torch import nn

import tuner

Build = Callable[..., tuple[torch.optim.Optimizer, object]]
Report = Callable[[float, int], None]


# ------------------------------------------------------------------------------------------
# Problems


@dataclass
class Counter:
    steps: int = 0


COUNTER = Counter()


@dataclass(frozen=True)
class Problem:
    name: str
    direction: str
    metric: str
    data: Callable[[], tuple[torch.Tensor, ...]]
    model: Callable[[int], nn.Module]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    evaluate: Callable[[nn.Module, torch.Tensor, torch.Tensor], float]
    batch: int

    def train(self, build: Build, epochs: int, report: Report, seed: int) -> float:
        xtr, ytr, xva, yva = _DATA[self.name]
        torch.manual_seed(seed)
        model = self.model(xtr.shape[1])
        per_epoch = math.ceil(len(xtr) / self.batch)
        optimizer, scheduler = build(model.parameters(), per_epoch * epochs)
        gen = torch.Generator().manual_seed(seed)
        value = math.nan
        for epoch in range(epochs):
            order = torch.randperm(len(xtr), generator=gen)
            for i in range(per_epoch):
                idx = order[i * self.batch : (i + 1) * self.batch]
                loss = self.loss(model(xtr[idx]), ytr[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                COUNTER.steps += 1
            with torch.no_grad():
                value = self.evaluate(model, xva, yva)
            report(value, epoch)
        return value

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(_DATA[self.name][0]) / self.batch)


def _mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(nn.functional.mse_loss(model(x), y))


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def _ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(nn.functional.cross_entropy(model(x), y))


def _split(x: np.ndarray, y: np.ndarray, n_val: int, long: bool = False) -> tuple:
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.long if long else torch.float32)
    return xt[n_val:], yt[n_val:], xt[:n_val], yt[:n_val]


def _ill_conditioned() -> tuple:
    rng = np.random.default_rng(0)
    scales = np.logspace(-1.5, 0, 20)
    x = rng.standard_normal((1280, 20)) * scales
    w = rng.standard_normal((20, 1)) / scales[:, None] ** 0.5
    y = x @ w + 0.05 * rng.standard_normal((1280, 1))
    return _split(x, y, 256)


def _large_lr() -> tuple:
    rng = np.random.default_rng(1)
    x = 0.02 * rng.standard_normal((768, 10))
    w = 60.0 + 20.0 * rng.standard_normal((10, 1))
    y = x @ w + 0.01 * rng.standard_normal((768, 1))
    return _split(x, y, 256)


def _noisy_regression() -> tuple:
    rng = np.random.default_rng(2)
    x = rng.uniform(-2, 2, (768, 8))
    f = np.sin(x[:, :1] * 1.5) + 0.5 * x[:, 1:2] * x[:, 2:3] - 0.3 * x[:, 3:4] ** 2
    y = f + 0.7 * rng.standard_normal((768, 1))
    return _split(x, y, 256)


def _digits() -> tuple:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(3).permutation(len(x))
    return _split(x[perm] / 16.0, y[perm], 360, long=True)


def _anneal() -> tuple:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1280, 20))
    w = rng.standard_normal((20, 1))
    noisy = x @ w + 1.5 * rng.standard_normal((1280, 1))
    xtr, ytr, _, _ = _split(x, noisy, 256)
    _, _, xva, yva = _split(x, x @ w, 256)  # judged against the clean targets
    return xtr, ytr, xva, yva


def _moons() -> tuple:
    from sklearn.datasets import make_moons

    x, y = make_moons(1024, noise=0.25, random_state=5)
    return _split(x, y, 256, long=True)


def _linear(d: int) -> nn.Module:
    return nn.Linear(d, 1)


def _mlp(out: int, width: int) -> Callable[[int], nn.Module]:
    def make(d: int) -> nn.Module:
        return nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, out))

    return make


PROBLEMS = {
    p.name: p
    for p in (
        Problem("ill_conditioned", "minimize", "val_mse", _ill_conditioned, _linear,
                nn.functional.mse_loss, _mse, 64),
        Problem("large_lr", "minimize", "val_mse", _large_lr, _linear,
                nn.functional.mse_loss, _mse, 128),
        Problem("noisy_regression", "minimize", "val_mse", _noisy_regression, _mlp(1, 32),
                nn.functional.mse_loss, _mse, 32),
        Problem("digits", "maximize", "val_accuracy", _digits, _mlp(10, 32),
                nn.functional.cross_entropy, _accuracy, 64),
        Problem("anneal", "minimize", "val_mse", _anneal, _linear,
                nn.functional.mse_loss, _mse, 16),
        Problem("moons", "minimize", "val_loss", _moons, _mlp(2, 16),
                nn.functional.cross_entropy, _ce, 32),
    )
}  # fmt: skip
_DATA: dict[str, tuple[torch.Tensor, ...]] = {}


# ------------------------------------------------------------------------------------------
# Arms

HAND_OPTIMIZERS = {
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "momentum": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
    "rmsprop": lambda p, lr: torch.optim.RMSprop(p, lr=lr),
    "adagrad": lambda p, lr: torch.optim.Adagrad(p, lr=lr),
}


def run_hand(problem: Problem, seed: int, trials: int, epochs: int, sampler: str) -> float:
    """The five-minute Optuna script, as a user writes it."""

    def objective(trial: optuna.Trial) -> float:
        name = trial.suggest_categorical("optimizer", list(HAND_OPTIMIZERS))
        lr = trial.suggest_float("lr", 1e-5, 1.0, log=True)

        def build(params, total_steps):
            opt = HAND_OPTIMIZERS[name](params, lr)
            return opt, torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)

        return problem.train(build, epochs, lambda v, s: None, seed * 1000 + trial.number)

    cls = optuna.samplers.TPESampler if sampler == "tpe" else optuna.samplers.RandomSampler
    study = optuna.create_study(direction=problem.direction, sampler=cls(seed=seed))
    study.optimize(objective, n_trials=trials)
    done = [t.value for t in study.trials if t.value is not None and math.isfinite(t.value)]
    return _best(done, problem.direction)


def run_tuner(
    problem: Problem,
    seed: int,
    trials: int,
    epochs: int,
    pruner: str | dict | None,
    tpe: str,
) -> float:
    from tuner.launch import open_session
    from tuner.runner import Worker
    from tuner.studyfile import StudyFile

    with tempfile.TemporaryDirectory() as tmp:
        doc = {
            "name": f"{problem.name}-{seed}",
            "objective": "bench.py:objective",
            "direction": problem.direction,
            "metric": problem.metric,
            "budget": {"trials": trials, "epochs": epochs},
            "storage": f"sqlite:///{tmp}/tuner.db",
            "sampler": {"name": "tpe", "seed": seed},
            "mlflow": {"tracking_uri": "off"},
            # The finalists' replicates (DESIGN §8) come after the search and are reported as
            # their own cost; this benchmark compares searches.
            "compare": {"seeds": 0},
        }
        if tpe == "indep":  # Optuna's default TPE, for comparison
            doc["sampler"].update(multivariate=False, group=False, n_startup_trials=10)
        if pruner is not None:
            doc["pruner"] = pruner if isinstance(pruner, dict) else {"name": pruner}
        sf = StudyFile.model_validate(doc)

        def objective(trial: tuner.Trial) -> float:
            return problem.train(trial.build_optimizer, trial.max_epochs, trial.report, trial.seed)

        study, tracker = open_session(sf)
        Worker(study_file=sf, study=study, objective=objective, tracker=tracker).run()
        tracker.close(timeout=1.0)
        done = [
            t.value
            for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.value)
        ]
        return _best(done, problem.direction)


def _best(values: list[float], direction: str) -> float:
    if not values:
        return math.inf if direction == "minimize" else -math.inf
    return min(values) if direction == "minimize" else max(values)


ARMS: dict[str, Callable[[Problem, int, int, int], float]] = {
    "hand": lambda p, s, t, e: run_hand(p, s, t, e, "tpe"),
    "tuner": lambda p, s, t, e: run_tuner(p, s, t, e, None, "tuner"),
    "tuner-nopr": lambda p, s, t, e: run_tuner(p, s, t, e, "none", "tuner"),
    "random": lambda p, s, t, e: run_hand(p, s, t, e, "random"),
    "tuner-hb": lambda p, s, t, e: run_tuner(p, s, t, e, "hyperband", "tuner"),
    "tuner-sh": lambda p, s, t, e: run_tuner(p, s, t, e, "successive_halving", "tuner"),
    "tuner-med": lambda p, s, t, e: run_tuner(p, s, t, e, "median", "tuner"),
    "tuner-smp": lambda p, s, t, e: run_tuner(p, s, t, e, "schedule_median", "tuner"),
    "tuner-smp3": lambda p, s, t, e: run_tuner(
        p, s, t, e, {"name": "schedule_median", "rungs": [0.2, 0.4, 0.6]}, "tuner"
    ),
    "tuner-k50": lambda p, s, t, e: run_tuner(  # the default before 2026-11-28
        p, s, t, e, {"name": "schedule_median", "keep": 0.5, "rungs": [0.2, 0.5]}, "tuner"
    ),
    "tuner-k60": lambda p, s, t, e: run_tuner(
        p, s, t, e, {"name": "schedule_median", "keep": 0.6, "rungs": [0.2, 0.5]}, "tuner"
    ),
    "tuner-k67": lambda p, s, t, e: run_tuner(
        p, s, t, e, {"name": "schedule_median", "keep": 0.67, "rungs": [0.2, 0.5]}, "tuner"
    ),
    "tuner-k67s8": lambda p, s, t, e: run_tuner(
        p,
        s,
        t,
        e,
        {"name": "schedule_median", "keep": 0.67, "n_startup_trials": 8, "rungs": [0.2, 0.5]},
        "tuner",
    ),
    "tuner-indep": lambda p, s, t, e: run_tuner(p, s, t, e, None, "indep"),
}


def run_cell(args: tuple[str, str, int, int, int]) -> tuple[str, str, int, float, float, float]:
    """One (problem, arm, seed): its best value, epochs spent and seconds."""
    problem_name, arm, seed, trials, epochs = args
    logging.getLogger("tuner").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    problem = PROBLEMS[problem_name]
    if problem_name not in _DATA:
        _DATA[problem_name] = problem.data()
    COUNTER.steps = 0
    start = time.perf_counter()
    best = ARMS[arm](problem, seed, trials, epochs)
    spent = COUNTER.steps / problem.steps_per_epoch
    return problem_name, arm, seed, best, spent, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--arms", default="hand,tuner,tuner-nopr,random")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    problems = args.problems.split(",")
    arms = args.arms.split(",")
    cells = [
        (p, a, s, args.trials, args.epochs)
        for p in problems
        for s in range(args.seeds)
        for a in arms  # arms interleaved: the machine's load lands on all alike
    ]
    print(
        f"search quality: {len(problems)} problems x {args.seeds} seeds x {len(arms)} arms, "
        f"{args.trials} trials x {args.epochs} epochs each ({len(cells)} studies)",
        flush=True,
    )
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for i, (p, a, s, best, spent, secs) in enumerate(pool.imap_unordered(run_cell, cells)):
            results.setdefault((p, a), []).append((best, spent))
            print(
                f"  [{i + 1}/{len(cells)}] {p:<17} {a:<11} seed {s}: best {best:.5g}, "
                f"{spent:.0f} epochs, {secs:.1f}s",
                flush=True,
            )
    print_table(problems, arms, results)


def print_table(
    problems: list[str], arms: list[str], results: dict[tuple[str, str], list[tuple[float, float]]]
) -> None:
    print("\nmedian best value (median epochs spent) per arm; ratios against hand")
    header = f"{'problem':<17} {'dir':<4}" + "".join(f" {a:>22}" for a in arms)
    print(header + f" {'tuner beats hand':>17} {'epochs tuner/hand':>18}")
    wins = 0
    for p in problems:
        problem = PROBLEMS[p]
        row = f"{p:<17} {'max' if problem.direction == 'maximize' else 'min':<4}"
        medians = {}
        for a in arms:
            cells = results.get((p, a), [])
            if not cells:
                row += f" {'-':>22}"
                continue
            best = statistics.median(c[0] for c in cells)
            spent = statistics.median(c[1] for c in cells)
            medians[a] = (best, spent)
            row += f" {best:>12.5g} ({spent:>6.0f})"
        if "hand" in medians and "tuner" in medians:
            (hb, he), (tb, te) = medians["hand"], medians["tuner"]
            ok = tb <= hb if problem.direction == "minimize" else tb >= hb
            wins += ok
            row += f" {'yes' if ok else 'NO':>17} {te / he:>18.2f}"
        print(row)
    print(f"\ntuner at least as good as hand on {wins} of {len(problems)} problems")


if __name__ == "__main__":
    main()
