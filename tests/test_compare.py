"""The answer (docs/answer.md): finalists re-run with fresh seeds, intervals, tiers, the winner.

End to end on real torch training (tests.conftest.REGRESSION, milliseconds per trial) through
the real CLI and a real SQLite study; the statistics on their own below.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from tests.conftest import REGRESSION
from tests.test_launch import load, run
from tuner.apps.report import write_report
from tuner.config.studyfile import CompareConfig
from tuner.core.keys import ATTR
from tuner.results.compare import (
    TEST_METHOD,
    Finalist,
    cheapest,
    compute_answer,
    cost_score,
    describe_cost,
    format_bytes,
    replicate_seed,
    t_interval,
    tied,
)

ADAM_FIXED = {"lr": 0.05, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
FIXED_SCHEDULE = {"schedules": ["constant"], "warmup": {"fraction": 0}}


def replicates(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if ATTR.REPLICATE in t.user_attrs]


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
    # The answer leads with the recommended one: the winner, or the other when the machine
    # happened to time the winner's epochs as materially slower (identical work: only noise
    # decides, so either name may lead); it is tied with the other either way.
    lead = doc["recommended"]
    (other,) = {a["optimizer"], b["optimizer"]} - {lead}
    assert doc["answer"].startswith(f"{lead} (lr 0.05") and f"tied with {other}" in doc["answer"]
    # The summary leads with the answer.
    assert out.splitlines()[1].startswith(f"  answer            {lead} (lr 0.05")
    assert f"tied with {other}" in out.splitlines()[1]
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
    keys = Counter((t.user_attrs[ATTR.REPLICATE]["of"], t.user_attrs[ATTR.REPLICATE]["index"])
                   for t in complete)  # fmt: skip
    assert len(keys) == 4 and set(keys.values()) == {1}  # each replicate once, none missing
    search = [t for t in study.trials if ATTR.REPLICATE not in t.user_attrs]
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
    assert_answer_metrics(parent.data.metrics, doc, study)
    children = {r.data.tags["tuner.trial_number"]: r for r in runs if r is not parent}
    assert len(children) == len(study.trials) == 4 + 2 * len(doc["optimizers"])
    for t in study.trials:
        child = children[str(t.number)]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        record = t.user_attrs.get(ATTR.REPLICATE)
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


def assert_answer_metrics(
    metrics: dict[str, float], doc: dict[str, Any], study: optuna.Study
) -> None:
    """The parent run's metrics carry the answer (the recommended optimizer's mean, interval
    and cost, as in the JSON) and the search's best under a name that says so."""
    (row,) = [r for r in doc["optimizers"] if r["optimizer"] == doc["recommended"]]
    assert metrics["answer_mean"] == pytest.approx(row["mean"])
    assert metrics["answer_ci95_low"] == pytest.approx(row["ci95"][0])
    assert metrics["answer_ci95_high"] == pytest.approx(row["ci95"][1])
    assert metrics["answer_ci95_low"] <= metrics["answer_mean"] <= metrics["answer_ci95_high"]
    assert metrics["answer_seconds_per_epoch"] == pytest.approx(row["seconds_per_epoch"], rel=1e-3)
    assert row["state_bytes"] is not None and metrics["answer_state_bytes"] == row["state_bytes"]
    search = [t for t in study.trials if ATTR.REPLICATE not in t.user_attrs]
    best = min((t for t in search if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert metrics["search_best_value"] == pytest.approx(best.value)
    assert metrics["search_best_trial"] == best.number
    # The names before the answer led, kept for dashboards: the same search values.
    assert (metrics["best_value"], metrics["best_trial"]) == (
        metrics["search_best_value"],
        metrics["search_best_trial"],
    )


def test_tuner_sync_logs_the_answer_metrics_too(make_study, tmp_path):
    from mlflow import MlflowClient

    fields = {
        "budget": {"trials": 3, "epochs": 2},
        "search": {"optimizers": {"adam": ADAM_FIXED, "sgd": {"lr": 0.05, "weight_decay": 0.0}},
                   **FIXED_SCHEDULE},
        "compare": {"finalists": 2, "seeds": 2},
    }  # fmt: skip
    path = make_study(**fields)  # tracking off: MLflow learns of the study from sync alone
    assert run("launch", str(path), "--quiet")[0] == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    make_study(**fields, mlflow={"tracking_uri": uri, "experiment": "synced"})
    code, _, err = run("sync", str(path))
    assert code == 0, err
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("synced")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get("tuner.role") == "study"]
    doc = answer_of(path)
    assert_answer_metrics(parent.data.metrics, doc, load(path))
    assert parent.data.tags["tuner.recommended"] == doc["recommended"]
    # Replicate runs keep what tells them apart.
    study = load(path)
    children = {r.data.tags["tuner.trial_number"]: r for r in runs if r is not parent}
    for t in replicates(study):
        record = t.user_attrs[ATTR.REPLICATE]
        tags = children[str(t.number)].data.tags
        assert (tags["tuner.replicate_of"], tags["tuner.seed"]) == (
            str(record["of"]),
            str(record["seed"]),
        )


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


# --------------------------------------------------------------------------- cost


# Two clusters far apart: SGD with momentum and Adam both separate them within an epoch or two,
# so every run ends at accuracy 1.0 (a tie), while their optimizer states differ in size.
SEPARABLE = textwrap.dedent(
    """
    import torch

    def model():
        return torch.nn.Sequential(
            torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2)
        )

    def objective(trial):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4096, 8, generator=g)
        y = (torch.arange(4096) % 2).long()
        x[:, 0] += 8.0 * (2 * y - 1)
        net = model()
        # Enough compute per epoch that the time per epoch is training, not bookkeeping.
        steps = 20
        optimizer, scheduler = trial.build_optimizer(
            net.parameters(), total_steps=trial.max_epochs * steps
        )
        accuracy = 0.0
        for epoch in range(trial.max_epochs):
            for _ in range(steps):
                loss = torch.nn.functional.cross_entropy(net(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
            with torch.no_grad():
                accuracy = (net(x).argmax(1) == y).float().mean().item()
            trial.report(accuracy, step=epoch)
        return accuracy
    """
)
ADAM = {
    "lr": 0.01,
    "beta1": 0.9,
    "beta2": 0.999,
    "eps": 1e-8,
    "weight_decay": 0.0,
    "amsgrad": False,
}
MOMENTUM = {"lr": 0.05, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0}


def state_bytes_of(make: Callable[[Any], torch.optim.Optimizer]) -> int:
    """The bytes of the state tensors of an optimizer of SEPARABLE's model after one step,
    computed here on its own: what tuner must have measured in the user's objective."""
    namespace: dict[str, Any] = {}
    exec(SEPARABLE, namespace)  # the objective file's own model
    net = namespace["model"]()
    optimizer = make(net.parameters())
    net(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    return sum(
        value.nelement() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def test_tied_optimizers_name_the_cheaper_one_measured_on_real_training(make_study):
    path = make_study(
        SEPARABLE,
        direction="maximize",
        metric="accuracy",
        budget={"trials": 2, "epochs": 4},
        # Seed 11 samples adam first: adam is the winner (the tie goes to the earlier trial),
        # so recommending momentum is the cost rule's doing.
        sampler={"name": "random", "seed": 11},
        search={"optimizers": {"adam": ADAM, "momentum": MOMENTUM, "sgd": None}, **FIXED_SCHEDULE},
        compare={"finalists": 2, "seeds": 2},
    )
    code, out, err = run("launch", str(path))
    assert code == 0, err
    doc = answer_of(path)
    check_design_shape(doc)
    rows = {row["optimizer"]: row for row in doc["optimizers"]}
    assert rows["adam"]["replicates"] == rows["momentum"]["replicates"] == [1.0, 1.0]
    assert (doc["winner"], rows["adam"]["group"], rows["momentum"]["group"]) == ("adam", 1, 1)
    # One momentum buffer per parameter against Adam's two moments (and its step counters).
    adam_bytes = state_bytes_of(lambda p: torch.optim.Adam(p, lr=0.01))
    momentum_bytes = state_bytes_of(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    assert rows["adam"]["state_bytes"] == adam_bytes
    assert rows["momentum"]["state_bytes"] == momentum_bytes
    assert momentum_bytes < adam_bytes / 1.9
    # Half the memory makes momentum the cheaper unless its measured time per epoch came out
    # over 1.6x adam's (0.5 x 1.6 = 0.8, the rule's bar): wall time on a machine shared with
    # other work can, and the rule must then keep the winner.
    slower = rows["momentum"]["seconds_per_epoch"] / rows["adam"]["seconds_per_epoch"]
    if slower < 1.6:
        assert doc["recommended"] == "momentum"
        assert doc["answer"].startswith(
            "momentum (lr 0.05, constant): 1 ± 0 over 2 seeds, the cheapest of tier 1; "
            "tied with adam (best mean; "
        )
        assert "2× the optimizer memory)" in doc["answer"]
    else:
        assert doc["recommended"] == "adam", slower
        assert (
            "tied with momentum (" in doc["answer"] and "half the optimizer memory" in doc["answer"]
        )
    # The seconds come from what the workers stored with each replicate.
    study = load(path)
    for name, row in rows.items():
        mine = [t for t in replicates(study) if t.user_attrs["tuner:config"]["optimizer"] == name]
        assert [t.user_attrs["tuner:epochs"] for t in mine] == [4, 4]
        per_epoch = sum(t.user_attrs["tuner:objective_s"] / 4 for t in mine) / 2
        assert row["seconds_per_epoch"] == pytest.approx(per_epoch, rel=1e-3)
        assert 0 < row["seconds_per_epoch"] < row["seconds"]
        assert row["steps_to_target"] is not None and row["target_reached"] == 2
    assert doc["target"] == 1.0

    # Everything that names "the best" names the recommended configuration, with its mean.
    chosen = rows[doc["recommended"]]
    best_line = (
        f"best accuracy     1 ± 0 ({chosen['optimizer']}, mean of 2 seeds of trial "
        f"{chosen['trial']}'s configuration)"
    )
    assert best_line in out
    code, status, _ = run("status", str(path))
    assert code == 0 and best_line in status
    assert "best search value 1 (trial 0, adam; one search run" in status
    code, best, err = run("best", str(path))
    assert code == 0 and yaml.safe_load(best) == chosen["config"]
    assert best.startswith(f"# {doc['answer']}")
    summary = (Path("report") / "summary.md").read_text()
    assert (
        f"| 1 | {chosen['optimizer']} (lr {chosen['config']['lr']:.2g}, constant) **recommended** |"
        in summary
    )
    assert (
        f"| {format_bytes(adam_bytes)} |" in summary
        and f"| {format_bytes(momentum_bytes)} |" in summary
    )


def finalist(name: str, mean: float, *, spe: float, state: int, group: int = 1) -> Finalist:
    return Finalist(
        name, 0, {"optimizer": name}, mean, mean=mean, group=group,
        seconds_per_epoch=spe, state_bytes=state, replicates={1: mean},
    )  # fmt: skip


def test_the_cost_rule_weighs_a_large_saving_against_a_small_loss() -> None:
    adam = finalist("adam", 0.98, spe=1.0, state=800)
    # Half the memory at 1.3x the time per epoch: 0.5 x 1.3 = 0.65, cheaper by over a quarter.
    assert cheapest([adam, finalist("momentum", 0.97, spe=1.3, state=400)]).optimizer == "momentum"
    # Half the memory at 2.5x the time: 1.25, dearer overall.
    assert cheapest([adam, finalist("momentum", 0.97, spe=2.5, state=400)]).optimizer == "adam"
    # Differences under 1.25x are measurement noise, not cost.
    assert cheapest([adam, finalist("yogi", 0.97, spe=0.85, state=700)]).optimizer == "adam"
    # Only tier 1 is considered, however cheap the rest.
    cheap = finalist("sgd", 0.9, spe=0.2, state=0, group=2)
    assert cheapest([adam, cheap]).optimizer == "adam"
    # No optimizer state at all is capped at a 4x saving, not an infinite one.
    sgd = finalist("sgd", 0.97, spe=1.0, state=0)
    assert cost_score(sgd, adam) == 0.25
    # Of two cheaper tied ones, the lower score: sgd (0.25) over momentum (0.5).
    momentum = finalist("momentum", 0.975, spe=1.0, state=400)
    assert cheapest([adam, momentum, sgd]).optimizer == "sgd"
    assert describe_cost(sgd, adam) == "no optimizer state"
    assert describe_cost(adam, finalist("m", 0.97, spe=1.4, state=400)) == (
        "1.4× faster per epoch, 2× the optimizer memory"
    )


def test_steps_to_target_against_a_hand_computed_value(tmp_path: Path) -> None:
    from tests.test_report import make_study as make_report_study

    study = make_report_study(tmp_path, direction="maximize", trials=30)
    a, b = finalists_of(study, 2)
    # Replicates as the runner stores them: a per-epoch curve, the value, and the costs.
    curves = {
        a.number: [[0.70, 0.80, 0.90, 0.91], [0.72, 0.84, 0.88, 0.90]],  # mean 0.905
        b.number: [[0.60, 0.75, 0.85, 0.895], [0.62, 0.79, 0.84, 0.87]],  # mean 0.8825
    }
    costs = {a.number: (2.0, 4000), b.number: (1.2, 2000)}
    for trial in (a, b):
        for index, curve in enumerate(curves[trial.number]):
            seconds, state = costs[trial.number]
            study.add_trial(
                optuna.trial.create_trial(
                    value=curve[-1],
                    intermediate_values=dict(enumerate(curve)),
                    user_attrs={
                        ATTR.REPLICATE: {
                            "of": trial.number, "index": index,
                            "seed": replicate_seed(0, index),
                            "config": trial.user_attrs["tuner:config"],
                        },
                        "tuner:config": trial.user_attrs["tuner:config"],
                        "tuner:outcome": "complete",
                        "tuner:total_steps": 200,
                        "tuner:objective_s": seconds * (1 + index),
                        "tuner:epochs": 4,
                        "tuner:state_bytes": state,
                    },
                )
            )  # fmt: skip
    answer = compute_answer(study, CompareConfig(finalists=2, seeds=2))
    first, second = answer.finalists
    assert (first.trial, second.trial) == (a.number, b.number)
    assert first.group == second.group == 1  # differences 0.015 and 0.03 over 2 seeds: tied
    # The target is the weakest tier-1 mean, 0.8825: a reaches it at steps 2 (0.90) and 3
    # (0.90; 0.88 at step 2 falls short), a mean of 2.5; b at step 3 in its first seed (0.895)
    # and never in its second (0.87 at the end).
    assert answer.target == pytest.approx(0.8825)
    assert (first.steps_to_target, first.target_reached) == (2.5, 2)
    assert (second.steps_to_target, second.target_reached) == (3.0, 1)
    # Seconds per epoch: (2 + 4) / 2 / 4 = 0.75 and (1.2 + 2.4) / 2 / 4 = 0.45.
    assert (first.seconds, first.seconds_per_epoch) == (pytest.approx(3.0), pytest.approx(0.75))
    assert second.seconds_per_epoch == pytest.approx(0.45)
    # b: 1.67x faster per epoch and half the memory: the cheaper of the tied, recommended.
    assert answer.recommended is second
    doc = answer.to_json()
    assert doc["recommended"] == second.optimizer and doc["winner"] == first.optimizer
    assert [row["steps_to_target"] for row in doc["optimizers"]] == [2.5, 3.0]
    assert [row["state_bytes"] for row in doc["optimizers"]] == [4000, 2000]

    # The report's Best block shows b's configuration (not the best search trial's), and the
    # learning-rate sentence under it describes that one.
    report = write_report(study, tmp_path / "report", compare=CompareConfig(finalists=2, seeds=2))
    best_block = report.summary_text.split("## Best\n")[1].split("\n## ")[0]
    shown = yaml.safe_load(best_block.split("```yaml\n")[1].split("```")[0])
    assert shown == second.config != first.config
    assert f"(trial {a.number}, {first.optimizer}; one search run" in best_block
    lr = shown["lr"]
    assert f"Its learning rate ({shown['optimizer']}, lr {lr:.2g}, " in best_block
    assert f"peaks at {lr:.4g}" in best_block


def finalists_of(study: optuna.Study, n: int) -> list[optuna.trial.FrozenTrial]:
    from tuner.results.compare import finalists

    return finalists(study.get_trials(), study.direction.name.lower(), n)


# An example-like study (studies/digits.yaml in miniature): accuracy on a small validation set,
# so search values tie often, and replicates whose values beat the search's best.
BLOBS = textwrap.dedent(
    """
    import torch

    def objective(trial):
        g = torch.Generator().manual_seed(0)
        centers = torch.randn(3, 6, generator=g) * 1.5
        labels = torch.arange(240) % 3
        x = centers[labels] + torch.randn(240, 6, generator=g)
        x_train, y_train, x_val, y_val = x[:180], labels[:180], x[180:], labels[180:]
        net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        steps = 6
        optimizer, scheduler = trial.build_optimizer(
            net.parameters(), total_steps=trial.max_epochs * steps
        )
        accuracy = 0.0
        for epoch in range(trial.max_epochs):
            for i in range(steps):
                xb, yb = x_train[i * 30:(i + 1) * 30], y_train[i * 30:(i + 1) * 30]
                loss = torch.nn.functional.cross_entropy(net(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
            with torch.no_grad():
                accuracy = (net(x_val).argmax(1) == y_val).float().mean().item()
            trial.report(accuracy, step=epoch)
        return accuracy
    """
)


def test_every_best_names_the_same_configuration_and_never_a_replicate(make_study):
    path = make_study(
        BLOBS,
        direction="maximize",
        metric="val_accuracy",
        budget={"trials": 6, "epochs": 3},
        sampler={"name": "random", "seed": 1},
        search={
            "optimizers": {"adamw": {}, "nesterov": {}, "yogi": {}, "adam": None, "sgd": None},
            "schedules": ["constant", "cosine"],
        },
        compare={"finalists": 3, "seeds": 2},
    )
    code, out, err = run("launch", str(path))
    assert code == 0, err
    study = load(path)
    replicate_numbers = {t.number for t in replicates(study)}
    assert len(replicate_numbers) == 6
    doc = answer_of(path)
    (chosen,) = [r for r in doc["optimizers"] if r["optimizer"] == doc["recommended"]]
    # What made the stories disagree: a replicate beats every search value, and the answer's
    # configuration is not the best search trial's.
    search = [t for t in study.trials if t.number not in replicate_numbers]
    search_best = max(search, key=lambda t: (t.value, -t.number))
    assert max(t.value for t in replicates(study)) > search_best.value
    assert chosen["trial"] != search_best.number
    headline = (
        f"{chosen['mean']:.6g} ± {(chosen['ci95'][1] - chosen['ci95'][0]) / 2:.2g} "
        f"({chosen['optimizer']}, mean of 2 seeds of trial {chosen['trial']}'s configuration)"
    )
    code, status, _ = run("status", str(path))
    assert code == 0
    code, best_yaml, _ = run("best", str(path))
    assert code == 0 and yaml.safe_load(best_yaml) == chosen["config"]
    summary_md = (Path("report") / "summary.md").read_text()
    progress = [line for line in err.splitlines() if line.startswith("[")]

    # The last progress line (every replicate done), the summary, status and the report all
    # give the same best: the recommended configuration with its replicate mean.
    assert f"best {headline}" in progress[-1]
    assert f"  best val_accuracy {headline}" in out.splitlines()
    assert f"  best val_accuracy {headline}" in status.splitlines()
    assert f"Best `val_accuracy`: **{headline}**" in summary_md
    for text in (out, status):
        block = text.split("  best val_accuracy ")[1].split("  best search value")[0]
        shown = dict(line.split(None, 1) for line in block.splitlines()[1:])
        assert shown["optimizer"] == chosen["optimizer"]
        assert float(shown["lr"]) == pytest.approx(chosen["config"]["lr"], rel=1e-5)
    best_block = summary_md.split("## Best\n")[1].split("\n## ")[0]
    assert yaml.safe_load(best_block.split("```yaml\n")[1].split("```")[0]) == chosen["config"]

    # No "best" anywhere names a replicate's trial number (a progress line's own trial may be
    # one: "trial 7 complete ... | best ...").
    claims = 0
    for text in (err, out, status, summary_md):
        for claim in re.findall(r"best[^|\n]*", text, flags=re.IGNORECASE):
            named = {int(n) for n in re.findall(r"\btrial (\d+)", claim)}
            assert not named & replicate_numbers, claim
            claims += bool(named)
    assert claims >= len(progress) + 3
