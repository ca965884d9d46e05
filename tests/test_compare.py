"""The answer (DESIGN §8): finalists re-run with fresh seeds, intervals, tiers, the winner.

End to end on real torch training (tests.conftest.REGRESSION, milliseconds per trial) through
the real CLI and a real SQLite study; the statistics on their own below.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from tests.conftest import REGRESSION
from tests.test_launch import load, run
from tuner.compare import (
    REPLICATE_ATTR,
    TEST_METHOD,
    compute_answer,
    t_interval,
    tied,
)
from tuner.report import write_report
from tuner.studyfile import CompareConfig

ADAM_FIXED = {"lr": 0.05, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
FIXED_SCHEDULE = {"schedules": ["constant"], "warmup": {"fraction": 0}}


def replicates(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if REPLICATE_ATTR in t.user_attrs]


def answer_of(path: Path) -> dict[str, Any]:
    code, out, err = run("report", str(path), "--format", "json", "--out", "report")
    assert code == 0, err
    return json.loads(out)


def check_design_shape(doc: dict[str, Any]) -> None:
    """The §8 document: its keys, their types, best first, groups from 1 without gaps."""
    assert {"study", "metric", "direction", "winner", "optimizers"} <= set(doc)
    assert isinstance(doc["study"], str) and isinstance(doc["metric"], str)
    assert doc["direction"] in ("minimize", "maximize")
    rows = doc["optimizers"]
    assert rows and doc["winner"] == rows[0]["optimizer"]
    for row in rows:
        assert {
            "optimizer",
            "config",
            "search_value",
            "replicates",
            "mean",
            "ci95",
            "group",
        } <= set(row)
        assert row["config"]["optimizer"] == row["optimizer"]  # the §5 document
        assert isinstance(row["search_value"], float)
        assert all(isinstance(v, float) for v in row["replicates"])
        if row["replicates"]:
            assert row["mean"] == pytest.approx(sum(row["replicates"]) / len(row["replicates"]))
            lo, hi = row["ci95"]
            assert lo <= row["mean"] <= hi
        else:
            assert row["mean"] is None and row["ci95"] is None
        assert isinstance(row["group"], int) and row["group"] >= 1
    groups = [row["group"] for row in rows]
    assert groups[0] == 1 and groups == sorted(groups)
    assert set(groups) == set(range(1, max(groups) + 1))
    means = [row["mean"] for row in rows if row["mean"] is not None]
    better_first = sorted(means, reverse=doc["direction"] == "maximize")
    assert means == better_first


def test_two_names_for_one_update_rule_come_out_tied(make_study):
    # Plain SGD and heavy-ball momentum with momentum 0 are one update rule; every
    # hyperparameter is fixed, so the two finalists are one configuration under two names.
    sgd = {"lr": 0.05, "weight_decay": 0.0}
    path = make_study(
        budget={"trials": 4, "epochs": 3},
        search={
            "optimizers": {"sgd": sgd, "momentum": {**sgd, "momentum": 0.0}, "adam": None},
            **FIXED_SCHEDULE,
        },
        compare={"finalists": 2, "seeds": 3},
    )
    code, out, err = run("launch", str(path))
    assert code == 0, err
    study = load(path)
    assert len(study.trials) == 4 + 2 * 3
    assert Counter(t.user_attrs["tuner:config"]["optimizer"] for t in replicates(study)) == {
        "sgd": 3,
        "momentum": 3,
    }
    doc = answer_of(path)
    check_design_shape(doc)
    assert [row["group"] for row in doc["optimizers"]] == [1, 1]
    a, b = doc["optimizers"]
    assert a["replicates"] == b["replicates"]  # shared seeds: the very same runs
    assert len(set(a["replicates"])) == 3  # ... and the seeds are really different
    other = b["optimizer"]
    assert f"tied with {other}" in doc["answer"]
    # The summary leads with the answer.
    assert out.splitlines()[1].startswith(f"  answer            {a['optimizer']} (lr 0.05")
    assert f"tied with {b['optimizer']}" in out.splitlines()[1]
    assert "replicates        6 of 6" in out and "finished trials   4 of 4" in out


def test_a_clearly_better_optimizer_ranks_first_with_an_interval_apart(make_study):
    path = make_study(
        budget={"trials": 4, "epochs": 3},
        search={
            "optimizers": {"adam": ADAM_FIXED, "sgd": {"lr": 1e-4, "weight_decay": 0.0}},
            **FIXED_SCHEDULE,
        },
        compare={"finalists": 2, "seeds": 3},
    )
    assert run("launch", str(path))[0] == 0
    doc = answer_of(path)
    check_design_shape(doc)
    best, worse = doc["optimizers"]
    assert (doc["winner"], best["group"], worse["group"]) == ("adam", 1, 2)
    assert best["ci95"][1] < worse["ci95"][0]  # minimize: adam's interval lies below sgd's
    assert doc["answer"].endswith("ahead of sgd")
    assert doc["method"]["test"] == TEST_METHOD

    code, out, err = run("status", str(path))
    assert code == 0 and out.splitlines()[1].startswith("  answer            adam (")
    code, out, err = run("best", str(path))
    assert code == 0 and out.startswith("# adam (lr 0.05, constant)")
    assert yaml.safe_load(out) == best["config"]
    code, out, err = run("best", str(path), "--format", "python")
    assert code == 0 and out.splitlines()[1].startswith("# test-study: adam (lr 0.05")
    assert "total_steps = 30" in out  # 3 epochs x 10 steps, as the study trained
    code, out, err = run("best", str(path), "--format", "json")
    assert code == 0 and json.loads(out) == best["config"] and "ahead of sgd" in err
    assert (Path("report") / "answer.json").read_text() == json.dumps(doc, indent=2) + "\n"


INTERRUPTS_A_REPLICATE = REGRESSION.replace(
    "    g = torch.Generator()",
    "    import os\n"
    "    if 'tuner:replicate' in trial.optuna.user_attrs and not os.path.exists('once'):\n"
    "        if os.path.exists('first-done'):\n"
    "            open('once', 'w').close()\n"
    "            raise KeyboardInterrupt\n"
    "        open('first-done', 'w').close()\n"
    "    g = torch.Generator()",
)


def test_a_resumed_launch_completes_the_replicates_exactly(make_study):
    path = make_study(
        INTERRUPTS_A_REPLICATE,
        budget={"trials": 5, "epochs": 2},
        compare={"finalists": 2, "seeds": 2},
    )
    code, _, err = run("launch", str(path))
    # Its worker stopped during the second replicate (exit 130, the trial recorded interrupted);
    # launch started another worker, which ran the missing replicate.
    assert code == 0, err
    assert "replicate 1 trial" in err and "interrupted" in err
    study = load(path)
    interrupted = [t for t in replicates(study) if t.state == TrialState.FAIL]
    assert [t.user_attrs["tuner:outcome"] for t in interrupted] == ["interrupted"]
    complete = [t for t in replicates(study) if t.state == TrialState.COMPLETE]
    keys = Counter((t.user_attrs[REPLICATE_ATTR]["of"], t.user_attrs[REPLICATE_ATTR]["index"])
                   for t in complete)  # fmt: skip
    assert len(keys) == 4 and set(keys.values()) == {1}  # each replicate once, none missing
    search = [t for t in study.trials if REPLICATE_ATTR not in t.user_attrs]
    assert len([t for t in search if t.state == TrialState.COMPLETE]) == 5  # the budget held
    n = len(study.trials)
    assert run("launch", str(path))[0] == 0  # nothing is left to run
    assert len(load(path).trials) == n
    check_design_shape(answer_of(path))


def test_seeds_zero_turns_replicates_off(make_study):
    path = make_study(budget={"trials": 4}, compare={"seeds": 0})
    code, out, _ = run("launch", str(path))
    assert code == 0 and "best search value" in out and "replicates are off" in out
    assert not replicates(load(path))
    doc = answer_of(path)
    check_design_shape(doc)
    for i, row in enumerate(doc["optimizers"], 1):
        assert (row["replicates"], row["mean"], row["ci95"], row["group"]) == ([], None, None, i)


# --------------------------------------------------------------------------- statistics


def test_t_interval_matches_the_textbook() -> None:
    lo, hi = t_interval([1.0, 2.0, 3.0])  # mean 2, s 1, t(0.975, 2) = 4.3027
    assert (lo + hi) / 2 == pytest.approx(2.0)
    assert (hi - lo) / 2 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert t_interval([1.0]) is None


def test_tied_pairs_seeds_and_separates_a_clear_difference() -> None:
    a = {1: 0.90, 2: 0.95, 3: 0.92}
    assert tied(a, dict(a)) == (True, 1.0)  # identical runs
    shifted = {s: v - 0.05 + 0.001 * s for s, v in a.items()}
    same, p = tied(a, shifted)
    assert not same and p is not None and p < 0.05  # seed noise cancels in the pairs
    noisy = {1: 0.93, 2: 0.90, 3: 0.94}
    assert tied(a, noisy)[0]
    assert tied({1: 0.9, 2: 0.8}, {3: 0.1, 4: 0.12})[0] is False  # no shared seed: Welch


def test_an_unfinished_comparison_says_how_far_it_got(tmp_path: Path) -> None:
    from tests.test_report import add_replicates, make_study

    study = make_study(tmp_path, trials=30)
    add_replicates(study, 2)
    answer = compute_answer(study, CompareConfig(finalists=3, seeds=3))
    assert (answer.replicates_done, answer.replicates_planned) == (6, 9)
    assert "(6 of 9 replicates so far)" in answer.sentence()
    report = write_report(study, tmp_path / "report", compare=CompareConfig(seeds=3))
    assert "replicates" in report.files
    check_design_shape(json.loads(report.files["answer"].read_text()))


PRUNES_TRIAL_1 = REGRESSION.replace(
    "    g = torch.Generator()",
    "    if trial.number == 1:\n"
    "        raise tuner.TrialPruned('pruned by the test')\n"
    "    g = torch.Generator()",
)


def test_the_mlflow_view_leads_with_the_answer(make_study, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = make_study(
        PRUNES_TRIAL_1,
        budget={"trials": 4, "epochs": 3},
        search={"schedules": ["constant"], "warmup": {"fraction": 0.2}},
        compare={"finalists": 2, "seeds": 2},
        mlflow={"tracking_uri": uri, "experiment": "compare-ui"},
    )
    code, out, _ = run("launch", str(path), "--quiet")
    assert code == 0
    study = load(path)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("compare-ui")
    # MLflow 3 opens it on the training runs, not on its GenAI landing page: the experiment
    # says what it holds, and the summary links the model-training view.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    page = f"#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
    assert f"mlflow ui --backend-store-uri {uri}, then open http://127.0.0.1:5000/{page}" in out
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get("tuner.role") == "study"]
    local = client.download_artifacts(parent.info.run_id, "answer.json", str(tmp_path))
    doc = json.loads(Path(local).read_text())
    check_design_shape(doc)
    assert parent.data.tags["mlflow.note.content"].startswith(f"**{doc['answer']}**")
    children = {r.data.tags["tuner.trial_number"]: r for r in runs if r is not parent}
    assert len(children) == len(study.trials) == 4 + 2 * len(doc["optimizers"])
    for t in study.trials:
        child = children[str(t.number)]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        record = t.user_attrs.get(REPLICATE_ATTR)
        if record is not None:
            assert child.data.tags["tuner.seed"] == str(record["seed"])
            assert child.info.run_name == (
                f"trial-{t.number} replicate of {record['of']}, seed {record['index'] + 1}"
            )
        elif t.number == 1:
            assert child.info.run_name == "trial-1 (pruned)"
        else:
            assert child.info.run_name == f"trial-{t.number}"
        if t.number != 1:
            # lr at every optimizer step (30 here): the 6 warmup steps rise from 0.
            lr = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "lr")}
            assert sorted(lr) == list(range(30))
            assert lr[0] == 0.0 and lr[3] < lr[6] == lr[29]


def test_lr_is_downsampled_to_a_bounded_number_of_points() -> None:
    from tuner.trial import LR_POINTS, _LrLogger

    class Points:
        def __init__(self) -> None:
            self.steps: list[int] = []

        def log(self, metrics: dict[str, float], step: int) -> None:
            self.steps.append(step)

    points = Points()
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=0.1)
    optimizer.register_step_post_hook(_LrLogger(points, total_steps=10_000))
    for _ in range(10_000):
        optimizer.step()
    assert len(points.steps) <= LR_POINTS + 1
    assert points.steps[0] == 0 and points.steps[-1] == 9_999
