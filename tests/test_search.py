"""The search defaults (tuner.search): range test, portfolio, per-worker seeds, pruner, divergence.

Real studies on SQLite files, real torch training on small problems, real worker subprocesses.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import textwrap

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

from tests.conftest import REGRESSION
from tuner.cli import cli
from tuner.config.studyfile import StudyFile, load_study_file
from tuner.core.keys import ATTR
from tuner.db.session import open_session
from tuner.sampling.pruner import ScheduleMedianPruner
from tuner.sampling.sampler import worker_seed
from tuner.search import (
    LrProbe,
    run_probe,
)
from tuner.trial import Trial, TrialDiverged
from tuner.worker.runner import Worker

ON = {"lr_range_test": "auto", "portfolio": True}


def quadratic(curvature: float, per_epoch: int = 70):
    """Plain GD on 0.5 * sum(c_i x_i^2), c_i in [curvature / 1.26, curvature]: diverges above
    lr = 2 / curvature."""

    def objective(trial: Trial) -> float:
        c = torch.logspace(-0.1, 0, 10) * curvature
        x = torch.nn.Parameter(torch.randn(10, generator=torch.Generator().manual_seed(1)))
        opt, sched = trial.build_optimizer([x], total_steps=trial.max_epochs * per_epoch)
        loss = torch.tensor(0.0)
        for epoch in range(trial.max_epochs):
            for _ in range(per_epoch):
                loss = 0.5 * (c * x * x).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            trial.report(loss.item(), step=epoch)
        return loss.item()

    return objective


def study_file(**search) -> StudyFile:
    return StudyFile.model_validate(
        {
            "name": "q",
            "objective": "obj.py:objective",
            "budget": {"trials": 4, "epochs": 10},
            "search": {"optimizers": ["sgd"], **search},
        }
    )


@pytest.mark.parametrize("curvature", [0.5, 40.0])
def test_range_test_finds_gradient_descents_divergence_point_on_a_quadratic(curvature):
    outcome = run_probe(quadratic(curvature), "sgd", study_file())
    edge = 2.0 / curvature
    assert outcome.diverges_at is not None
    assert edge / 2 <= outcome.diverges_at <= edge * 2, (outcome.diverges_at, edge)
    # The searched range ends at the divergence point and spans three decades below it.
    low, high = outcome.range
    assert high == outcome.diverges_at and math.isclose(low, high / 1000)
    # It costs at most an epoch and a half of this objective (100 of its 700 steps).
    assert 0 < outcome.epochs <= 1.5


def test_probe_ignores_minibatch_noise_and_stops_on_a_real_blow_up():
    # Norms that swing 10x at random never trigger; a sustained climb does.
    probe = LrProbe(1e-4, 10.0, steps=60)
    gen = torch.Generator().manual_seed(0)
    noise = torch.exp(torch.randn(60, generator=gen) * 1.2).tolist()
    stopped_at = None
    for step in range(60):
        lr = probe.lr_at(step)
        blow_up = max(1.0, lr / 0.1) ** 3  # grows from lr = 0.1 on
        if probe.observe(lr, noise[step] * blow_up):
            stopped_at = step
            break
    assert stopped_at is not None and probe.diverges_at is not None
    assert 0.1 / 3 <= probe.diverges_at <= 0.1 * 3, probe.diverges_at


def test_probe_is_not_fooled_by_bimodal_minibatch_norms():
    # The gradient norms an Adam probe saw on benchmarks/search_quality.py's large_lr (two kinds
    # of minibatches, about 6x apart, no blow-up yet), then the same pattern on: a floor taken
    # as the lowest window median read the flip back up as a blow-up at lr 5.6e-4.
    # The 40-step ramp ends before the lr^4 climb is steep or high enough to count as an
    # explosion: the probe then reports where the norm rose, which only widens the range.
    seen = [0.13, 0.20, 0.84, 0.86, 0.86, 0.12, 0.15, 1.0, 0.64, 1.2]
    probe = LrProbe(1e-4, 10.0, steps=40)
    for step in range(40):
        lr = probe.lr_at(step)
        blow_up = max(1.0, lr / 1.0) ** 4  # a real blow-up from lr = 1 on
        if probe.observe(lr, seen[step % len(seen)] * blow_up):
            break
    point = probe.diverges_at or probe.rises_at
    assert point is not None
    assert 1.0 / 3 <= point <= 3.0, point


def digits_classifier(epochs: int, give_loss: bool):
    """An MLP on scikit-learn's digits, scored by validation cross-entropy: under Adam its
    gradient norm rises several-fold along a ramp while its loss still falls (the logits
    sharpen), the case where a norm-only range test once cut off the best rates."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    xt, yt, xv, yv = x[400:], y[400:], x[:400], y[:400]
    per_epoch = math.ceil(len(xt) / 64)

    def train(build, report=None, step_loss=None) -> float:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
        )
        optimizer, scheduler = build(model.parameters(), per_epoch * epochs)
        order = torch.Generator().manual_seed(0)
        value = math.inf
        for epoch in range(epochs):
            perm = torch.randperm(len(xt), generator=order)
            for i in range(per_epoch):
                idx = perm[i * 64 : (i + 1) * 64]
                loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                if step_loss is not None:
                    step_loss(loss)
            with torch.no_grad():
                value = float(torch.nn.functional.cross_entropy(model(xv), yv))
            value = value if math.isfinite(value) else 1e9
            if report is not None:
                report(value, epoch)
        return value

    def objective(trial: Trial) -> float:
        return train(trial.build_optimizer, trial.report, trial.step_loss if give_loss else None)

    return objective, train


def test_probe_ceiling_on_a_classifier_whose_gradient_norm_rises_while_its_loss_falls():
    sf = StudyFile.model_validate(
        {
            "name": "clf",
            "objective": "obj.py:objective",
            "budget": {"trials": 4, "epochs": 3},
            "search": {"optimizers": ["adam"]},
        }
    )
    by_norm = run_probe(digits_classifier(3, give_loss=False)[0], "adam", sf)
    by_loss = run_probe(digits_classifier(3, give_loss=True)[0], "adam", sf)
    assert (by_norm.signal, by_loss.signal) == ("grad_norm", "loss")
    # The case itself: the norm rose 4x far below where the loss blew up.
    assert by_norm.rises_at is not None and by_loss.diverges_at is not None
    assert by_norm.rises_at * 3 < by_loss.diverges_at, (by_norm.rises_at, by_loss.diverges_at)

    # The best constant Adam rate on a half-decade grid, trained as the study would.
    train = digits_classifier(3, give_loss=False)[1]

    def constant(lr):
        def build(params, total_steps):
            opt = torch.optim.Adam(params, lr=lr)
            return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)

        return build

    grid = {10 ** (k / 2): train(constant(10 ** (k / 2))) for k in range(-7, 1)}
    best = min(grid, key=grid.__getitem__)
    # Neither signal sets a ceiling below it: the norm's rise only keeps (or widens) the
    # catalog's range, the loss's blow-up lies above the best rate.
    assert by_norm.verdict == "ambiguous"
    assert by_norm.range[1] >= best and by_norm.range[1] >= 0.1, (by_norm.range, best)
    assert by_loss.verdict == "diverged" and by_loss.range[1] >= best, (by_loss.range, best)


def test_an_uncertain_probe_never_lowers_a_portfolio_rate_below_the_literature():
    from tuner.config.space import parse_search
    from tuner.search import portfolio_trials

    space = parse_search({"optimizers": ["adam"], "schedules": ["constant"]})

    def adam_lr(rates) -> float:
        (_, params), *_ = portfolio_trials(space, rates)
        return params["adam.lr"]

    assert adam_lr({}) == pytest.approx(1e-3)  # the literature's rate (Kingma & Ba)
    # A norm that rose without blowing up, low or high: the literature's rate stays.
    assert adam_lr({"adam": (0.005, "ambiguous")}) == pytest.approx(1e-3)
    assert adam_lr({"adam": (0.5, "ambiguous")}) == pytest.approx(1e-3)
    # Nothing happened up to 0.5: the rate may rise, to a tenth of it, never fall.
    assert adam_lr({"adam": (0.5, "stable")}) == pytest.approx(0.05)
    assert adam_lr({"adam": (0.005, "stable")}) == pytest.approx(1e-3)
    # A blow-up the probe saw at 0.005 moves it down, to a tenth of the ceiling.
    assert adam_lr({"adam": (0.005, "diverged")}) == pytest.approx(0.0005)


def test_an_uncertain_rise_a_decade_above_the_literature_adds_one_raised_entry_per_family():
    from tuner.config.space import parse_search
    from tuner.search import portfolio_trials

    space = parse_search({"optimizers": ["adamw", "adam", "momentum", "sgd"]})

    def entries(rates) -> dict[str, float]:
        out = {}
        for name, params in portfolio_trials(space, rates):
            out[name] = next(v for k, v in params.items() if k.endswith(".lr"))
        return out

    def rises(adam: float, momentum: float, verdict: str = "ambiguous") -> dict:
        return {
            "adamw": (adam, verdict),
            "adam": (adam, verdict),
            "momentum": (momentum, verdict),
            "sgd": (momentum / 1.9, verdict),
        }

    literature = {
        "adamw-cosine": 1e-3,
        "adam-constant": 1e-3,
        "momentum-step": 0.1,
        "sgd-cosine": 0.1,
    }
    assert entries({}) == pytest.approx(literature)
    # Adam's norm rose at 0.2 without blowing up, momentum's at 4: a tenth of Adam's rise
    # (0.02) and 0.3 of momentum's (1.2) lie a decade or more above the literature's rates. The
    # literature's entries stay first and unchanged (widen, never cut); each family's first
    # entry with a constant schedule (else its first) also runs at `lr_fraction` of the rise,
    # once, after them.
    raised = entries(rises(0.2, 4.0))
    assert list(raised) == [*literature, "adam-constant@rise", "momentum-step@rise"]
    assert raised == pytest.approx(
        {**literature, "adam-constant@rise": 0.02, "momentum-step@rise": 1.2}
    )
    # Less than a decade above the literature (Adam 0.005, momentum 0.24): nothing is added.
    assert entries(rises(0.05, 0.8)) == pytest.approx(literature)
    # A blow-up moves the entries to its ceiling, a stable probe may raise them: no extra entry.
    assert list(entries(rises(0.2, 4.0, "diverged"))) == list(literature)
    assert list(entries(rises(0.2, 4.0, "stable"))) == list(literature)


def worker(sf: StudyFile, objective) -> optuna.Study:
    session = open_session(sf)
    study, tracker = session.study, session.tracker
    Worker(study_file=sf, study=study, objective=objective, tracker=tracker).run()
    return study


class Counting:
    """The REGRESSION objective, counting its calls."""

    def __init__(self) -> None:
        namespace: dict = {}
        exec(compile(REGRESSION, "obj.py", "exec"), namespace)
        self.inner = namespace["objective"]
        self.calls = 0

    def __call__(self, trial: Trial) -> float:
        self.calls += 1
        return self.inner(trial)


def test_range_test_is_stored_shown_and_not_run_again_on_resume(make_study):
    path = make_study(
        search={"optimizers": {"adam": {}, "adamw": {}, "sgd": {}}, **ON},
        budget={"trials": 3},
    )
    sf = load_study_file(path)
    objective = Counting()
    study = worker(sf, objective)
    stored = study.user_attrs[ATTR.LR_RANGE_TEST]
    probed = {f["optimizer"]: f for f in stored["families"]}
    # One probe per family: adam speaks for adamw too.
    assert sorted(probed) == ["adam", "sgd"]
    assert probed["adam"]["members"] == ["adam", "adamw"]
    assert objective.calls == 2 + 3
    # Every search trial samples lr from the probed range.
    for t in study.trials:
        opt = t.user_attrs["tuner:config"]["optimizer"]
        family = probed["sgd" if opt == "sgd" else "adam"]
        dist = t.distributions[f"{opt}.lr"]
        assert (dist.low, dist.high) == pytest.approx(tuple(family["range"]))
    assert stored["epochs"] > 0

    # A resumed launch with a larger budget reuses the result: only the new trials run.
    bigger = load_study_file(path).model_copy(
        update={"budget": sf.budget.model_copy(update={"trials": 5})}
    )
    worker(bigger, objective)
    assert objective.calls == 2 + 5

    # The summary and `tuner status` show it.
    out = CliRunner().invoke(cli, ["status", str(path)]).stdout
    assert "lr range test: 2 probes" in out
    adam_line = next(line for line in out.splitlines() if line.strip().startswith("adam"))
    assert "-> searching [" in adam_line and adam_line.endswith("(also sets adamw)")
    # The objective reports per epoch only: the probes read the gradient norm, and say so.
    assert "gradient norm" in adam_line, adam_line
    assert {f["signal"] for f in stored["families"]} == {"grad_norm"}
    sgd_line = next(line for line in out.splitlines() if line.strip().startswith("sgd"))
    assert "-> searching [" in sgd_line


def test_an_objective_that_hands_over_its_loss_is_probed_on_the_loss(make_study):
    # Today's REGRESSION objective with one more line: trial.step_loss(loss) after each step.
    line = next(x for x in REGRESSION.splitlines() if x.strip() == "scheduler.step()")
    source = REGRESSION.replace(
        line, f"{line}\n{line.replace('scheduler.step()', '')}trial.step_loss(loss)"
    )
    assert "trial.step_loss(loss)" in source
    path = make_study(source, search={"optimizers": {"adam": {}, "sgd": {}}, **ON})
    namespace: dict = {}
    exec(compile(source, "obj.py", "exec"), namespace)
    study = worker(load_study_file(path), namespace["objective"])
    stored = study.user_attrs[ATTR.LR_RANGE_TEST]
    assert {f["signal"] for f in stored["families"]} == {"loss"}
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    out = CliRunner().invoke(cli, ["status", str(path)]).stdout
    lines = [line for line in out.splitlines() if "-> searching" in line]
    assert len(lines) == 2 and all("(training loss)" in line for line in lines), lines


def test_range_test_off_searches_the_catalog_ranges(make_study):
    path = make_study(search={"lr_range_test": "off", "portfolio": False})
    objective = Counting()
    study = worker(load_study_file(path), objective)
    assert ATTR.LR_RANGE_TEST not in study.user_attrs
    assert objective.calls == 4
    lows = {t.distributions[k].low for t in study.trials for k in t.params if k.endswith(".lr")}
    assert lows <= {1e-5, 1e-4}  # adam's and sgd's catalog lows


NO_BUILD = textwrap.dedent(
    """
    import torch

    def objective(trial):
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)   # not trial.build_optimizer
        for epoch in range(trial.max_epochs):
            trial.report(1.0 / (epoch + 1), step=epoch)
        return 0.5
    """
)


def test_an_objective_that_cannot_be_probed_falls_back_with_a_clear_message(make_study, caplog):
    path = make_study(NO_BUILD, search=ON)
    caplog.set_level(logging.WARNING, logger="tuner")
    namespace: dict = {}
    exec(compile(NO_BUILD, "obj.py", "exec"), namespace)
    study = worker(load_study_file(path), namespace["objective"])
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "the probe of sgd failed: the objective never called trial.build_optimizer" in m
        and "catalog's lr range" in m
        for m in messages
    ), messages
    # Probed once: the second family is skipped with the same reason, not run again.
    assert sum("the probe of" in m for m in messages) == 1
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    lows = {t.distributions[k].low for t in study.trials for k in t.params if k.endswith(".lr")}
    assert lows <= {1e-5, 1e-4}
    out = CliRunner().invoke(cli, ["status", str(path)]).stdout
    assert "probe failed (the objective never called trial.build_optimizer)" in out


def test_portfolio_configurations_are_the_first_trials_adapted_to_the_optimizer_set(make_study):
    path = make_study(
        search={
            "optimizers": {"adam": {}, "nesterov": {}, "sgd": {}},
            "schedules": ["constant", "cosine", "linear"],
            **ON,
        },
        budget={"trials": 6},
    )
    study = worker(load_study_file(path), Counting())
    assert study.user_attrs[ATTR.PORTFOLIO] == ["nesterov-cosine", "adam-constant", "sgd-cosine"]
    first, second = study.trials[:2]
    assert first.user_attrs[ATTR.PORTFOLIO_ENTRY] == "nesterov-cosine"
    cfg = first.user_attrs["tuner:config"]
    assert cfg["optimizer"] == "nesterov" and cfg["schedule"]["name"] == "cosine"
    assert cfg["momentum"] == pytest.approx(0.9) and cfg["warmup"]["fraction"] == 0.05
    # Its rate comes from the range test: 0.3 of the nesterov family's divergence point.
    families = {f["optimizer"]: f for f in study.user_attrs[ATTR.LR_RANGE_TEST]["families"]}
    assert cfg["lr"] == pytest.approx(0.3 * families["nesterov"]["range"][1])
    assert second.user_attrs["tuner:config"]["optimizer"] == "adam"
    assert second.user_attrs["tuner:config"]["schedule"]["name"] == "constant"
    # sgd runs at 0.3 of its own divergence point, 1/1.9 of the probed nesterov's.
    sgd = study.trials[2].user_attrs["tuner:config"]
    assert sgd["optimizer"] == "sgd"
    assert sgd["lr"] == pytest.approx(0.3 * families["nesterov"]["range"][1] / 1.9)
    assert ATTR.PORTFOLIO_ENTRY not in study.trials[3].user_attrs
    # Never more than half the budget: a 2-trial study gets one portfolio trial.
    small = make_study(
        name="small", search={"optimizers": {"adam": {}, "sgd": {}}, **ON}, budget={"trials": 2}
    )
    assert worker(load_study_file(small), Counting()).user_attrs[ATTR.PORTFOLIO] == [
        "adam-constant"
    ]


def test_portfolio_false_and_bad_switches(make_study):
    path = make_study(search={"portfolio": False, "lr_range_test": "off"})
    study = worker(load_study_file(path), Counting())
    assert study.user_attrs.get(ATTR.PORTFOLIO) is None
    bad = make_study(search={"lr_range_test": "maybe"})
    result = CliRunner().invoke(cli, ["launch", str(bad)])
    assert result.exit_code == 2
    assert "search.lr_range_test: must be 'auto' or 'off', but got 'maybe'" in result.stderr
    bad = make_study(search={"portfolio": 3})
    result = CliRunner().invoke(cli, ["launch", str(bad)])
    assert result.exit_code == 2
    assert "search.portfolio: must be True or False, but got 3" in result.stderr


def test_worker_seeds_differ_and_worker_zero_keeps_the_study_seed():
    seeds = {worker_seed(7, i) for i in range(50)}
    assert worker_seed(7, 0) == 7 and len(seeds) == 50
    assert worker_seed(None, 3) is None


def test_a_seeded_one_worker_study_is_reproducible(make_study, tmp_path):
    params = []
    for name in ("a", "b"):
        path = make_study(
            name=name, sampler={"name": "tpe", "seed": 3}, search=ON, budget={"trials": 8}
        )
        study = worker(load_study_file(path), Counting())
        params.append([t.params for t in study.trials])
    assert params[0] == params[1]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_three_workers_never_repeat_a_configuration(make_study, sampler):
    # A second per trial: every worker is up and taking trials before the budget is gone.
    slow = REGRESSION.replace(
        "    g = torch.Generator()",
        "    import time\n    time.sleep(1.0)\n    g = torch.Generator()",
    )
    path = make_study(
        slow,
        sampler={"name": sampler, "seed": 0},
        search={"optimizers": {"adam": {}, "sgd": {}}, "schedules": ["constant"], **ON},
        budget={"trials": 12, "epochs": 2},
        workers={"devices": ["cpu"], "per_device": 3},
    )
    done = subprocess.run(
        [sys.executable, "-m", "tuner", "launch", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    doc = yaml.safe_load(path.read_text())
    study = optuna.load_study(study_name=doc["name"], storage=doc["storage"])
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 12
    keys = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(keys)) == len(keys), keys
    workers = {t.user_attrs["tuner:worker"] for t in finished}
    assert len(workers) >= 2  # the study really ran in parallel


def report(values, direction="minimize", typical=None):
    study = optuna.create_study(direction=direction)
    trial = Trial(
        optuna=study.ask(),
        config=None,  # type: ignore[arg-type] - report() does not use it
        device="cpu",
        max_epochs=len(values),
        params={},
        seed=0,
        direction=direction,
        typical_value=typical,
    )
    for step, value in enumerate(values):
        trial.report(value, step)


def test_divergence_is_judged_against_a_scale_not_a_first_value_near_zero():
    report([0.0, 1.0, 2.0, 3.5, 5.0])  # starts at 0 and rises slowly: not diverged
    report([1e-9, 1e-8, 1e-7, 1e-6])
    with pytest.raises(TrialDiverged, match=r"exploded from 2\.3 to 10000"):
        report([2.3, 1.9, 1e4])
    with pytest.raises(TrialDiverged, match="is nan"):
        report([2.3, float("nan")])
    with pytest.raises(TrialDiverged, match="is inf"):
        report([0.0, float("inf")])
    # The study's typical value is a floor on the scale: 0 -> 50 is no blow-up for a metric
    # that usually reads 10, but 0 -> 5000 is.
    report([0.0, 50.0], typical=10.0)
    with pytest.raises(TrialDiverged):
        report([0.0, 5000.0], typical=10.0)


def test_schedule_median_pruner_compares_a_trial_with_its_own_schedule():
    study = optuna.create_study(pruner=ScheduleMedianPruner(max_resource=10, n_startup_trials=2))
    dist = optuna.distributions.CategoricalDistribution(["constant", "cosine"])

    def add(schedule: str, values: list[float], state=TrialState.COMPLETE) -> None:
        study.add_trial(
            optuna.trial.create_trial(
                params={"schedule": schedule},
                distributions={"schedule": dist},
                value=values[-1] if state == TrialState.COMPLETE else None,
                intermediate_values=dict(enumerate(values)),
                state=state,
            )
        )

    for end in (0.1, 0.2, 0.3, 0.4):  # constant schedules: fast early, so low at step 2
        add("constant", [1.0, 0.5, 0.3, 0.2, 0.2, end])
    for end in (0.05, 0.06, 0.07, 0.08):  # cosine: slow early, best at the end
        add("cosine", [1.0, 0.9, 0.8, 0.6, 0.4, end])
    assert study.pruner.rung_steps == (1, 4, 7)

    def judged(schedule: str, values: list[float]) -> bool:
        study.enqueue_trial({"schedule": schedule})
        trial = study.ask()
        assert trial.suggest_categorical("schedule", ["constant", "cosine"]) == schedule
        for step, v in enumerate(values):
            trial.report(v, step)
        pruned = trial.should_prune()
        study.tell(trial, state=TrialState.FAIL)
        return pruned

    # A cosine trial at 0.85 at its first checkpoint (step 1, 20% of the schedule) is worse
    # than every constant one, but better than its own schedule's median: it goes on.
    assert not judged("cosine", [1.0, 0.85])
    # Worse than every trial of its own schedule at that point (the worst third): pruned.
    assert judged("cosine", [1.0, 0.95])
    # Between checkpoints nothing is judged.
    assert not judged("cosine", [1.0, 0.85, 5.0])


@pytest.mark.parametrize(("keep", "pruned"), [(0.5, True), (0.67, False)])
def test_schedule_median_pruner_stops_only_the_worst_third_by_default(keep, pruned):
    """Six peers at 0.1 ... 0.6 at the first checkpoint: 0.45 is worse than their median but
    among the best two thirds, so the median rule stops it and the default spares it."""
    assert ScheduleMedianPruner().keep == 0.67
    study = optuna.create_study(
        pruner=ScheduleMedianPruner(max_resource=10, n_startup_trials=1, keep=keep)
    )
    for value in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
        study.add_trial(
            optuna.trial.create_trial(value=value, intermediate_values={0: 1.0, 1: value})
        )
    trial = study.ask()
    trial.report(1.0, 0)
    trial.report(0.45, 1)
    assert trial.should_prune() is pruned
