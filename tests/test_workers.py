"""Several worker processes on one PostgreSQL study: exact budget, dead workers, server restart."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import REGRESSION, complete_count, wait_for_study

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SLEEPY = REGRESSION.replace(
    "    g = torch.Generator()",
    "    import time\n"
    "    time.sleep(float(trial.params.get('sleep', 0.3)))\n"
    "    g = torch.Generator()",
)
FAST_HEARTBEAT = {"heartbeat_interval": 1, "grace_period": 4}


def start_worker(path: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tuner", "worker", str(path)],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def finish(procs: list[subprocess.Popen[str]], timeout: float = 240) -> list[str]:
    outputs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        outputs.append(out)
    return outputs


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def finished(states: dict[TrialState, list[optuna.trial.FrozenTrial]]) -> int:
    """Trials that count toward the budget (docs/study-file.md): complete, pruned, diverged (stored
    as pruned). A worker started by hand derives its sampler seed from its host and pid, so a run
    may hit a diverging learning rate; the budget must hold either way."""
    return sum(len(states.get(state, [])) for state in FINISHED)


def by_state(study: optuna.Study) -> dict[TrialState, list[optuna.trial.FrozenTrial]]:
    groups: dict[TrialState, list[optuna.trial.FrozenTrial]] = {}
    for t in study.get_trials():
        groups.setdefault(t.state, []).append(t)
    return groups


def test_three_workers_finish_exactly_the_budget(make_study, tmp_path, fresh_postgres_url):
    path = make_study(SLEEPY, storage=fresh_postgres_url, budget={"trials": 10},
                      workers=FAST_HEARTBEAT)  # fmt: skip
    procs = [start_worker(path, tmp_path) for _ in range(3)]
    outputs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    study = optuna.load_study(study_name="test-study", storage=fresh_postgres_url)
    states = by_state(study)
    assert finished(states) == 10, states  # no overshoot, no shortfall
    assert set(states) <= set(FINISHED), states
    workers = {t.user_attrs["tuner:worker"] for t in study.trials}
    assert len(workers) >= 2, workers  # the work was shared


def test_launch_starts_per_device_workers_and_shows_combined_progress(
    make_study, tmp_path, fresh_postgres_url
):
    path = make_study(SLEEPY, storage=fresh_postgres_url, budget={"trials": 6},
                      workers={"devices": ["cpu"], "per_device": 3, **FAST_HEARTBEAT})  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", "launch", str(path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "[6/6]" in proc.stderr
    assert "finished trials   6 of 6" in proc.stdout
    study = optuna.load_study(study_name="test-study", storage=fresh_postgres_url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 6
    assert len({t.user_attrs["tuner:worker"] for t in study.trials}) == 3
    assert {t.user_attrs["tuner:device"] for t in study.trials} == {"cpu"}


def test_a_worker_killed_mid_trial_is_detected_and_its_trial_retried(
    make_study, tmp_path, fresh_postgres_url
):
    path = make_study(SLEEPY, storage=fresh_postgres_url, budget={"trials": 5},
                      params={"sleep": 1.5}, workers=FAST_HEARTBEAT)  # fmt: skip
    victim = start_worker(path, tmp_path)
    survivor = start_worker(path, tmp_path)

    def victim_running(study: optuna.Study) -> bool:
        return any(
            t.user_attrs.get("tuner:worker", "").endswith(f"/{victim.pid}")
            and "tuner:config" in t.user_attrs
            for t in study.get_trials(states=(TrialState.RUNNING,))
        )

    study = wait_for_study(fresh_postgres_url, victim_running)
    os.kill(victim.pid, signal.SIGKILL)
    (killed_number,) = [
        t.number
        for t in study.get_trials(states=(TrialState.RUNNING,))
        if t.user_attrs.get("tuner:worker", "").endswith(f"/{victim.pid}")
    ]
    victim.wait(timeout=30)
    out = finish([survivor])[0]
    assert survivor.returncode == 0, out

    study = optuna.load_study(study_name="test-study", storage=fresh_postgres_url)
    states = by_state(study)
    assert finished(states) == 5, states
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    killed = study.trials[killed_number]
    assert killed.state == TrialState.FAIL
    assert "tuner:outcome" not in killed.user_attrs  # it never finished: lost with its worker
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1
    assert retries[0].state in FINISHED
    assert retries[0].params == killed.params
    assert retries[0].user_attrs["tuner:worker"].endswith(f"/{survivor.pid}")


def test_status_cleans_up_a_trial_whose_worker_is_gone(make_study, tmp_path, fresh_postgres_url):
    path = make_study(SLEEPY, storage=fresh_postgres_url, budget={"trials": 3},
                      params={"sleep": 30}, workers=FAST_HEARTBEAT)  # fmt: skip
    victim = start_worker(path, tmp_path)
    wait_for_study(
        fresh_postgres_url, lambda study: bool(study.get_trials(states=(TrialState.RUNNING,)))
    )
    victim.kill()
    victim.wait(timeout=30)
    time.sleep(FAST_HEARTBEAT["grace_period"] + 1)
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", "status", str(path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="test-study", storage=fresh_postgres_url)
    states = by_state(study)
    assert TrialState.RUNNING not in states  # nothing RUNNING forever
    assert len(states[TrialState.FAIL]) == 1 and len(states[TrialState.WAITING]) == 1
    assert "interrupted 1" in proc.stdout and "waiting 1" in proc.stdout


def _restart_postgres() -> None:
    ctl = shutil.which("pg_ctlcluster")
    if ctl is None or os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs pg_ctlcluster and root")
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        [ctl, "--skip-systemctl-redirect", version, "main", "restart"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


@pytest.mark.skipif(
    os.environ.get("TUNER_TEST_RESTART_POSTGRES", "1") != "1",
    reason="TUNER_TEST_RESTART_POSTGRES=0: the server is shared with other work",
)
def test_workers_carry_on_through_a_postgres_restart(make_study, tmp_path, fresh_postgres_url):
    path = make_study(SLEEPY, storage=fresh_postgres_url, budget={"trials": 8},
                      params={"sleep": 0.5},
                      workers={"heartbeat_interval": 1, "grace_period": 30})  # fmt: skip
    procs = [start_worker(path, tmp_path) for _ in range(2)]
    wait_for_study(fresh_postgres_url, lambda study: complete_count(study) >= 2)
    _restart_postgres()
    outputs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], outputs
    study = optuna.load_study(study_name="test-study", storage=fresh_postgres_url)
    states = by_state(study)
    assert finished(states) == 8, states
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
