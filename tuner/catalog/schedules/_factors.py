"""Pure lr factors: ``factor(step, total_steps, **hyperparameters) -> multiplier of the base lr``.

Each function is defined for ``0 <= step <= total_steps`` with ``total_steps >= 1`` (the caller,
:class:`~tuner.catalog.schedules.Curve`, clamps later steps to ``total_steps`` so the lr holds its
final
value). They use only ``math`` so that :func:`tuner.catalog.render.render_torch_code` can print the
same
expressions into plain torch code and reproduce them bit for bit.

Example::

    >>> cosine(0, 10, final_lr_ratio=0.0), cosine(10, 10, final_lr_ratio=0.0)
    (1.0, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "constant",
    "cosine",
    "exponential",
    "linear",
    "milestone_steps",
    "onecycle",
    "polynomial",
    "step_decay",
    "warmup",
]


def constant(step: int, total_steps: int) -> float:
    """The base lr throughout."""
    return 1.0


def milestone_steps(milestones: Sequence[float], total_steps: int) -> list[int]:
    """Milestones given as fractions of the schedule length, as step indices (rounded)."""
    return [round(m * total_steps) for m in milestones]


def step_decay(
    step: int, total_steps: int, *, gamma: float, milestones: Sequence[float] = (0.5, 0.75)
) -> float:
    """Piecewise constant: times ``gamma`` at each milestone reached (torch's ``MultiStepLR``)."""
    passed = sum(1 for m in milestone_steps(milestones, total_steps) if m <= step)
    return gamma**passed


def exponential(step: int, total_steps: int, *, final_lr_ratio: float) -> float:
    """Times ``gamma = final_lr_ratio ** (1 / total_steps)`` per step (torch's ``ExponentialLR``).

    Parametrised by the ratio reached at the end, not by ``gamma``, so one range suits every
    run length.
    """
    gamma = final_lr_ratio ** (1.0 / total_steps)
    return gamma**step


def linear(step: int, total_steps: int, *, final_lr_ratio: float) -> float:
    """A straight line from 1 to ``final_lr_ratio``."""
    return 1.0 + (final_lr_ratio - 1.0) * step / total_steps


def polynomial(step: int, total_steps: int, *, power: float, final_lr_ratio: float) -> float:
    """``final + (1 - final) * (1 - step / total) ** power`` (``power=1`` is :func:`linear`)."""
    return final_lr_ratio + (1.0 - final_lr_ratio) * (1.0 - step / total_steps) ** power


def cosine(step: int, total_steps: int, *, final_lr_ratio: float) -> float:
    """D2L's ``CosineScheduler``: ``final + (1 - final) * (1 + cos(pi * step / total)) / 2``."""
    return (
        final_lr_ratio
        + (1.0 - final_lr_ratio) * (1.0 + math.cos(math.pi * step / total_steps)) / 2.0
    )


def onecycle(
    step: int,
    total_steps: int,
    *,
    pct_start: float,
    div_factor: float,
    final_div_factor: float,
) -> float:
    """torch's ``OneCycleLR`` lr curve (cosine annealing) with ``max_lr`` = the base lr.

    Rises from ``1 / div_factor`` to 1 over the first ``pct_start`` of the steps, then falls to
    ``1 / (div_factor * final_div_factor)`` at step ``total_steps - 1`` and holds there. Only
    the lr is scheduled: OneCycleLR's momentum cycling is left out, because the optimizer's
    momentum or beta1 is itself a searched hyperparameter that the schedule must not overwrite.
    """
    start = 1.0 / div_factor
    end = start / final_div_factor
    # torch's phase boundaries, in (fractional) step indices.
    peak = float(pct_start * total_steps) - 1
    last = total_steps - 1
    if peak > 0 and step <= peak:
        frm, to, pct = start, 1.0, step / peak
    else:
        # As torch does, the fall starts from the (possibly negative) end of the rise.
        span = last - peak
        frm, to = 1.0, end
        pct = 1.0 if span <= 0 else min((step - peak) / span, 1.0)
    # torch's _annealing_cos(frm, to, pct), in the same form so the values agree to the last bit.
    return to + (frm - to) / 2.0 * (math.cos(math.pi * pct) + 1)


def warmup(step: int, warmup_steps: int, begin_ratio: float) -> float:
    """Linear warmup: from ``begin_ratio`` (``begin_lr / base_lr``) at step 0 towards 1."""
    return begin_ratio + (1.0 - begin_ratio) * step / warmup_steps
