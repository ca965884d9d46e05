"""The learning-rate range test (Smith 2017; fastai's ``lr_find``) through the objective.

One probe per optimizer family: the objective runs as it always does, but ``build_optimizer``
hands it the family's catalog defaults with an exponential learning-rate ramp instead of the
sampled schedule. The probe watches one signal per step and says where this optimizer stops
training on this problem. Its rule is to do no harm: a wrong ceiling cuts the optimum out of
the search for a whole family, a wide range only costs TPE a few trials.

- **The training loss**, when the objective hands it over with ``trial.step_loss(loss)``
  (optional; docs/objective.md). It is the quantity the user trains, so fastai's rule applies
  as it is: once the smoothed loss stays above four times its best, training has blown up, and
  the search range becomes ``[ceiling / 1000, ceiling]`` with the ceiling where the climb began.
- **The gradient norm** otherwise, read after every ``optimizer.step()`` (every objective
  produces it). It is only a proxy: on a classifier trained with an adaptive optimizer the norm
  rises several-fold while the loss still falls (the logits sharpen). So a rise alone never
  cuts the range: the probe goes on, and only an explosion (the norm past :data:`EXPLODE_RATIO`
  times its floor, or non-finite) counts as divergence, with the ceiling where the climb began
  but never below a third of where it exploded. A rise that never explodes is *ambiguous*: the
  catalog's range is kept, widened up to the rise when the rise lies above it.

For plain gradient descent on a quadratic with largest curvature L the norm explodes from
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

from tuner.catalog.optim import get_optimizer

if TYPE_CHECKING:
    import torch

__all__ = [
    "FAMILIES",
    "LrProbe",
    "ProbeFinished",
    "ProbeOutcome",
    "catalog_lr",
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
# fastai stops the ramp when the smoothed loss exceeds 4x its best.
STOP_RATIO = 4.0
# The gradient norm counts as exploding only this far above its floor: a classifier's norm
# rises 3-20x while its loss still falls (measured on the MLP classifiers of
# benchmarks/search_quality.py), a blow-up of plain or momentum SGD grows without bound.
EXPLODE_RATIO = 100.0
# ... or climbing this steeply against the learning rate (log norm over log lr, across one
# window): a blow-up grows like lr^3 and faster, a classifier's benign rise like lr^0.5 to
# lr^1.5 (measured as above).
EXPLODE_SLOPE = 2.0
# An exploding norm's ceiling is never below this fraction of where the explosion showed: a
# benign rise in front of it (sharpening logits), or bimodal minibatch norms, must not drag the
# ceiling down with it. A tenth left momentum SGD's ceiling on large_lr at 0.5 on 3 of 5 seeds,
# below its best constant rate of 1 (benchmarks/RESULTS.md, issue 16); a third gives 1.66.
EXPLOSION_REACH = 1 / 3
# Where the final climb starts: the last time the median was within 2x of its floor (batch
# noise moves a median of five minibatch values by less; an explosion by far more).
ONSET_RATIO = 2.0
WINDOW = 7  # steps in a running median of the log signal
PERSIST = 3  # steps the median must stay above a threshold: a blow-up persists
MIN_STEPS = 20
MAX_STEPS = 100

#: The signals a probe reads, as the summary names them.
SIGNALS = {"loss": "training loss", "grad_norm": "gradient norm"}


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


def catalog_lr(optimizer: str) -> tuple[float, float]:
    """The catalog's ``lr`` range for ``optimizer``.

    >>> catalog_lr("adam")
    (1e-05, 0.1)
    """
    lr = next(hp for hp in get_optimizer(optimizer).hparams if hp.name == "lr").default
    return float(lr.low), float(lr.high)


def probe_bounds(optimizer: str) -> tuple[float, float]:
    """The ramp's learning rates, around the catalog range's top.

    >>> probe_bounds("adam")
    (0.0001, 10.0)
    """
    high = catalog_lr(optimizer)[1]
    return high / RAMP_BELOW, high * RAMP_HEADROOM


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


def widened_range(optimizer: str, rises_at: float) -> tuple[float, float]:
    """The catalog's ``lr`` range, widened (never cut) to hold the three decades below an
    ambiguous rise.

    >>> widened_range("adam", 0.0132)   # a rise inside the catalog range: the catalog range
    (1e-05, 0.1)
    >>> widened_range("adam", 3.0)      # above it: searched up to the rise
    (1e-05, 3.0)
    """
    low, high = catalog_lr(optimizer)
    below = search_range(rises_at)
    return min(low, below[0]), max(high, below[1])


@dataclass
class ProbeOutcome:
    """What one probe found.

    ``diverges_at``: where training blew up (the ceiling), or None. ``rises_at``: where the
    gradient norm rose without exploding (an ambiguous signal: it widens, never cuts), or None.
    Both None: nothing happened up to the ramp's end. ``signal``: ``loss`` or ``grad_norm``.
    """

    optimizer: str
    diverges_at: float | None
    ramp: tuple[float, float]
    steps: int
    epochs: float
    error: str | None = None
    members: tuple[str, ...] = ()
    signal: str = "grad_norm"
    rises_at: float | None = None

    @property
    def verdict(self) -> str:
        """``failed``, ``diverged``, ``ambiguous`` or ``stable`` (nothing up to the ramp's end)."""
        if self.error is not None or self.steps == 0:
            return "failed"
        if self.diverges_at is not None:
            return "diverged"
        return "ambiguous" if self.rises_at is not None else "stable"

    @property
    def range(self) -> tuple[float, float] | None:
        """The probed optimizer's ``lr`` range to search, or None to keep the catalog's."""
        return self.member_range(self.optimizer)

    def member_range(self, member: str) -> tuple[float, float] | None:
        """The ``lr`` range of a member of the probed optimizer's family (itself included)."""
        ratio = family_ratio(member, self.optimizer)
        verdict = self.verdict
        if verdict == "failed":
            return None
        if verdict == "diverged":
            assert self.diverges_at is not None
            return search_range(self.diverges_at * ratio)
        if verdict == "ambiguous":
            assert self.rises_at is not None
            return widened_range(member, self.rises_at * ratio)
        # Still fine at the ramp's top (Adam's bounded steps on a convex problem, or a run too
        # short to see the climb): nothing says where the best rate is, so the whole ramp is
        # searched.
        return self.ramp[0] * ratio, self.ramp[1] * ratio

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "members": list(self.members or (self.optimizer,)),
            "signal": self.signal,
            "verdict": self.verdict,
            "diverges_at": self.diverges_at,
            "rises_at": self.rises_at,
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
            raw.get("signal", "grad_norm"),  # stored before 2026-12-07: the norm only
            raw.get("rises_at"),
        )


@dataclass
class _Trace:
    """One signal along the ramp: running medians of its logarithm.

    A minibatch loss or gradient norm swings several-fold from batch to batch, so the trace
    reads the trailing median of the last :data:`WINDOW` values, robust to single spikes and
    dips.
    """

    lrs: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    trailing: list[float] = field(default_factory=list)

    def add(self, lr: float, value: float) -> bool:
        """Record one value; False when it is not finite (training has blown up)."""
        self.lrs.append(lr)
        if not math.isfinite(value):
            self.raw.append(math.inf)
            self.trailing.append(math.inf)
            return False
        self.raw.append(math.log(max(value, 1e-30)))
        self.trailing.append(statistics.median(self.raw[-WINDOW:]))
        return True

    def above(self, ratio: float) -> bool:
        """Whether the last :data:`PERSIST` whole-window medians lie ``ratio`` above the floor."""
        full = self.trailing[WINDOW - 1 :]  # medians of a whole window only
        if len(full) <= PERSIST:
            return False
        floor = self.floor()
        return all(m - floor > math.log(ratio) for m in full[-PERSIST:])

    def slope(self) -> float:
        """How steeply the median climbs against the learning rate over the last window:
        ``d log(value) / d log(lr)`` (0 before a window and a half of steps)."""
        if len(self.trailing) <= WINDOW + WINDOW // 2:
            return 0.0
        rise = self.trailing[-1] - self.trailing[-1 - WINDOW]
        run = math.log(self.lrs[-1] / self.lrs[-1 - WINDOW])
        return rise / run if run > 0 else 0.0

    def floor(self) -> float:
        """The level the log signal held before any climb: the lowest level that lasted.

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

    def onset(self) -> float:
        """The learning rate where the final climb began.

        The climb began after the last step whose trailing median was within
        :data:`ONSET_RATIO` of the floor (below that, batch noise). A trailing median of a
        rising series trails it by half a window, hence the shift.
        """
        floor = self.floor()
        last = len(self.trailing) - 1
        while last > 0 and self.trailing[last] > floor + math.log(ONSET_RATIO):
            last -= 1
        return self.lrs[max(0, last - WINDOW // 2)]


@dataclass
class LrProbe:
    """An exponential ramp from ``start`` to ``stop`` over ``steps`` steps, and its watcher.

    ``observe`` takes each optimizer step's learning rate and gradient norm, ``observe_loss``
    each training loss the objective hands over; each says when to stop. Once the objective
    hands over a loss, the loss decides (the norm still stops the probe when it turns
    non-finite).
    """

    start: float
    stop: float
    steps: int
    norms: _Trace = field(default_factory=_Trace)
    losses: _Trace = field(default_factory=_Trace)
    diverges_at: float | None = None
    rises_at: float | None = None
    done: bool = False
    _steep: int = 0  # consecutive steps above the stop ratio and climbing steeply

    @property
    def lrs(self) -> list[float]:
        """The learning rate of every optimizer step the probe saw."""
        return self.norms.lrs

    @property
    def signal(self) -> str:
        return "loss" if self.losses.lrs else "grad_norm"

    def lr_at(self, step: int) -> float:
        return self.start * (self.stop / self.start) ** (min(step, self.steps) / self.steps)

    def factor(self, step: int) -> float:
        """The ``LambdaLR`` factor on a base rate of ``start``."""
        return self.lr_at(step) / self.start

    def observe(self, lr: float, grad_norm: float) -> bool:
        """Record one optimizer step; True once the probe has its answer."""
        if self.done:
            return True
        if not self.norms.add(lr, grad_norm):
            return self.finish(diverged=True)
        if self.signal == "grad_norm":
            rising = self.norms.above(STOP_RATIO)
            if rising and self.rises_at is None:
                # Where the first rise began: a norm can fall back after a blow-up (dead
                # units), so the end of the ramp would say nothing.
                self.rises_at = self.norms.onset()
            self._steep = self._steep + 1 if rising and self.norms.slope() >= EXPLODE_SLOPE else 0
            if self._steep >= PERSIST or self.norms.above(EXPLODE_RATIO):
                return self.finish(diverged=True)
        if len(self.lrs) >= self.steps:
            return self.finish(diverged=False)
        return False

    def observe_loss(self, lr: float, loss: float) -> bool:
        """Record one training loss; True once the loss has blown up (fastai's rule)."""
        if self.done:
            return True
        if not self.losses.add(lr, loss) or self.losses.above(STOP_RATIO):
            return self.finish(diverged=True)
        return False

    def finish(self, *, diverged: bool) -> bool:
        """End the probe: ``diverged`` when training blew up (or the objective said so)."""
        if self.done:
            return True
        self.done = True
        if self.signal == "loss":
            # A ramp that ends with the loss 4x its best has blown up, even if too few steps
            # were left for the rise to persist.
            ended_high = bool(self.losses.trailing) and (
                self.losses.trailing[-1] - self.losses.floor() > math.log(STOP_RATIO)
            )
            if diverged or ended_high:
                self.diverges_at = self.losses.onset()
        elif diverged and self.lrs:
            # Never far below the explosion: a benign rise may have led into it.
            blew_up = self.lrs[max(0, len(self.lrs) - 1 - WINDOW // 2)]
            self.diverges_at = max(self.norms.onset(), EXPLOSION_REACH * blew_up)
            self.rises_at = None
        return True


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
