"""The GPU example study (studies/cifar_resnet.yaml), run as a user runs it, with a setting small
enough for CPU: the objective, its model and data, and fused=True ignored off CUDA."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import REPO

pytestmark = pytest.mark.slow

SMALL = {"train_size": 128, "val_size": 64, "batch_size": 32, "width": 4, "blocks": 1}


def test_gpu_example_study_runs_with_a_small_setting(tmp_path: Path) -> None:
    shutil.copy(REPO / "studies" / "cifar_resnet.py", tmp_path / "cifar_resnet.py")
    study_file = yaml.safe_load((REPO / "studies" / "cifar_resnet.yaml").read_text())
    assert study_file["params"]["fused"] is True
    study_file["params"].update(SMALL)
    study_file["budget"] = {"trials": 2, "epochs": 2}
    study_file["mlflow"] = {"tracking_uri": "off"}
    (tmp_path / "cifar_resnet.yaml").write_text(yaml.safe_dump(study_file))

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", "launch", "cifar_resnet.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="cifar-resnet", storage=f"sqlite:///{tmp_path}/tuner.db")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) >= 2, proc.stdout
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete, proc.stdout
    for trial in complete:
        # One validation accuracy per epoch, reported to the pruner.
        assert sorted(trial.intermediate_values) == [0, 1]
        assert 0.0 <= trial.value <= 1.0
