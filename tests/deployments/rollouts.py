"""Helpers for the rollout tests: upload a version, deploy it, wait for a state, ask the endpoint."""

from __future__ import annotations

import json

import httpx

from deployments.models import Rollout, ServingInterval
from registry.models import ModelVersion
from tests.conftest import wait_for
from tests.deployments.rollout_models import SIGNATURE

ROW = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]}


def upload(api, name: str, path) -> int:
    if api.get(f"/api/v1/models/{name}/").status_code != 200:
        assert api.post("/api/v1/models/", {"name": name}, format="json").status_code == 201
    with open(path, "rb") as fh:
        response = api.post(
            f"/api/v1/models/{name}/versions/",
            {"artifact": fh, "signature": json.dumps(SIGNATURE)},
            format="multipart",
        )
    assert response.status_code == 201, response.json()
    number = response.json()["version"]
    wait_for(
        lambda: ModelVersion.objects.filter(model__name=name, version=number, status="ready").exists(),
        timeout=90,
        what=f"{name} v{number} to validate",
    )
    return number


def deploy(api, name, version, env="dev", **extra):
    response = api.post(
        "/api/v1/deployments/", {"model": name, "environment": env, "version": version, **extra}, format="json"
    )
    assert response.status_code in (200, 201), response.json()
    return response.json()


def wait_state(rollout_id: int, *states: str, timeout: float = 90) -> Rollout:
    def reached():
        rollout = Rollout.objects.get(pk=rollout_id)
        if rollout.is_terminal and rollout.state not in states:
            events = "\n".join(f"  {e.kind}: {e.message}" for e in rollout.events.all())
            raise AssertionError(f"rollout ended {rollout.state}: {rollout.failure_reason}\n{events}")
        return rollout if rollout.state in states else None

    return wait_for(reached, timeout=timeout, interval=0.2, what=f"rollout {rollout_id} to be {'/'.join(states)}")


def ask(endpoint: str, name: str) -> tuple[float, str]:
    """(the model's answer, the release that gave it)."""
    response = httpx.post(f"{endpoint}/v2/models/{name}/infer", json=ROW, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["outputs"][0]["data"][0], response.headers["x-slipway-release"]


def answers(endpoint: str, name: str, n: int) -> list[float]:
    return [ask(endpoint, name)[0] for _ in range(n)]


def serving(status) -> dict[int, int]:
    """The releases that get traffic, with their percent."""
    return {number: weight for number, weight in status.weights.items() if weight}


def ledger_of(deployment_id: int) -> list[tuple[int, int, bool]]:
    """The deployment's serving intervals in order: (release, percent, still open)."""
    rows = ServingInterval.objects.filter(deployment_id=deployment_id).order_by(
        "started_at", "-weight_percent", "release__number"
    )
    return [(row.release.number, row.weight_percent, row.ended_at is None) for row in rows.select_related("release")]
