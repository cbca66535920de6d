"""An API token acts as its user, but at most at its scope, only in the environments it names, and
only until it expires. (Every endpoint against each scope: test_access.py.)

tess is admin of x, y and prod (not of z); rita asks for rollouts in prod, which needs one approval;
vera views y.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from controlplane.audit import Actor
from controlplane.errors import InvalidInput
from controlplane.models import APIToken, AuditEvent, Role, RoleBinding
from controlplane.tokens import create_token
from deployments import services
from deployments.models import ApprovalRequest, Deployment, Environment
from registry.models import Model
from tests.conftest import bearer_client
from tests.factories import UserFactory, bulk_versions

pytestmark = pytest.mark.django_db


@pytest.fixture
def tess(db):
    system = Actor.system()
    tess = UserFactory(username="tess", password=None)
    rita = UserFactory(username="rita", password=None)
    for name in ("x", "y", "prod"):
        env = services.create_environment(name, actor=system, required_approvals=1 if name == "prod" else 0)
        RoleBinding.objects.create(user=tess, environment=env, role=Role.ADMIN)
    RoleBinding.objects.create(user=rita, environment=env, role=Role.DEPLOYER)
    y = Environment.objects.get(name="y")
    RoleBinding.objects.create(user=UserFactory(username="vera", password=None), environment=y, role=Role.VIEWER)
    services.create_environment("z", actor=system)  # tess has no role here
    for model in ("iris", "bert", "t5"):
        bulk_versions(Model.objects.create(name=model, created_by=tess), 2, uploaded_by=tess)
    for name in ("x", "y"):
        services.deploy("iris", name, 1, actor=system, reason=f"into {name}")
    for model in ("iris", "bert"):  # two requests waiting for an approval
        services.deploy(model, "prod", 1, actor=Actor(user=rita))
    return tess


def token(user, scope: str = "admin", environments=(), **kwargs) -> APIClient:
    name = f"{scope}-{len(environments)}"
    raw = create_token(user, name, actor=Actor(user=user), scope=scope, environments=environments, **kwargs).raw
    return bearer_client(raw)


def writes(tess) -> dict[str, tuple[str, str, dict]]:
    """One write of each kind tess may make with an admin token: (method, url, body)."""
    deployment = Deployment.objects.get(environment__name="x")
    rollout = deployment.rollouts.get()
    iris, bert = (ApprovalRequest.objects.get(rollout__deployment__model__name=name) for name in ("iris", "bert"))
    binding = RoleBinding.objects.get(user__username="vera")
    own_token = create_token(tess, "to-revoke", actor=Actor(user=tess)).token
    return {
        "create a model": ("post", "/api/v1/models/", {"name": "resnet"}),
        "deploy": ("post", "/api/v1/deployments/", {"model": "t5", "environment": "y", "version": 1}),
        "abort a rollout": ("post", f"/api/v1/rollouts/{rollout.pk}/abort/", {}),
        "approve": ("post", f"/api/v1/approvals/{iris.pk}/approve/", {}),
        "reject": ("post", f"/api/v1/approvals/{bert.pk}/reject/", {"comment": "no"}),
        "change an environment": ("patch", "/api/v1/environments/x/", {"description": "new"}),
        "create an environment": ("post", "/api/v1/environments/", {"name": "w"}),
        "grant a role": ("post", "/api/v1/role-bindings/", {"environment": "x", "user": "vera", "role": "viewer"}),
        "revoke a role": ("delete", f"/api/v1/role-bindings/{binding.pk}/", None),
        "create a token": ("post", "/api/v1/tokens/", {"name": "child"}),
        "revoke a token": ("post", f"/api/v1/tokens/{own_token.pk}/revoke/", {}),
        "delete a version": ("delete", "/api/v1/models/iris/versions/2/", None),
    }


def call(client: APIClient, method: str, url: str, body):
    return getattr(client, method)(url, body, format="json") if body is not None else getattr(client, method)(url)


# In "create an environment" tess lacks the role herself (admin of some environments, not all).
TESS_MAY_NOT = {"create an environment"}
DEPLOY_MAY = {"create a model", "deploy", "abort a rollout"}


@pytest.mark.parametrize("scope", ["read", "deploy", "admin"])
def test_a_token_does_at_most_what_its_scope_allows(tess, scope):
    client = token(tess, scope)
    for what, (method, url, body) in writes(tess).items():
        response = call(client, method, url, body)
        allowed = what not in TESS_MAY_NOT and (scope == "admin" or (scope == "deploy" and what in DEPLOY_MAY))
        if allowed:
            assert response.status_code in (200, 201, 204), (what, response.json())
            continue
        assert response.status_code == 403, (what, response.status_code, response.content)
        error = response.json()["error"]
        if what not in TESS_MAY_NOT:
            assert f"scope is {scope!r}" in error, (what, error)


def test_a_read_token_reads_what_its_user_may_read(tess):
    client = token(tess, "read")
    for url in ("/api/v1/environments/x/", "/api/v1/deployments/", "/api/v1/approvals/", "/api/v1/audit/"):
        assert client.get(url).status_code == 200, url
    assert client.get("/api/v1/environments/").json()["count"] == 3
    assert client.get("/api/v1/environments/x/").json()["your_role"] == "viewer"  # capped by the scope


def test_a_refused_write_is_audited_with_the_scope(tess):
    token(tess, "read").post("/api/v1/deployments/", {"model": "iris", "environment": "x", "version": 2}, format="json")
    event = AuditEvent.objects.get(action="deployment.deploy", outcome="denied")
    assert event.actor == "tess (token: read-0)" and "scope is 'read'" in event.message


# --- Tokens limited to some environments ---------------------------------------------------------
def test_a_token_limited_to_x_sees_only_x(tess):
    client = token(tess, "admin", environments=["x"])
    assert [env["name"] for env in client.get("/api/v1/environments/").json()["results"]] == ["x"]
    assert {d["environment"] for d in client.get("/api/v1/deployments/").json()["results"]} == {"x"}
    assert {r["deployment"] for r in client.get("/api/v1/rollouts/").json()["results"]} == {
        Deployment.objects.get(environment__name="x").pk
    }
    assert client.get("/api/v1/approvals/").json()["results"] == []  # prod's requests are out of reach
    audit = client.get("/api/v1/audit/?page_size=500").json()["results"]
    assert {event["environment"] for event in audit} <= {"x", ""}
    assert any(event["environment"] == "x" for event in audit)
    assert client.get("/api/v1/audit/?environment=y").json()["count"] == 0
    assert client.get("/api/v1/role-bindings/?environment=y").json()["results"] == []


def test_a_token_limited_to_x_gets_404_for_y(tess):
    client = token(tess, "admin", environments=["x"])
    y_deployment = Deployment.objects.get(environment__name="y")
    for url in (
        "/api/v1/environments/y/",
        f"/api/v1/deployments/{y_deployment.pk}/",
        "/api/v1/environments/y/serving/",
    ):
        assert client.get(url).status_code == 404, url
    deploy = client.post("/api/v1/deployments/", {"model": "iris", "environment": "y", "version": 2}, format="json")
    assert deploy.status_code == 404 and "There is no environment 'y'" in deploy.json()["error"]
    grant = client.post("/api/v1/role-bindings/", {"environment": "y", "user": "rita", "role": "viewer"}, format="json")
    assert grant.status_code == 404
    deploy = client.post("/api/v1/deployments/", {"model": "t5", "environment": "x", "version": 1}, format="json")
    assert deploy.status_code == 201


def test_a_token_limited_to_some_environments_cannot_act_on_every_environment(tess):
    RoleBinding.objects.create(user=UserFactory(username="gail", password=None), role=Role.ADMIN)  # global admin
    gail = RoleBinding.objects.get(environment=None).user
    limited = token(gail, "admin", environments=["x"])
    response = limited.post("/api/v1/environments/", {"name": "w"}, format="json")
    assert response.status_code == 403
    assert "not limited to some environments" in response.json()["error"]
    assert token(gail, "admin").post("/api/v1/environments/", {"name": "w"}, format="json").status_code == 201


# --- Expiry ---------------------------------------------------------------------------------------
def test_an_expired_token_is_refused_and_the_refusal_is_audited(tess):
    client = token(tess, "read", expires_in_days=1)
    assert client.get("/api/v1/environments/").status_code == 200
    APIToken.objects.filter(user=tess).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client.get("/api/v1/environments/")
    assert response.status_code == 401
    assert "unknown, revoked or expired" in response.json()["error"]
    event = AuditEvent.objects.get(outcome="denied")
    assert event.actor == "anonymous" and event.action == "environment.list"
    assert "token 'read-0'" in event.message and "of tess, expired at" in event.message


def test_a_token_expires_after_the_days_asked_for(tess):
    issued = create_token(tess, "week", actor=Actor(user=tess), expires_in_days=7)
    assert timedelta(days=7) - timedelta(minutes=1) < issued.token.expires_at - timezone.now() <= timedelta(days=7)


@pytest.mark.parametrize("days", [0, -1, 3651, "soon"])
def test_a_lifetime_outside_one_day_to_ten_years_is_refused(tess, days):
    with pytest.raises(InvalidInput, match="expires_in_days must be a whole number of days from 1 to 3650"):
        create_token(tess, "odd", actor=Actor(user=tess), expires_in_days=days)
    response = token(tess).post("/api/v1/tokens/", {"name": "odd", "expires_in_days": days}, format="json")
    assert response.status_code == 400
    assert "expires_in_days" in response.json()["fields"]
    assert not APIToken.objects.filter(name="odd").exists()


def test_a_token_cannot_be_limited_to_an_environment_its_user_has_no_role_in(tess):
    response = token(tess).post(
        "/api/v1/tokens/", {"name": "sneaky", "environments": ["x", "z", "nowhere"]}, format="json"
    )
    assert response.status_code == 400
    body = response.json()
    assert "You have no role in 'nowhere', 'z'" in body["error"]
    assert body["fields"]["environments"] == ["unknown: nowhere", "unknown: z"]
    assert not APIToken.objects.filter(name="sneaky").exists()


def test_a_new_token_records_its_scope_environments_and_expiry(tess):
    body = {"name": "ci", "scope": "deploy", "environments": ["y", "x"], "expires_in_days": 30}
    response = token(tess).post("/api/v1/tokens/", body, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["scope"] == "deploy" and body["environments"] == ["x", "y"] and body["expires_at"]
    event = AuditEvent.objects.filter(action="token.create").latest("id")
    assert event.after["scope"] == "deploy" and event.after["environments"] == ["x", "y"]
    assert event.after["expires_at"]


def test_an_unknown_scope_lists_the_scopes_there_are(tess):
    response = token(tess).post("/api/v1/tokens/", {"name": "odd", "scope": "root"}, format="json")
    assert response.status_code == 400
    assert '"root" is not a scope; use one of read, deploy, admin.' in response.json()["error"]


def test_a_token_makes_no_token_that_reaches_further_than_itself(tess):
    limited = token(tess, "admin", environments=["x"])
    for body in ({"name": "wider"}, {"name": "elsewhere", "environments": ["y"]}):
        response = limited.post("/api/v1/tokens/", body, format="json")
        assert response.status_code == 403, response.json()
        assert "limited to x" in response.json()["error"]
    assert limited.post("/api/v1/tokens/", {"name": "same", "environments": ["x"]}, format="json").status_code == 201
    expiring = token(tess, "admin", expires_in_days=7)
    for body in ({"name": "forever"}, {"name": "longer", "expires_in_days": 30}):
        response = expiring.post("/api/v1/tokens/", body, format="json")
        assert response.status_code == 403, response.json()
        assert "expires at" in response.json()["error"]
    assert expiring.post("/api/v1/tokens/", {"name": "sooner", "expires_in_days": 6}, format="json").status_code == 201
    assert not APIToken.objects.filter(name__in=("wider", "elsewhere", "forever", "longer")).exists()
    refused = AuditEvent.objects.filter(action="token.create", outcome="denied")
    assert refused.count() == 4


def test_a_token_limited_to_x_reads_none_of_its_users_own_events_elsewhere(tess):
    services.update_environment(Environment.objects.get(name="y"), actor=Actor(user=tess), description="y's secrets")
    client = token(tess, "admin", environments=["x"])
    assert client.get("/api/v1/audit/?environment=y").json()["count"] == 0
    assert client.get("/api/v1/audit/export/?environment=y").getvalue() == b""
    assert token(tess, "read").get("/api/v1/audit/?environment=y").json()["count"] > 0  # not limited: reads y


def test_a_token_limited_to_x_lists_and_revokes_only_tokens_limited_within_x(tess):
    """As the audit log: a token for x alone does not see the user's token for y, nor an unlimited one,
    and cannot revoke them (it could not have created them either)."""
    limited = token(tess, "admin", environments=["x"])  # "admin-1"
    for name, environments in (("everywhere", ()), ("x-and-y", ["x", "y"]), ("y-only", ["y"]), ("x-too", ["x"])):
        create_token(tess, name, actor=Actor(user=tess), environments=environments)
    listed = [t["name"] for t in limited.get("/api/v1/tokens/").json()["results"]]
    assert sorted(listed) == ["admin-1", "x-too"]
    wide = [t["name"] for t in token(tess, "read").get("/api/v1/tokens/").json()["results"]]
    assert sorted(wide) == ["admin-1", "everywhere", "read-0", "x-and-y", "x-too", "y-only"]
    both = token(tess, "read", environments=["x", "y"])
    assert sorted(t["name"] for t in both.get("/api/v1/tokens/").json()["results"]) == [
        "admin-1",
        "read-2",
        "x-and-y",
        "x-too",
        "y-only",
    ]

    for name in ("everywhere", "y-only"):
        other = APIToken.objects.get(name=name)
        response = limited.post(f"/api/v1/tokens/{other.pk}/revoke/", {}, format="json")
        assert response.status_code == 404, response.json()
        assert APIToken.objects.get(pk=other.pk).revoked_at is None
        refusal = AuditEvent.objects.filter(action="token.revoke").latest("id")
        assert refusal.outcome == "invalid" and (refusal.target_id, refusal.target_repr) == (str(other.pk), "")
    x_too = APIToken.objects.get(name="x-too")
    assert limited.post(f"/api/v1/tokens/{x_too.pk}/revoke/", {}, format="json").status_code == 200


def test_a_read_token_lists_its_users_tokens_without_secrets_as_their_audit_events_show_them(tess):
    """Listing is reading: a read token sees no more of the admin token than its creation event shows it,
    and cannot revoke it."""
    admin = create_token(tess, "ci-admin", actor=Actor(user=tess), environments=["x"])
    client = token(tess, "read")
    listed = {t["name"]: t for t in client.get("/api/v1/tokens/").json()["results"]}["ci-admin"]
    assert "token" not in listed and admin.raw not in str(listed)
    created = client.get("/api/v1/audit/?action=token.create").json()["results"]
    event = next(e for e in created if e["target"]["id"] == str(admin.token.pk))
    assert event["target"]["text"] == f"ci-admin ({listed['prefix']}…)"
    assert (event["after"]["scope"], event["after"]["environments"]) == (listed["scope"], listed["environments"])
    response = client.post(f"/api/v1/tokens/{admin.token.pk}/revoke/", {}, format="json")
    assert response.status_code == 403 and "scope is 'read'" in response.json()["error"]
