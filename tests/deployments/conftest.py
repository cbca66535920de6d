"""The real Docker engine and image registry that `make test` provides (.ci/services.sh); rollout fixtures."""

import json
import os
import socket
import subprocess
import uuid

import docker
import pytest
import requests
from django.conf import settings

from deployments.models import Environment
from registry.models import ModelVersion
from tests.conftest import wait_for
from tests.deployments.rollout_models import write_constant, write_failing
from tests.models_zoo import MLP_SIGNATURE


@pytest.fixture(scope="session")
def docker_client():
    if not settings.SLIPWAY_REGISTRY or not os.environ.get("SLIPWAY_WHEELHOUSE"):
        pytest.fail("The build tests need a Docker engine, a registry and a wheelhouse: run them through 'make test'.")
    client = docker.from_env(timeout=600)
    client.ping()
    return client


@pytest.fixture
def ready_version(api, worker, model_files) -> ModelVersion:
    """Version 1 of a model named for this test, uploaded through the API and validated by the worker.

    Each test gets its own model name, so its image tag is its own: the registry
    outlives the tests and would otherwise make every build after the first a cache hit.
    """
    name = f"iris-{uuid.uuid4().hex[:8]}"
    assert api.post("/api/v1/models/", {"name": name}, format="json").status_code == 201
    with open(model_files["torchscript"], "rb") as fh:
        response = api.post(
            f"/api/v1/models/{name}/versions/",
            {"artifact": fh, "signature": json.dumps(MLP_SIGNATURE)},
            format="multipart",
        )
    assert response.status_code == 201, response.json()

    def ready():
        return ModelVersion.objects.filter(model__name=name, version=1, status="ready").first()

    return wait_for(ready, timeout=90, what=f"{name} v1 to be ready")


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory):
    """A second registry that wants a user name and password (htpasswd, bcrypt).

    Where `make test` started the suite's registry itself, this one serves the same storage
    (SLIPWAY_TEST_REGISTRY_STORAGE): a repository pushed there first then has its layers here
    too, and a push with credentials sends only what is new (otherwise each run would push the
    whole ~1 GB runtime image twice, ~45 s each).
    """
    root = tmp_path_factory.mktemp("auth-registry")
    storage = os.environ.get("SLIPWAY_TEST_REGISTRY_STORAGE") or f"{root}/data"
    htpasswd = subprocess.run(
        ["htpasswd", "-Bbn", "slipway", "s3cret-pa55"], check=True, capture_output=True, text=True
    ).stdout
    (root / "htpasswd").write_text(htpasswd)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {storage}\nauth:\n  htpasswd:\n    realm: slipway-test\n    path: {root}/htpasswd\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")], stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    wait_for(lambda: _answers(address), timeout=20, what="the registry with authentication to start")
    yield address
    proc.terminate()
    proc.wait(timeout=10)


def _answers(address: str) -> bool:
    try:
        return requests.get(f"http://{address}/v2/", timeout=1).status_code == 401
    except requests.ConnectionError:
        return False


# --- Rollouts on the local target --------------------------------------------------------
@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("rollout-models")
    return {
        "one": write_constant(directory, 1.0),
        "two": write_constant(directory, 2.0),
        "broken": write_failing(directory),
    }


@pytest.fixture
def dev(api):
    assert api.post("/api/v1/environments/", {"name": "dev"}, format="json").status_code == 201
    return Environment.objects.get(name="dev")
