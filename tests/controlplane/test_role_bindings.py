"""Granting and revoking roles through /api/v1/role-bindings/.

ada is admin of staging; dev is a deployer there; nina has no role yet; frank is admin of another
team's environment (lab); gus is admin of every environment.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from controlplane.audit import Actor
from controlplane.models import AuditEvent, Role, RoleBinding
from controlplane.tokens import create_token
from deployments import services
from registry.models import Model
from tests.conftest import bearer_client
from tests.factories import UserFactory, bulk_versions

pytestmark = pytest.mark.django_db

BINDINGS = "/api/v1/role-bindings/"


@pytest.fixture
def staging(db):
    system = Actor.system()
    staging = services.create_environment("staging", actor=system)
    lab = services.create_environment("lab", actor=system)
    roles = [("ada", staging, Role.ADMIN), ("dev", staging, Role.DEPLOYER), ("frank", lab, Role.ADMIN)]
    roles.append(("gus", None, Role.ADMIN))
    for name, env, role in roles:
        RoleBinding.objects.create(user=UserFactory(username=name, password=None), environment=env, role=role)
    UserFactory(username="nina", password=None)
    Group.objects.create(name="ml-team")
    maker = UserFactory(username="maker", password=None)
    bulk_versions(Model.objects.create(name="iris", created_by=maker), 1, uploaded_by=maker)
    return staging


@pytest.fixture
def as_(staging):
    def client(name: str) -> APIClient:
        user = UserFactory(username=name, password=None)
        raw = create_token(user, f"t{user.api_tokens.count()}", actor=Actor(user=user)).raw
        return bearer_client(raw)

    return client


def grant(client, environment="staging", **principal):
    return client.post(BINDINGS, {"environment": environment, "role": "deployer", **principal}, format="json")


def deploy_as(client):
    return client.post("/api/v1/deployments/", {"model": "iris", "environment": "staging", "version": 1}, format="json")


def test_an_admin_grants_a_role_and_its_holder_can_use_it(as_):
    nina = as_("nina")
    assert deploy_as(nina).status_code == 404  # no role: staging does not exist for her
    response = grant(as_("ada"), user="nina")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["environment"] == "staging" and body["user"] == "nina" and body["role"] == "deployer"
    assert body["created_by"] == "ada" and body["group"] is None
    event = AuditEvent.objects.get(action="role.grant")
    assert event.environment == "staging" and event.actor.startswith("ada")
    assert event.after == {"role": "deployer", "principal": "nina", "environment": "staging"}
    assert deploy_as(nina).status_code == 201


def test_granting_again_changes_the_role_and_records_what_it_was(as_):
    ada = as_("ada")
    grant(ada, user="nina")
    response = ada.post(BINDINGS, {"environment": "staging", "user": "nina", "role": "viewer"}, format="json")
    assert response.status_code == 200 and response.json()["role"] == "viewer"  # not a new binding: 200
    assert RoleBinding.objects.filter(user__username="nina").count() == 1
    change = AuditEvent.objects.filter(action="role.grant").latest("id")
    assert change.before == {"role": "deployer"} and change.after["role"] == "viewer"
    assert deploy_as(as_("nina")).status_code == 403
    # The same grant once more changes nothing and records nothing.
    again = ada.post(BINDINGS, {"environment": "staging", "user": "nina", "role": "viewer"}, format="json")
    assert again.status_code == 200 and AuditEvent.objects.filter(action="role.grant").latest("id") == change


def test_a_group_role_reaches_its_members(as_):
    nina = UserFactory(username="nina", password=None)
    nina.groups.add(Group.objects.get(name="ml-team"))
    response = grant(as_("ada"), group="ml-team")
    assert response.status_code == 201 and response.json()["group"] == "ml-team"
    assert deploy_as(as_("nina")).status_code == 201


def test_revoking_a_role_takes_it_away(as_):
    binding_id = grant(as_("ada"), user="nina").json()["id"]
    nina = as_("nina")
    assert nina.get("/api/v1/environments/staging/").status_code == 200
    response = as_("ada").delete(f"{BINDINGS}{binding_id}/")
    assert response.status_code == 204
    assert not RoleBinding.objects.filter(pk=binding_id).exists()
    event = AuditEvent.objects.get(action="role.revoke")
    assert event.environment == "staging"
    assert event.before == {"role": "deployer", "principal": "nina", "environment": "staging"}
    assert nina.get("/api/v1/environments/staging/").status_code == 404
    assert deploy_as(nina).status_code == 404


def test_a_deployer_can_neither_grant_nor_revoke(as_):
    dev = as_("dev")
    response = grant(dev, user="nina")
    assert response.status_code == 403
    assert "the admin role in staging" in response.json()["error"]
    own = RoleBinding.objects.get(user__username="dev")
    assert dev.delete(f"{BINDINGS}{own.pk}/").status_code == 403
    assert not RoleBinding.objects.filter(user__username="nina").exists()


def test_another_teams_admin_gets_404_for_this_environment(as_):
    frank = as_("frank")
    response = grant(frank, user="nina")
    assert response.status_code == 404
    assert response.json()["error"] == "There is no environment 'staging'."
    ada_binding = RoleBinding.objects.get(user__username="ada")
    assert frank.get(f"{BINDINGS}{ada_binding.pk}/").status_code == 404
    assert frank.delete(f"{BINDINGS}{ada_binding.pk}/").status_code == 404
    assert {row["environment"] for row in frank.get(BINDINGS).json()["results"]} == {"lab"}


def test_a_role_in_every_environment_needs_an_admin_of_every_environment(as_):
    response = grant(as_("ada"), environment=None, user="nina")
    assert response.status_code == 403
    assert "the admin role in every environment" in response.json()["error"]
    response = grant(as_("gus"), environment=None, user="nina")
    assert response.status_code == 201 and response.json()["environment"] is None
    assert AuditEvent.objects.get(action="role.grant", outcome="success").after["environment"] == "every environment"
    assert AuditEvent.objects.get(action="role.grant", outcome="denied").actor.startswith("ada")
    assert deploy_as(as_("nina")).status_code == 201
    binding = RoleBinding.objects.get(user__username="nina")
    assert as_("ada").delete(f"{BINDINGS}{binding.pk}/").status_code == 404  # ada does not see every environment
    assert as_("gus").delete(f"{BINDINGS}{binding.pk}/").status_code == 204


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"user": "nina", "role": "owner"}, "role", '"owner" is not a valid choice'),
        ({"user": "nobody-here", "role": "viewer"}, "user", "There is no user 'nobody-here'"),
        ({"group": "no-such-team", "role": "viewer"}, "group", "There is no group 'no-such-team'"),
        ({"user": "nina", "group": "ml-team", "role": "viewer"}, "user", "Name either a user or a group"),
        ({"role": "viewer"}, "user", "Name either a user or a group"),
        ({"user": "nina", "role": "viewer", "environment": "nowhere"}, "environment", "There is no environment"),
    ],
)
def test_bad_grants_are_refused_with_a_clear_message(as_, body, field, says):
    response = as_("ada").post(BINDINGS, {"environment": "staging", **body}, format="json")
    assert response.status_code == (404 if field == "environment" else 400), response.json()
    assert says in response.json()["error"]
    assert field in response.json()["fields"]
    assert not RoleBinding.objects.filter(user__username="nina").exists()
