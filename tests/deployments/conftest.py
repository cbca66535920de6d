"""The real Docker engine and image registry that `make test` provides (.ci/services.sh)."""

import json
import os
import uuid

import docker
import pytest
from django.conf import settings

from registry.models import ModelVersion
from tests.conftest import wait_for
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
