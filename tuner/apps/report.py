"""``tuner report``: a study's plots and a markdown summary, written to a folder.

The plots answer the questions a user brings to a finished study: how the search went
(``optimization_history.png``), which hyperparameters mattered (``param_importances.png``), where
the winning optimizer's good region lies (``parallel_coordinates.png``), which optimizer to use
(``best_per_optimizer.png``) and what learning rate the winner trains with
(``lr_schedule.png``). ``summary.md`` says the same in words and numbers, and says why a plot
is missing when the study cannot support it yet (no complete trial, too few for importances).

Figures are drawn on :class:`matplotlib.figure.Figure` objects, never through ``pyplot``: no
display, no global figure registry to leak into, safe from worker threads.

Example::

    >>> report = write_report(study, Path("report"))          # doctest: +SKIP
    >>> sorted(report.files)                                  # doctest: +SKIP
    ['best_per_optimizer', 'lr_schedule', 'optimization_history', ...]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from matplotlib.figure import Figure
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from tuner.apps import plots
from tuner.catalog.export import build_optimizer, load_optimizer_config
from tuner.catalog.schedules import warmup_steps
from tuner.config.studyfile import CompareConfig, StudyFile
from tuner.core.errors import TunerError
from tuner.core.filenames import safe_filename
from tuner.core.keys import ATTR, OUTCOMES, Outcome
from tuner.core.trials import SHOWN_OUTCOMES, optimizer_of, outcome_of
from tuner.db.session import load_study
from tuner.results.compare import compute_answer, describe_answer, describe_config, is_replicate
from tuner.results.summary import StudySummary, summarize
from tuner.tracking import make_tracker

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from tuner.results.compare import Answer

__all__ = [
    "MIN_IMPORTANCE_TRIALS",
    "LrCurve",
    "OptimizerResult",
    "Report",
    "best_per_optimizer",
    "log_report",
    "lr_curve",
    "param_importances",
    "report_study_file",
    "write_report",
]

# fANOVA fits a random forest to the trials; below this many the importances are noise.
MIN_IMPORTANCE_TRIALS = 5

_OTHER_OUTCOMES = tuple(o for o in OUTCOMES if o != Outcome.COMPLETE.value)
_OUTCOME_STYLE = {  # marker, colour
    "pruned": ("v", "0.45"),
    "diverged": ("x", "tab:red"),
    "failed": ("X", "black"),
    "interrupted": ("|", "tab:orange"),
}
_DPI = 110


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote.

    ``files`` maps a name (``optimization_history``, ..., ``summary``) to the written file;
    ``skipped`` maps the name of each plot that was not written to the reason why.
    """

    files: dict[str, Path]
    summary_text: str
    skipped: dict[str, str] = field(default_factory=dict)
    off_scale: dict[str, int] = field(default_factory=dict)  # points drawn at a plot's edge
    answer: Answer | None = None


@dataclass(frozen=True)
class OptimizerResult:
    """One optimizer's trials in a study: its complete values, its best, counts by outcome."""

    optimizer: str
    numbers: tuple[int, ...]
    values: tuple[float, ...]
    best_value: float | None
    best_number: int | None
    counts: Mapping[str, int]

    @property
    def complete(self) -> int:
        """How many of its trials completed."""
        return len(self.values)


@dataclass(frozen=True)
class LrCurve:
    """A learning rate per optimizer step: ``lrs[i]`` is the lr that step ``steps[i]`` uses."""

    steps: list[int]
    lrs: list[float]
    warmup_steps: int
    total_steps: int


def write_report(
    study: optuna.Study,
    out_dir: Path,
    *,
    budget: int | None = None,
    compare: CompareConfig | None = None,
) -> Report:
    """Write the study's plots (PNG) and ``summary.md`` into ``out_dir`` (created if needed).

    Works for either direction, with no complete trial yet (the plots that need one are
    skipped and ``summary.md`` says why) and with failed, pruned and diverged trials present.

    Example::

        >>> report = write_report(optuna.load_study(study_name="digits", storage=url),
        ...                       Path("report"))                       # doctest: +SKIP
        >>> print(report.summary_text)                                  # doctest: +SKIP
    """

    out = _Output(Path(out_dir))
    out.out_dir.mkdir(parents=True, exist_ok=True)
    all_trials = study.get_trials(deepcopy=False)
    # The search's plots show the search; the replicates have their own (tuner.results.compare).
    trials = [t for t in all_trials if not is_replicate(t)]
    direction = study.direction.name.lower()
    metric = str(study.user_attrs.get(ATTR.METRIC, "value"))
    compare = compare or CompareConfig()
    summary = summarize(study, budget=budget, compare=compare)
    answer = summary.answer or compute_answer(study, compare, trials=all_trials)
    ranking = _rank_optimizers(trials, direction)
    colors = _optimizer_colors(ranking)
    complete = _complete(trials)
    importances: dict[str, dict[str, float] | str] = {}
    curve: LrCurve | None = None

    if trials:
        out.save("optimization_history", *_plot_history(trials, direction, metric, colors))
    else:
        out.skipped["optimization_history"] = "the study has no trials yet"

    if not complete:
        reason = "no complete trial yet"
        for name in ("param_importances", "parallel_coordinates", "best_per_optimizer"):
            out.skipped[name] = reason
        for name in ("score_vs_lr", "score_by_schedule", "lr_schedule"):
            out.skipped[name] = reason
    else:
        # The best everywhere (tuner.results.summary): the answer's recommendation once replicated,
        # else the best search trial's optimizer; the plots of "the best" show that one.
        chosen = answer.recommended
        best_opt = chosen.optimizer if chosen is not None else ranking[0].optimizer
        importances = _save_search_plots(
            out, complete, ranking, best_opt, direction, metric, colors
        )
        curve = _save_lr_plot(out, complete, summary, direction, metric)
    _save_replicates(out, answer, compare)

    answer_path = out.out_dir / "answer.json"
    answer_path.write_text(answer.dumps())
    text = _summary_markdown(summary, ranking, importances, curve, out.files, out.skipped)
    summary_path = out.out_dir / "summary.md"
    summary_path.write_text(text)
    out.files["summary"] = summary_path
    out.files["answer"] = answer_path
    return Report(
        files=out.files,
        summary_text=text,
        skipped=out.skipped,
        off_scale=out.off_scale,
        answer=answer,
    )


@dataclass
class _Output:
    """The report's folder and what :func:`write_report` put there so far: the written files,
    the reason each skipped plot was skipped, and each plot's count of off-scale points."""

    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    off_scale: dict[str, int] = field(default_factory=dict)

    def save(self, name: str, fig: Figure, off: int = 0) -> None:
        """Write ``fig`` to ``<name>.png`` and record it, with ``off`` points drawn at its edge."""
        path = self.out_dir / f"{name}.png"
        fig.savefig(path, dpi=_DPI)
        self.files[name] = path
        self.off_scale[name] = off


def _save_search_plots(
    out: _Output,
    complete: Sequence[FrozenTrial],
    ranking: Sequence[OptimizerResult],
    best_opt: str,
    direction: str,
    metric: str,
    colors: Mapping[str, Any],
) -> dict[str, dict[str, float] | str]:
    """Save the plots of the complete search trials (or why each is skipped): importances,
    the best optimizer's parallel coordinates, the best per optimizer, the score against the
    learning rate and by schedule. Returns the importances, for ``summary.md``."""
    importances = _importances(complete, best_opt)
    if all(isinstance(v, str) for v in importances.values()):
        out.skipped["param_importances"] = "; ".join(f"{k}: {v}" for k, v in importances.items())
    else:
        out.save("param_importances", _plot_importances(importances, metric))
    own = [t for t in complete if optimizer_of(t) == best_opt]
    why = plots.sparse_reason(own, f"a parallel-coordinates plot of {best_opt}")
    if why is None:
        out.save("parallel_coordinates", _plot_parallel(own, best_opt, direction, metric))
    else:
        out.skipped["parallel_coordinates"] = why
    out.save("best_per_optimizer", *_plot_best_per_optimizer(ranking, direction, metric, colors))
    why = plots.sparse_reason(complete, "a scatter against the learning rate")
    if why is None:
        order = [r.optimizer for r in ranking]
        out.save("score_vs_lr", *plots.plot_score_vs_lr(complete, order, direction, metric))
    else:
        out.skipped["score_vs_lr"] = why
    why = plots.sparse_reason(complete, "a comparison of schedules and warmups")
    if why is None:
        out.save("score_by_schedule", *plots.plot_score_by_schedule(complete, direction, metric))
    else:
        out.skipped["score_by_schedule"] = why
    return importances


def _save_lr_plot(
    out: _Output,
    complete: Sequence[FrozenTrial],
    summary: StudySummary,
    direction: str,
    metric: str,
) -> LrCurve | None:
    """Save the learning rate of the configuration the Best block shows, and nothing else's (or
    why it is skipped); returns its curve, or None when there is none."""
    best = next((t for t in complete if t.number == summary.best_number), None)
    best = best or _best_search_trial(complete, direction)
    curve_or_reason = _best_lr_curve(best)
    if isinstance(curve_or_reason, str):
        out.skipped["lr_schedule"] = curve_or_reason
        return None
    out.save("lr_schedule", _plot_lr(curve_or_reason, best, metric, summary))
    return curve_or_reason


def _save_replicates(out: _Output, answer: Answer, compare: CompareConfig) -> None:
    """Save the replicates' plot, or record why there is none yet."""
    if answer.replicated:
        out.save("replicates", plots.plot_replicates(answer))
    elif compare.seeds == 0:
        out.skipped["replicates"] = "replicates are off (compare.seeds: 0)"
    else:
        out.skipped["replicates"] = "no replicate of a finalist has finished yet"


def _best_search_trial(complete: Sequence[FrozenTrial], direction: str) -> FrozenTrial:
    sign = -1.0 if direction == "maximize" else 1.0
    return min(complete, key=lambda t: (sign * float(t.value), t.number))


# --------------------------------------------------------------------------- data


def best_per_optimizer(study: optuna.Study) -> list[OptimizerResult]:
    """Each optimizer the study tried, best first (by its best complete value).

    Optimizers with no complete trial come last, in name order, with their counts.

    Example::

        >>> [r.optimizer for r in best_per_optimizer(study)]           # doctest: +SKIP
        ['adamw', 'nesterov', 'adagrad']
    """

    # The search's trials: a replicate is never an optimizer's best trial (tuner.results.summary).
    trials = [t for t in study.get_trials(deepcopy=False) if not is_replicate(t)]
    return _rank_optimizers(trials, study.direction.name.lower())


def lr_curve(config: Mapping[str, Any], total_steps: int, *, max_points: int = 5000) -> LrCurve:
    """The learning rate of the first param group at every optimizer step of ``config``.

    The optimizer and scheduler are built exactly as a trial builds them, on a dummy
    parameter. Up to ``max_points`` steps the scheduler is stepped and the lr read back; a
    longer run is sampled at ``max_points`` steps from the scheduler's pure curve (stepping a
    million times would take minutes).

    Example::

        >>> cfg = {"optimizer": "sgd", "lr": 0.1, "schedule": "cosine", "warmup": {"steps": 2}}
        >>> c = lr_curve(cfg, 10)
        >>> c.lrs[0], c.lrs[2], c.warmup_steps
        (0.0, 0.1, 2)
    """
    import torch

    cfg = load_optimizer_config(config)
    dummy = torch.zeros(1, requires_grad=True)
    optimizer, scheduler = build_optimizer([dummy], cfg, total_steps)
    warmup = warmup_steps(cfg.warmup, total_steps)
    curve = getattr(scheduler, "curve", None)
    if total_steps > max_points and curve is not None:
        steps = sorted(set(np.linspace(0, total_steps - 1, max_points).round().astype(int)))
        steps = sorted({*map(int, steps), *([warmup] if warmup else [])})
        base = scheduler.base_lrs[0]
        return LrCurve(steps, [float(curve.lr(s, base)) for s in steps], warmup, total_steps)
    lrs = []
    for _ in range(total_steps):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()  # no gradient: a no-op that keeps the scheduler's order check quiet
        scheduler.step()
    return LrCurve(list(range(total_steps)), lrs, warmup, total_steps)


def param_importances(
    trials: Sequence[FrozenTrial], params: Sequence[str] | None = None
) -> dict[str, float]:
    """fANOVA importances (summing to 1) of ``params`` over the complete ``trials``.

    ``params`` defaults to those every trial has; a conditional hyperparameter (``adam.lr``,
    ``schedule.step.gamma``) only counts over the trials that sampled it. The result is
    seeded, so the same trials give the same importances. Raises ValueError when fewer than
    :data:`MIN_IMPORTANCE_TRIALS` trials remain or no parameter varies.
    """
    trials = _complete(trials)
    if params is None:
        params = _common_params(trials)
    params = [p for p in params if _varies(trials, p)]
    trials = [t for t in trials if set(params) <= set(t.params)]
    if len(trials) < MIN_IMPORTANCE_TRIALS:
        raise ValueError(
            f"importances need at least {MIN_IMPORTANCE_TRIALS} complete trials, "
            f"but got {len(trials)}"
        )
    if not params:
        raise ValueError("no hyperparameter varies across these trials")
    study = optuna.create_study()  # in memory: the trials are copied, the storage untouched
    study.add_trials(
        optuna.trial.create_trial(
            params={p: t.params[p] for p in params},
            distributions={p: t.distributions[p] for p in params},
            value=t.value,
        )
        for t in trials
    )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return optuna.importance.get_param_importances(study, evaluator=evaluator, params=params)


def _complete(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    return [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
    ]


def _rank_optimizers(trials: Sequence[FrozenTrial], direction: str) -> list[OptimizerResult]:
    sign = -1.0 if direction == "maximize" else 1.0
    grouped: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        name = optimizer_of(t)
        if name is not None:
            grouped.setdefault(name, []).append(t)
    results = []
    for name, ts in grouped.items():
        counts: dict[str, int] = {}
        for t in ts:
            counts[outcome_of(t)] = counts.get(outcome_of(t), 0) + 1
        done = _complete(ts)
        best = min(done, key=lambda t: sign * t.value) if done else None
        results.append(
            OptimizerResult(
                optimizer=name,
                numbers=tuple(t.number for t in done),
                values=tuple(float(t.value) for t in done),
                best_value=None if best is None else float(best.value),
                best_number=None if best is None else best.number,
                counts=counts,
            )
        )

    def rank(r: OptimizerResult) -> tuple[bool, float, str]:
        return (
            r.best_value is None,
            0.0 if r.best_value is None else sign * r.best_value,
            r.optimizer,
        )

    return sorted(results, key=rank)


def _common_params(trials: Sequence[FrozenTrial]) -> list[str]:
    if not trials:
        return []
    common = set(trials[0].params)
    for t in trials[1:]:
        common &= set(t.params)
    return sorted(common)


def _varies(trials: Sequence[FrozenTrial], param: str) -> bool:
    values = {json.dumps(t.params[param]) for t in trials if param in t.params}
    return len(values) > 1


def _importances(
    complete: Sequence[FrozenTrial], best_optimizer: str
) -> dict[str, dict[str, float] | str]:
    """Two views, each importances or the reason it is missing: params every trial shares
    (with the learning rate compared across optimizers), and the best optimizer's own."""
    views: dict[str, dict[str, float] | str] = {}
    shared = _with_shared_lr(complete)
    try:
        views[f"all complete trials ({len(complete)})"] = param_importances(shared)
    except ValueError as exc:
        views[f"all complete trials ({len(complete)})"] = str(exc)
    own = [t for t in complete if optimizer_of(t) == best_optimizer]
    mine = [p for p in _common_params(own) if p.startswith(f"{best_optimizer}.")]
    mine += [p for p in _common_params(own) if not p.startswith(f"{best_optimizer}.")]
    mine = [p for p in mine if p != "optimizer"]
    title = f"{best_optimizer} trials ({len(own)})"
    try:
        views[title] = param_importances(own, mine)
    except ValueError as exc:
        views[title] = str(exc)
    return views


def _with_shared_lr(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Copies of ``trials`` with one ``lr`` parameter from the configuration.

    Each optimizer samples its own ``<optimizer>.lr``, so no lr parameter is common to all
    trials; yet "how much does the learning rate matter" is the first question asked.
    """
    lrs = [(t.user_attrs.get(ATTR.CONFIG) or {}).get("lr") for t in trials]
    if any(not isinstance(lr, int | float) or lr <= 0 for lr in lrs) or len(set(lrs)) < 2:
        return list(trials)
    dist = FloatDistribution(min(lrs), max(lrs), log=True)
    out = []
    for t, lr in zip(trials, lrs, strict=True):
        own_lr = f"{optimizer_of(t)}.lr"
        params = {p: v for p, v in t.params.items() if p != own_lr}
        dists = {p: t.distributions[p] for p in params}
        out.append(
            optuna.trial.create_trial(
                params={**params, "lr": float(lr)},
                distributions={**dists, "lr": dist},
                value=t.value,
            )
        )
    return out


def _best_lr_curve(best: FrozenTrial) -> LrCurve | str:
    config = best.user_attrs.get(ATTR.CONFIG)
    total = best.user_attrs.get(ATTR.TOTAL_STEPS)
    if not config:
        return f"the best trial ({best.number}) has no recorded configuration"
    if not isinstance(total, int) or total < 1:
        return (
            f"the best trial ({best.number}) recorded no total_steps "
            "(its objective did not call trial.build_optimizer)"
        )
    try:
        return lr_curve(config, total)
    except Exception as exc:  # a custom schedule's module may not import here
        return f"the best trial's learning rate could not be computed: {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- plots


def _optimizer_colors(ranking: Sequence[OptimizerResult]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(ranking) <= 10 else "tab20"]
    return {r.optimizer: cmap(i % cmap.N) for i, r in enumerate(ranking)}


def _log_scale(values: Sequence[float]) -> bool:
    """A metric spanning two decades or more (a loss, usually) reads better on a log axis."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 100


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _plot_history(
    trials: Sequence[FrozenTrial], direction: str, metric: str, colors: Mapping[str, Any]
) -> tuple[Figure, int]:
    others = {o: [t.number for t in trials if outcome_of(t) == o] for o in _OTHER_OUTCOMES}
    others = {o: n for o, n in others.items() if n}
    fig = Figure(layout="constrained", figsize=(9, 5.5 if others else 4.5))
    if others:
        ax, strip = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    else:
        ax, strip = fig.subplots(), None
    complete = sorted(_complete(trials), key=lambda t: t.number)
    # One collapsed trial must not squash the rest: the axis spans the bulk of the values.
    value_range = plots.robust_range([float(t.value) for t in complete])
    off = _scatter_history(ax, complete, colors, value_range)
    if complete:
        running = np.maximum if direction == "maximize" else np.minimum
        best = list(running.accumulate([float(t.value) for t in complete]))
        last = max(t.number for t in trials)
        xs = [t.number for t in complete] + [last]
        ax.step(xs, best + best[-1:], where="post", color="black", lw=1.5, label="best so far")
        value_range.apply(ax)
        plots.note_off_scale(ax, off, value_range)
        ax.legend(title="optimizer (complete)", fontsize=8, title_fontsize=8, loc="best")
    else:
        ax.text(
            0.5,
            0.5,
            "no complete trial yet",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=12,
            color="0.4",
        )
        ax.set_yticks([])
    ax.set_ylabel(f"{metric} ({direction})")
    ax.grid(alpha=0.3)
    ax.set_title(f"Optimization history: {metric} per trial ({len(trials)} trials)")
    bottom = ax
    if strip is not None:
        _draw_outcome_strip(strip, others)
        bottom = strip
    bottom.set_xlabel("trial number")
    bottom.xaxis.get_major_locator().set_params(integer=True)
    return fig, off


def _scatter_history(
    ax: Axes,
    complete: Sequence[FrozenTrial],
    colors: Mapping[str, Any],
    value_range: plots.ValueRange,
) -> int:
    """Scatter the complete trials' values by trial number, one colour per optimizer (grey for
    a trial of none known); returns how many points were drawn at the axis's edge."""
    off = 0
    for name in colors:
        mine = [t for t in complete if optimizer_of(t) == name]
        if mine:
            off += plots.scatter_clipped(
                ax,
                [t.number for t in mine],
                [float(t.value) for t in mine],
                value_range,
                color=colors[name],
                s=28,
                label=f"{name} ({len(mine)})",
                zorder=3,
            )
    unknown = [t for t in complete if optimizer_of(t) not in colors]
    if unknown:
        off += plots.scatter_clipped(
            ax,
            [t.number for t in unknown],
            [float(t.value) for t in unknown],
            value_range,
            color="0.6",
            s=28,
        )
    return off


def _draw_outcome_strip(strip: Axes, others: Mapping[str, list[int]]) -> None:
    """Mark the trials without a value on ``strip``, one row per outcome (pruned, diverged...)."""
    rows = list(others)
    for i, outcome in enumerate(rows):
        marker, color = _OUTCOME_STYLE.get(outcome, ("o", "0.3"))
        strip.scatter(others[outcome], [i] * len(others[outcome]), marker=marker, color=color, s=30)
    strip.set_yticks(range(len(rows)))
    strip.set_yticklabels([f"{o} ({len(others[o])})" for o in rows], fontsize=8)
    strip.set_ylim(-0.6, len(rows) - 0.4)
    strip.invert_yaxis()
    strip.grid(axis="x", alpha=0.3)
    strip.set_ylabel("no value", fontsize=8)


def _plot_importances(views: Mapping[str, dict[str, float] | str], metric: str) -> Figure:
    fig = Figure(
        layout="constrained", figsize=(6 * len(views), 0.9 + 0.45 * max(_n_bars(views), 3))
    )
    axes = fig.subplots(1, len(views), squeeze=False)[0]
    for ax, (title, result) in zip(axes, views.items(), strict=True):
        ax.set_title(title, fontsize=10)
        if isinstance(result, str):
            ax.text(
                0.5,
                0.5,
                f"not computed:\n{result}",
                ha="center",
                va="center",
                wrap=True,
                transform=ax.transAxes,
                color="0.4",
            )
            ax.set_axis_off()
            continue
        names = list(result)[::-1]  # most important on top
        values = [result[n] for n in names]
        bars = ax.barh(names, values, color="tab:blue")
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize=8)
        ax.set_xlim(0, max(1.0, max(values) * 1.15))
        ax.set_xlabel(f"importance for {metric} (fANOVA, sums to 1)")
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Hyperparameter importances for {metric}")
    return fig


def _n_bars(views: Mapping[str, dict[str, float] | str]) -> int:
    return max((len(v) for v in views.values() if isinstance(v, dict)), default=0)


@dataclass(frozen=True)
class _Axis:
    label: str
    positions: list[float]  # each trial's place on the axis, 0..1; NaN when it has no value
    ticks: list[tuple[float, str]]


def _param_axis(name: str, trials: Sequence[FrozenTrial]) -> _Axis:
    dist: BaseDistribution = next(t.distributions[name] for t in trials if name in t.params)
    raw = [t.params.get(name) for t in trials]
    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        span = max(len(choices) - 1, 1)
        pos = [math.nan if v is None else choices.index(v) / span for v in raw]
        return _Axis(name, pos, [(i / span, _fmt(c)) for i, c in enumerate(choices)])
    assert isinstance(dist, FloatDistribution | IntDistribution)
    return _numeric_axis(name, raw, dist.low, dist.high, dist.log)


def _numeric_axis(
    label: str, raw: Sequence[float | None], low: float, high: float, log: bool
) -> _Axis:
    f = math.log10 if log else float
    lo, hi = f(low), f(high)
    span = (hi - lo) or 1.0
    pos = [math.nan if v is None else (f(v) - lo) / span for v in raw]
    if log:
        ticks = [(k, 10**k) for k in range(math.ceil(lo), math.floor(hi) + 1)]
        if len(ticks) < 2:
            ticks = [(lo, low), (hi, high)]
    else:
        ticks = [(x, x) for x in np.linspace(lo, hi, 5)]
    return _Axis(label, pos, [((k - lo) / span, _fmt(float(v))) for k, v in ticks])


def _plot_parallel(
    trials: Sequence[FrozenTrial], optimizer: str, direction: str, metric: str
) -> Figure:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm, Normalize

    own = sorted({p for t in trials for p in t.params if p.startswith(f"{optimizer}.")})
    shared = sorted({p for t in trials for p in t.params if p.startswith(("schedule", "warmup"))})
    values = [float(t.value) for t in trials]
    log = _log_scale(values)
    lo, hi = min(values), max(values)
    if lo == hi:
        lo, hi = (lo / 2, hi * 2) if log or lo > 0 else (lo - 1, hi + 1)
    axes = [_param_axis(p, trials) for p in [*own, *shared]]
    axes.append(_numeric_axis(metric, values, lo, hi, log))
    fig = Figure(layout="constrained", figsize=(max(6.0, 1.6 * len(axes) + 1.5), 5))
    ax = fig.subplots()
    cmap = colormaps["viridis" if direction == "maximize" else "viridis_r"]
    norm = (LogNorm if log else Normalize)(vmin=lo, vmax=hi)
    # Draw the worst first so the best lines lie on top.
    order = sorted(range(len(trials)), key=lambda i: values[i], reverse=direction == "minimize")
    xs = list(range(len(axes)))
    for i in order:
        ys = [a.positions[i] for a in axes]
        ax.plot(xs, ys, color=cmap(norm(values[i])), alpha=0.75, lw=1.2)
    best = order[-1]
    ax.plot(
        xs,
        [a.positions[best] for a in axes],
        color="tab:red",
        lw=2.5,
    )
    for x, a in enumerate(axes):
        ax.axvline(x, color="0.3", lw=0.8)
        for y, text in a.ticks:
            ax.text(x + 0.04, y, text, fontsize=7, va="center", color="0.2")
        if any(math.isnan(p) for p in a.positions):
            ax.text(x + 0.04, -0.02, "(not sampled: gap)", fontsize=6, va="top", color="0.5")
    ax.set_xticks(xs)
    ax.set_xticklabels([a.label for a in axes], rotation=20, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.3, len(axes) - 0.4)
    ax.set_ylim(-0.08, 1.05)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"{metric} ({direction})")
    ax.set_title(
        f"{optimizer}: hyperparameters vs {metric} ({len(trials)} complete trials)\n"
        f"red: the best, trial {trials[best].number}; log axes for log-scale hyperparameters",
        fontsize=10,
    )
    return fig


def _plot_best_per_optimizer(
    ranking: Sequence[OptimizerResult], direction: str, metric: str, colors: Mapping[str, Any]
) -> tuple[Figure, int]:
    fig = Figure(layout="constrained", figsize=(9, 1.2 + 0.7 * len(ranking)))
    ax = fig.subplots()
    rng = np.random.default_rng(0)  # the jitter is cosmetic; keep it reproducible
    value_range = plots.robust_range([v for r in ranking for v in r.values])
    off = 0
    for row, r in enumerate(ranking):
        if r.values:
            jitter = rng.uniform(-0.18, 0.18, len(r.values))
            off += plots.scatter_clipped(
                ax,
                list(row + jitter),
                list(r.values),
                value_range,
                axis="x",
                color=colors[r.optimizer],
                alpha=0.55,
                s=22,
            )
            ax.scatter(
                [value_range.clip(r.best_value)],
                [row],
                marker="D",
                s=70,
                color=colors[r.optimizer],
                edgecolor="black",
                zorder=3,
            )
        else:
            ax.text(
                0.5,
                row,
                "no complete trial",
                transform=ax.get_yaxis_transform(),
                ha="center",
                va="center",
                fontsize=8,
                color="0.4",
            )
    labels = []
    for r in ranking:
        extra = ", ".join(f"{r.counts[o]} {o}" for o in _OTHER_OUTCOMES if r.counts.get(o))
        head = f"{r.optimizer}" + (
            f": best {r.best_value:.4g} (trial {r.best_number})" if r.best_value is not None else ""
        )
        labels.append(f"{head}\n{r.complete} complete" + (f", {extra}" if extra else ""))
    ax.set_yticks(range(len(ranking)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(len(ranking) - 0.5, -0.5)  # best first, at the top
    value_range.apply(ax, axis="x")
    plots.note_off_scale(ax, off, value_range)
    ax.set_xlabel(f"{metric} of complete trials ({direction}: {_better_side(direction)})")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{metric} per optimizer in the search, best first (◆ = its best)")
    return fig, off


def _better_side(direction: str) -> str:
    return "higher is better" if direction == "maximize" else "lower is better"


def _plot_lr(curve: LrCurve, best: FrozenTrial, metric: str, summary: StudySummary) -> Figure:
    config = best.user_attrs.get(ATTR.CONFIG) or {}
    schedule = config.get("schedule") or {}
    sched_name = schedule.get("name", "constant") if isinstance(schedule, dict) else schedule
    fig = Figure(layout="constrained", figsize=(8, 4.2))
    ax = fig.subplots()
    ax.plot(curve.steps, curve.lrs, color="tab:blue", lw=1.8, label="learning rate")
    if curve.warmup_steps:
        ax.axvline(
            curve.warmup_steps,
            color="tab:orange",
            ls="--",
            lw=1,
            label=f"warmup ends (step {curve.warmup_steps})",
        )
    peak = int(np.argmax(curve.lrs))
    ax.annotate(
        f"peak {curve.lrs[peak]:.3g}",
        (curve.steps[peak], curve.lrs[peak]),
        xytext=(8, -4),
        textcoords="offset points",
        fontsize=8,
        va="top",
    )
    ax.set_xlabel(f"optimizer step (of {curve.total_steps})")
    ax.set_ylabel("learning rate (param group 0)")
    ax.set_ylim(bottom=0)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if summary.best_seeds and summary.best_value is not None:
        what = (
            f"the recommended configuration (trial {best.number}'s, {metric} "
            f"{summary.best_value:.4g} over {summary.best_seeds} seeds)"
        )
    else:
        value = "" if best.value is None else f", {metric} {best.value:.4g}"
        what = f"the best trial ({best.number}{value})"
    ax.set_title(
        f"Learning rate of {what}\n"
        f"{config.get('optimizer', '?')}, {sched_name} schedule, "
        + (f"{curve.warmup_steps} warmup steps" if curve.warmup_steps else "no warmup"),
        fontsize=10,
    )
    return fig


# --------------------------------------------------------------------------- summary.md


def _describe_curve(curve: LrCurve, config: Mapping[str, Any]) -> str:

    peak = int(np.argmax(curve.lrs))
    warmup = f" (the end of {curve.warmup_steps} warmup steps)" if curve.warmup_steps else ""
    return (
        f"Its learning rate ({config.get('optimizer', '?')}, {describe_config(config)}) over "
        f"{curve.total_steps} optimizer steps: starts at "
        f"{curve.lrs[0]:.4g}, peaks at {curve.lrs[peak]:.4g} at step {curve.steps[peak]}"
        f"{warmup}, ends at {curve.lrs[-1]:.4g}."
    )


_PLOT_TITLES = {
    "replicates": "Finalists re-run with fresh seeds: means, 95% intervals, tiers",
    "score_vs_lr": "Score against the learning rate, per optimizer",
    "score_by_schedule": "Score by schedule and by warmup",
    "optimization_history": "Optimization history",
    "param_importances": "Hyperparameter importances",
    "parallel_coordinates": "Parallel coordinates of the best optimizer",
    "best_per_optimizer": "Best value per optimizer",
    "lr_schedule": "Learning-rate schedule of the best configuration",
}


def _summary_markdown(
    summary: StudySummary,
    ranking: Sequence[OptimizerResult],
    importances: Mapping[str, dict[str, float] | str],
    curve: LrCurve | None,
    files: Mapping[str, Path],
    skipped: Mapping[str, str],
) -> str:
    metric, direction = summary.metric, summary.direction
    lines = [f"# Study `{summary.name}`", ""]
    if summary.answer is not None:
        lines += ["## The answer", "", describe_answer(summary.answer), ""]
    lines.append(f"- objective: {direction} `{metric}` ({_better_side(direction)})")
    budget = f" of a budget of {summary.budget}" if summary.budget is not None else ""
    total = sum(summary.counts.values())
    lines.append(f"- finished trials: {summary.finished}{budget} ({total} trials in all)")
    lines += ["", "## Trials by outcome", "", "| outcome | trials |", "|---|---:|"]
    order = SHOWN_OUTCOMES
    keys = [k for k in order if summary.counts.get(k)]
    keys += sorted(k for k in summary.counts if k not in order)
    lines += [f"| {k} | {summary.counts[k]} |" for k in keys] or ["| (none) | 0 |"]
    lines += ["", "## Best", ""]
    lines += _best_section(summary, curve)
    if ranking:
        lines += ["", "## Best per optimizer in the search", ""]
        lines += _ranking_table(ranking, metric)
    if importances:
        lines += ["", "## Hyperparameter importances (fANOVA)", ""]
        for title, result in importances.items():
            if isinstance(result, str):
                lines.append(f"- {title}: not computed ({result})")
            else:
                top = ", ".join(f"`{p}` {v:.2f}" for p, v in result.items())
                lines.append(f"- {title}: {top}")
    lines += ["", "## Plots", ""]
    for name, title in _PLOT_TITLES.items():
        if name in files:
            lines.append(f"- {title}: `{files[name].name}`")
        else:
            lines.append(f"- {title}: not written ({skipped.get(name, 'not available')})")
    return "\n".join(lines) + "\n"


def _best_section(summary: StudySummary, curve: LrCurve | None) -> list[str]:
    """The lines of ``summary.md``'s Best section: the best value, its configuration (YAML)
    and its learning rate in words, or that there is no best yet."""
    metric = summary.metric
    if summary.best_value is None:
        return ["No complete trial yet: there is no best value or configuration."]
    if summary.best_seeds:
        lines = [
            f"Best `{metric}`: **{summary.best_text()}**, the answer's recommendation. "
            f"The best search value, {summary.search_text()}."
        ]
    else:
        lines = [f"Best `{metric}`: **{summary.best_value:.6g}** (trial {summary.best_number})"]
    if summary.best_config:
        import yaml

        doc = yaml.safe_dump(summary.best_config, sort_keys=False, default_flow_style=None)
        lines += ["", "```yaml", doc.rstrip(), "```"]
    if curve is not None:
        lines += ["", _describe_curve(curve, summary.best_config or {})]
    return lines


def _ranking_table(ranking: Sequence[OptimizerResult], metric: str) -> list[str]:
    """The markdown table of each optimizer's best search value and counts by outcome."""
    cols = (Outcome.COMPLETE.value, *_OTHER_OUTCOMES)
    lines = [f"| rank | optimizer | best {metric} | trial | " + " | ".join(cols) + " |"]
    lines.append("|---:|---|---:|---:|" + "---:|" * len(cols))
    for i, r in enumerate(ranking, 1):
        best = "—" if r.best_value is None else f"{r.best_value:.6g}"
        trial = "—" if r.best_number is None else str(r.best_number)
        counts = " | ".join(str(r.counts.get(c, 0)) for c in cols)
        lines.append(f"| {i} | {r.optimizer} | {best} | {trial} | {counts} |")
    return lines


def report_study_file(
    study_file: StudyFile, out_dir: Path | None = None
) -> tuple[optuna.Study, Report]:
    """``tuner report``: the study's report, in ``out_dir`` (default ``reports/<study name>``)."""
    study = load_study(study_file)
    # The study name is any string (``../../x`` too): it becomes one plain path component.
    out_dir = out_dir or Path("reports") / safe_filename(study_file.name)
    report = write_report(
        study, out_dir, budget=study_file.budget.trials, compare=study_file.compare
    )
    return study, report


def log_report(study_file: StudyFile, study: optuna.Study, written: Report) -> str:
    """Log the report's files to the study's MLflow parent run; returns what to tell the user.

    A study with tracking off, or without a parent run yet, is not logged (the files are
    written locally either way); a tracking server that does not answer is an error.
    """
    parent = study.user_attrs.get(ATTR.PARENT_RUN)
    if study_file.mlflow.tracking_uri is None or parent is None:
        why = (
            "tracking is off"
            if parent is None and study_file.mlflow.tracking_uri is None
            else "the study has no MLflow parent run yet (run `tuner sync` first)"
        )
        return f"not logged to MLflow: {why}"
    tracker = make_tracker(study_file.mlflow.tracking_uri, experiment=study_file.mlflow.experiment)
    try:
        tracker.open_study(
            study_name=study_file.name,
            experiment=study_file.mlflow.experiment,
            study_yaml_text=study_file.raw_text,
            tags={},
            existing_parent_run_id=parent,
        )
        tracker.update_study(
            metrics={},
            artifacts={f"report/{p.name}": p.read_bytes() for p in written.files.values()},
        )
        tracker.end_study()
    finally:
        delivered = tracker.close(timeout=60.0)
    if not delivered:
        raise TunerError(
            "the report could not be logged to MLflow (the tracking server did not answer)",
            hint="the files are written locally; run `tuner report` again later",
        )
    return f"logged to MLflow run {parent}"
