"""The answer to "which optimizer?" (DESIGN §8): finalists re-run with fresh seeds, then tested.

After the search, the finalists (the best configuration of each of the top
``compare.finalists`` optimizers) are re-run ``compare.seeds`` times each. These *replicates*
are ordinary trials of the same study, run by the same workers, marked with the
``tuner:replicate`` user attribute; they never count toward ``budget.trials``.

Scheduling: :func:`next_replicate` is the worker loop's hook. Once the search budget is spent it
enqueues the next missing replicate (under the budget lock, so workers never run one twice);
a resumed launch finds the missing ones the same way. Interrupted replicates are simply missing
again; failed ones are data and are not retried.

Statistics, in :func:`compute_answer`:

- **Seeds are shared.** Replicate ``k`` of every finalist uses the same seed (common random
  numbers: the same initialization and data order), so two finalists are compared seed by seed
  and the noise that both share cancels.
- **Interval: Student's t.** The 95% interval of a finalist's mean is the t-interval
  ``mean ± t(0.975, n-1) · s / sqrt(n)``. With the 2 to 5 seeds a study can afford, a bootstrap
  percentile interval is far too narrow (3 values have 10 distinct resamples, and the interval
  never reaches past the extreme values), while the t-interval is exact for normal seed noise
  and honest about how little ``n`` is.
- **Tiers: paired t-test** (``scipy.stats.ttest_rel``, two-sided, alpha 0.05) on the per-seed
  differences to the tier's leader; Welch's t-test (``ttest_ind(equal_var=False)``) when fewer
  than two seeds are shared. Group 1 is the winner and every finalist not significantly
  different from it; group 2 starts at the best of the rest, and so on. Identical results
  (the same update rule under two names) have zero difference and are tied. There is no
  multiple-comparison correction: a tie is the cautious reading, and each finalist meets only
  its tier leader.

The search value of a finalist is not part of its mean: it was selected as the best of many
trials, so it is biased upward (the winner's curse); fresh seeds are not.

Example::

    >>> from tuner.compare import t_interval
    >>> [round(x, 4) for x in t_interval([0.98, 0.97, 0.99])]
    [0.9552, 1.0048]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.keys import ATTR

if TYPE_CHECKING:
    from tuner.studyfile import CompareConfig

__all__ = [
    "ALPHA",
    "INTERVAL_METHOD",
    "REPLICATE_ATTR",
    "TEST_METHOD",
    "Answer",
    "Finalist",
    "compute_answer",
    "describe_answer",
    "describe_config",
    "finalists",
    "is_replicate",
    "next_replicate",
    "replicate_counts",
    "replicate_of",
    "replicate_seed",
    "t_interval",
    "tied",
]

REPLICATE_ATTR = ATTR.REPLICATE
ALPHA = 0.05
INTERVAL_METHOD = "Student's t-interval of the replicate mean (95%)"
TEST_METHOD = (
    "paired t-test on per-seed differences to the tier leader (two-sided, alpha 0.05); "
    "Welch's t-test when fewer than two seeds are shared"
)

_CONFIG = ATTR.CONFIG
_OUTCOME = ATTR.OUTCOME
# A replicate with one of these states is done or on its way; any other (an interrupted one,
# or one lost with its worker and not queued again) is missing and runs again.
_PRESENT = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


# --------------------------------------------------------------------------- scheduling


def is_replicate(trial: FrozenTrial | optuna.Trial) -> bool:
    """Whether ``trial`` is a replicate run (not a search trial)."""
    return REPLICATE_ATTR in trial.user_attrs


def replicate_of(trial: FrozenTrial | optuna.Trial) -> dict[str, Any] | None:
    """The replicate record of ``trial``: ``{"of", "index", "seed", "config"}``, or None."""
    record = trial.user_attrs.get(REPLICATE_ATTR)
    return dict(record) if isinstance(record, Mapping) else None


def replicate_seed(base: int, index: int) -> int:
    """The seed of replicate ``index``, the same for every finalist (common random numbers).

    Search trial ``n`` uses ``(base * 1_000_003 + n) % 2**31`` (:func:`tuner.runner.trial_seed`);
    replicates live in the other half of that range, so no replicate repeats a search seed.
    """
    return (base * 1_000_003 + 2**30 + 7919 * (index + 1)) % (2**31)


def finalists(trials: Sequence[FrozenTrial], direction: str, n: int) -> list[FrozenTrial]:
    """The best complete search trial of each optimizer, for the ``n`` best optimizers.

    Ties break by trial number, so every worker picks the same finalists.
    """
    sign = -1.0 if direction == "maximize" else 1.0
    best: dict[str, FrozenTrial] = {}
    for t in trials:
        if t.state != TrialState.COMPLETE or is_replicate(t) or not _finite(t.value):
            continue
        name = _optimizer_of(t)
        if name is None:
            continue
        key = (sign * float(t.value), t.number)
        if name not in best or key < (sign * float(best[name].value), best[name].number):
            best[name] = t
    ranked = sorted(best.values(), key=lambda t: (sign * float(t.value), t.number))
    return ranked[:n]


def replicate_counts(study: optuna.Study) -> dict[TrialState, int]:
    """The study's replicate trials by state, counted in the database when it is one."""
    from tuner.trialdb import rdb_storage

    storage = rdb_storage(study)
    if storage is None:
        counts: dict[TrialState, int] = {}
        for t in study.get_trials(deepcopy=False):
            if is_replicate(t):
                counts[t.state] = counts.get(t.state, 0) + 1
        return counts
    from sqlalchemy import text

    with storage.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT t.state, COUNT(*) FROM trials t JOIN trial_user_attributes a "
                "ON a.trial_id = t.trial_id WHERE t.study_id = :sid AND a.key = :key "
                "GROUP BY t.state"
            ),
            {"sid": study._study_id, "key": REPLICATE_ATTR},
        ).all()
    return {TrialState[str(state).split(".")[-1]]: n for state, n in rows}


def planned(
    trials: Sequence[FrozenTrial], direction: str, compare: CompareConfig, base_seed: int
) -> list[dict[str, Any]]:
    """Every replicate the answer needs, finalist by finalist, seed by seed."""
    out = []
    for finalist in finalists(trials, direction, compare.finalists):
        for index in range(compare.seeds):
            out.append(
                {
                    "of": finalist.number,
                    "index": index,
                    "seed": replicate_seed(base_seed, index),
                    "config": finalist.user_attrs.get(_CONFIG),
                }
            )
    return out


def next_replicate(
    study: optuna.Study, direction: str, compare: CompareConfig, base_seed: int
) -> dict[str, Any] | None:
    """Enqueue the first missing replicate and return its record; None when none is missing.

    Call it under the budget lock (as the worker loop does), then ``study.ask()``: the record
    rides on the enqueued trial as its ``tuner:replicate`` user attribute.
    """
    if compare.seeds == 0:
        return None
    trials = study.get_trials(deepcopy=False)
    present = {
        (r["of"], r["index"])
        for t in trials
        if (r := replicate_of(t)) is not None
        and (t.state in _PRESENT or t.user_attrs.get(_OUTCOME) == "failed")
    }
    for record in planned(trials, direction, compare, base_seed):
        if (record["of"], record["index"]) not in present:
            study.enqueue_trial({}, user_attrs={REPLICATE_ATTR: record})
            return record
    return None


# --------------------------------------------------------------------------- statistics


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Student's t-interval of the mean of ``values``; None for fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    from scipy import stats

    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def tied(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[bool, float | None]:
    """Whether two finalists' replicates (seed -> value) are statistically tied, and the p-value.

    Paired t-test over the seeds both have (two or more); else Welch's t-test when each has two
    values or more; else there is too little to tell them apart (tied, p None).
    """
    from scipy import stats

    shared = sorted(set(a) & set(b))
    if len(shared) >= 2:
        diffs = [a[s] - b[s] for s in shared]
        if all(d == diffs[0] for d in diffs):
            # No spread in the differences: the t statistic is 0/0 (identical) or infinite.
            return (diffs[0] == 0.0, 1.0 if diffs[0] == 0.0 else 0.0)
        p = float(stats.ttest_rel([a[s] for s in shared], [b[s] for s in shared]).pvalue)
    elif len(a) >= 2 and len(b) >= 2:
        xs, ys = list(a.values()), list(b.values())
        if len(set(xs)) == 1 and len(set(ys)) == 1:
            return (xs[0] == ys[0], 1.0 if xs[0] == ys[0] else 0.0)
        p = float(stats.ttest_ind(xs, ys, equal_var=False).pvalue)
    else:
        return True, None
    return p >= ALPHA, p


@dataclass
class Finalist:
    """One optimizer's finalist: its configuration, search value, replicates and tier."""

    optimizer: str
    trial: int
    config: dict[str, Any]
    search_value: float
    replicates: dict[int, float] = field(default_factory=dict)  # seed -> value
    not_complete: int = 0  # replicates that failed, diverged or were pruned
    mean: float | None = None
    ci95: tuple[float, float] | None = None
    group: int = 0
    p_value: float | None = None  # against its tier's leader

    def to_json(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "config": self.config,
            "trial": self.trial,
            "search_value": self.search_value,
            "replicates": list(self.replicates.values()),
            "seeds": list(self.replicates),
            "mean": self.mean,
            "ci95": None if self.ci95 is None else list(self.ci95),
            "group": self.group,
        }


@dataclass
class Answer:
    """The answer of DESIGN §8; :meth:`to_json` is the document, :meth:`sentence` the summary."""

    study: str
    metric: str
    direction: str
    finalists: list[Finalist]
    seeds: int
    replicates_done: int = 0
    replicates_planned: int = 0
    replicate_seconds: float = 0.0

    @property
    def winner(self) -> Finalist | None:
        return self.finalists[0] if self.finalists else None

    @property
    def replicated(self) -> bool:
        return any(f.mean is not None for f in self.finalists)

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "metric": self.metric,
            "direction": self.direction,
            "winner": None if self.winner is None else self.winner.optimizer,
            "answer": self.sentence(),
            "method": {"interval": INTERVAL_METHOD, "test": TEST_METHOD}
            if self.replicated
            else {"interval": None, "test": None},
            "replicates": {
                "done": self.replicates_done,
                "planned": self.replicates_planned,
                "seconds": round(self.replicate_seconds, 3),
            },
            "optimizers": [f.to_json() for f in self.finalists],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    def sentence(self) -> str:
        """The answer in one sentence, e.g. "adamw (lr 3.4e-3, cosine, 5% warmup): 0.984 ±
        0.004 over 3 seeds; tied with yogi; ahead of nesterov"."""
        w = self.winner
        if w is None:
            return "no answer yet: no complete trial"
        head = f"{w.optimizer} ({describe_config(w.config)})"
        if not self.replicated:
            why = "replicates are off" if self.seeds == 0 else "no replicate has finished yet"
            others = ", ".join(f.optimizer for f in self.finalists[1:])
            tail = f"; then {others}" if others else ""
            return f"{head}: best search value {w.search_value:.4g} ({why}){tail}"
        assert w.mean is not None
        n = len(w.replicates)
        text = f"{head}: {w.mean:.4g}"
        if w.ci95 is not None:
            text += f" ± {(w.ci95[1] - w.ci95[0]) / 2:.2g}"
        text += f" over {n} seed{'s' if n != 1 else ''}"
        ties = [f.optimizer for f in self.finalists[1:] if f.group == w.group]
        ahead = [f.optimizer for f in self.finalists if f.group > w.group]
        if ties:
            text += f"; tied with {', '.join(ties)}"
        if ahead:
            text += f"; ahead of {', '.join(ahead)}"
        if len(self.finalists) == 1:
            text += "; the only finalist"
        if self.replicates_done < self.replicates_planned:
            text += f" ({self.replicates_done} of {self.replicates_planned} replicates so far)"
        return text


def describe_answer(answer: Answer) -> str:
    """The answer as Markdown: the sentence, then a table of the finalists (MLflow's note)."""
    lines = [f"**{answer.sentence()}**", ""]
    lines.append(f"| tier | optimizer | mean {answer.metric} | 95% interval | seeds | search |")
    lines.append("|---:|---|---:|---:|---:|---:|")
    for f in answer.finalists:
        mean = "—" if f.mean is None else f"{f.mean:.4g}"
        ci = "—" if f.ci95 is None else f"[{f.ci95[0]:.4g}, {f.ci95[1]:.4g}]"
        lines.append(
            f"| {f.group} | {f.optimizer} ({describe_config(f.config)}) | {mean} | {ci} | "
            f"{len(f.replicates)} | {f.search_value:.4g} (trial {f.trial}) |"
        )
    if answer.replicated:
        lines += ["", f"Interval: {INTERVAL_METHOD}. Tiers: {TEST_METHOD}."]
    return "\n".join(lines)


def describe_config(config: Mapping[str, Any]) -> str:
    """``lr 3.4e-03, cosine, 5% warmup``: what tells two finalists apart at a glance."""
    parts = []
    lr = config.get("lr")
    if isinstance(lr, int | float):
        parts.append(f"lr {lr:.2g}")
    schedule = config.get("schedule") or {}
    name = schedule.get("name") if isinstance(schedule, Mapping) else schedule
    parts.append(str(name or "constant"))
    warmup = config.get("warmup")
    if isinstance(warmup, Mapping):
        if "fraction" in warmup:
            parts.append(f"{float(warmup['fraction']):.0%} warmup")
        elif "steps" in warmup:
            parts.append(f"{warmup['steps']} warmup steps")
    return ", ".join(parts)


def compute_answer(
    study: optuna.Study,
    compare: CompareConfig,
    *,
    trials: Sequence[FrozenTrial] | None = None,
) -> Answer:
    """The answer from the study's trials: finalists, replicates, intervals, tiers, winner."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    direction = study.direction.name.lower()
    metric = str(study.user_attrs.get(ATTR.METRIC, "value"))
    sign = -1.0 if direction == "maximize" else 1.0
    chosen = finalists(trials, direction, compare.finalists)
    rows = [
        Finalist(
            optimizer=str(_optimizer_of(t)),
            trial=t.number,
            config=dict(t.user_attrs.get(_CONFIG) or {}),
            search_value=float(t.value),
        )
        for t in chosen
    ]
    by_trial = {f.trial: f for f in rows}
    done = 0
    seconds = 0.0
    for t in sorted(trials, key=lambda t: t.number):
        record = replicate_of(t)
        if record is None:
            continue
        seconds += float(t.user_attrs.get(ATTR.DURATION) or 0.0)
        row = by_trial.get(record.get("of"))
        if row is None or t.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        if t.state == TrialState.COMPLETE and _finite(t.value):
            row.replicates[int(record["seed"])] = float(t.value)
            done += 1
        elif t.state == TrialState.PRUNED or t.user_attrs.get(_OUTCOME) == "failed":
            row.not_complete += 1
            done += 1
    for row in rows:
        values = list(row.replicates.values())
        if values:
            row.mean = math.fsum(values) / len(values)
            row.ci95 = t_interval(values)
    replicated = any(r.mean is not None for r in rows)
    if replicated:
        # Best replicate mean first; a finalist with no finished replicate goes last.
        rows.sort(key=lambda r: (r.mean is None, sign * (r.mean or 0.0), sign * r.search_value))
        _assign_groups(rows)
    else:
        for i, row in enumerate(rows, 1):
            row.group = i
    return Answer(
        study=study.study_name,
        metric=metric,
        direction=direction,
        finalists=rows,
        seeds=compare.seeds,
        replicates_done=done,
        replicates_planned=len(rows) * compare.seeds,
        replicate_seconds=seconds,
    )


def _assign_groups(rows: list[Finalist]) -> None:
    """Tiers: each leader (the best unassigned) with every later finalist tied with it."""
    group = 0
    for i, leader in enumerate(rows):
        if leader.group:
            continue
        group += 1
        leader.group = group
        for other in rows[i + 1 :]:
            if other.group:
                continue
            if other.mean is None:
                continue  # no replicate finished: it gets its own tier, last
            same, p = tied(leader.replicates, other.replicates)
            if same:
                other.group = group
                other.p_value = p


def _optimizer_of(t: FrozenTrial) -> str | None:
    config = t.user_attrs.get(_CONFIG) or {}
    name = config.get("optimizer", t.params.get("optimizer"))
    return None if name is None else str(name)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
