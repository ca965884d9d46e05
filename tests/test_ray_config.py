"""``workers.backend``, ``address`` and ``count`` in the study file, and ``backend: ray`` without
Ray installed. None of this needs Ray (tests/test_ray.py runs the backend on a real cluster)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tuner.cli import cli
from tuner.config.studyfile import load_study_file
from tuner.core.errors import ConfigError
from tuner.launch.ray_backend import objective_folder

BASE = "name: demo\nobjective: obj.py:objective\n"


def load_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_study_file(path)
    assert info.value.exit_code == 2
    return str(info.value)


@pytest.mark.parametrize(
    ("workers", "message"),
    [
        ("{backend: dask}", "workers.backend: must be 'local' or 'ray', but got 'dask'"),
        ("{count: 8}",
         "workers.count: is only used with `backend: ray` (local workers are devices x "
         "per_device processes on this machine), but got 8"),
        ("{address: 'head:6379'}",
         "workers.address: is only used with `backend: ray` (local workers are devices x "
         "per_device processes on this machine), but got 'head:6379'"),
        ("{backend: ray, devices: [cuda:0]}",
         "workers.devices: must be auto with `backend: ray` (Ray gives each worker a GPU, or "
         "one CPU on a cluster without GPUs), but got ['cuda:0']"),
        ("{backend: ray, count: 0}", "workers.count: must be >= 1, but got 0"),
        ("{backend: ray, count: yes}", "workers.count: must be an integer, but got True"),
        ("{backend: ray, count: many}", "workers.count: must be an integer, but got 'many'"),
        ("{backend: ray, address: ''}", "workers.address: must not be empty, but got ''"),
        ("{backend: ray, address: 6379}", "workers.address: must be a string, but got 6379"),
        ("{backnd: ray}", "workers: unknown key 'backnd', did you mean 'backend'?"),
    ],
    ids=["backend", "count-local", "address-local", "devices-ray", "count-0", "count-bool",
         "count-str", "address-empty", "address-int", "typo"],
)  # fmt: skip
def test_bad_workers_fields_name_the_field_rule_and_value(tmp_path, workers, message):
    assert f"study.yaml: {message}" in load_error(tmp_path, f"{BASE}workers: {workers}\n")


def test_ray_defaults_and_values(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(BASE + "workers: {backend: ray}\n")
    workers = load_study_file(path).workers
    assert (workers.backend, workers.address, workers.count) == ("ray", "auto", None)
    path.write_text(BASE + "workers: {backend: ray, address: 'ray://head:10001', count: 12}\n")
    workers = load_study_file(path).workers
    assert (workers.address, workers.count) == ("ray://head:10001", 12)
    path.write_text(BASE)
    assert load_study_file(path).workers.backend == "local"


def test_the_objectives_folder_is_what_ray_ships(tmp_path):
    (tmp_path / "models").mkdir()
    path = tmp_path / "study.yaml"
    path.write_text("name: demo\nobjective: models/net.py:objective\n")
    assert objective_folder(load_study_file(path)) == (tmp_path / "models", "net.py:objective")
    path.write_text("name: demo\nobjective: mypkg.train:objective\n")
    assert objective_folder(load_study_file(path)) == (tmp_path, "mypkg.train:objective")


def test_backend_ray_without_ray_names_the_extra(make_study, tmp_path, monkeypatch):
    # As if Ray were not installed: `import ray` raises ImportError.
    monkeypatch.setitem(sys.modules, "ray", None)
    path = make_study(workers={"backend": "ray", "count": 2})
    result = CliRunner().invoke(cli, ["launch", str(path)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "error: workers.backend: 'ray' needs Ray, but it is not installed" in result.stderr
    assert "hint: pip install 'tuner[ray]'" in result.stderr
    assert not (tmp_path / "study.db").exists()  # nothing written before the check
