"""The deployments API without a worker: what it accepts, what it refuses, what it records."""

import re
import threading

import pytest
from django.db import connection
from rest_framework.test import APIClient

from controlplane.audit import Actor
from controlplane.models import AuditEvent, Role, RoleBinding
from controlplane.tokens import create_token
from deployments.models import BuildStatus, Deployment, Environment, ImageBuild, Release, Rollout, RolloutState
from deployments.services import deployment_key
from registry.models import Model
from tests.conftest import bearer_client
from tests.factories import UserFactory, bulk_versions

DNS_1035 = re.compile(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?")  # what the targets accept as a deployment's key


@pytest.fixture
def versions(alice):
    model = Model.objects.create(name="iris", created_by=alice)
    return bulk_versions(model, 3, uploaded_by=alice)


@pytest.fixture
def dev(api):
    response = api.post("/api/v1/environments/", {"name": "dev", "target": "local"}, format="json")
    assert response.status_code == 201, response.json()
    return Environment.objects.get(name="dev")


def deploy(api, version=1, **extra):
    return api.post(
        "/api/v1/deployments/", {"model": "iris", "environment": "dev", "version": version, **extra}, format="json"
    )


def test_environments_are_created_listed_and_chained(api, dev):
    staging = api.post("/api/v1/environments/", {"name": "staging", "promotes_from": "dev"}, format="json")
    assert staging.status_code == 201
    assert staging.json()["promotes_from"] == "dev"
    names = [env["name"] for env in api.get("/api/v1/environments/").json()["results"]]
    assert names == ["dev", "staging"]
    assert AuditEvent.objects.filter(action="environment.create").count() == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Prod!"}, "name"),
        ({"name": "prod", "target": "mainframe"}, "target"),
        ({"name": "prod", "promotes_from": "nowhere"}, "promotes_from"),
        ({"name": "prod", "target": "local", "target_config": {"namespace": "x"}}, "target_config"),
        ({"name": "prod", "default_plan": {"strategy": "yolo"}}, "default_plan"),
        ({"name": "prod", "default_plan": True}, "default_plan"),  # was a 500
        ({"name": "prod", "default_settings": True}, "default_settings"),  # was a 500 (found by Schemathesis)
    ],
)
def test_bad_environments_are_refused_with_the_field(api, dev, body, field):
    response = api.post("/api/v1/environments/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["fields"], response.json()
    assert not Environment.objects.filter(name="prod").exists()


def test_an_environment_name_is_taken_once(api, dev):
    response = api.post("/api/v1/environments/", {"name": "dev"}, format="json")
    assert response.status_code == 409


def test_first_deploy_creates_the_deployment_its_release_and_rollout(api, dev, versions):
    response = deploy(api, 2, config={"replicas": 2}, reason="first light")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["model"] == "iris" and body["environment"] == "dev"
    assert body["state"] == "pending"
    assert body["current_release"] is None
    assert body["rollout"]["release"] == 1 and body["rollout"]["version"] == 2
    # a first deploy has nothing to shift traffic from: it goes to 100% at once
    assert [s["kind"] for s in body["rollout"]["steps"]] == ["weight"]
    release = Release.objects.get()
    assert release.settings["replicas"] == 2 and release.reason == "first light"
    event = AuditEvent.objects.get(action="deployment.deploy")
    assert event.actor.startswith("alice")
    assert event.after["version"] == 2


def test_a_second_deploy_while_one_is_active_is_refused_409(api, dev, versions):
    assert deploy(api, 1).status_code == 201
    response = deploy(api, 2)
    assert response.status_code == 409
    assert "abort it" in response.json()["error"]
    assert Release.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"version": 9}, 404, "version"),
        ({"environment": "nowhere"}, 404, "environment"),
        ({"config": {"replicas": 0}}, 400, "replicas"),
        ({"config": {"colour": "blue"}}, 400, "colour"),
        ({"plan": {"strategy": "canary", "steps": [{"set_weight": 500}]}}, 400, "plan.steps[0]"),
        ({"plan": ["canary"]}, 400, "plan"),  # was a 500
        ({"config": [2]}, 400, "config"),  # was a 500
    ],
)
def test_bad_deploys_are_refused_and_leave_nothing(api, dev, versions, body, status, field):
    response = api.post(
        "/api/v1/deployments/", {"model": "iris", "environment": "dev", "version": 1, **body}, format="json"
    )
    assert response.status_code == status, response.json()
    assert field in response.json()["fields"], response.json()
    assert not Release.objects.exists() and not Rollout.objects.exists()
    assert not Deployment.objects.exists()


def test_a_version_that_is_not_ready_cannot_be_deployed(api, dev, alice):
    model = Model.objects.create(name="iris", created_by=alice)
    bulk_versions(model, 1, uploaded_by=alice, status="validating")
    response = deploy(api, 1)
    assert response.status_code == 409
    assert "only a ready version" in response.json()["error"]


def test_rollback_needs_a_reason_and_an_earlier_release(api, dev, versions):
    deployment_id = deploy(api, 1).json()["id"]
    response = api.post(f"/api/v1/deployments/{deployment_id}/rollback/", {}, format="json")
    assert response.status_code == 400 and "reason" in response.json()["fields"]
    response = api.post(f"/api/v1/deployments/{deployment_id}/rollback/", {"reason": "bad"}, format="json")
    assert response.status_code == 409
    assert "abort it to go back" in response.json()["error"]
    rollout_id = Rollout.objects.get().pk
    assert api.post(f"/api/v1/rollouts/{rollout_id}/abort/").status_code == 200
    response = api.post(f"/api/v1/deployments/{deployment_id}/rollback/", {"reason": "bad"}, format="json")
    assert response.status_code == 409
    assert "no earlier successful release" in response.json()["error"]


def test_promote_needs_something_live(api, dev, versions):
    deployment_id = deploy(api, 1).json()["id"]
    response = api.post(f"/api/v1/deployments/{deployment_id}/promote/", {}, format="json")
    assert response.status_code == 409
    assert "Nothing serves" in response.json()["error"]


def test_rollout_actions_check_the_state(api, dev, versions):
    rollout_id = deploy(api, 1).json()["rollout"]["id"]
    response = api.post(f"/api/v1/rollouts/{rollout_id}/resume/")
    assert response.status_code == 409
    assert "only a paused rollout can resume" in response.json()["error"]
    response = api.post(f"/api/v1/rollouts/{rollout_id}/abort/", {"reason": "changed my mind"}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["state"] == "aborted"
    assert [e["kind"] for e in body["events"]] == ["action", "action", "transition"]
    assert AuditEvent.objects.filter(action="rollout.abort", outcome="success").count() == 1
    # and the deployment is free for the next deploy
    assert deploy(api, 2).status_code == 200


def test_anonymous_callers_get_401(anonymous_api, dev):
    assert anonymous_api.get("/api/v1/deployments/").status_code == 401
    assert anonymous_api.post("/api/v1/environments/", {"name": "x"}, format="json").status_code == 401


def test_concurrent_deploys_give_one_winner_and_409s(worker, alice, alice_token):
    model = Model.objects.create(name="iris", created_by=alice)
    bulk_versions(model, 4, uploaded_by=alice)
    Environment.objects.create(name="dev")
    barrier = threading.Barrier(4)
    codes = []

    def attempt(version):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {alice_token}")
        barrier.wait()
        try:
            codes.append(deploy(client, version).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt, args=(v,)) for v in (1, 2, 3, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [201, 409, 409, 409]
    assert Deployment.objects.count() == 1
    assert Rollout.objects.count() == 1 and Release.objects.count() == 1


def test_a_build_another_teams_rollout_waits_for_is_cancelled_only_by_who_may_abort_it(api, dev, versions):
    """The registry's builds are shared; a rollout in BUILDING fails when its build is cancelled."""
    assert api.post("/api/v1/environments/", {"name": "prod"}, format="json").status_code == 201
    response = api.post("/api/v1/deployments/", {"model": "iris", "environment": "prod", "version": 1}, format="json")
    rollout = Rollout.objects.get(pk=response.json()["rollout"]["id"])
    build = ImageBuild.objects.create(
        model_version=versions[0], variant="cpu", base_image="base", runtime_version="1", image_ref="r/slipway/iris:v1"
    )
    Release.objects.filter(pk=rollout.release_id).update(build=build)
    Rollout.objects.filter(pk=rollout.pk).update(state=RolloutState.BUILDING)
    dora = UserFactory(username="dora")
    RoleBinding.objects.create(user=dora, environment=dev, role=Role.DEPLOYER)
    client = bearer_client(create_token(dora, "ci", actor=Actor(user=dora)).raw)

    assert client.post(f"/api/v1/rollouts/{rollout.pk}/abort/").status_code == 404  # prod is not hers
    refused = client.post(f"/api/v1/builds/{build.pk}/cancel/")
    assert refused.status_code == 403, refused.json()
    assert "wait for this build" in refused.json()["error"] and "prod" not in refused.json()["error"]
    assert ImageBuild.objects.get(pk=build.pk).status == BuildStatus.QUEUED
    assert AuditEvent.objects.filter(action="image_build.cancel", outcome="denied", actor="dora (token: ci)").exists()
    assert api.post(f"/api/v1/builds/{build.pk}/cancel/").status_code == 200  # alice deploys in prod


def test_models_and_environments_whose_names_join_alike_get_deployments_of_their_own(api, alice):
    """fraud in eu-prod and fraud-eu in prod both read "fraud-eu-prod": the second must not take the first's name."""
    for env in ("eu-prod", "prod"):
        assert api.post("/api/v1/environments/", {"name": env}, format="json").status_code == 201
    for name in ("fraud", "fraud-eu"):
        bulk_versions(Model.objects.create(name=name, created_by=alice), 1, uploaded_by=alice)

    first = api.post("/api/v1/deployments/", {"model": "fraud", "environment": "eu-prod", "version": 1}, format="json")
    second = api.post("/api/v1/deployments/", {"model": "fraud-eu", "environment": "prod", "version": 1}, format="json")

    assert first.status_code == 201, first.json()
    assert second.status_code == 201, second.json()
    keys = [first.json()["key"], second.json()["key"]]
    assert keys[0] == "fraud-eu-prod" and keys[1] != keys[0], keys
    assert all(DNS_1035.fullmatch(key) and len(key) <= 40 for key in keys), keys
    assert Deployment.objects.count() == 2


@pytest.mark.parametrize(
    ("model", "environment"),
    [
        ("fraud-detector", "e" * 30),  # the longest environment name leaves no room for the model's
        ("m" * 63, "e" * 30),
        ("9lives", "p" * 30),
        ("a" * 19 + "-" + "b" * 10, "prod"),
    ],
)
def test_every_deployment_key_names_kubernetes_objects(model, environment):
    key = deployment_key(model, environment)
    assert DNS_1035.fullmatch(key) and len(key) <= 40, key
    assert key != deployment_key(model, environment[:-1] + "x")
