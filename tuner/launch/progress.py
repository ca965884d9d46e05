"""What ``tuner launch`` shows while its workers run: finished of budget, the running trials with
their current step, the best so far and the time left.

On a terminal it is a live tqdm bar with a line per finished trial above it; otherwise (a log
file, CI, a pipe) plain lines: one per finished trial, and a status line when nothing has
finished for :data:`QUIET_FOR` seconds, so that a long trial does not look like a hang.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna

from tuner.core.durations import format_duration
from tuner.core.keys import Outcome
from tuner.core.trials import count_finished
from tuner.db.trialdb import count_states
from tuner.results.compare import is_replicate, replicate_counts
from tuner.results.summary import summarize

if TYPE_CHECKING:
    from tuner.config.studyfile import StudyFile

__all__ = ["Progress", "result_line"]

Echo = Callable[[str], None]

# A plain status line after this many seconds without a finished trial.
QUIET_FOR = 30.0
# The live bar reads the study database at most this often.
LIVE_REFRESH = 1.0


class Progress:
    """Progress of a study while workers run it; fed by the supervisor's loop."""

    def __init__(
        self, study: optuna.Study, study_file: StudyFile, echo: Echo, *, live: bool = False
    ) -> None:
        self.study = study
        self.sf = study_file
        self.echo = echo
        self.started = time.monotonic()
        self.done_at_start, self.replicates = _finished(study, study_file.budget.trials)
        self.done = self.done_at_start
        self.best = _best(study, study_file, self.replicates)
        self._last_line = self.started
        self._last_read = self.started
        self._running: list[tuple[int, int | None, int]] = []
        self._bar: Any = None
        if live:
            from tqdm import tqdm

            self._bar = tqdm(
                total=study_file.budget.trials, initial=self.done, unit="trial",
                desc=study_file.name, file=sys.stderr, dynamic_ncols=True, leave=True,
            )  # fmt: skip

    def line(self, text: str) -> None:
        """A line that stays (above the live bar, if there is one)."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            self.echo(text)
        self._last_line = time.monotonic()

    def trial_ended(
        self,
        *,
        number: int,
        outcome: str,
        value: float | None,
        reason: str | None,
        worker: int | None,
    ) -> None:
        self._read()
        text = result_line(number, outcome, value, reason, self.sf.metric)
        self.line(f"{self._count()} {text} | {self._status()}")
        self._update_bar()

    def tick(self, running: list[tuple[int, int | None, int]]) -> None:
        """Called every turn of the supervisor's loop with (trial, step, worker) per trial."""
        self._running = running
        now = time.monotonic()
        if self._bar is not None:
            if now - self._last_read >= LIVE_REFRESH:
                self._read()
            self._update_bar()
        elif now - self._last_line >= QUIET_FOR:
            self._read()
            self.line(f"{self._count()} {self._status()}")

    def close(self) -> None:
        if self._bar is not None:
            self._read()
            self._update_bar()
            self._bar.close()
            self._bar = None

    def _read(self) -> None:
        self.done, self.replicates = _finished(self.study, self.sf.budget.trials)
        self.best = _best(self.study, self.sf, self.replicates)
        self._last_read = time.monotonic()

    def _count(self) -> str:
        budget = self.sf.budget.trials
        count = f"[{self.done:>{len(str(budget))}}/{budget}]"
        return count + (f" replicate {self.replicates}" if self.replicates else "")

    def _status(self) -> str:
        parts = [self.best]
        if self._running:
            parts.append("running " + ", ".join(_running(n, s) for n, s, _ in self._running))
        elapsed = time.monotonic() - self.started
        parts.append(f"elapsed {format_duration(elapsed)}")
        left = self._left(elapsed)
        if left is not None:
            parts.append(f"~{format_duration(left)} left")
        return " | ".join(parts)

    def _left(self, elapsed: float) -> float | None:
        budget = self.sf.budget.trials
        new = self.done - self.done_at_start
        if new <= 0 or self.done >= budget:
            return None
        left = elapsed / new * (budget - self.done)
        if self.sf.budget.timeout:
            left = min(left, max(0.0, self.sf.budget.timeout - elapsed))
        return left

    def _update_bar(self) -> None:
        if self._bar is None:
            return
        self._bar.n = min(self.done, self._bar.total)
        postfix = [self.best]
        if self._running:
            postfix.append("running " + ", ".join(_running(n, s) for n, s, _ in self._running))
        self._bar.set_postfix_str(" | ".join(postfix), refresh=False)
        self._bar.refresh()


def result_line(
    number: int, outcome: str, value: float | None, reason: str | None, metric: str
) -> str:
    """``trial 3 complete loss=0.12``, or the reason for a failed or diverged trial."""
    text = f"trial {number} {outcome}"
    if value is not None and outcome == Outcome.COMPLETE and math.isfinite(value):
        text += f" {metric}={value:.6g}"
    elif reason and outcome in (
        Outcome.FAILED,
        Outcome.DIVERGED,
        Outcome.INTERRUPTED,
        Outcome.LOST,
    ):
        text += f": {reason[:120]}"
    return text


def _running(number: int, step: int | None) -> str:
    return f"trial {number}" + (f" (step {step})" if step is not None else "")


def _finished(study: optuna.Study, budget: int) -> tuple[int, int]:
    """Finished search trials, and finished replicates (the finalists' re-runs after the
    search, :mod:`tuner.results.compare`), which never count toward the budget."""
    counts = count_states(study)
    done = count_finished(counts)
    if done <= budget:
        return done, 0

    reps = replicate_counts(study)
    replicates = count_finished(reps)
    return done - replicates, replicates


def _best(study: optuna.Study, study_file: StudyFile, replicates: int) -> str:
    """The best, as the summary tells it (:mod:`tuner.results.summary`): the best search trial while
    the search runs (a search value, when replicates will follow), then the answer's
    recommendation with its replicate mean; never a replicate trial."""

    try:
        best = study.best_trial  # one query; replicates only exist after the search
    except ValueError:
        return "best none yet"
    if replicates == 0 and not is_replicate(best):
        label = "best search value" if study_file.compare.seeds else "best"
        return f"{label} {best.value:.6g} (trial {best.number})"

    summary = summarize(study, compare=study_file.compare)
    if summary.best_value is None:
        return "best none yet"
    label = "best" if summary.best_seeds or not study_file.compare.seeds else "best search value"
    return f"{label} {summary.best_text()}"
