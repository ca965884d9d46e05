"""The learning-rate range test (Smith 2017; fastai's ``lr_find``) through the objective.

One probe per optimizer family: the objective runs as it always does, but ``build_optimizer``
hands it the family's catalog defaults with an exponential learning-rate ramp instead of the
sampled schedule. After every optimizer step the probe reads the gradient norm, a signal every
objective produces (today's objectives report a metric per epoch only, far too coarse for a
ramp of a few dozen steps). Once the smoothed gradient norm exceeds four times its best (fastai's
rule, on the loss) or turns non-finite, the probe stops the objective: the learning rate where
the norm began its final climb is where this optimizer diverges on this problem, and the search
range becomes ``[diverges_at / 1000, diverges_at]``, past the catalog's defaults when the problem
needs it.

For plain gradient descent on a quadratic with largest curvature L the norm starts to grow at
``lr = 2/L``, which the tests check.

Example::

    >>> probe = LrProbe(start=1e-3, stop=10.0, steps=50)
    >>> round(probe.lr_at(0), 6), round(probe.lr_at(50), 6)
    (0.001, 10.0)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuner.optim import get_optimizer

if TYPE_CHECKING:
    import torch

__all__ = [
    "FAMILIES",
    "LrProbe",
    "ProbeFinished",
    "ProbeOutcome",
    "family_ratio",
    "probe_bounds",
    "probe_plan",
    "probe_steps",
    "search_range",
]

# A ramp spans RAMP_BELOW below the catalog range's top to RAMP_HEADROOM above it: far enough
# above the literature's ranges to find problems that need larger rates (Adam at 1.7 and more).
RAMP_BELOW = 1e3
RAMP_HEADROOM = 1e2
# The search range below the divergence point: three decades hold the best constant rate of
# every problem in benchmarks/search_quality.py (from 1/2 to 1/300 of the divergence point).
RANGE_DECADES = 3.0
# fastai stops the ramp when the smoothed loss exceeds 4x its best; the gradient norm grows
# with the loss once training blows up, so the same rule applies to it.
STOP_RATIO = 4.0
# Where the final climb starts: the last time the median norm was within 2x of its floor (batch
# noise moves a median of five minibatch norms by less; an explosion by far more).
ONSET_RATIO = 2.0
WINDOW = 7  # steps in a running median of the log gradient norm
PERSIST = 3  # steps the median must stay above STOP_RATIO x its floor: a blow-up persists
MIN_STEPS = 20
MAX_STEPS = 100


class ProbeFinished(Exception):
    """Raised from ``optimizer.step()`` to end the probe's run of the objective early."""


# Optimizer families whose learning rates share a scale: one probe each, its members' rates
# scaled by how they compare with the member probed (heavy-ball momentum 0.9 stays stable up
# to 2(1 + 0.9)/L on a quadratic where plain SGD stops at 2/L; Adam, AdamW, Yogi and RMSprop
# all step by about lr per coordinate). Adadelta is not probed: its rate is a unit-free
# multiplier around 1 (Zeiler 2012), so the catalog range holds on any problem.
FAMILIES: dict[str, dict[str, float]] = {
    "sgd": {"momentum": 1.0, "nesterov": 1.0, "sgd": 1 / 1.9},
    "adam": {"adam": 1.0, "adamw": 1.0, "yogi": 1.0, "rmsprop": 1.0},
    "adagrad": {"adagrad": 1.0},
}


def probe_plan(optimizers: Iterable[str]) -> dict[str, list[str]]:
    """Which optimizer to probe for each family present, and the members it speaks for.

    The probed member is the family's first in catalog preference order that competes.

    >>> probe_plan(["adamw", "sgd", "yogi", "adadelta"])
    {'sgd': ['sgd'], 'adamw': ['adamw', 'yogi']}
    """
    present = list(optimizers)
    plan: dict[str, list[str]] = {}
    for members in FAMILIES.values():
        here = [m for m in members if m in present]
        if here:
            plan[here[0]] = [m for m in present if m in here]
    return plan


def family_ratio(member: str, probed: str) -> float:
    """How ``member``'s divergence point compares with ``probed``'s (same family)."""
    for members in FAMILIES.values():
        if member in members and probed in members:
            return members[member] / members[probed]
    raise KeyError(f"{member!r} and {probed!r} are not of one family")


def probe_bounds(optimizer: str) -> tuple[float, float]:
    """The ramp's learning rates, around the catalog range's top.

    >>> probe_bounds("adam")
    (0.0001, 10.0)
    """
    lr = next(hp for hp in get_optimizer(optimizer).hparams if hp.name == "lr").default
    return float(lr.high / RAMP_BELOW), float(lr.high * RAMP_HEADROOM)


def probe_steps(total_steps: int, max_epochs: int) -> int:
    """The ramp's length: an epoch and a half of steps, clamped to [20, 100] and to the run.

    >>> probe_steps(total_steps=200, max_epochs=10), probe_steps(total_steps=5000, max_epochs=10)
    (30, 100)
    """
    per_epoch = max(1, total_steps // max(1, max_epochs))
    return max(1, min(total_steps, max(MIN_STEPS, min(MAX_STEPS, 3 * per_epoch // 2))))


def search_range(diverges_at: float) -> tuple[float, float]:
    """The ``lr`` range searched below a divergence point.

    >>> search_range(3.0)
    (0.003, 3.0)
    """
    return diverges_at / 10**RANGE_DECADES, diverges_at


@dataclass
class ProbeOutcome:
    """What one probe found. ``diverges_at`` None: no blow-up up to the ramp's end."""

    optimizer: str
    diverges_at: float | None
    ramp: tuple[float, float]
    steps: int
    epochs: float
    error: str | None = None
    members: tuple[str, ...] = ()

    @property
    def range(self) -> tuple[float, float] | None:
        """The ``lr`` range to search, or None to keep the catalog's (the probe failed)."""
        if self.error is not None or self.steps == 0:
            return None
        if self.diverges_at is None:
            # Still fine at the ramp's top (Adam's bounded steps on a convex problem, or a run
            # too short to see the climb): nothing says where the best rate is, so the whole
            # ramp is searched.
            return self.ramp
        return search_range(self.diverges_at)

    def member_range(self, member: str) -> tuple[float, float] | None:
        """The ``lr`` range of another member of the probed optimizer's family."""
        if self.range is None:
            return None
        ratio = family_ratio(member, self.optimizer)
        return self.range[0] * ratio, self.range[1] * ratio

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "members": list(self.members or (self.optimizer,)),
            "diverges_at": self.diverges_at,
            "ramp": list(self.ramp),
            "steps": self.steps,
            "epochs": round(self.epochs, 3),
            "error": self.error,
            "range": list(self.range) if self.range else None,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ProbeOutcome:
        return cls(
            raw["optimizer"],
            raw.get("diverges_at"),
            tuple(raw["ramp"]),  # type: ignore[arg-type]
            int(raw["steps"]),
            float(raw["epochs"]),
            raw.get("error"),
            tuple(raw.get("members") or (raw["optimizer"],)),
        )


@dataclass
class LrProbe:
    """An exponential ramp from ``start`` to ``stop`` over ``steps`` steps, and its watcher.

    ``observe`` takes each step's learning rate and gradient norm and says when to stop. A
    minibatch gradient's norm swings several-fold from batch to batch, so the watcher reads
    running medians of its logarithm, robust to single spikes and dips: the trailing median of
    the last :data:`WINDOW` steps decides when to stop, and once stopped the centred median
    locates where the climb began.
    """

    start: float
    stop: float
    steps: int
    lrs: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    trailing: list[float] = field(default_factory=list)
    diverges_at: float | None = None
    done: bool = False

    def lr_at(self, step: int) -> float:
        return self.start * (self.stop / self.start) ** (min(step, self.steps) / self.steps)

    def factor(self, step: int) -> float:
        """The ``LambdaLR`` factor on a base rate of ``start``."""
        return self.lr_at(step) / self.start

    def observe(self, lr: float, grad_norm: float) -> bool:
        """Record one step; True once the probe has its answer (blow-up or the ramp's end)."""
        if self.done:
            return True
        self.lrs.append(lr)
        if not math.isfinite(grad_norm):
            self.raw.append(math.inf)
            return self._finish(diverged=True)
        self.raw.append(math.log(max(grad_norm, 1e-30)))
        self.trailing.append(statistics.median(self.raw[-WINDOW:]))
        full = self.trailing[WINDOW - 1 :]  # medians of a whole window only
        if len(full) > PERSIST:
            floor = self._floor()  # once per step: the hook runs after every optimizer step
            if all(m - floor > math.log(STOP_RATIO) for m in full[-PERSIST:]):
                return self._finish(diverged=True)
        if len(self.lrs) >= self.steps:
            return self._finish(diverged=False)
        return False

    def _finish(self, *, diverged: bool) -> bool:
        self.done = True
        if diverged:
            self.diverges_at = self._onset()
        return True

    def _floor(self) -> float:
        """The level the log norm held before any climb: the lowest level that lasted.

        The lowest level that :data:`PERSIST` consecutive window medians all reached, not the
        lowest window median: on some problems the minibatch norms are bimodal (two kinds of
        batches, 6x apart), a window's median can land on the low mode alone, and a floor at
        that outlier read the next windows as a blow-up (seen on the large_lr problem of
        benchmarks/search_quality.py: Adam stopped at lr 5.6e-4, three decades early). A real
        descent lasts, and so does a real blow-up.
        """
        full = self.trailing[WINDOW - 1 :] or self.trailing
        if len(full) < PERSIST:
            return statistics.median(full)
        return min(max(full[i : i + PERSIST]) for i in range(len(full) - PERSIST + 1))

    def _onset(self) -> float:
        """The learning rate where the final climb began.

        The floor is :meth:`_floor`; the climb began after the last step whose
        trailing median was within :data:`ONSET_RATIO` of it (below that, batch noise). A
        trailing median of a rising series trails it by half a window, hence the shift.
        """
        floor = self._floor()
        last = len(self.trailing) - 1
        while last > 0 and self.trailing[last] > floor + math.log(ONSET_RATIO):
            last -= 1
        return self.lrs[max(0, last - WINDOW // 2)]


def grad_norm(params: Iterable[torch.Tensor]) -> float:
    """The global L2 norm of the parameters' gradients (NaN/inf propagate)."""
    import torch

    norms = [torch.linalg.vector_norm(p.grad.detach()) for p in params if p.grad is not None]
    if not norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([n.float() for n in norms])))


def attach(
    optimizer: torch.optim.Optimizer, probe: LrProbe, on_step: Callable[[], None] | None = None
) -> None:
    """Watch ``optimizer``: after each step, feed the probe and stop the run once it is done."""

    def after_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for group in opt.param_groups for p in group["params"]]
        lr = float(opt.param_groups[0]["lr"])
        if on_step is not None:
            on_step()
        if probe.observe(lr, grad_norm(params)):
            raise ProbeFinished(f"lr range test done after {len(probe.lrs)} steps")

    optimizer.register_step_post_hook(after_step)
