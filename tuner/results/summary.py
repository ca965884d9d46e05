"""What a study has found so far: counts by outcome, the best, the best per optimizer.

*The best* is one notion everywhere (this summary, ``tuner status``, the progress line, the
report, ``tuner best``, the MLflow parent run): once replicates have given an answer
(docs/answer.md), the answer's recommended optimizer with its replicate mean; before that, or with
replicates off, the best search trial. The best search trial's value is labelled as a search
value (one run, the best of many, so biased upward), and a replicate is never the best trial.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from tuner.core.durations import format_duration
from tuner.core.keys import ATTR, TAG
from tuner.core.redact import redact
from tuner.core.trials import FINISHED_OUTCOMES, SHOWN_OUTCOMES, outcome_of
from tuner.results.compare import (
    Answer,
    compute_answer,
    describe_answer,
    format_bytes,
    is_replicate,
)
from tuner.search import describe_range_test

if TYPE_CHECKING:
    from tuner.config.studyfile import CompareConfig
    from tuner.tracking import Tracker

__all__ = [
    "BestOf",
    "StudySummary",
    "mlflow_view",
    "study_results",
    "summarize",
    "update_parent_run",
]


@dataclass(frozen=True)
class BestOf:
    """The best complete trial of one optimizer."""

    optimizer: str
    value: float
    number: int
    trials: int


@dataclass
class StudySummary:
    """A study at a glance; ``format()`` renders it as the table ``tuner`` prints."""

    name: str
    direction: str
    metric: str
    budget: int | None
    counts: dict[str, int]
    # The best (see the module docstring): the answer's recommendation once replicated,
    # else the best search trial; best_number is the search trial whose configuration it is.
    best_value: float | None = None
    best_number: int | None = None
    best_config: dict[str, Any] | None = None
    best_ci95: tuple[float, float] | None = None
    best_seeds: int = 0  # replicates behind best_value; 0: it is a search value
    # The best search trial, never a replicate.
    search_best_value: float | None = None
    search_best_number: int | None = None
    search_best_optimizer: str | None = None
    per_optimizer: list[BestOf] = field(default_factory=list)
    running: list[FrozenTrial] = field(default_factory=list)
    stop_reason: str | None = None
    search_notes: list[str] = field(default_factory=list)
    range_test_epochs: float | None = None
    answer: Answer | None = None  # docs/answer.md; replicates are not in the counts above
    mlflow_view: str | None = None  # how to open the study's runs in the MLflow UI

    def best_text(self) -> str:
        """``0.9837 ± 0.004 (adamw, mean of 3 seeds of trial 4's configuration)``, or for a
        search value ``0.988889 (trial 1)``."""
        assert self.best_value is not None
        if not self.best_seeds:
            if self.answer is not None and self.answer.seeds > 0:
                # Replicates will give the answer; until then this is one search run.
                return f"{self.best_value:.6g} (trial {self.best_number}, a search value)"
            return f"{self.best_value:.6g} (trial {self.best_number})"
        text = f"{self.best_value:.6g}"
        if self.best_ci95 is not None:
            text += f" ± {(self.best_ci95[1] - self.best_ci95[0]) / 2:.2g}"
        optimizer = (self.best_config or {}).get("optimizer", "?")
        seeds = f"{self.best_seeds} seed{'s' if self.best_seeds != 1 else ''}"
        return f"{text} ({optimizer}, mean of {seeds} of trial {self.best_number}'s configuration)"

    def search_text(self) -> str:
        """The best search trial, labelled as a search value: one run, the best of many."""
        return (
            f"{self.search_best_value:.6g} (trial {self.search_best_number}, "
            f"{self.search_best_optimizer}; one search run, biased upward)"
        )

    @property
    def finished(self) -> int:
        """Trials that count toward the budget: complete, pruned and diverged."""
        return sum(self.counts.get(k, 0) for k in FINISHED_OUTCOMES)

    def format(self) -> str:
        """The summary as the table ``tuner`` prints: ``tuner status``, and a worker at its end."""
        lines = [f"study {self.name!r} ({self.direction} {self.metric})"]
        if self.answer is not None:
            lines.append(f"  answer            {self.answer.sentence()}")
        budget = f" of {self.budget}" if self.budget is not None else ""
        lines.append(f"  finished trials   {self.finished}{budget}")
        by_outcome = ", ".join(
            f"{k} {self.counts[k]}" for k in SHOWN_OUTCOMES if self.counts.get(k)
        )
        lines.append(f"  by outcome        {by_outcome or 'none yet'}")
        lines.extend(f"  {note}" for note in self.search_notes)
        if self.answer is not None and self.answer.replicates_planned:
            lines.extend(_replicate_lines(self.answer))
        if self.best_value is None:
            lines.append("  best              no complete trial yet")
        else:
            lines.append(f"  best {self.metric:<12} {self.best_text()}")
            for key, value in (self.best_config or {}).items():
                lines.append(f"    {key:<15} {_fmt(value)}")
            if self.best_seeds:
                lines.append(f"  best search value {self.search_text()}")
        if self.per_optimizer:
            lines.append("  best per optimizer (search values)")
            lines.append(f"    {'optimizer':<12}{'best':>12}{'trial':>8}{'complete':>10}")
            for row in self.per_optimizer:
                lines.append(
                    f"    {row.optimizer:<12}{row.value:>12.6g}{row.number:>8}{row.trials:>10}"
                )
        if self.mlflow_view:
            lines.append(f"  MLflow            {self.mlflow_view}")
        if self.running:
            lines.append("  running trials")
            lines.extend(_running_lines(self.running))
        return "\n".join(lines)


def _replicate_lines(answer: Answer) -> list[str]:
    """The replicates' progress, then a table of the finalists: each one's mean, interval,
    tier, speed and optimizer state, the recommended one marked."""
    lines = [
        f"  replicates        {answer.replicates_done} of {answer.replicates_planned} "
        f"({answer.seeds} seeds x {len(answer.finalists)} finalists, not in the "
        f"budget), {format_duration(answer.replicate_seconds)} of training"
    ]
    lines.append(
        f"    {'finalist':<12}{'mean':>10}{'95% interval':>24}{'tier':>6}"
        f"{'s/epoch':>10}{'opt. state':>12}"
    )
    recommended = answer.recommended if answer.replicated else None
    for f in answer.finalists:
        mean = "—" if f.mean is None else f"{f.mean:.4g}"
        ci = "—" if f.ci95 is None else f"[{f.ci95[0]:.4g}, {f.ci95[1]:.4g}]"
        spe = "—" if f.seconds_per_epoch is None else f"{f.seconds_per_epoch:.3g}"
        mark = "  recommended" if f is recommended else ""
        lines.append(
            f"    {f.optimizer:<12}{mean:>10}{ci:>24}{f.group:>6}{spe:>10}"
            f"{format_bytes(f.state_bytes):>12}{mark}"
        )
    return lines


def _running_lines(running: list[FrozenTrial]) -> list[str]:
    """One line per running trial: its number, host, device and how long it has run."""
    lines = []
    now = time.time()
    for t in running:
        started = t.datetime_start.timestamp() if t.datetime_start else now
        host = t.user_attrs.get(ATTR.HOST, "?")
        device = t.user_attrs.get(ATTR.DEVICE, "?")
        lines.append(
            f"    trial {t.number:<5} on {host} {device:<8} for {format_duration(now - started)}"
        )
    return lines


def summarize(
    study: optuna.Study, *, budget: int | None = None, compare: CompareConfig | None = None
) -> StudySummary:
    """Summarize ``study`` from its storage: its search trials, and with ``compare`` the
    answer from the replicates (:mod:`tuner.results.compare`)."""
    all_trials = study.get_trials(deepcopy=False)
    trials = [t for t in all_trials if not is_replicate(t)]
    counts: dict[str, int] = {}
    for t in trials:
        outcome = outcome_of(t)
        counts[outcome] = counts.get(outcome, 0) + 1
    summary = StudySummary(
        name=study.study_name,
        direction=study.direction.name.lower(),
        metric=str(study.user_attrs.get(ATTR.METRIC, "value")),
        budget=budget,
        counts=counts,
        running=[t for t in all_trials if t.state == TrialState.RUNNING],
    )
    _search_notes(summary, study.user_attrs)
    if compare is not None:
        summary.answer = compute_answer(study, compare, trials=all_trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return summary
    better = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    sign = -1.0 if better is max else 1.0
    # Ties go to the earlier trial, as the answer's finalists do.
    best = min(complete, key=lambda t: (sign * float(t.value), t.number))
    summary.search_best_value = best.value
    summary.search_best_number = best.number
    summary.search_best_optimizer = (best.user_attrs.get(ATTR.CONFIG) or {}).get("optimizer")
    summary.best_value = best.value
    summary.best_number = best.number
    summary.best_config = best.user_attrs.get(ATTR.CONFIG)
    recommended = summary.answer.recommended if summary.answer is not None else None
    if recommended is not None and recommended.mean is not None:
        summary.best_value = recommended.mean
        summary.best_number = recommended.trial
        summary.best_config = dict(recommended.config)
        summary.best_ci95 = recommended.ci95
        summary.best_seeds = len(recommended.replicates)
    by_opt: dict[str, list[FrozenTrial]] = {}
    for t in complete:
        name = (t.user_attrs.get(ATTR.CONFIG) or {}).get("optimizer", "?")
        by_opt.setdefault(name, []).append(t)
    rows = [
        BestOf(name, (b := better(ts, key=lambda t: t.value)).value, b.number, len(ts))
        for name, ts in by_opt.items()
    ]
    summary.per_optimizer = sorted(rows, key=lambda r: r.value, reverse=better is max)
    return summary


def _search_notes(summary: StudySummary, attrs: dict[str, Any]) -> None:
    """What the pre-search phase did: the range test's findings and the portfolio."""
    test = attrs.get(ATTR.LR_RANGE_TEST)
    summary.search_notes = describe_range_test(test)
    if test and not test.get("skipped"):
        summary.range_test_epochs = float(test.get("epochs", 0.0))
    portfolio = attrs.get(ATTR.PORTFOLIO)
    if portfolio:
        summary.search_notes.append(
            f"portfolio: {len(portfolio)} known-good first trials ({', '.join(portfolio)})"
        )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def mlflow_view(tracking_uri: str | None, experiment_id: str | None) -> str | None:
    """Where the study's runs are in the MLflow UI, on its model-training view.

    MLflow 3.17 picks the experiment page's view from the user's last choice (GenAI by default)
    unless the URL asks for ``workflowType=machine_learning``; the experiment also carries the
    ``mlflow.experimentKind`` tag that other MLflow 3 versions read.

    >>> mlflow_view("http://mlflow:5000", "3")
    'http://mlflow:5000/#/experiments/3?workflowType=machine_learning'
    >>> mlflow_view("sqlite:///mlflow.db", "1")  # doctest: +NORMALIZE_WHITESPACE
    'mlflow ui --backend-store-uri sqlite:///mlflow.db, then open
     http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning'
    """
    if not tracking_uri or experiment_id is None:
        return None
    page = f"#/experiments/{experiment_id}?workflowType=machine_learning"
    if tracking_uri.startswith(("http://", "https://")):
        return redact(f"{tracking_uri.rstrip('/')}/{page}")
    return (
        f"mlflow ui --backend-store-uri {redact(tracking_uri)}, then open "
        f"http://127.0.0.1:5000/{page}"
    )


def study_results(
    summary: StudySummary,
) -> tuple[dict[str, float], dict[str, str], dict[str, str | bytes]]:
    """The parent run's ``(metrics, tags, artifacts)`` for ``summary``: plain data the
    tracker sends as it is (tracking knows nothing of studies; docs/mlflow.md).

    Counts by outcome (``trials_complete``...), ``trials_finished``, the search's best as
    ``search_best_value`` and ``search_best_trial`` (also under their names before the answer
    led, ``best_value`` and ``best_trial``, so that dashboards and older runs still compare);
    once replicates gave an answer, the recommended optimizer's ``answer_mean``,
    ``answer_ci95_low``, ``answer_ci95_high``, ``answer_seconds_per_epoch`` and
    ``answer_state_bytes``; the best configuration (the recommended one) as
    ``best_config.yaml``; and, once replicates gave
    an answer (docs/answer.md), ``answer.json`` with the answer as the run's description and tags.
    Launch, worker and ``tuner sync`` all log the study's results through this one function.
    """
    metrics = {f"trials_{k}": float(v) for k, v in summary.counts.items()}
    metrics["trials_finished"] = float(summary.finished)
    tags: dict[str, str] = {}
    artifacts: dict[str, str | bytes] = {}
    if summary.search_best_value is not None:
        for prefix in ("search_", ""):
            metrics[f"{prefix}best_value"] = float(summary.search_best_value)
            metrics[f"{prefix}best_trial"] = float(summary.search_best_number or 0)
    answer = summary.answer
    recommended = answer.recommended if answer is not None else None
    if recommended is not None and recommended.mean is not None:
        # The runs table sorts and compares studies by what they concluded.
        metrics["answer_mean"] = float(recommended.mean)
        if recommended.ci95 is not None:
            metrics["answer_ci95_low"] = float(recommended.ci95[0])
            metrics["answer_ci95_high"] = float(recommended.ci95[1])
        if recommended.seconds_per_epoch is not None:
            metrics["answer_seconds_per_epoch"] = float(recommended.seconds_per_epoch)
        if recommended.state_bytes is not None:
            metrics["answer_state_bytes"] = float(recommended.state_bytes)
    if summary.best_config is not None:
        artifacts["best_config.yaml"] = yaml.safe_dump(summary.best_config, sort_keys=False)
    if answer is not None and answer.finalists:
        # The parent run leads with the answer: its description (MLflow's note) and a file.
        artifacts["answer.json"] = answer.dumps()
        tags["mlflow.note.content"] = describe_answer(answer)
        tags[TAG.ANSWER] = answer.sentence()
        tags[TAG.WINNER] = answer.finalists[0].optimizer
        if recommended is not None:
            tags[TAG.RECOMMENDED] = recommended.optimizer
    # What the pre-search phase found (tuner.search): the range test and the portfolio.
    if summary.range_test_epochs is not None:
        metrics["lr_range_test_epochs"] = float(summary.range_test_epochs)
    if summary.search_notes:
        artifacts["search_setup.txt"] = "\n".join(summary.search_notes) + "\n"
    return metrics, tags, artifacts


def update_parent_run(tracker: Tracker, summary: StudySummary) -> None:
    """Send the study's results (:func:`study_results`) to its MLflow parent run."""
    metrics, tags, artifacts = study_results(summary)
    tracker.update_study(metrics=metrics, tags=tags, artifacts=artifacts)
