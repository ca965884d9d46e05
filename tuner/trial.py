"""``tuner.Trial``: what the user's objective receives (docs/objective.md)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna

from tuner.catalog.export import build_optimizer
from tuner.core.keys import ATTR

if TYPE_CHECKING:
    import torch

    from tuner.catalog.export import OptimizerConfig
    from tuner.tracking import TrialRecorder

__all__ = ["DIVERGENCE_FACTOR", "Trial", "TrialDiverged", "TrialPruned", "seed_everything"]

TrialPruned = optuna.TrialPruned

# A reported value that moves, in the wrong direction, this many times the metric's scale has
# blown up: training of that configuration is not coming back, so stop paying for it. The scale
# is the largest magnitude the trial reported before, or the study's typical value if larger;
# never a first value near zero alone (a metric that starts at 0 and rises is not diverged).
DIVERGENCE_FACTOR = 100.0


# The learning rate goes to MLflow per optimizer step, at most about this many points per trial:
# enough to show warmup and the schedule's shape, few enough to cost nothing.
LR_POINTS = 200


class _LrLogger:
    """An optimizer step hook: logs ``lr`` (param group 0) every ``total_steps / LR_POINTS``
    optimizer steps, at the step it trains with, and at the last scheduled step."""

    def __init__(self, recorder: TrialRecorder, total_steps: int) -> None:
        self.recorder = recorder
        self.every = max(1, -(-int(total_steps) // LR_POINTS))
        self.last = int(total_steps) - 1
        self.step = 0

    def __call__(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        step, self.step = self.step, self.step + 1
        if step % self.every == 0 or step == self.last:
            self.recorder.log({"lr": float(optimizer.param_groups[0]["lr"])}, step)


class TrialDiverged(Exception):
    """The trial's loss or value became NaN, infinite, or exploded: it ends as *diverged*.

    tuner raises it from :meth:`Trial.report` and :meth:`Trial.log`; an objective may raise it
    too. The runner records the trial as pruned at the step it diverged, with the outcome
    ``diverged``, so the sampler ranks that region worst instead of ignoring it.
    """

    def __init__(self, reason: str, *, step: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.step = step


@dataclass
class Trial:
    """One trial of a study, as the objective sees it.

    Example::

        def objective(trial: tuner.Trial) -> float:
            model = Net().to(trial.device)
            steps = trial.max_epochs * len(loader)
            optimizer, scheduler = trial.build_optimizer(model.parameters(), total_steps=steps)
            for epoch in range(trial.max_epochs):
                ...
                trial.report(accuracy, step=epoch)   # may raise tuner.TrialPruned
            return accuracy
    """

    optuna: optuna.Trial
    config: OptimizerConfig
    device: str
    max_epochs: int
    params: Mapping[str, Any]
    seed: int
    metric: str = "value"
    direction: str = "minimize"
    recorder: TrialRecorder | None = None
    typical_value: float | None = None
    prune: bool = True  # False for replicates: they run to the end
    # Told of every report (step, value): a supervisor's progress display shows the step.
    on_report: Callable[[int, float], None] | None = field(default=None, repr=False)
    _first_value: float | None = field(default=None, repr=False)
    _largest: float = field(default=0.0, repr=False)
    _last_step: int | None = field(default=None, repr=False)
    _optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)

    @property
    def number(self) -> int:
        """The Optuna trial number, unique within the study."""
        return self.optuna.number

    @property
    def last_step(self) -> int | None:
        """The last step passed to :meth:`report`, or None."""
        return self._last_step

    def build_optimizer(
        self, params: Iterable[Any], total_steps: int, *, fused: bool = False
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The sampled optimizer and its warmup + schedule over ``total_steps`` optimizer steps.

        ``params`` is an iterable of tensors or of param-group dicts; every group is scaled
        from its own base learning rate. Call ``scheduler.step()`` after every
        ``optimizer.step()``. ``fused=True`` builds Adam, AdamW and Yogi with one kernel per
        step when the parameters are on CUDA (the same update, faster); elsewhere it is ignored.
        """

        optimizer, scheduler = build_optimizer(params, self.config, total_steps, fused=fused)
        self._optimizer = optimizer
        # Kept with the trial so that reports can redraw its learning-rate curve.
        self.optuna.set_user_attr(ATTR.TOTAL_STEPS, int(total_steps))
        if self.recorder is not None:
            optimizer.register_step_post_hook(_LrLogger(self.recorder, total_steps))
        return optimizer, scheduler

    def step_loss(self, loss: float | torch.Tensor) -> None:
        """Optionally hand over one training step's loss, after ``optimizer.step()``.

        Only the learning-rate range test reads it: with the loss the probe judges divergence
        on the quantity you train instead of on the gradient norm, a proxy that can rise while
        training still improves (docs/objective.md). In an ordinary trial it does nothing and
        costs nothing: a tensor is not read, so there is no device sync. Objectives that never
        call it work unchanged.

        Example::

            loss.backward(); optimizer.step(); scheduler.step()
            trial.step_loss(loss)
        """
        return None

    def report(self, value: float, step: int) -> None:
        """Report the metric at ``step`` (an epoch, usually) to the pruner and to MLflow.

        Raises :class:`tuner.TrialPruned` when the pruner stops the trial and
        :class:`TrialDiverged` when the value is NaN, infinite or has exploded.
        """
        value = float(value)
        self._last_step = step
        self._log({self.metric: value}, step)
        if self.on_report is not None:
            self.on_report(step, value)
        # The value reaches the study database before divergence is raised, so the sampler
        # sees the bad value at the step it happened.
        self.optuna.report(value, step)
        self._check_divergence(value, step)
        if self.prune and self.optuna.should_prune():
            raise TrialPruned(f"pruned at step {step} with {self.metric}={value:.6g}")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Log extra metrics (MLflow only). A NaN or infinite value ends the trial as diverged."""
        values = {name: float(v) for name, v in metrics.items()}
        self._log(values, step)
        for name, v in values.items():
            if not math.isfinite(v):
                raise TrialDiverged(f"{name} is {v} at step {step}", step=step)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        if self.recorder is None:
            return
        self.recorder.log(metrics, step)

    def _check_divergence(self, value: float, step: int) -> None:
        if not math.isfinite(value):
            raise TrialDiverged(f"{self.metric} is {value} at step {step}", step=step)
        if self._first_value is None:
            self._first_value = value
            self._largest = abs(value)
            return
        first = self._first_value
        scale = max(self._largest, abs(self.typical_value or 0.0))
        worse_by = value - first if self.direction == "minimize" else first - value
        if scale > 0 and worse_by > DIVERGENCE_FACTOR * scale:
            raise TrialDiverged(
                f"{self.metric} exploded from {first:.6g} to {value:.6g} at step {step}",
                step=step,
            )
        self._largest = max(self._largest, abs(value))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators: what a trial (and a range-test probe)
    runs with, so that a seeded study trains reproducibly."""
    import numpy as np
    import torch  # here: tuner launch imports this module and never torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
