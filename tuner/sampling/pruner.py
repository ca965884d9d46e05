"""The default pruner: patient, and comparing a trial only with its like.

Hyperband stopped the trials that would have ended best: a decaying schedule spends its early
epochs at a high rate and looks worse than a constant one at the same epoch (the short-horizon
bias), so comparing every trial with every other at epoch 1 or 2 kills exactly the schedules
that win at the end. :class:`ScheduleMedianPruner` therefore

- judges a trial only at a few checkpoints, fractions of its schedule (``rungs``; every trial
  of a study runs the same number of steps, so the same fraction is the same point of the
  schedule for all);
- compares it with the trials of its own schedule that reached the same checkpoint (complete,
  pruned or still running, as ASHA does), falling back to the coarser family (constant or
  decaying) and then to every trial only when its own has too few;
- prunes only a trial outside the best ``keep`` fraction of those peers (two thirds by
  default: only the worst third is stopped), and only once ``n_startup_trials`` trials are
  complete.

The defaults (checkpoints at 20%, 50% and 80%, keep two thirds) were picked by the figures of
``benchmarks/search_quality.py`` over six problems and 10 seeds (see benchmarks/RESULTS.md):
the median rule at 20% and 50% stopped three quarters of the later trials, and on the noisy
problems (moons) the study then lost the late trials that would have ended best; keeping two
thirds at each of three checkpoints stops fewer trials, later, and the study still spends
0.57-0.69x the epochs of the hand-written study. Hyperband and the median pruner lost to no
pruning on most problems.

Example::

    >>> pruner = ScheduleMedianPruner(max_resource=10)
    >>> pruner.rung_steps
    (1, 4, 7)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["ScheduleMedianPruner"]


class ScheduleMedianPruner(optuna.pruners.BasePruner):
    """Median pruning at fractions of the schedule, among trials of the same schedule.

    Args:
        max_resource: the last step a trial reports (``budget.epochs``).
        rungs: the fractions of ``max_resource`` at which a trial is judged.
        n_startup_trials: complete trials needed before anything is pruned.
        n_min_peers: peers needed at a checkpoint for a comparison.
        keep: a trial goes on while it is among the best ``keep`` fraction of its peers
            (0.5: pruned when worse than their median; larger prunes fewer).
    """

    def __init__(
        self,
        max_resource: int = 10,
        rungs: Sequence[float] = (0.2, 0.5, 0.8),
        n_startup_trials: int = 5,
        n_min_peers: int = 4,
        keep: float = 0.67,
    ) -> None:
        if max_resource < 1:
            raise ValueError(f"`max_resource >= 1` must hold, but got max_resource={max_resource}")
        for r in rungs:
            if not 0 < r < 1:
                raise ValueError(f"each rung must lie in (0, 1), but got rungs={list(rungs)}")
        if not 0 < keep < 1:
            raise ValueError(f"`0 < keep < 1` must hold, but got keep={keep}")
        self.keep = keep
        self.max_resource = max_resource
        self.rungs = tuple(rungs)
        self.n_startup_trials = n_startup_trials
        self.n_min_peers = n_min_peers
        self.rung_steps = tuple(sorted({max(0, round(r * max_resource) - 1) for r in self.rungs}))

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step not in self.rung_steps:
            return False
        value = trial.intermediate_values[step]
        if not math.isfinite(value):
            return True
        trials = study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        )
        if sum(t.state == TrialState.COMPLETE for t in trials) < self.n_startup_trials:
            return False
        schedule = _schedule(trial)
        reached = [
            (t, t.intermediate_values[step])
            for t in trials
            if t.number != trial.number
            and step in t.intermediate_values
            and math.isfinite(t.intermediate_values[step])
        ]
        # Its own schedule first, then its family (constant or decaying), then every trial.
        for alike in (
            lambda t: _schedule(t) == schedule,
            lambda t: _decays(_schedule(t)) == _decays(schedule),
            lambda t: True,
        ):
            peers = [v for t, v in reached if alike(t)]
            if len(peers) >= self.n_min_peers:
                break
        if len(peers) < self.n_min_peers:
            return False
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        best_first = sorted(peers, reverse=maximize)
        bar = best_first[min(len(peers) - 1, math.floor(self.keep * len(peers)))]
        return value < bar if maximize else value > bar


def _schedule(trial: FrozenTrial) -> str:
    # The schedule is an Optuna parameter only when several compete; one alone is one family.
    return str(trial.params.get("schedule", "constant"))


def _decays(schedule: str) -> bool:
    return schedule != "constant"
