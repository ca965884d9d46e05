"""The report's plots that answer "which optimizer?", and robust value axes for every plot.

- ``score_vs_lr``: the metric against the learning rate, one panel per optimizer, log lr axis,
  coloured by schedule: where each optimizer's good lr lies and how wide that region is.
- ``score_by_schedule``: the metric by schedule, and against the warmup length.
- ``replicates``: each finalist's replicate runs, their mean and 95% interval, and its search
  value (docs/answer.md).

A value axis spans the bulk of the values, not their extremes: one collapsed or diverged trial
(accuracy 0.08 among scores of 0.97) would otherwise squash every other point onto one line.
:func:`robust_range` sets the limits from the quartiles; a value beyond them is drawn at the
edge as a hollow triangle pointing off the axis, and the panel says how many are off-scale.
optuna.visualization draws none of these: its plotly plots need plotly (not a tuner
dependency), its matplotlib ones draw through pyplot's global figure registry (which the report
avoids, as report.py explains), and neither knows that each optimizer has its own lr or marks
off-scale points. So tuner draws them with matplotlib's object API.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from tuner.core.keys import ATTR

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from tuner.results.compare import Answer

__all__ = [
    "MIN_POINTS",
    "ValueRange",
    "plot_replicates",
    "plot_score_by_schedule",
    "plot_score_vs_lr",
    "robust_range",
]

# Below this many complete trials a scatter of the metric says nothing: the plot is left out.
MIN_POINTS = 5
# Points further than this many interquartile ranges outside the quartiles are off-scale.
FENCE = 3.0


@dataclass(frozen=True)
class ValueRange:
    """Axis limits for a metric, and how to draw a value outside them."""

    lo: float
    hi: float
    log: bool = False

    def inside(self, value: float) -> bool:
        return self.lo <= value <= self.hi

    def clip(self, value: float) -> float:
        return min(max(value, self.lo), self.hi)

    def apply(self, ax: Axes, axis: str = "y") -> None:
        set_scale, set_lim = (
            (ax.set_yscale, ax.set_ylim) if axis == "y" else (ax.set_xscale, ax.set_xlim)
        )
        if self.log:
            set_scale("log")
        set_lim(self.lo, self.hi)


def robust_range(values: Sequence[float]) -> ValueRange:
    """Limits that hold the bulk of ``values``: the quartiles widened by ``FENCE`` IQRs.

    On a log scale (positive values spanning two decades or more among the bulk) the fences
    are taken on log10 of the values.

    >>> r = robust_range([0.97, 0.98, 0.975, 0.99, 0.985, 0.08])
    >>> r.inside(0.08), r.inside(0.97)
    (False, True)
    """
    vs = np.array([v for v in values if math.isfinite(v)], dtype=float)
    if vs.size == 0:
        return ValueRange(0.0, 1.0)
    log = False
    if (vs > 0).all():
        lo, hi = _bulk(np.log10(vs))
        log = hi - lo >= 2
    lo, hi = _bulk(np.log10(vs) if log else vs)
    pad = (hi - lo) * 0.06 or max(abs(hi) * 0.05, 1e-12)
    lo, hi = lo - pad, hi + pad
    if log:
        return ValueRange(10**lo, 10**hi, log=True)
    return ValueRange(lo, hi)


def _bulk(data: np.ndarray) -> tuple[float, float]:
    """The smallest and largest values within ``FENCE`` IQRs of the quartiles."""
    if data.size < 4:  # too few to call any of them an outlier
        return float(data.min()), float(data.max())
    q1, q3 = np.percentile(data, [25, 75])
    iqr = q3 - q1
    inside = data[(data >= q1 - FENCE * iqr) & (data <= q3 + FENCE * iqr)]
    return float(inside.min()), float(inside.max())


def scatter_clipped(
    ax: Axes,
    xs: Sequence[float],
    ys: Sequence[float],
    value_range: ValueRange,
    *,
    axis: str = "y",
    **style: Any,
) -> int:
    """Scatter the points; those outside ``value_range`` go at its edge as hollow triangles.

    ``axis`` is the axis that carries the value. Returns how many points were off-scale.
    """
    inside = [i for i, v in enumerate(ys) if value_range.inside(v)]
    outside = [i for i, v in enumerate(ys) if not value_range.inside(v)]
    if inside:
        pts = ([xs[i] for i in inside], [ys[i] for i in inside])
        ax.scatter(*(pts if axis == "y" else pts[::-1]), **style)
    if outside:
        edge = [value_range.clip(ys[i]) for i in outside]
        above = [ys[i] > value_range.hi for i in outside]
        for want_above in (True, False):
            idx = [k for k, a in enumerate(above) if a == want_above]
            if not idx:
                continue
            if axis == "y":
                marker = "^" if want_above else "v"
                pts = ([xs[outside[k]] for k in idx], [edge[k] for k in idx])
            else:
                marker = ">" if want_above else "<"
                pts = ([edge[k] for k in idx], [xs[outside[k]] for k in idx])
            ax.scatter(
                *pts,
                marker=marker,
                s=55,
                facecolors="none",
                edgecolors=style.get("color", "0.3"),
                linewidths=1.3,
                zorder=4,
                clip_on=False,
            )
    return len(outside)


def note_off_scale(ax: Axes, count: int, value_range: ValueRange) -> None:
    """Say in the panel how many points are drawn at its edge, off-scale."""
    if count:
        ax.text(
            0.99,
            0.01,
            f"{count} off-scale (△▽ at the edge; axis {value_range.lo:.3g} to "
            f"{value_range.hi:.3g})",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="0.35",
        )


# --------------------------------------------------------------------------- the plots


def _config(t: FrozenTrial) -> Mapping[str, Any]:
    return t.user_attrs.get(ATTR.CONFIG) or {}


def _schedule(t: FrozenTrial) -> str:
    schedule = _config(t).get("schedule") or {}
    name = schedule.get("name") if isinstance(schedule, Mapping) else schedule
    return str(name or "constant")


def _warmup_fraction(t: FrozenTrial) -> float | None:
    """The warmup as a fraction of the run (steps are divided by the trial's total_steps)."""
    warmup = _config(t).get("warmup")
    if not isinstance(warmup, Mapping):
        return 0.0
    if "fraction" in warmup:
        return float(warmup["fraction"])
    total = t.user_attrs.get(ATTR.TOTAL_STEPS)
    if isinstance(total, int) and total > 0 and "steps" in warmup:
        return float(warmup["steps"]) / total
    return None


def _schedule_colors(trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    names = sorted({_schedule(t) for t in trials})
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def sparse_reason(trials: Sequence[FrozenTrial], what: str) -> str | None:
    """Why a scatter of ``trials`` would not mean anything, or None when it would."""
    if len(trials) < MIN_POINTS:
        return f"{what} needs at least {MIN_POINTS} complete trials, but got {len(trials)}"
    return None


def plot_score_vs_lr(
    complete: Sequence[FrozenTrial], order: Sequence[str], direction: str, metric: str
) -> tuple[Figure, int]:
    """The metric against the lr, one panel per optimizer (best first), coloured by schedule.

    Returns the figure and how many points were drawn off-scale.
    """
    with_lr = [t for t in complete if isinstance(_config(t).get("lr"), int | float)]
    panels = [name for name in order if any(_config(t).get("optimizer") == name for t in with_lr)]
    value_range = robust_range([float(t.value) for t in with_lr])
    colors = _schedule_colors(with_lr)
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(layout="constrained", figsize=(4.2 * cols + 1.2, 3.3 * rows + 0.6))
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
    off = 0
    for ax, name in zip(axes, panels, strict=False):
        mine = [t for t in with_lr if _config(t).get("optimizer") == name]
        for schedule, color in colors.items():
            pts = [t for t in mine if _schedule(t) == schedule]
            if not pts:
                continue
            off += scatter_clipped(
                ax,
                [float(_config(t)["lr"]) for t in pts],
                [float(t.value) for t in pts],
                value_range,
                color=color,
                s=26,
                alpha=0.85,
                label=schedule,
                zorder=3,
            )
        ax.set_xscale("log")
        searched = _lr_range(mine, name)
        if searched is not None:  # where the points lie within the range the search covered
            ax.set_xlim(searched[0] / 1.2, searched[1] * 1.2)
        value_range.apply(ax)
        ax.set_title(f"{name} ({len(mine)} complete)", fontsize=10)
        ax.set_xlabel("learning rate (log)")
        ax.grid(alpha=0.3, which="both")
        note_off_scale(ax, sum(not value_range.inside(float(t.value)) for t in mine), value_range)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    for ax in axes[::cols]:
        ax.set_ylabel(f"{metric} ({direction})")
    handles = [
        axes[0].scatter([], [], color=color, s=26, label=name) for name, color in colors.items()
    ]
    fig.legend(handles=handles, title="schedule", loc="outside right upper", fontsize=8)
    fig.suptitle(f"{metric} against the learning rate, per optimizer (best first)")
    return fig, off


def _lr_range(trials: Sequence[FrozenTrial], optimizer: str) -> tuple[float, float] | None:
    """The lr range the search sampled ``optimizer`` from, when the trials recorded it."""
    for t in trials:
        dist = t.distributions.get(f"{optimizer}.lr")
        low, high = getattr(dist, "low", None), getattr(dist, "high", None)
        if isinstance(low, float) and isinstance(high, float) and 0 < low < high:
            return low, high
    return None


def plot_score_by_schedule(
    complete: Sequence[FrozenTrial], direction: str, metric: str
) -> tuple[Figure, int]:
    """The metric by schedule (left) and against the warmup fraction (right)."""
    value_range = robust_range([float(t.value) for t in complete])
    colors = _schedule_colors(complete)
    fig = Figure(layout="constrained", figsize=(11, 4.3))
    left, right = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1, 1.3]})
    rng = np.random.default_rng(0)  # cosmetic jitter, reproducible
    names = sorted(colors, key=lambda n: _median(complete, n, direction))
    off = 0
    for i, name in enumerate(names):
        pts = [t for t in complete if _schedule(t) == name]
        xs = list(i + rng.uniform(-0.18, 0.18, len(pts)))
        off += scatter_clipped(
            left, xs, [float(t.value) for t in pts], value_range,
            color=colors[name], s=24, alpha=0.8, zorder=3,
        )  # fmt: skip
        values = [float(t.value) for t in pts if value_range.inside(float(t.value))]
        if values:
            left.hlines(float(np.median(values)), i - 0.3, i + 0.3, color="black", lw=1.6)
    left.set_xticks(range(len(names)))
    left.set_xticklabels(
        [f"{n}\n({sum(_schedule(t) == n for t in complete)})" for n in names], fontsize=8
    )
    left.set_title("by schedule (best median first; bar = median)", fontsize=10)
    left.set_ylabel(f"{metric} ({direction})")
    value_range.apply(left)
    left.grid(axis="y", alpha=0.3)
    note_off_scale(left, off, value_range)
    warm = [(t, w) for t in complete if (w := _warmup_fraction(t)) is not None]
    off_right = 0
    for name, color in colors.items():
        pts = [(t, w) for t, w in warm if _schedule(t) == name]
        if pts:
            off_right += scatter_clipped(
                right, [w for _, w in pts], [float(t.value) for t, _ in pts], value_range,
                color=color, s=24, alpha=0.8, label=name, zorder=3,
            )  # fmt: skip
    right.set_xlabel("warmup (fraction of the run's optimizer steps)")
    right.set_title("against the warmup length", fontsize=10)
    right.grid(alpha=0.3)
    right.legend(title="schedule", fontsize=8, title_fontsize=8)
    note_off_scale(right, off_right, value_range)
    fig.suptitle(f"{metric} by schedule and warmup ({len(complete)} complete trials)")
    return fig, off


def _median(trials: Sequence[FrozenTrial], schedule: str, direction: str) -> float:
    values = [float(t.value) for t in trials if _schedule(t) == schedule]
    median = float(np.median(values))
    return -median if direction == "maximize" else median


def plot_replicates(answer: Answer) -> Figure:
    """Each finalist's replicates (dots), their mean and 95% interval (bar), its search value
    (hollow diamond), best first, tiers shaded."""
    from matplotlib import colormaps

    rows = answer.finalists
    fig = Figure(layout="constrained", figsize=(9, 1.4 + 0.8 * len(rows)))
    ax = fig.subplots()
    values = [v for f in rows for v in f.replicates.values()]
    values += [v for f in rows if f.ci95 for v in f.ci95]
    value_range = robust_range(values)
    tiers = colormaps["Pastel2"]
    off = 0
    for i, f in enumerate(rows):
        ax.axhspan(i - 0.45, i + 0.45, color=tiers((f.group - 1) % tiers.N), alpha=0.5, lw=0)
        reps = list(f.replicates.values())
        off += scatter_clipped(
            ax, [i] * len(reps), reps, value_range, axis="x", color="tab:blue", s=30, zorder=3
        )
        if f.mean is not None and f.ci95 is not None:
            lo, hi = (value_range.clip(v) for v in f.ci95)
            ax.errorbar(
                value_range.clip(f.mean), i, xerr=[[f.mean - lo], [hi - f.mean]],
                fmt="o", color="black", capsize=5, ms=6, zorder=4,
            )  # fmt: skip
        if value_range.inside(f.search_value):
            ax.scatter(
                [f.search_value], [i], marker="D", s=50,
                facecolors="none", edgecolors="tab:red", zorder=4,
            )  # fmt: skip
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(
        [
            f"tier {f.group}: {f.optimizer}\n"
            + (f"{f.mean:.4g} over {len(f.replicates)} seeds" if f.mean is not None else "—")
            for f in rows
        ],
        fontsize=8,
    )
    ax.set_ylim(len(rows) - 0.5, -0.5)
    value_range.apply(ax, axis="x")
    ax.set_xlabel(f"{answer.metric} ({answer.direction})")
    ax.grid(axis="x", alpha=0.3)
    note_off_scale(ax, off, value_range)
    ax.set_title(
        "Finalists re-run with fresh seeds: dots = runs, bar = mean and 95% t-interval,\n"
        "red ◇ = the search value (picked as the best of many, so optimistic); shade = tier",
        fontsize=9,
    )
    return fig
