"""The answer to "which optimizer?" (docs/answer.md): finalists re-run with fresh seeds, tested.

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

Cost, in :func:`compute_answer` from what each replicate's worker stored with it: the mean
wall time of the objective (``seconds``) and per reported step (``seconds_per_epoch``), the
bytes of the optimizer's state tensors at the end of the run (``state_bytes``), and
``steps_to_target``, the first reported step at which a replicate reached the *target* (the
weakest tier-1 mean, which every tier-1 optimizer reaches on average), as a mean over the
replicates that reached it.

**The cheapest of tier 1** (:func:`cheapest`) is what the answer recommends. Time per epoch
and optimizer memory decide; each is compared to the winner's as a ratio. A ratio within
:data:`MATERIAL` (1.25x either way) counts as no difference (wall time on a shared machine
moves that much), and no ratio counts for more than :data:`CAP` (4x) either way, so a
large saving in one cost weighs against a smaller loss in the other by their product:
half the memory at 1.3x the time per epoch scores 0.65 and is recommended; at 2.5x the time
it scores 1.25 and is not. A tied optimizer is recommended when its score is at most
``1 / MATERIAL`` (1.25x cheaper overall); among several, the lowest score, then the
better mean. ``steps_to_target`` is shown but does not decide: the configuration's schedule
is tuned over all its steps, so stopping at the target would train a different schedule.

Example::

    >>> from tuner.results.compare import t_interval
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
from sqlalchemy import func, select

from tuner.core.keys import ATTR, Outcome
from tuner.core.private_api import optuna_tables, rdb_storage, state_of, study_id
from tuner.core.trials import optimizer_of

if TYPE_CHECKING:
    from tuner.config.studyfile import CompareConfig

__all__ = [
    "ALPHA",
    "CAP",
    "COST_RULE",
    "INTERVAL_METHOD",
    "MATERIAL",
    "TEST_METHOD",
    "Answer",
    "Finalist",
    "cheapest",
    "compute_answer",
    "cost_score",
    "describe_answer",
    "describe_config",
    "finalists",
    "is_replicate",
    "next_replicate",
    "replicate_counts",
    "replicate_of",
    "replicate_seed",
    "steps_to_target",
    "t_interval",
    "tied",
]

ALPHA = 0.05
INTERVAL_METHOD = "Student's t-interval of the replicate mean (95%)"
TEST_METHOD = (
    "paired t-test on per-seed differences to the tier leader (two-sided, alpha 0.05); "
    "Welch's t-test when fewer than two seeds are shared"
)

# The cheapest of tier 1 (see the module docstring and the README's answer section).
MATERIAL = 1.25
CAP = 4.0
COST_RULE = (
    "the cheapest of tier 1: time per epoch and optimizer memory as ratios to the winner's, "
    f"each within {MATERIAL:g}x counted as equal and capped at {CAP:g}x, multiplied; a tied "
    f"optimizer whose product is at most 1/{MATERIAL:g} is recommended over the winner"
)

# A replicate with one of these states is done or on its way; any other (an interrupted one,
# or one lost with its worker and not queued again) is missing and runs again.
_PRESENT = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


# --------------------------------------------------------------------------- scheduling


def is_replicate(trial: FrozenTrial | optuna.Trial) -> bool:
    """Whether ``trial`` is a replicate run (not a search trial)."""
    return ATTR.REPLICATE in trial.user_attrs


def replicate_of(trial: FrozenTrial | optuna.Trial) -> dict[str, Any] | None:
    """The replicate record of ``trial``: ``{"of", "index", "seed", "config"}``, or None."""
    record = trial.user_attrs.get(ATTR.REPLICATE)
    return dict(record) if isinstance(record, Mapping) else None


def replicate_seed(base: int, index: int) -> int:
    """The seed of replicate ``index``, the same for every finalist (common random numbers).

    Search trial ``n`` uses ``(base * 1_000_003 + n) % 2**31``
    (:func:`tuner.worker.runner.trial_seed`);
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
        name = optimizer_of(t)
        if name is None:
            continue
        key = (sign * float(t.value), t.number)
        if name not in best or key < (sign * float(best[name].value), best[name].number):
            best[name] = t
    ranked = sorted(best.values(), key=lambda t: (sign * float(t.value), t.number))
    return ranked[:n]


def replicate_counts(study: optuna.Study) -> dict[TrialState, int]:
    """The study's replicate trials by state, counted in the database when it is one."""

    storage = rdb_storage(study)
    if storage is None:
        counts: dict[TrialState, int] = {}
        for t in study.get_trials(deepcopy=False):
            if is_replicate(t):
                counts[t.state] = counts.get(t.state, 0) + 1
        return counts
    trials, attributes, _ = optuna_tables()
    query = (
        select(trials.c.state, func.count())
        .select_from(trials.join(attributes, attributes.c.trial_id == trials.c.trial_id))
        .where(trials.c.study_id == study_id(study), attributes.c.key == ATTR.REPLICATE)
        .group_by(trials.c.state)
    )
    with storage.engine.connect() as conn:
        rows = conn.execute(query).all()
    return {state_of(state): n for state, n in rows}


def planned(
    trials: Sequence[FrozenTrial], direction: str, compare: CompareConfig, base_seed: int
) -> list[dict[str, Any]]:
    """Every replicate the answer needs, seed by seed, each seed of every finalist in turn.

    Seed-major, so that a change in the machine's load while the replicates run falls on
    every finalist alike: their times per epoch are compared (:func:`cheapest`).
    """
    out = []
    chosen = finalists(trials, direction, compare.finalists)
    for index in range(compare.seeds):
        for finalist in chosen:
            out.append(
                {
                    "of": finalist.number,
                    "index": index,
                    "seed": replicate_seed(base_seed, index),
                    "config": finalist.user_attrs.get(ATTR.CONFIG),
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
        and (t.state in _PRESENT or t.user_attrs.get(ATTR.OUTCOME) == Outcome.FAILED.value)
    }
    for record in planned(trials, direction, compare, base_seed):
        if (record["of"], record["index"]) not in present:
            study.enqueue_trial({}, user_attrs={ATTR.REPLICATE: record})
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
    # Cost, measured during the complete replicates (None where nothing was measured)
    seconds: float | None = None  # mean wall time of the objective per replicate
    seconds_per_epoch: float | None = None
    state_bytes: int | None = None
    steps_to_target: float | None = None  # mean over the replicates that reached the target
    target_reached: int = 0  # how many replicates reached it
    curves: dict[int, dict[int, float]] = field(default_factory=dict, repr=False)  # seed -> steps

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
            "seconds": _round(self.seconds),
            "seconds_per_epoch": _round(self.seconds_per_epoch),
            "state_bytes": self.state_bytes,
            "steps_to_target": self.steps_to_target,
            "target_reached": self.target_reached,
        }


@dataclass
class Answer:
    """The answer (docs/answer.md): :meth:`to_json` is the document, :meth:`sentence` its line."""

    study: str
    metric: str
    direction: str
    finalists: list[Finalist]
    seeds: int
    replicates_done: int = 0
    replicates_planned: int = 0
    replicate_seconds: float = 0.0
    target: float | None = None  # the weakest tier-1 mean: what steps_to_target counts to

    @property
    def winner(self) -> Finalist | None:
        return self.finalists[0] if self.finalists else None

    @property
    def recommended(self) -> Finalist | None:
        """The optimizer to use: the winner, or the cheapest of tier 1 (:func:`cheapest`)."""
        return cheapest(self.finalists)

    @property
    def replicated(self) -> bool:
        return any(f.mean is not None for f in self.finalists)

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "metric": self.metric,
            "direction": self.direction,
            "winner": None if self.winner is None else self.winner.optimizer,
            "recommended": None if self.recommended is None else self.recommended.optimizer,
            "answer": self.sentence(),
            "target": self.target,
            "cost_rule": COST_RULE if self.replicated else None,
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
        """The answer in one sentence, led by the recommended optimizer, e.g. "nesterov (lr
        0.1, cosine): 0.983 ± 0.004 over 3 seeds, the cheapest of tier 1; tied with adamw (best
        mean; 1.4× slower per epoch, 2× the optimizer memory); ahead of yogi"."""
        w = self.winner
        if w is None:
            return "no answer yet: no complete trial"
        if not self.replicated:
            head = f"{w.optimizer} ({describe_config(w.config)})"
            why = "replicates are off" if self.seeds == 0 else "no replicate has finished yet"
            others = ", ".join(f.optimizer for f in self.finalists[1:])
            tail = f"; then {others}" if others else ""
            return f"{head}: best search value {w.search_value:.4g} ({why}){tail}"
        r = self.recommended
        assert r is not None and r.mean is not None
        n = len(r.replicates)
        text = f"{r.optimizer} ({describe_config(r.config)}): {r.mean:.4g}"
        if r.ci95 is not None:
            text += f" ± {(r.ci95[1] - r.ci95[0]) / 2:.2g}"
        text += f" over {n} seed{'s' if n != 1 else ''}"
        if r is not w:
            text += ", the cheapest of tier 1"
        ties = []
        for f in self.finalists:
            if f is r or f.group != r.group:
                continue
            notes = ["best mean"] if f is w else []
            cost = describe_cost(f, r)
            if cost:
                notes.append(cost)
            ties.append(f.optimizer + (f" ({'; '.join(notes)})" if notes else ""))
        ahead = [f.optimizer for f in self.finalists if f.group > r.group]
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
    lines.append(
        f"| tier | optimizer | mean {answer.metric} | 95% interval | seeds | search "
        "| s/epoch | optimizer state | steps to target |"
    )
    lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    recommended = answer.recommended
    for f in answer.finalists:
        mean = "—" if f.mean is None else f"{f.mean:.4g}"
        ci = "—" if f.ci95 is None else f"[{f.ci95[0]:.4g}, {f.ci95[1]:.4g}]"
        mark = " **recommended**" if f is recommended and answer.replicated else ""
        lines.append(
            f"| {f.group} | {f.optimizer} ({describe_config(f.config)}){mark} | {mean} | {ci} | "
            f"{len(f.replicates)} | {f.search_value:.4g} (trial {f.trial}) | "
            f"{_fmt_seconds(f.seconds_per_epoch)} | {format_bytes(f.state_bytes)} | "
            f"{_fmt_steps(f)} |"
        )
    if answer.replicated:
        lines += ["", f"Interval: {INTERVAL_METHOD}. Tiers: {TEST_METHOD}."]
        if answer.target is not None:
            lines.append(
                f"Steps to target: the first reported step at which a replicate reached "
                f"{answer.target:.4g} (the weakest tier-1 mean), mean over the seeds that did."
            )
        lines.append(f"Recommended: {COST_RULE}.")
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
    chosen = finalists(trials, direction, compare.finalists)
    rows = [
        Finalist(
            optimizer=str(optimizer_of(t)),
            trial=t.number,
            config=dict(t.user_attrs.get(ATTR.CONFIG) or {}),
            search_value=float(t.value),
        )
        for t in chosen
    ]
    done, seconds = _collect_replicates(rows, trials)
    target = _rank(rows, direction)
    return Answer(
        study=study.study_name,
        metric=str(study.user_attrs.get(ATTR.METRIC, "value")),
        direction=direction,
        finalists=rows,
        seeds=compare.seeds,
        replicates_done=done,
        replicates_planned=len(rows) * compare.seeds,
        replicate_seconds=seconds,
        target=target,
    )


def _collect_replicates(rows: list[Finalist], trials: Sequence[FrozenTrial]) -> tuple[int, float]:
    """Fill each finalist's replicate values, curves, mean, interval and cost from ``trials``;
    returns how many replicates finished and the seconds all replicates took."""
    by_trial = {f.trial: f for f in rows}
    done = 0
    seconds = 0.0
    costs: dict[int, list[FrozenTrial]] = {f.trial: [] for f in rows}
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
            row.curves[int(record["seed"])] = dict(t.intermediate_values)
            costs[row.trial].append(t)
            done += 1
        elif t.state == TrialState.PRUNED or t.user_attrs.get(ATTR.OUTCOME) == Outcome.FAILED.value:
            row.not_complete += 1
            done += 1
    for row in rows:
        values = list(row.replicates.values())
        if values:
            row.mean = math.fsum(values) / len(values)
            row.ci95 = t_interval(values)
        _measure_cost(row, costs[row.trial])
    return done, seconds


def _rank(rows: list[Finalist], direction: str) -> float | None:
    """Order the finalists and give them their tiers; returns the target (the worst mean in
    tier 1) with each finalist's steps to reach it, or None before any replicate finished."""
    if not any(r.mean is not None for r in rows):
        for i, row in enumerate(rows, 1):
            row.group = i
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    # Best replicate mean first; a finalist with no finished replicate goes last.
    rows.sort(key=lambda r: (r.mean is None, sign * (r.mean or 0.0), sign * r.search_value))
    _assign_groups(rows)
    tier1 = [r.mean for r in rows if r.group == 1 and r.mean is not None]
    target = min(tier1) if direction == "maximize" else max(tier1)
    for row in rows:
        reached = [
            s
            for curve in row.curves.values()
            if (s := steps_to_target(curve, target, direction)) is not None
        ]
        row.target_reached = len(reached)
        row.steps_to_target = math.fsum(reached) / len(reached) if reached else None
    return target


def steps_to_target(curve: Mapping[int, float], target: float, direction: str) -> int | None:
    """The first reported step whose value reached ``target`` (``>=`` when maximizing, ``<=``
    when minimizing), or None when none did.

    >>> steps_to_target({0: 0.5, 1: 0.8, 2: 0.9, 3: 0.85}, 0.8, "maximize")
    1
    >>> steps_to_target({0: 3.0, 1: 2.0}, 1.0, "minimize") is None
    True
    """
    for step in sorted(curve):
        value = curve[step]
        if not _finite(value):
            continue
        if (value >= target) if direction == "maximize" else (value <= target):
            return step
    return None


def cost_score(f: Finalist, ref: Finalist) -> float:
    """How much ``f`` costs against ``ref``: the product of the time-per-epoch and the
    optimizer-memory ratios, each within :data:`MATERIAL` counted as 1 and capped at
    :data:`CAP` either way; a cost measured for only one of them does not count.

    >>> a = Finalist("adam", 0, {}, 0.0, seconds_per_epoch=1.0, state_bytes=800)
    >>> m = Finalist("momentum", 1, {}, 0.0, seconds_per_epoch=1.1, state_bytes=400)
    >>> cost_score(m, a)  # time within 1.25x: only the memory counts
    0.5
    """
    score = 1.0
    for mine, theirs in (
        (f.seconds_per_epoch, ref.seconds_per_epoch),
        (f.state_bytes, ref.state_bytes),
    ):
        if mine is None or theirs is None:
            continue
        score *= _ratio(float(mine), float(theirs))
    return score


def cheapest(rows: Sequence[Finalist]) -> Finalist | None:
    """The recommended finalist: the winner (``rows[0]``), or the tier-1 finalist that is
    cheaper than it by :func:`cost_score` at most ``1 / MATERIAL``; the lowest score wins,
    then the better mean. Without replicates the winner is the best search value."""
    if not rows:
        return None
    winner = rows[0]
    if winner.mean is None:
        return winner
    best, best_score = winner, 1.0 / MATERIAL
    for f in rows[1:]:
        if f.group != winner.group or f.mean is None:
            continue
        score = cost_score(f, winner)
        if score < best_score or (score <= best_score and best is winner):
            best, best_score = f, score
    return best


def describe_cost(f: Finalist, ref: Finalist) -> str:
    """How ``f``'s cost differs from ``ref``'s, in words: "1.4× slower per epoch, half the
    optimizer memory"; empty when no difference is material (:data:`MATERIAL`)."""
    parts = []
    if f.seconds_per_epoch and ref.seconds_per_epoch:
        r = f.seconds_per_epoch / ref.seconds_per_epoch
        if r >= MATERIAL:
            parts.append(f"{r:.2g}× slower per epoch")
        elif r <= 1 / MATERIAL:
            parts.append(f"{1 / r:.2g}× faster per epoch")
    if f.state_bytes is not None and ref.state_bytes is not None:
        mine, theirs = f.state_bytes, ref.state_bytes
        if mine == 0 and theirs > 0:
            parts.append("no optimizer state")
        elif theirs == 0 and mine > 0:
            parts.append(f"{format_bytes(mine)} of optimizer state where {ref.optimizer} has none")
        elif theirs > 0:
            r = mine / theirs
            if 0.45 <= r <= 0.55:
                parts.append("half the optimizer memory")
            elif r >= MATERIAL or r <= 1 / MATERIAL:
                parts.append(f"{r:.2g}× the optimizer memory")
    return ", ".join(parts)


def format_bytes(n: int | None) -> str:
    """``2097152`` -> ``2 MiB``; None -> ``—``.

    >>> format_bytes(1536), format_bytes(0)
    ('1.5 KiB', '0 B')
    """
    if n is None:
        return "—"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.3g} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    raise AssertionError("unreachable")


def _ratio(mine: float, theirs: float) -> float:
    if mine == theirs:
        return 1.0
    if theirs <= 0:
        return CAP
    r = mine / theirs
    if 1 / MATERIAL < r < MATERIAL:
        return 1.0
    return min(CAP, max(1 / CAP, r))


def _measure_cost(row: Finalist, replicates: Sequence[FrozenTrial]) -> None:
    """The finalist's cost from its complete replicates: what their workers stored."""
    seconds, per_epoch, state = [], [], []
    for t in replicates:
        s = t.user_attrs.get(ATTR.OBJECTIVE_SECONDS)
        epochs = t.user_attrs.get(ATTR.EPOCHS)
        if isinstance(s, int | float):
            seconds.append(float(s))
            if isinstance(epochs, int) and epochs > 0:
                per_epoch.append(float(s) / epochs)
        b = t.user_attrs.get(ATTR.STATE_BYTES)
        if isinstance(b, int):
            state.append(b)
    row.seconds = math.fsum(seconds) / len(seconds) if seconds else None
    row.seconds_per_epoch = math.fsum(per_epoch) / len(per_epoch) if per_epoch else None
    # The same model and optimizer every seed: the state is the same size (max, to be safe).
    row.state_bytes = max(state) if state else None


def _round(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.4g}")


def _fmt_seconds(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g} s"


def _fmt_steps(f: Finalist) -> str:
    if f.steps_to_target is None:
        return "—" if f.mean is None else "not reached"
    n = len(f.replicates)
    tail = "" if f.target_reached == n else f" ({f.target_reached} of {n} seeds)"
    return f"{f.steps_to_target:.3g}{tail}"


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


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
