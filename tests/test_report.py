"""``tuner report``: real Optuna studies in SQLite, written the way tuner's runner writes them."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import matplotlib.image
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tuner.apps.report import (
    MIN_IMPORTANCE_TRIALS,
    Report,
    best_per_optimizer,
    lr_curve,
    param_importances,
    write_report,
)
from tuner.core.keys import ATTR

PLOTS = (
    "optimization_history",
    "param_importances",
    "parallel_coordinates",
    "best_per_optimizer",
    "lr_schedule",
    "score_vs_lr",
    "score_by_schedule",
    "replicates",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TOTAL_STEPS = 200
# The lr each optimizer trains best with, and how good it gets there: adamw wins, then sgd.
SWEET_SPOT = {"adamw": (3e-3, 0.05), "sgd": (0.1, 0.3), "adagrad": (0.03, 0.6)}


def _sample(ot: optuna.Trial) -> dict[str, Any]:
    """Conditional parameters named as tuner's search space names them, and the config."""
    opt = ot.suggest_categorical("optimizer", ["adamw", "sgd", "adagrad", "rmsprop"])
    config: dict[str, Any] = {
        "optimizer": opt,
        "lr": ot.suggest_float(f"{opt}.lr", 1e-4, 1.0, log=True),
    }
    if opt == "adamw":
        one_minus = ot.suggest_float("adamw.beta2.one_minus", 1e-3, 1e-1, log=True)
        config["betas"] = [0.9, 1.0 - one_minus]
        config["weight_decay"] = ot.suggest_float("adamw.weight_decay", 1e-5, 1e-1, log=True)
    schedule = ot.suggest_categorical("schedule", ["constant", "cosine"])
    config["schedule"] = {"name": schedule}
    if schedule == "cosine":
        ratio = ot.suggest_float("schedule.cosine.final_lr_ratio", 0.0, 0.1)
        config["schedule"]["final_lr_ratio"] = ratio
    fraction = ot.suggest_float("warmup.fraction", 0.01, 0.1)
    config["warmup"] = {"fraction": fraction, "begin_lr": 0.0}
    return config


def _loss(config: dict[str, Any], number: int) -> float:
    best_lr, floor = SWEET_SPOT[config["optimizer"]]
    return floor + 0.2 * abs(math.log10(config["lr"] / best_lr)) + 0.001 * (number % 5)


def make_study(
    folder: Path,
    *,
    direction: str = "minimize",
    trials: int = 40,
    name: str = "report-test",
    replicates: int = 0,
) -> optuna.Study:
    """A study in SQLite with complete, pruned, diverged and failed trials, as the runner
    records them (states, user attributes, a NaN report for a diverged trial).

    rmsprop always diverges, so one optimizer has no complete trial at all. Trials are asked
    and told in memory, then copied into SQLite in one transaction each: a commit per
    attribute would cost seconds.
    """
    scratch = optuna.create_study(
        direction=direction, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    scratch.enqueue_trial({"optimizer": "rmsprop"})
    for _ in range(trials):
        ot = scratch.ask()
        config = _sample(ot)
        for key, value in {
            "tuner:config": config,
            "tuner:worker_host": "host-a",
            "tuner:device": "cpu",
            "tuner:duration_s": 0.5,
            "tuner:total_steps": TOTAL_STEPS,
        }.items():
            ot.set_user_attr(key, value)
        loss = _loss(config, ot.number) if config["optimizer"] != "rmsprop" else math.inf
        value = loss if direction == "minimize" else 1.0 - loss / 4
        if config["optimizer"] == "rmsprop" or config["lr"] > 0.5:
            ot.set_user_attr("tuner:outcome", "diverged")
            ot.report(math.nan, 0)
            scratch.tell(ot, state=TrialState.PRUNED)
        elif ot.number % 7 == 3:
            ot.set_user_attr("tuner:outcome", "pruned")
            ot.report(value, 0)
            scratch.tell(ot, state=TrialState.PRUNED)
        elif ot.number % 11 == 5:
            ot.set_user_attr("tuner:outcome", "failed")
            scratch.tell(ot, state=TrialState.FAIL)
        else:
            ot.set_user_attr("tuner:outcome", "complete")
            scratch.tell(ot, value)
    study = optuna.create_study(
        storage=f"sqlite:///{folder / 'study.db'}", study_name=name, direction=direction
    )
    study.set_user_attr("tuner:metric", "val_accuracy" if direction == "maximize" else "loss")
    study.add_trials(scratch.get_trials(deepcopy=False))
    if replicates:
        add_replicates(study, replicates)
    return study


def add_replicates(study: optuna.Study, seeds: int, *, finalists: int = 3) -> None:
    """Replicates of the finalists as the runner records them: the finalist's configuration
    again, the value moved by per-seed noise (the same for every finalist, as shared seeds do)."""
    from tuner.results.compare import finalists as pick
    from tuner.results.compare import replicate_seed

    direction = study.direction.name.lower()
    for finalist in pick(study.get_trials(deepcopy=False), direction, finalists):
        for index in range(seeds):
            seed = replicate_seed(0, index)
            # Worse than the search value, which was the best of many (the winner's curse).
            worse = 0.01 * (index + 1) + 0.002 * (finalist.number % 3)
            value = finalist.value + (worse if direction == "minimize" else -worse)
            study.add_trial(
                optuna.trial.create_trial(
                    value=value,
                    user_attrs={
                        ATTR.REPLICATE: {
                            "of": finalist.number, "index": index, "seed": seed,
                            "config": finalist.user_attrs["tuner:config"],
                        },
                        "tuner:config": finalist.user_attrs["tuner:config"],
                        "tuner:outcome": "complete",
                        "tuner:duration_s": 0.5,
                        "tuner:total_steps": TOTAL_STEPS,
                    },
                )
            )  # fmt: skip


@pytest.fixture(scope="module", params=["minimize", "maximize"])
def reported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[optuna.Study, Report, Path]:
    """One study per direction and its report, shared by the tests that only read them."""
    folder = tmp_path_factory.mktemp(request.param)
    study = make_study(folder, direction=request.param, replicates=3)
    return study, write_report(study, folder / "report", budget=40), folder / "report"


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert 250 <= height <= 3000 and 400 <= width <= 4000, (path.name, image.shape)
    assert image[..., :3].std() > 0.01, f"{path.name} is blank"


def complete_by_optimizer(study: optuna.Study) -> dict[str, list[float]]:
    """The search's complete values per optimizer (replicates are not search trials)."""
    out: dict[str, list[float]] = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        if "tuner:replicate" in t.user_attrs:
            continue
        out.setdefault(t.user_attrs["tuner:config"]["optimizer"], []).append(t.value)
    return out


def test_report_writes_every_plot_and_the_summary(
    reported: tuple[optuna.Study, Report, Path],
) -> None:
    study, report, folder = reported
    direction = study.direction.name.lower()

    assert set(report.files) == {*PLOTS, "summary", "answer"}, report.skipped
    assert report.skipped == {}
    for name in PLOTS:
        assert report.files[name] == folder / f"{name}.png"
        assert_png(report.files[name])
    text = report.files["summary"].read_text()
    assert text == report.summary_text
    pick = max if direction == "maximize" else min
    best = pick(v for vs in complete_by_optimizer(study).values() for v in vs)
    assert best == study.best_value
    metric = "val_accuracy" if direction == "maximize" else "loss"
    # With replicates, the best is the answer's recommendation with its mean; the best search
    # trial is labelled as a search value.
    chosen = report.answer.recommended
    assert f"Best `{metric}`: **{chosen.mean:.6g} ± " in text
    assert f"(adamw, mean of 3 seeds of trial {chosen.trial}'s configuration)**" in text
    assert f"The best search value, {best:.6g} (trial {study.best_trial.number}, " in text
    assert "optimizer: adamw" in text  # the best configuration, as YAML
    counts = {
        o: sum(
            t.user_attrs.get("tuner:outcome") == o
            for t in study.trials
            if "tuner:replicate" not in t.user_attrs  # the replicates have their own section
        )
        for o in ("complete", "pruned", "diverged", "failed")
    }
    assert all(counts.values()), counts  # the study really has every outcome
    for outcome, n in counts.items():
        assert f"| {outcome} | {n} |" in text
    assert "of a budget of 40" in text
    assert "- Learning-rate schedule of the best configuration: `lr_schedule.png`" in text


def test_best_per_optimizer_lists_each_optimizer_best_first(
    reported: tuple[optuna.Study, Report, Path],
) -> None:
    study, report, _ = reported
    direction = study.direction.name.lower()
    ranking = best_per_optimizer(study)

    values = complete_by_optimizer(study)
    pick = max if direction == "maximize" else min
    expected = sorted(values, key=lambda o: pick(values[o]), reverse=direction == "maximize")
    assert [r.optimizer for r in ranking] == [*expected, "rmsprop"]
    assert expected == ["adamw", "sgd", "adagrad"]  # SWEET_SPOT's order, either direction
    for r in ranking[:-1]:
        assert r.best_value == pick(values[r.optimizer])
        assert sorted(r.values) == sorted(values[r.optimizer])
        assert r.complete == len(values[r.optimizer]) == r.counts["complete"]
        best = study.trials[r.best_number]
        assert best.value == r.best_value
        assert best.user_attrs["tuner:config"]["optimizer"] == r.optimizer
    rmsprop = ranking[-1]
    assert rmsprop.best_value is None and rmsprop.complete == 0
    n_rmsprop = sum(t.user_attrs["tuner:config"]["optimizer"] == "rmsprop" for t in study.trials)
    assert rmsprop.counts == {"diverged": n_rmsprop}
    table = summary_table(report.summary_text)
    assert [row[1] for row in table] == [r.optimizer for r in ranking]
    assert table[0][2] == f"{study.best_value:.6g}" and table[-1][2] == "—"


def summary_table(summary: str) -> list[list[str]]:
    section = summary.split("## Best per optimizer")[1].split("##")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[1:]]


def test_importances_cover_a_shared_lr_and_the_best_optimizers_own(
    reported: tuple[optuna.Study, Report, Path],
) -> None:
    study, report, _ = reported
    section = report.summary_text.split("## Hyperparameter importances (fANOVA)")[1]
    shared, own = section.strip().splitlines()[:2]
    # One lr compared across optimizers: each samples its own `<optimizer>.lr`.
    assert shared.startswith("- all complete trials") and "`lr`" in shared
    assert "`optimizer`" in shared
    assert own.startswith("- adamw trials") and "`adamw.lr`" in own

    adamw = [
        t
        for t in study.get_trials(states=(TrialState.COMPLETE,))
        if t.params.get("optimizer") == "adamw"
    ]
    importances = param_importances(adamw)
    assert sum(importances.values()) == pytest.approx(1.0)
    assert set(importances) >= {"adamw.lr", "adamw.beta2.one_minus", "warmup.fraction"}
    assert importances == param_importances(adamw)  # seeded: the same report twice


def test_the_lr_sentence_describes_the_configuration_above_it(
    reported: tuple[optuna.Study, Report, Path],
) -> None:
    _, report, _ = reported
    # The configuration the Best block prints, read back from summary.md itself.
    best_block = report.summary_text.split("## Best\n")[1].split("\n## ")[0]
    shown = yaml.safe_load(best_block.split("```yaml\n")[1].split("```")[0])
    assert shown == report.answer.recommended.config  # the answer's recommendation
    curve = lr_curve(shown, TOTAL_STEPS)
    warmup = round(shown["warmup"]["fraction"] * TOTAL_STEPS)
    assert curve.warmup_steps == warmup
    assert curve.lrs[0] == 0.0
    assert max(curve.lrs) == pytest.approx(shown["lr"])
    assert (
        f"Its learning rate ({shown['optimizer']}, lr {shown['lr']:.2g}, "
        f"{shown['schedule']['name']}, {shown['warmup']['fraction']:.0%} warmup) over "
        f"{TOTAL_STEPS} optimizer steps: starts at 0, peaks at {shown['lr']:.4g} at step "
        f"{warmup} (the end of {warmup} warmup steps), ends at {curve.lrs[-1]:.4g}."
    ) in best_block


def test_lr_curve_is_warmup_then_cosine() -> None:
    config = {
        "optimizer": "adamw",
        "lr": 1e-3,
        "schedule": {"name": "cosine", "final_lr_ratio": 0.01},
        "warmup": {"fraction": 0.1, "begin_lr": 1e-5},
    }
    curve = lr_curve(config, TOTAL_STEPS)

    assert curve.steps == list(range(TOTAL_STEPS))
    assert curve.warmup_steps == 20
    assert curve.lrs[0] == pytest.approx(1e-5)
    peak = max(range(TOTAL_STEPS), key=curve.lrs.__getitem__)
    assert peak == 20 and curve.lrs[peak] == pytest.approx(1e-3)
    assert all(a < b for a, b in itertools.pairwise(curve.lrs[:21]))
    assert all(a > b for a, b in itertools.pairwise(curve.lrs[20:]))
    assert curve.lrs[10] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 10 / 20)
    # Half way through the cosine part the factor is (1 + final) / 2.
    assert curve.lrs[20 + 90] == pytest.approx(1e-3 * (1 + 0.01) / 2, rel=1e-6)
    assert 1e-5 <= curve.lrs[-1] < 1e-3 * 0.02


def test_long_lr_curves_are_sampled_on_the_same_curve() -> None:
    config = {"optimizer": "sgd", "lr": 0.1, "schedule": {"name": "step"}, "warmup": {"steps": 50}}
    stepped = lr_curve(config, 1000)
    sampled = lr_curve(config, 1000, max_points=97)

    assert len(sampled.steps) <= 98 and sampled.steps[0] == 0 and sampled.steps[-1] == 999
    assert 50 in sampled.steps
    assert sampled.lrs == pytest.approx([stepped.lrs[s] for s in sampled.steps])


def test_empty_study_writes_the_summary_and_says_why(tmp_path: Path) -> None:
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="empty", direction="maximize"
    )
    report = write_report(study, tmp_path / "report")

    assert set(report.files) == {"summary", "answer"}
    assert set(report.skipped) == set(PLOTS)
    assert report.skipped["optimization_history"] == "the study has no trials yet"
    assert "No complete trial yet" in report.summary_text
    for name in PLOTS:
        assert not (tmp_path / "report" / f"{name}.png").exists()
    assert report.summary_text.count("not written (no complete trial yet)") == 6


def test_study_without_a_complete_trial_still_shows_its_history(tmp_path: Path) -> None:
    study = make_study(tmp_path, trials=1)  # only the enqueued rmsprop trial, which diverges
    for _ in range(2):
        ot = study.ask()
        ot.set_user_attr("tuner:outcome", "failed")
        study.tell(ot, state=TrialState.FAIL)
    report = write_report(study, tmp_path / "report")

    assert set(report.files) == {"optimization_history", "summary", "answer"}
    assert_png(report.files["optimization_history"])
    assert report.skipped["best_per_optimizer"] == "no complete trial yet"
    assert "| diverged | 1 |" in report.summary_text
    assert "| failed | 2 |" in report.summary_text


def test_too_few_trials_for_importances_is_said_not_crashed(tmp_path: Path) -> None:
    study = make_study(tmp_path, trials=6)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert 0 < len(complete) < MIN_IMPORTANCE_TRIALS
    with pytest.raises(ValueError, match=f"at least {MIN_IMPORTANCE_TRIALS} complete trials"):
        param_importances(complete)

    report = write_report(study, tmp_path / "report")
    assert "at least 5 complete trials" in report.skipped["param_importances"]
    assert "- Hyperparameter importances: not written (" in report.summary_text
    for name in ("optimization_history", "best_per_optimizer", "lr_schedule"):
        assert_png(report.files[name])
    # Too few points to mean anything: left out, with one line saying so.
    for name in ("parallel_coordinates", "score_vs_lr", "score_by_schedule"):
        assert name not in report.files
        assert "needs at least 5 complete trials, but got" in report.skipped[name]


def test_a_collapsed_trial_is_marked_off_scale_and_does_not_squash_the_rest(
    tmp_path: Path,
) -> None:
    from tuner.apps.plots import robust_range

    study = make_study(tmp_path, direction="maximize")
    config = dict(study.trials[1].user_attrs["tuner:config"])
    study.add_trial(
        optuna.trial.create_trial(
            value=-5.0,  # collapsed, far below the scores near 0.9
            user_attrs={"tuner:config": config, "tuner:outcome": "complete"},
        )
    )
    report = write_report(study, tmp_path / "report")
    for name in ("optimization_history", "best_per_optimizer", "score_vs_lr", "score_by_schedule"):
        assert report.off_scale[name] == 1, name
        assert_png(report.files[name])
    values = [t.value for t in study.get_trials(states=(TrialState.COMPLETE,))]
    axis = robust_range(values)
    assert not axis.inside(-5.0)
    assert all(axis.inside(v) for v in values if v != -5.0)
    assert axis.lo > 0.5  # the scores keep the whole height of the plot
