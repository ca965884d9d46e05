"""docker/: Docker is not available here, so the files are parsed and checked for what matters
on a GPU cluster: the services and their wiring, GPU reservations, a non-root worker, and no
credential written inline."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"

# A password in a URL, or the value of a secret-looking key, must be a variable reference:
# ${VAR} (compose), $(VAR) (Kubernetes).
_VARIABLE = re.compile(
    r"^(\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}|\$\([A-Za-z_][A-Za-z0-9_]*\))$"
)
_URL_PASSWORD = re.compile(r"://[^:/@\s]+:(?P<password>[^@\s]+)@")
_SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|PASSWD|API_KEY", re.IGNORECASE)


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str, str]]:
    """Every (path, key, string value) in a parsed YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                yield f"{path}.{key}", str(key), value
            else:
                yield from _strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, str):
                yield f"{path}[{i}]", "", value
            else:
                yield from _strings(value, f"{path}[{i}]")


def inline_credentials(document: Any) -> list[str]:
    """Where a document writes a credential as a literal instead of a variable reference."""
    found = []
    for path, key, value in _strings(document):
        for match in _URL_PASSWORD.finditer(value):
            if not _VARIABLE.match(match.group("password")):
                found.append(f"{path}: password in URL")
        if _SECRET_KEY.search(key) and not _VARIABLE.match(value.strip()):
            found.append(f"{path}: literal {key}")
    # `- name: X_PASSWORD` / `value: literal` pairs (Kubernetes env lists).
    for path, key, value in _strings(document):
        if key == "name" and _SECRET_KEY.search(value):
            env = _lookup(document, path.rsplit(".", 1)[0])
            literal = env.get("value") if isinstance(env, dict) else None
            if literal is not None and not _VARIABLE.match(str(literal)):
                found.append(f"{path}: literal value for {value}")
    return found


def _lookup(document: Any, path: str) -> Any:
    node = document
    for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        node = node[part[0]] if part[0] else node[int(part[1])]
    return node


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def job() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "k8s-job.yaml").read_text())


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


# --- the credential check itself ----------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        {"environment": {"POSTGRES_PASSWORD": "hunter2"}},
        {"environment": {"TUNER_STORAGE": "postgresql://tuner:hunter2@db/tuner"}},
        {"env": [{"name": "POSTGRES_PASSWORD", "value": "hunter2"}]},
        {"command": ["mlflow", "--backend-store-uri", "postgresql://u:hunter2@db/m"]},
    ],
)
def test_the_credential_check_catches_literals(document: dict[str, Any]) -> None:
    assert inline_credentials(document)


@pytest.mark.parametrize(
    "document",
    [
        {"environment": {"POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?set it}"}},
        {"environment": {"TUNER_STORAGE": "postgresql://tuner:${POSTGRES_PASSWORD}@db/tuner"}},
        {"env": [{"name": "TUNER_STORAGE", "value": "postgresql://u:$(POSTGRES_PASSWORD)@db/t"}]},
        {"env": [{"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s"}}}]},
    ],
)
def test_the_credential_check_accepts_references(document: dict[str, Any]) -> None:
    assert inline_credentials(document) == []


# --- compose.yaml -------------------------------------------------------------------------


def test_compose_has_postgres_mlflow_and_workers(compose: dict[str, Any]) -> None:
    assert {"postgres", "mlflow", "worker"} <= set(compose["services"])


def test_compose_postgres_is_healthchecked_and_persistent(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    mounts = [volume.split(":") for volume in postgres["volumes"]]
    assert ["pgdata", "/var/lib/postgresql/data"] in mounts
    assert "pgdata" in compose["volumes"]
    assert _VARIABLE.match(postgres["environment"]["POSTGRES_PASSWORD"])


def test_compose_mlflow_is_backed_by_postgres(compose: dict[str, Any]) -> None:
    mlflow = compose["services"]["mlflow"]
    env = mlflow["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in env["MLFLOW_BACKEND_STORE_URI"]
    # Optuna and MLflow both use an alembic_version table: they need separate databases.
    assert env["MLFLOW_BACKEND_STORE_URI"].rsplit("/", 1)[1] == "mlflow"
    assert "CREATE DATABASE mlflow" in compose["configs"]["create-mlflow-db"]["content"]
    artifacts = env["MLFLOW_ARTIFACTS_DESTINATION"]
    assert f"mlartifacts:{artifacts}" in mlflow["volumes"] and "mlartifacts" in compose["volumes"]
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert mlflow["healthcheck"]["test"]


def test_compose_workers_reserve_gpus_and_scale(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    # --scale worker=N needs replicas without a fixed name or host port.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["build"]["dockerfile"] == "docker/Dockerfile"


def test_compose_workers_get_storage_and_tracking_from_variables(compose: dict[str, Any]) -> None:
    env = compose["services"]["worker"]["environment"]
    storage = env["TUNER_STORAGE"]
    assert storage.startswith("postgresql") and "@postgres:5432/" in storage
    assert "${POSTGRES_PASSWORD" in storage
    assert env["MLFLOW_TRACKING_URI"].startswith("${MLFLOW_TRACKING_URI")
    assert "http://mlflow:5000" in env["MLFLOW_TRACKING_URI"]


def test_compose_writes_no_credentials(compose: dict[str, Any]) -> None:
    assert inline_credentials(compose) == []


def test_compose_variables_are_documented(compose: dict[str, Any]) -> None:
    readme = (DOCKER / "README.md").read_text()
    text = (DOCKER / "compose.yaml").read_text()
    names = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    assert "POSTGRES_PASSWORD" in names
    assert [name for name in sorted(names) if f"`{name}`" not in readme] == []


# --- Dockerfile ---------------------------------------------------------------------------


def test_dockerfile_installs_cuda_torch_then_tuner() -> None:
    instructions = _dockerfile()
    runs = [args for word, args in instructions if word == "RUN"]
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for w, a in instructions if w == "ARG"}
    torch = next(i for i, run in enumerate(runs) if "torch==" in run)
    assert "--index-url" in runs[torch]
    assert args["TORCH_INDEX_URL"].startswith("https://download.pytorch.org/whl/cu")
    # tuner itself, with the examples' extra (scikit-learn for the digits study)
    tuner = next(
        i
        for i, run in enumerate(runs)
        if re.search(r'pip install "?\.(\[[a-z,]+\])?"?(\s|$|&)', run)
    )
    assert torch < tuner  # so that pip keeps the CUDA build
    copies = " ".join(args for word, args in instructions if word == "COPY")
    assert "pyproject.toml" in copies and "tuner" in copies


def test_dockerfile_runs_tuner_worker_as_non_root() -> None:
    instructions = _dockerfile()
    users = [args for word, args in instructions if word == "USER"]
    assert users and users[-1] not in {"root", "0", "0:0"}
    entry = [i for i, (word, _) in enumerate(instructions) if word == "ENTRYPOINT"]
    assert len(entry) == 1
    assert json.loads(instructions[entry[0]][1]) == ["tuner", "worker"]
    last_user = max(i for i, (word, _) in enumerate(instructions) if word == "USER")
    assert last_user < entry[0]
    assert any(word == "RUN" and "useradd" in args for word, args in instructions)


def test_dockerfile_writes_no_credentials() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert not _URL_PASSWORD.search(text)
    assert not re.search(r"^\s*(ENV|ARG)\s+\S*(PASSWORD|SECRET|TOKEN)", text, re.M | re.I)


# --- k8s-job.yaml -------------------------------------------------------------------------


def _worker_container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def test_k8s_job_is_an_indexed_job(job: dict[str, Any]) -> None:
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert isinstance(spec["parallelism"], int) and spec["parallelism"] >= 1
    assert isinstance(spec["completions"], int) and spec["completions"] >= spec["parallelism"]
    assert spec["template"]["spec"]["restartPolicy"] in {"Never", "OnFailure"}


def test_k8s_job_gives_each_pod_one_gpu(job: dict[str, Any]) -> None:
    container = _worker_container(job)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["args"][0].startswith("/studies/")


def test_k8s_job_takes_credentials_from_a_secret(job: dict[str, Any]) -> None:
    env = {item["name"]: item for item in _worker_container(job)["env"]}
    secret = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert secret["name"] and secret["key"]
    assert "$(POSTGRES_PASSWORD)" in env["TUNER_STORAGE"]["value"]
    assert "MLFLOW_TRACKING_URI" in env
    assert inline_credentials(job) == []


def test_k8s_job_mounts_the_study_from_a_configmap(job: dict[str, Any]) -> None:
    pod = job["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["name"]: mount for mount in _worker_container(job)["volumeMounts"]}
    study = next(name for name, volume in volumes.items() if "configMap" in volume)
    assert mounts[study]["mountPath"] == "/studies"


def test_k8s_job_runs_as_non_root(job: dict[str, Any]) -> None:
    context = job["spec"]["template"]["spec"]["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] != 0


# --- README -------------------------------------------------------------------------------


def test_readme_explains_compose_kubernetes_and_sqlite() -> None:
    readme = (DOCKER / "README.md").read_text()
    for needle in [
        "docker build -f docker/Dockerfile",
        "--scale worker=",
        "kubectl -n tuner create secret generic tuner-postgres",
        "kubectl -n tuner create configmap tuner-study",
        "kubectl -n tuner apply -f docker/k8s-job.yaml",
        "SQLite",
        "${TUNER_STORAGE}",
    ]:
        assert needle in readme, needle
