"""The pre-search phase a worker runs before its first trial: range test, then portfolio.

Both results live in the study's user attributes, so every worker (on any machine) and every
resumed launch shares them and nothing is probed or enqueued twice:

- ``tuner:lr_range_test:<optimizer>``: one claim per optimizer family. Workers claim families
  under the budget lock and probe them in parallel; a claim whose worker died (same host, pid
  gone) or that is older than :data:`CLAIM_EXPIRY_S` is taken over.
- ``tuner:lr_range_test``: the combined result once every family has one. The search's first
  trial is sampled only after it exists, so every trial of a study samples ``<opt>.lr`` from one
  distribution (TPE's search space stays one space).
- ``tuner:portfolio``: the names of the enqueued portfolio entries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import optuna

from tuner.catalog.export import OptimizerConfig, build_optimizer
from tuner.catalog.hparams import Range
from tuner.catalog.optim import get_optimizer
from tuner.core.keys import ATTR
from tuner.core.redact import redact
from tuner.search._portfolio import portfolio_trials
from tuner.search._range_test import (
    SIGNALS,
    LrProbe,
    ProbeFinished,
    ProbeOutcome,
    attach,
    family_ratio,
    probe_bounds,
    probe_plan,
    probe_steps,
)
from tuner.trial import Trial, TrialDiverged, seed_everything

if TYPE_CHECKING:
    import threading

    from tuner.config.space import SearchSpace
    from tuner.config.studyfile import StudyFile

__all__ = [
    "RangeTest",
    "describe_range_test",
    "prepare_search",
    "run_probe",
]

log = logging.getLogger("tuner")

_CLAIM = ATTR.LR_RANGE_TEST + ":"
CLAIM_EXPIRY_S = 1800.0


@dataclass(frozen=True)
class RangeTest:
    """The stored range test: one outcome per probed family, or why none ran."""

    outcomes: tuple[ProbeOutcome, ...]
    skipped: str | None = None

    @property
    def epochs(self) -> float:
        return sum(o.epochs for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "epochs": round(self.epochs, 3),
            "families": [o.to_dict() for o in self.outcomes],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RangeTest:
        return cls(
            tuple(ProbeOutcome.from_dict(o) for o in raw.get("families", [])), raw.get("skipped")
        )

    def portfolio_rates(self) -> dict[str, tuple[float, str]]:
        """Each probed member's ``(point, verdict)`` for the portfolio: the ceiling of a probe
        that saw training blow up, where an ambiguous signal rose, or the ramp's top."""
        out = {}
        for o in self.outcomes:
            point = {"diverged": o.diverges_at, "ambiguous": o.rises_at, "stable": o.ramp[1]}
            found = point.get(o.verdict)
            for member in o.members or (o.optimizer,):
                if found is not None:
                    out[member] = (found * family_ratio(member, o.optimizer), o.verdict)
        return out

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Each probed family member's ``lr`` range."""
        out = {}
        for o in self.outcomes:
            for member in o.members or (o.optimizer,):
                found = o.member_range(member)
                if found is not None:
                    out[member] = found
        return out


def describe_range_test(raw: dict[str, Any] | None) -> list[str]:
    """Lines for the summary, ``tuner status`` and MLflow, e.g.
    ``adam diverges above 3.1 (training loss) -> searching [3.1e-03, 3.1]``."""
    if not raw:
        return []
    test = RangeTest.from_dict(raw)
    if test.skipped:
        return [f"lr range test: {test.skipped}"]
    lines = [f"lr range test: {len(test.outcomes)} probes, {test.epochs:.1f} epochs"]
    for o in test.outcomes:
        others = [m for m in o.members if m != o.optimizer]
        also = f" (also sets {', '.join(others)})" if others else ""
        signal = SIGNALS.get(o.signal, o.signal)
        verdict = o.verdict
        if o.error:
            lines.append(f"  {o.optimizer}: probe failed ({o.error}); catalog range kept")
            continue
        if verdict == "failed":
            lines.append(f"  {o.optimizer}: no optimizer steps; catalog range kept")
            continue
        assert o.range is not None
        searching = f"[{o.range[0]:.2g}, {o.range[1]:.3g}]"
        if verdict == "stable":
            lines.append(
                f"  {o.optimizer}: no divergence up to {o.ramp[1]:.3g} ({signal}) -> "
                f"searching {searching}{also}"
            )
        elif verdict == "ambiguous":
            lines.append(
                f"  {o.optimizer}: {signal} rose from {o.rises_at:.3g} without blowing up -> "
                f"searching {searching}, the catalog range or wider{also}"
            )
        else:
            lines.append(
                f"  {o.optimizer} diverges above {o.diverges_at:.3g} ({signal}) -> "
                f"searching {searching}{also}"
            )
    return lines


def probed_families(space: SearchSpace) -> dict[str, list[str]]:
    """The probe plan: optimizers whose ``lr`` the study file leaves to the catalog, by family
    (the optimizer probed -> the members its result sets)."""
    return probe_plan(
        o.name
        for o in space.optimizers
        if isinstance(o.domains["lr"], Range) and o.name not in space.user_lr
    )


def apply_ranges(space: SearchSpace, test: RangeTest | None) -> SearchSpace:
    """``space`` with each probed optimizer's ``lr`` range set from the range test."""
    if test is None:
        return space
    ranges = test.ranges()
    optimizers = tuple(
        replace(o, domains={**o.domains, "lr": Range(*ranges[o.name], log=True)})
        if o.name in ranges and o.name not in space.user_lr
        else o
        for o in space.optimizers
    )
    return replace(space, optimizers=optimizers)


def prepare_search(
    study: optuna.Study,
    study_file: StudyFile,
    objective: Callable[[Trial], float],
    *,
    lock: Callable[[], contextlib.AbstractContextManager[Any]],
    device: str = "cpu",
    stop: threading.Event | None = None,
    poll_interval: float = 1.0,
) -> SearchSpace:
    """Run this worker's share of the range test, enqueue the portfolio once, and return the
    search space every trial samples from.

    ``lock`` is the study's budget lock (one holder across processes and machines).
    """
    space = study_file.search
    test = _ensure_range_test(study, study_file, objective, lock, device, stop, poll_interval)
    space = apply_ranges(space, test)
    if space.portfolio and ATTR.PORTFOLIO not in study.user_attrs:
        with lock():
            if ATTR.PORTFOLIO not in study.user_attrs:
                names: list[str] = []
                if not study.get_trials(deepcopy=False):
                    entries = portfolio_trials(space, test.portfolio_rates() if test else {})
                    # At most half the budget: the search needs the rest, and a waiting trial
                    # beyond the budget would be run all the same (the runner takes waiting
                    # trials first), breaking the exact budget.
                    for name, params in entries[: max(1, study_file.budget.trials // 2)]:
                        study.enqueue_trial(params, user_attrs={ATTR.PORTFOLIO_ENTRY: name})
                        names.append(name)
                study.set_user_attr(ATTR.PORTFOLIO, names)
    return space


def _ensure_range_test(
    study: optuna.Study,
    sf: StudyFile,
    objective: Callable[[Trial], float],
    lock: Callable[[], contextlib.AbstractContextManager[Any]],
    device: str,
    stop: threading.Event | None,
    poll_interval: float,
) -> RangeTest | None:
    space = sf.search
    families = probed_families(space)
    if not space.lr_range_test or not families:
        return None
    me = f"{socket.gethostname()}/{os.getpid()}"
    announced = False
    while True:
        attrs = study.user_attrs
        if ATTR.LR_RANGE_TEST in attrs:
            return RangeTest.from_dict(attrs[ATTR.LR_RANGE_TEST])
        with lock():
            attrs = study.user_attrs
            test = _stored_or_skipped(study, attrs)
            if test is not None:
                return test
            claims = {f: attrs.get(_CLAIM + f) for f in families}
            done = {f: c for f, c in claims.items() if c and c.get("state") == "done"}
            if len(done) == len(families):
                test = RangeTest(tuple(ProbeOutcome.from_dict(done[f]) for f in families))
                study.set_user_attr(ATTR.LR_RANGE_TEST, test.to_dict())
                _log_result(test)
                return test
            mine = next((f for f, c in claims.items() if c is None or _stale(c)), None)
            failed = next((c for c in done.values() if c.get("error") and not c["steps"]), None)
            if mine is not None and failed is not None:
                # The objective cannot run the probe: do not try every family again.
                _skip_probe(study, mine, families[mine], failed["error"])
                continue
            if mine is not None:
                study.set_user_attr(
                    _CLAIM + mine, {"state": "running", "worker": me, "since": time.time()}
                )
        if mine is None:
            if stop is not None and stop.wait(poll_interval):
                return None
            if stop is None:
                time.sleep(poll_interval)
            continue
        if not announced:
            log.info("lr range test: probing %s", ", ".join(families))
            announced = True
        _probe_claimed(study, objective, mine, families[mine], sf, device)


def _stored_or_skipped(study: optuna.Study, attrs: dict[str, Any]) -> RangeTest | None:
    """Under the lock: the range test stored in ``attrs``; else, for a study that already has
    search trials, a skipped one, stored now; else None."""
    if ATTR.LR_RANGE_TEST in attrs:
        return RangeTest.from_dict(attrs[ATTR.LR_RANGE_TEST])
    if any(
        t.user_attrs.get(ATTR.PORTFOLIO_ENTRY) is None for t in study.get_trials(deepcopy=False)
    ):
        # A study searched before it had a range test keeps the ranges it searched.
        test = RangeTest((), skipped="skipped: the study already had search trials")
        study.set_user_attr(ATTR.LR_RANGE_TEST, test.to_dict())
        return test
    return None


def _skip_probe(study: optuna.Study, family: str, members: list[str], error: str) -> None:
    """Under the lock: record ``family``'s probe as done without running it, with the
    ``error`` of a probe that already failed for want of an objective that can run one."""
    lo, hi = probe_bounds(family)
    skipped = ProbeOutcome(family, None, (lo, hi), 0, 0.0, error, tuple(members))
    study.set_user_attr(_CLAIM + family, {"state": "done", **skipped.to_dict()})


def _probe_claimed(
    study: optuna.Study,
    objective: Callable[[Trial], float],
    family: str,
    members: list[str],
    sf: StudyFile,
    device: str,
) -> None:
    """Run the probe of ``family``, which this worker claimed, and store its outcome (a failed
    probe is logged: the family keeps the catalog's lr range)."""
    outcome = replace(run_probe(objective, family, sf, device=device), members=tuple(members))
    if outcome.error:
        log.warning(
            "lr range test: the probe of %s failed: %s; searching the catalog's lr range "
            "(search.lr_range_test: off skips the probe)",
            family,
            outcome.error,
        )
    study.set_user_attr(_CLAIM + family, {"state": "done", **outcome.to_dict()})


def _stale(claim: dict[str, Any]) -> bool:
    if claim.get("state") != "running":
        return False
    if time.time() - float(claim.get("since", 0)) > CLAIM_EXPIRY_S:
        return True
    host, _, pid = str(claim.get("worker", "")).rpartition("/")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _log_result(test: RangeTest) -> None:
    for line in describe_range_test(test.to_dict()):
        log.info("%s", line)


def run_probe(
    objective: Callable[[Trial], float], optimizer: str, sf: StudyFile, *, device: str = "cpu"
) -> ProbeOutcome:
    """Run the objective once with ``optimizer``'s lr ramp; what the ramp found."""
    start, stop = probe_bounds(optimizer)
    error = None
    trial = _probe_trial(optimizer, sf, device, start, stop)
    try:
        objective(trial)
    except (ProbeFinished, optuna.TrialPruned):
        pass
    except TrialDiverged:
        if trial.probe is not None and trial.probe.lrs:
            trial.probe.finish(diverged=True)
    except Exception as exc:  # the objective cannot run the probe: the catalog range stays
        error = redact(f"{type(exc).__name__}: {exc}")[:300]
    probe = trial.probe
    if probe is None:
        return ProbeOutcome(
            optimizer,
            None,
            (start, stop),
            0,
            0.0,
            error or "the objective never called trial.build_optimizer",
        )
    if error is not None and probe.lrs:
        # An exception once training blew up (a NaN in the user's own checks) is divergence.
        probe.finish(diverged=True)
        error = None
    probe.finish(diverged=False)  # the objective returned before the ramp's end
    per_epoch = max(1.0, trial.total_steps / max(1, sf.budget.epochs))
    steps = len(probe.lrs)
    return ProbeOutcome(
        optimizer,
        probe.diverges_at,
        (start, stop),
        steps,
        steps / per_epoch,
        error if steps == 0 else None,
        signal=probe.signal,
        rises_at=probe.rises_at,
    )


def _probe_trial(
    optimizer: str, sf: StudyFile, device: str, start: float, stop: float
) -> _ProbeTrial:

    spec = get_optimizer(optimizer)
    config = OptimizerConfig(
        optimizer,
        spec.to_kwargs({**spec.default_values, "lr": start}),
        {"name": "constant"},
        None,
    )
    # Seeded from the study's sampler seed and the family: a seeded study probes reproducibly.
    base = sf.sampler.options.get("seed") if sf.sampler.options else None
    seed = (
        zlib.crc32(f"{base}/{optimizer}".encode()) % (2**31)
        if isinstance(base, int)
        else random.randrange(2**31)
    )
    seed_everything(seed)
    # A scratch in-memory study gives the objective a real optuna.Trial, so its own suggest_*
    # calls work; nothing of it reaches the study database.
    scratch = optuna.create_study(
        sampler=optuna.samplers.RandomSampler(seed=seed), pruner=optuna.pruners.NopPruner()
    )
    return _ProbeTrial(
        optuna=scratch.ask(),
        config=config,
        device=device,
        max_epochs=sf.budget.epochs,
        params=dict(sf.params),
        seed=seed,
        metric=sf.metric,
        direction=sf.direction,
        ramp=(start, stop),
    )


class _ProbeTrial(Trial):
    """A Trial whose ``build_optimizer`` ramps the learning rate and watches the steps."""

    def __init__(self, *, ramp: tuple[float, float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ramp = ramp
        self.probe: LrProbe | None = None
        self.total_steps = 0

    def build_optimizer(self, params: Any, total_steps: int, *, fused: bool = False) -> Any:
        import torch

        optimizer, _ = build_optimizer(params, self.config, total_steps, fused=fused)
        self.total_steps = int(total_steps)
        probe = LrProbe(*self.ramp, steps=probe_steps(int(total_steps), self.max_epochs))
        self.probe = probe
        attach(optimizer, probe)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, probe.factor)

    def step_loss(self, loss: Any) -> None:
        probe = self.probe
        if probe is None:
            return
        lr = probe.lrs[-1] if probe.lrs else probe.start
        value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
        if probe.observe_loss(lr, value):
            raise ProbeFinished(f"lr range test done after {len(probe.lrs)} steps")
