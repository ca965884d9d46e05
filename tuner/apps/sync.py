"""``tuner sync``: backfill MLflow from the study database, the source of truth.

For every finished trial of the Optuna study, the child run under the study's parent run is
created if missing, or completed if the tracker could not deliver all of it (run still RUNNING,
a missing outcome, a status that disagrees with the study, missing params or curve points).
Runs are matched by the tag ``tuner.trial_number`` (or the name ``trial-<number>``), so running
sync twice creates nothing the second time. Duplicates of one trial's run (a create whose
answer was lost to a timeout, resent) are deleted, keeping the one that got furthest.

The parent run gets the study's results (the metrics and ``best_config.yaml`` that launch
logs at its end, each only when it differs) and, once no trial is running or waiting, the
status FINISHED.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import FrozenTrial, TrialState

from tuner.config.studyfile import StudyFile
from tuner.core.errors import ConfigError, TunerError
from tuner.core.keys import ATTR, TAG, Outcome
from tuner.core.redact import redact
from tuner.core.trials import OUTCOME_OF_STATE
from tuner.db.session import load_study, parent_run_tags
from tuner.results.summary import study_results, summarize
from tuner.tracking._base import (
    OUTCOME_STATUS,
    flatten_params,
    safe_text,
)
from tuner.tracking._client import (
    ensure_experiment,
    is_transient,
    log_artifacts,
    log_entities,
    make_client,
    now_ms,
    open_parent_run,
    tag_dict,
    terminate_run,
    to_metric,
)

__all__ = ["SyncReport", "sync_study", "sync_study_file"]

_log = logging.getLogger("tuner.tracking")

# Optuna's retry callbacks list, on each retry, the numbers of the trials it replaces.
_RETRIED_ATTR = "retry_history"


@dataclass(frozen=True)
class SyncReport:
    """What :func:`sync_study` did: runs created, runs completed, runs already whole.

    ``skipped`` counts trials still running or waiting in the study (nothing final to sync),
    ``duplicates`` the extra runs of one trial that were deleted; ``parent_updated`` says
    whether the parent's results had to change, ``parent_status`` is its status afterwards.
    """

    parent_run_id: str
    created: int = 0
    completed: int = 0
    already_ok: int = 0
    skipped: int = 0
    duplicates: int = 0
    parent_updated: bool = False
    parent_status: str = "RUNNING"


@dataclass(frozen=True)
class _Expected:
    """One trial as MLflow should show it, derived from the study database."""

    number: int
    params: dict[str, str]
    tags: dict[str, str]
    status: str
    points: dict[int, float]  # step -> value of the study metric, closing value included
    reported: frozenset[int]  # the steps the trial reported
    start_ms: int | None
    end_ms: int | None


def sync_study(
    study: optuna.Study,
    tracking_uri: str,
    *,
    experiment: str,
    metric: str,
    parent_run_id: str | None = None,
    study_yaml_text: str | None = None,
    tags: Mapping[str, str] | None = None,
    client: MlflowClient | None = None,
    budget: int | None = None,
    compare: Any = None,
) -> SyncReport:
    """Create or complete the child run of every finished trial of ``study``, then the parent
    run's results and status; idempotent.

    ``metric`` names the study's metric (intermediate values and the final value go there);
    ``budget`` and ``compare`` (the study file's) make the parent's results what launch logs.
    ``parent_run_id`` defaults to the id kept in the study's user attrs; when there is none
    (tracking was off) a parent run is created and its id stored there, so a second sync finds
    it.

    >>> report = sync_study(study, "sqlite:///mlflow.db", experiment="digits",
    ...                     metric="val_accuracy")  # doctest: +SKIP
    >>> report.created, report.completed, report.already_ok  # doctest: +SKIP
    (60, 0, 0)
    """
    client = client or make_client(tracking_uri)
    try:
        return _sync(
            study, client, tracking_uri, experiment=experiment, metric=metric,
            parent_run_id=parent_run_id, study_yaml_text=study_yaml_text, tags=tags,
            budget=budget, compare=compare,
        )  # fmt: skip
    except Exception as exc:
        if isinstance(exc, TunerError) or not is_transient(exc):
            raise
        raise TunerError(
            f"MLflow at {redact(tracking_uri)} did not answer ({redact(exc, tracking_uri)})",
            hint="what sync delivered so far stays; run `tuner sync` again once MLflow is up",
        ) from None


def _sync(
    study: optuna.Study,
    client: MlflowClient,
    tracking_uri: str,
    *,
    experiment: str,
    metric: str,
    parent_run_id: str | None,
    study_yaml_text: str | None,
    tags: Mapping[str, str] | None,
    budget: int | None,
    compare: Any,
) -> SyncReport:
    experiment_id = ensure_experiment(client, experiment, tracking_uri)
    known = parent_run_id or study.user_attrs.get(ATTR.PARENT_RUN)
    parent = open_parent_run(
        client,
        experiment_id=experiment_id,
        study_name=study.study_name,
        existing_run_id=known,
        tags=dict(tags or {}),
        reopen=False,
    )
    if parent != known:
        study.set_user_attr(ATTR.PARENT_RUN, parent)
    if study_yaml_text is not None:
        log_artifacts(client, parent, {"study.yaml": study_yaml_text})

    children, duplicates = _children_by_number(client, experiment_id, parent)
    created = completed = already_ok = skipped = 0
    trials = study.get_trials(deepcopy=False)
    retried = _retried_numbers(trials)
    for trial in trials:
        if not trial.state.is_finished():
            skipped += 1
            continue
        expected = _expected(trial, metric, retried)
        run = children.get(trial.number)
        if run is None:
            _create(client, experiment_id, parent, expected, metric)
            created += 1
        elif _complete(client, run, expected, metric):
            completed += 1
        else:
            already_ok += 1
    updated, status = _complete_parent(
        client, parent, study, budget, compare, finished=skipped == 0
    )
    _log.info(
        "sync: %d run(s) created, %d completed, %d already complete, %d trial(s) still running",
        created,
        completed,
        already_ok,
        skipped,
    )
    return SyncReport(parent, created, completed, already_ok, skipped, duplicates, updated, status)


def _complete_parent(
    client: MlflowClient,
    parent: str,
    study: optuna.Study,
    budget: int | None,
    compare: Any,
    *,
    finished: bool,
) -> tuple[bool, str]:
    """Log the study's results on the parent where they differ; end it once ``finished``."""
    metrics, tags, artifacts = study_results(summarize(study, budget=budget, compare=compare))
    run = client.get_run(parent)
    ts = now_ms()
    changed = [
        m
        for key, value in metrics.items()
        if run.data.metrics.get(key) != value and (m := to_metric(key, value, ts, 0)) is not None
    ]
    retagged = {k: v for k, v in tag_dict(tags).items() if run.data.tags.get(k) != v}
    log_entities(client, parent, metrics=changed, tags=retagged)
    stale = {
        name: text
        for name, text in artifacts.items()
        if _artifact_text(client, parent, name) != redact(text)
    }
    if stale:
        log_artifacts(client, parent, stale)
    status = run.info.status
    if finished and status != "FINISHED":
        terminate_run(client, parent, "FINISHED", ts)
        status = "FINISHED"
    return bool(changed or retagged or stale or status != run.info.status), status


def _artifact_text(client: MlflowClient, run_id: str, name: str) -> str | None:
    """A text artifact's content, or None when the run has no such artifact."""
    with tempfile.TemporaryDirectory(prefix="tuner-sync-") as tmp:
        try:
            return Path(client.download_artifacts(run_id, name, tmp)).read_text(encoding="utf-8")
        except Exception:  # absent (MLflow raises its own or an OSError, by store)
            return None


def _children_by_number(
    client: MlflowClient, experiment_id: str, parent: str
) -> tuple[dict[int, Run], int]:
    """The parent's child run per trial number, and how many duplicates were deleted."""
    runs: dict[int, list[Run]] = {}
    token: str | None = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'",
            max_results=1000,
            page_token=token,
        )
        for run in page:
            number = _trial_number(run)
            if number is not None:
                runs.setdefault(number, []).append(run)
        token = page.token
        if not token:
            break
    children: dict[int, Run] = {}
    deleted = 0
    for number, found in runs.items():
        # Of duplicates, keep the one that got furthest: ended, then the most data.
        found.sort(key=lambda r: (r.info.status != "RUNNING", len(r.data.metrics)), reverse=True)
        children[number] = found[0]
        for extra in found[1:]:
            client.delete_run(extra.info.run_id)
            deleted += 1
    if deleted:
        _log.warning("sync: deleted %d duplicate trial run(s)", deleted)
    return children, deleted


def _trial_number(run: Run) -> int | None:
    text = run.data.tags.get(TAG.TRIAL_NUMBER)
    if text is None and (run.info.run_name or "").startswith("trial-"):
        text = run.info.run_name.removeprefix("trial-")
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _ms(when: object) -> int | None:
    return int(when.timestamp() * 1000) if when is not None else None  # type: ignore[attr-defined]


def _lost_with_its_worker(trial: FrozenTrial, retried: frozenset[int]) -> bool:
    """A failed trial that a tuner worker started but never ended: its worker died.

    The runner records an outcome before it ends any trial, so a FAIL without one was failed
    by another process's heartbeat check (which also queued its retry).
    """
    if trial.state != TrialState.FAIL or ATTR.OUTCOME in trial.user_attrs:
        return False
    started_by_worker = ATTR.HOST in trial.user_attrs or ATTR.WORKER in trial.user_attrs
    return started_by_worker or trial.number in retried


def _retried_numbers(trials: list[FrozenTrial]) -> frozenset[int]:
    """Numbers of the trials that Optuna's stale-trial callback queued again."""
    numbers: set[int] = set()
    for t in trials:
        history = t.system_attrs.get(_RETRIED_ATTR)
        if isinstance(history, list):
            numbers.update(n for n in history if isinstance(n, int))
    return frozenset(numbers)


def _expected(trial: FrozenTrial, metric: str, retried: frozenset[int] = frozenset()) -> _Expected:
    outcome = trial.user_attrs.get(ATTR.OUTCOME)
    if outcome not in OUTCOME_STATUS:
        lost = _lost_with_its_worker(trial, retried)
        outcome = Outcome.INTERRUPTED.value if lost else OUTCOME_OF_STATE[trial.state]
    config = trial.user_attrs.get(ATTR.CONFIG)
    params = flatten_params(config if isinstance(config, Mapping) else trial.params)
    tags = {TAG.TRIAL_NUMBER: str(trial.number), TAG.OUTCOME: outcome}
    if trial.duration is not None:
        tags[TAG.DURATION] = f"{trial.duration.total_seconds():.3f}"
    if "optimizer" in params:
        tags[TAG.OPTIMIZER] = params["optimizer"]
    for attr, tag in ((ATTR.HOST, TAG.HOST), (ATTR.DEVICE, TAG.DEVICE)):
        if attr in trial.user_attrs:
            tags[tag] = safe_text(trial.user_attrs[attr])
    replicate = trial.user_attrs.get(ATTR.REPLICATE)
    if isinstance(replicate, Mapping):  # as the live path tags it (tuner.worker.runner)
        for key, tag in (("of", "replicate_of"), ("seed", "seed"), ("index", "seed_index")):
            if key in replicate:
                tags[f"tuner.{tag}"] = str(replicate[key])
    points = {int(step): float(value) for step, value in trial.intermediate_values.items()}
    reported = frozenset(points)
    if trial.value is not None:
        # The objective's value closes the curve: one step after the last report, unless it
        # is that report.
        last = max(points, default=-1)
        if last < 0 or points[last] != trial.value:
            points[last + 1] = float(trial.value)
    return _Expected(
        number=trial.number,
        params=params,
        tags=tags,
        status=OUTCOME_STATUS[outcome],
        points=points,
        reported=reported,
        start_ms=_ms(trial.datetime_start),
        end_ms=_ms(trial.datetime_complete),
    )


def _log_points(
    client: MlflowClient, run_id: str, metric: str, points: Mapping[int, float], ts: int
) -> None:
    metrics = [m for step, v in sorted(points.items()) if (m := to_metric(metric, v, ts, step))]
    log_entities(client, run_id, metrics=metrics)


def _create(
    client: MlflowClient, experiment_id: str, parent: str, expected: _Expected, metric: str
) -> None:
    run = client.create_run(
        experiment_id,
        start_time=expected.start_ms,
        tags={MLFLOW_PARENT_RUN_ID: parent, **expected.tags, TAG.SYNCED: "true"},
        run_name=f"trial-{expected.number}",
    )
    run_id = run.info.run_id
    log_entities(client, run_id, params=expected.params)
    _log_points(client, run_id, metric, expected.points, expected.start_ms or 0)
    terminate_run(client, run_id, expected.status, expected.end_ms)


def _complete(client: MlflowClient, run: Run, expected: _Expected, metric: str) -> bool:
    """Bring an existing run in line with the study; True if anything had to change.

    A run counts as whole when it has every param, the outcome the study records, its status
    and a point for every reported step (the closing value is optional: the live tracker may
    not log it).
    """
    run_id = run.info.run_id
    # Params cannot change value in MLflow: add only the missing ones.
    params = {k: v for k, v in expected.params.items() if k not in run.data.params}
    outcome_wrong = run.data.tags.get(TAG.OUTCOME) != expected.tags[TAG.OUTCOME]
    status_wrong = run.info.status != expected.status
    have = {m.step for m in client.get_metric_history(run_id, metric)} if expected.points else set()
    missing_reports = any(step not in have for step in expected.reported)
    if not (params or outcome_wrong or status_wrong or missing_reports):
        return False
    tags = {k: v for k, v in expected.tags.items() if k not in run.data.tags}
    tags[TAG.OUTCOME] = expected.tags[TAG.OUTCOME]
    log_entities(client, run_id, params=params, tags={**tags, TAG.SYNCED: "true"})
    missing = {s: v for s, v in expected.points.items() if s not in have}
    if missing:
        _log_points(client, run_id, metric, missing, expected.start_ms or 0)
    if status_wrong:
        terminate_run(client, run_id, expected.status, expected.end_ms)
    return True


def sync_study_file(study_file: StudyFile) -> SyncReport:
    """``tuner sync``: backfill the study file's MLflow experiment from its study database."""
    if study_file.mlflow.tracking_uri is None:
        raise ConfigError(
            "mlflow.tracking_uri: tracking is off in this study file, so there is "
            "nothing to sync to, but got `off`"
        )
    return sync_study(
        load_study(study_file), study_file.mlflow.tracking_uri,
        experiment=study_file.mlflow.experiment, metric=study_file.metric,
        study_yaml_text=study_file.raw_text, budget=study_file.budget.trials,
        compare=study_file.compare,
        tags=parent_run_tags(study_file),
    )  # fmt: skip
