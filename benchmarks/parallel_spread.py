"""Do parallel workers spread out? TPE with and without constant liar, per-worker seeds.

Three asynchronous workers share one study, as ``tuner launch`` runs them: each has its own
TPE sampler (tuner's settings, its own seed derived from the study's), three trials are always
running, and a worker asks for its next trial while the other two still run. The objective is
synthetic but on tuner's real search space (``sample_config`` over the catalog): each
optimizer has a best learning rate, a decaying schedule helps, other hyperparameters matter a
little. A run is cheap, so many seeds fit.

For each arm, over all asks once TPE's model is on: the fraction of new trials that land next
to a running one (same optimizer and schedule, lr within a factor of 1.5: the same experiment
twice), and the median best value after 30 trials.

    python benchmarks/parallel_spread.py [--seeds 20]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna

from tuner.config.space import parse_search, sample_config
from tuner.sampling.sampler import tpe_defaults, worker_seed

BEST_LR = {"sgd": 0.3, "momentum": 0.03, "nesterov": 0.03, "adagrad": 0.05, "rmsprop": 1e-3,
           "adadelta": 1.0, "adam": 2e-3, "adamw": 2e-3, "yogi": 1e-2}  # fmt: skip
OFFSET = {"adamw": 0.0, "adam": 0.02, "nesterov": 0.03, "yogi": 0.04}


def loss(config) -> float:
    lr = config.kwargs["lr"]
    value = 0.1 * math.log10(lr / BEST_LR[config.optimizer]) ** 2
    value += OFFSET.get(config.optimizer, 0.08)
    value += 0.0 if config.schedule["name"] in ("cosine", "linear") else 0.03
    return value


def run(seed: int, liar: bool, trials: int = 30, workers: int = 3) -> tuple[float, int, int]:
    space = parse_search(None)
    storage = optuna.storages.InMemoryStorage()
    studies = []
    for w in range(workers):
        options = {**tpe_defaults(trials), "constant_liar": liar, "seed": worker_seed(seed, w)}
        sampler = optuna.samplers.TPESampler(**options)
        studies.append(
            optuna.create_study(
                storage=storage, study_name="s", sampler=sampler, load_if_exists=True
            )
        )
    running: list[tuple[optuna.Study, optuna.Trial, object]] = []
    close = asked = 0
    done = 0
    while done < trials:
        while len(running) < workers and done + len(running) < trials:
            study = studies[(done + len(running)) % workers]
            trial = study.ask()
            config = sample_config(trial, space)
            if done >= tpe_defaults(trials)["n_startup_trials"]:
                asked += 1
                close += any(_near(config, c) for _, _, c in running)
            running.append((study, trial, config))
        study, trial, config = running.pop(0)
        study.tell(trial, loss(config))
        done += 1
    return studies[0].best_value, close, asked


def _near(a, b) -> bool:
    return (
        a.optimizer == b.optimizer
        and a.schedule["name"] == b.schedule["name"]
        and abs(math.log(a.kwargs["lr"] / b.kwargs["lr"])) < math.log(1.5)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    print(f"3 asynchronous workers, 30 trials, {args.seeds} seeds; lower is better")
    print(f"{'arm':<22}{'near a running trial':>22}{'median best':>14}")
    for liar in (True, False):
        results = [run(seed, liar) for seed in range(args.seeds)]
        close = sum(r[1] for r in results) / max(1, sum(r[2] for r in results))
        best = statistics.median(r[0] for r in results)
        name = "constant liar" if liar else "no liar"
        print(f"{name:<22}{close:>21.1%}{best:>14.4f}")


if __name__ == "__main__":
    main()
