"""`tuner launch`, `status` and `best` in-process: outcomes, budget, resume, summaries."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

from tests.conftest import REGRESSION
from tuner.cli import cli
from tuner.launch.slots import gpu_driver_present


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def load(path: Path) -> optuna.Study:
    doc = yaml.safe_load(path.read_text())
    return optuna.load_study(study_name=doc["name"], storage=doc["storage"])


def outcomes(study: optuna.Study) -> list[str]:
    return [t.user_attrs.get("tuner:outcome", t.state.name.lower()) for t in study.trials]


def test_launch_runs_the_budget_and_prints_a_summary(make_study):
    path = make_study()
    code, out, err = run("launch", str(path))
    assert code == 0, err
    study = load(path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    # Progress on stderr, one line per trial, with the count against the budget.
    assert "[4/4]" in err and "best" in err and "elapsed" in err
    assert "finished trials   4 of 4" in out
    assert "best per optimizer" in out
    best = study.best_trial
    assert f"{best.value:.6g} (trial {best.number})" in out
    config = best.user_attrs["tuner:config"]
    assert config["optimizer"] in ("adam", "sgd")
    assert config["schedule"]["name"] in ("constant", "cosine")


@pytest.mark.skipif(gpu_driver_present(), reason="with a GPU driver, `auto` asks torch")
def test_the_launch_process_itself_never_imports_torch(make_study):
    """Only the workers train: launch validates the study file (the whole optimizer and
    schedule catalog), resolves `devices: auto`, supervises and summarizes without torch, whose
    import took 1.3 s of its start-up before its first worker started."""
    path = make_study(workers={"devices": "auto"})
    script = textwrap.dedent(
        """
        import sys
        from click.testing import CliRunner
        from tuner.cli import cli

        result = CliRunner().invoke(cli, ["launch", sys.argv[1]], catch_exceptions=False)
        print("exit", result.exit_code, "torch", "torch" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip().endswith("exit 0 torch False"), done.stdout + done.stderr
    assert [t.state for t in load(path).trials] == [TrialState.COMPLETE] * 4  # workers trained


def test_relaunch_resumes_and_never_exceeds_the_budget(make_study):
    path = make_study()
    assert run("launch", str(path), "--trials", "2")[0] == 0
    assert len(load(path).trials) == 2
    assert run("launch", str(path))[0] == 0
    assert len(load(path).trials) == 4
    code, _, _ = run("launch", str(path))  # already done: nothing more runs
    assert code == 0 and len(load(path).trials) == 4


RAISES_ON_ODD = REGRESSION.replace(
    "    g = torch.Generator()",
    "    if trial.number % 2 == 1:\n"
    "        raise ValueError(f'boom in trial {trial.number}')\n"
    "    g = torch.Generator()",
)


def test_a_failing_trial_keeps_its_traceback_and_the_study_goes_on(make_study):
    path = make_study(RAISES_ON_ODD)
    code, _, err = run("launch", str(path))
    assert code == 0
    study = load(path)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(complete) == 4  # failures do not count toward the budget
    assert len(failed) == 3
    for t in failed:
        assert t.user_attrs["tuner:outcome"] == "failed"
        assert f"ValueError: boom in trial {t.number}" in t.user_attrs["tuner:traceback"]
        assert "obj.py" in t.user_attrs["tuner:traceback"]
    assert "trial 1 failed: ValueError: boom in trial 1" in err


def test_an_objective_that_always_fails_stops_at_max_failures(make_study):
    path = make_study(
        "def objective(trial):\n    raise RuntimeError('broken objective')\n",
        budget={"max_failures": 3},
    )
    code, _, err = run("launch", str(path))
    assert code == 1
    assert "3 trials failed (budget.max_failures)" in err
    assert "RuntimeError: broken objective" in err
    assert len(load(path).trials) == 3


def test_nan_is_diverged_and_counts_toward_the_budget(make_study):
    nan = "def objective(trial):\n    return float('nan')\n"
    path = make_study(nan, budget={"trials": 2})
    code, out, _ = run("launch", str(path))
    assert code == 0
    study = load(path)
    assert outcomes(study) == ["diverged", "diverged"]
    for t in study.trials:
        # Pruned with a NaN last value: TPE ranks such trials worst.
        assert t.state == TrialState.PRUNED
        assert math.isnan(list(t.intermediate_values.values())[-1])
    assert "diverged 2" in out


EXPLODES = textwrap.dedent(
    """
    def objective(trial):
        for step, loss in enumerate([1.0, 0.5, 2.0, 5000.0, 1.0]):
            trial.report(loss, step=step)
        return 0.1
    """
)


def test_an_exploding_value_ends_the_trial_at_that_step(make_study):
    path = make_study(EXPLODES, budget={"trials": 1})
    assert run("launch", str(path))[0] == 0
    (t,) = load(path).trials
    assert t.user_attrs["tuner:outcome"] == "diverged"
    assert "exploded from 1 to 5000 at step 3" in t.user_attrs["tuner:reason"]
    assert sorted(t.intermediate_values) == [0, 1, 2, 3]  # nothing after the blow-up


def test_nan_in_a_logged_loss_is_diverged(make_study):
    src = "def objective(trial):\n    trial.log({'loss': float('inf')}, step=0)\n    return 1.0\n"
    path = make_study(src, budget={"trials": 1})
    assert run("launch", str(path))[0] == 0
    (t,) = load(path).trials
    assert t.user_attrs["tuner:outcome"] == "diverged"
    assert t.user_attrs["tuner:reason"] == "loss is inf at step 0"


PRUNES = textwrap.dedent(
    """
    import tuner

    def objective(trial):
        trial.report(1.0, step=0)
        raise tuner.TrialPruned("not promising")
    """
)


def test_pruned_trials_count_toward_the_budget(make_study):
    path = make_study(PRUNES, budget={"trials": 3})
    code, out, _ = run("launch", str(path))
    assert code == 0
    assert outcomes(load(path)) == ["pruned"] * 3
    assert "no complete trial yet" in out


def test_a_keyboard_interrupt_in_a_worker_requeues_the_trial_and_a_new_worker_reruns_it(
    make_study,
):
    src = REGRESSION.replace(
        "    g = torch.Generator()",
        "    import os\n"
        "    if trial.number == 1 and not os.path.exists('interrupted-once'):\n"
        "        open('interrupted-once', 'w').close()\n"
        "        raise KeyboardInterrupt\n"
        "    g = torch.Generator()",
    )
    path = make_study(src)
    code, _, err = run("launch", str(path))
    # The worker stopped (exit 130) with its trial recorded as interrupted and queued again;
    # launch started another worker, which ran it.
    assert code == 0, err
    assert "trial 1 interrupted" in err
    study = load(path)
    interrupted = study.trials[1]
    assert interrupted.state == TrialState.FAIL
    assert interrupted.user_attrs["tuner:outcome"] == "interrupted"
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 4
    retry = [t for t in finished if t.user_attrs.get("tuner:retry_of") == 1]
    assert len(retry) == 1 and retry[0].params == interrupted.params
    assert len({t.user_attrs["tuner:worker"] for t in study.trials}) == 2


def test_status_and_best(make_study, tmp_path):
    path = make_study()
    assert run("launch", str(path))[0] == 0
    code, out, _ = run("status", str(path))
    assert code == 0
    assert "finished trials   4 of 4" in out and "complete 4" in out

    code, out, _ = run("best", str(path), "--format", "yaml")
    assert code == 0
    best = load(path).best_trial
    assert yaml.safe_load(out) == best.user_attrs["tuner:config"]

    code, out, _ = run("best", str(path), "--format", "json")
    assert code == 0 and '"optimizer"' in out

    code, out, _ = run("best", str(path), "--format", "python")
    assert code == 0 and "import torch" in out
    compile(out, "best.py", "exec")

    code, _, _ = run("best", str(path), "-o", str(tmp_path / "best.yaml"))
    assert code == 0
    import tuner

    cfg = tuner.load_optimizer_config(tmp_path / "best.yaml")
    assert cfg.optimizer == best.user_attrs["tuner:config"]["optimizer"]


def test_best_before_any_complete_trial_says_so(make_study):
    path = make_study(PRUNES, budget={"trials": 1})
    assert run("launch", str(path))[0] == 0
    code, _, err = run("best", str(path))
    assert code == 1
    assert "has no complete trial yet" in err


def test_status_of_a_study_that_does_not_exist(make_study, tmp_path):
    path = make_study()
    code, _, err = run("status", str(path))
    assert code == 1
    # No database is created to report on: the message names the file and the folder.
    assert f"does not exist: no file {tmp_path / 'study.db'}" in err
    assert f"working directory {tmp_path}" in err and "tuner launch" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obj.py", "study.yaml"]

    assert run("launch", str(path), "--trials", "1")[0] == 0
    other = make_study(name="other-study")
    code, _, err = run("status", str(other))
    assert code == 1
    assert "no study named 'other-study'" in err and "tuner launch" in err


@pytest.mark.parametrize("command", ["launch", "worker", "status", "best", "report", "sync"])
def test_every_command_has_help(command):
    code, out, _ = run(command, "--help")
    assert code == 0 and "STUDY.yaml" in out


def test_the_seed_and_params_reach_the_objective(make_study):
    src = textwrap.dedent(
        """
        import torch
        def objective(trial):
            trial.optuna.set_user_attr("seen", [trial.seed, dict(trial.params), trial.device,
                                               trial.max_epochs, trial.number])
            return float(torch.rand(1))
        """
    )
    path = make_study(src, params={"batch_size": 32}, budget={"trials": 2, "epochs": 7})
    assert run("launch", str(path))[0] == 0
    seen = [t.user_attrs["seen"] for t in load(path).trials]
    assert seen[0][1:] == [{"batch_size": 32}, "cpu", 7, 0]
    assert seen[0][0] != seen[1][0]
    # The same seed gives the same torch draws: a rerun of a trial is reproducible.
    values = [t.value for t in load(path).trials]
    assert len(set(values)) == 2


OOM_ON_FIRST = textwrap.dedent(
    """
    import torch

    def objective(trial):
        if trial.number == 0:
            # What a too-large batch raises on a GPU; the worker must survive it.
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return 1.0 / (trial.number + 1)
    """
)


def test_an_out_of_memory_error_fails_that_trial_and_the_worker_goes_on(make_study):
    path = make_study(OOM_ON_FIRST, budget={"trials": 2})
    code, _, err = run("launch", str(path))
    assert code == 0
    study = load(path)
    assert outcomes(study) == ["failed", "complete", "complete"]
    assert study.trials[0].user_attrs["tuner:reason"] == (
        "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"
    )
    assert "trial 0 failed: OutOfMemoryError: CUDA out of memory" in err
