"""What reaches the audit log besides the services' own events: the admin site's changes, log-ins,
and the object a refused attempt was about."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client, RequestFactory
from django.urls import resolve

from controlplane.audit import Actor, target_of_request, verify_chain
from controlplane.models import AuditEvent, Role, RoleBinding
from controlplane.tokens import create_token
from deployments.services import create_environment, deploy
from registry.models import Model
from tests.conftest import bearer_client
from tests.factories import UserFactory, bulk_versions

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"  # tests.factories.UserFactory's


def admin_client(admin) -> Client:
    client = Client(REMOTE_ADDR="192.0.2.7")
    client.force_login(admin)
    return client


def test_the_admin_sites_changes_to_users_and_groups_are_audited_without_any_secret(admin):
    client = admin_client(admin)
    before = AuditEvent.objects.count()

    created = client.post(
        "/admin/auth/user/add/",
        {"username": "bob", "usable_password": "true", "password1": "S3cret-horse-42", "password2": "S3cret-horse-42"},
    )
    assert created.status_code == 302, created.content[:2000]
    bob = get_user_model().objects.get(username="bob")
    made = AuditEvent.objects.get(action="user.create")
    assert (made.actor, made.target_type, made.target_id, made.target_repr) == ("admin", "user", str(bob.pk), "bob")
    assert made.source_ip == "192.0.2.7" and made.outcome == "success"
    assert made.after["is_superuser"] is False and made.after["admin"] == [{"added": {}}]

    promoted = client.post(
        f"/admin/auth/user/{bob.pk}/change/",
        {
            "username": "bob",
            "is_active": "on",
            "is_staff": "on",
            "is_superuser": "on",
            "date_joined_0": "2026-12-07",
            "date_joined_1": "08:00:00",
            "initial-date_joined_0": "2026-12-07",
            "initial-date_joined_1": "08:00:00",
        },
    )
    assert promoted.status_code == 302, promoted.content[:2000]
    change = AuditEvent.objects.get(action="user.change")
    assert change.after["is_superuser"] is True and change.after["is_staff"] is True
    changed_fields = change.after["admin"][0]["changed"]["fields"]
    assert changed_fields == ["Staff status", "Superuser status"]

    reset = client.post(
        f"/admin/auth/user/{bob.pk}/password/",
        {"usable_password": "true", "password1": "An0ther-horse-43", "password2": "An0ther-horse-43"},
    )
    assert reset.status_code == 302, reset.content[:2000]
    password_change = AuditEvent.objects.filter(action="user.change").latest("id")
    assert password_change.after["admin"] == [{"changed": {"fields": ["password"]}}]

    assert client.post("/admin/auth/group/add/", {"name": "auditors"}).status_code == 302
    group = Group.objects.get(name="auditors")
    assert AuditEvent.objects.get(action="group.create").target_id == str(group.pk)

    deleted = client.post(
        "/admin/auth/user/", {"action": "delete_selected", "_selected_action": [bob.pk], "post": "yes"}
    )
    assert deleted.status_code == 302
    assert not get_user_model().objects.filter(username="bob").exists()
    gone = AuditEvent.objects.get(action="user.delete")
    assert (gone.target_id, gone.target_repr, gone.after) == (str(bob.pk), "bob", None)

    events = AuditEvent.objects.all()[: AuditEvent.objects.count() - before]
    text = " ".join(f"{e.before} {e.after} {e.message}" for e in events)
    assert "horse" not in text and "pbkdf2" not in text  # neither a password nor its hash


def log_in(username: str, password: str, *, address: str = "192.0.2.10"):
    form = urlencode({"username": username, "password": password})
    return Client(REMOTE_ADDR=address).post("/login/", form, content_type="application/x-www-form-urlencoded")


def test_each_log_in_and_each_failed_one_is_audited_and_a_lockout_once_per_try(alice, settings):
    settings.AXES_FAILURE_LIMIT = 3
    settings.AXES_COOLOFF_TIME = timedelta(seconds=60)

    assert log_in("alice", PASSWORD).status_code == 302
    signed_in = AuditEvent.objects.get(action="login")
    assert (signed_in.actor, signed_in.outcome, signed_in.target_repr) == ("alice", "success", "alice")
    assert signed_in.source_ip == "192.0.2.10"

    for _ in range(3):
        log_in("alice", "not-her-password-77")
    failed = AuditEvent.objects.filter(action="login", outcome="denied").order_by("id")
    assert failed.count() >= 2  # the try that reaches the limit may be told as the lockout instead
    assert all(e.actor == "anonymous" and "'alice'" in e.message for e in failed)
    assert not any("not-her-password" in e.message for e in failed)

    denied_before = failed.count()
    lockouts_before = AuditEvent.objects.filter(action="login.locked_out").count()
    assert log_in("alice", PASSWORD).status_code == 429
    assert AuditEvent.objects.filter(action="login.locked_out").count() == lockouts_before + 1
    assert AuditEvent.objects.filter(action="login", outcome="denied").count() == denied_before


def test_a_refused_attempt_names_the_object_it_was_about_so_the_target_filter_finds_it(api, alice):
    assert api.post("/api/v1/models/", {"name": "iris"}, format="json").status_code == 201
    model = Model.objects.get(name="iris")

    twice = api.post("/api/v1/models/", {"name": "iris"}, format="json")
    assert twice.status_code == 409
    conflict = AuditEvent.objects.get(action="model.create", outcome="invalid")
    assert (conflict.target_type, conflict.target_repr) == ("model", "iris")

    # A viewer's upload: denied, about the model in its URL.
    vera = UserFactory(username="vera")
    RoleBinding.objects.create(user=vera, role=Role.VIEWER)
    viewer = bearer_client(create_token(vera, "ci", actor=Actor(user=vera)).raw)
    refused = viewer.post("/api/v1/models/iris/versions/", {"artifact": b"x"}, format="multipart")
    assert refused.status_code == 403
    denied = AuditEvent.objects.get(outcome="denied", actor="vera (token: ci)")
    assert (denied.target_type, denied.target_id, denied.target_repr) == ("model", str(model.pk), "iris")

    browser = Client()
    browser.force_login(vera)
    assert browser.post("/models/iris/versions/upload/").status_code == 403
    web = AuditEvent.objects.filter(outcome="denied", actor="vera").latest("id")
    assert (web.target_type, web.target_id) == ("model", str(model.pk))

    found = api.get("/api/v1/audit/", {"target": "iris", "outcome": "denied"}).json()["results"]
    assert {event["actor"] for event in found} == {"vera", "vera (token: ci)"}


def refused_at(path: str):
    request = RequestFactory().post(path)
    request.resolver_match = resolve(path)
    return request


def test_a_refusal_names_only_what_the_actor_may_see_of_the_object_in_its_url(alice):
    """The actor reads their own refused attempts: another team's deployment must not be named there."""
    actor = Actor(user=alice)
    model = Model.objects.create(name="fraud", created_by=alice)
    bulk_versions(model, 1, uploaded_by=alice)
    create_environment("team-b-prod", actor=actor)
    deployment = deploy("fraud", "team-b-prod", 1, actor=actor)[0]
    other_team = create_environment("team-c-dev", actor=actor)
    vera = UserFactory(username="vera")
    RoleBinding.objects.create(user=vera, role=Role.VIEWER, environment=other_team)
    outsider = Actor(user=vera)

    promote = refused_at(f"/api/v1/deployments/{deployment.pk}/promote/")
    assert target_of_request(promote, actor) == deployment
    assert target_of_request(promote, outsider) == ("deployment", str(deployment.pk), "")
    binding = RoleBinding.objects.get(user=vera)
    assert target_of_request(refused_at(f"/api/v1/role-bindings/{binding.pk}/"), outsider) == (
        "role_binding",
        str(binding.pk),
        "",
    )
    token = create_token(alice, "laptop", actor=actor).token
    assert target_of_request(refused_at(f"/api/v1/tokens/{token.pk}/revoke/"), outsider)[2] == ""
    assert target_of_request(refused_at(f"/api/v1/tokens/{token.pk}/revoke/"), actor) == token
    # A version that does not exist: named as the URL named it.
    assert target_of_request(refused_at("/api/v1/models/fraud/versions/7/"), actor) == (
        "model_version",
        "",
        "fraud v7",
    )


def test_other_peoples_refused_registry_attempts_are_not_shown_to_every_registry_reader(api, alice):
    assert api.post("/api/v1/models/", {"name": "iris"}, format="json").status_code == 201
    vera = UserFactory(username="vera")
    RoleBinding.objects.create(user=vera, role=Role.VIEWER)
    viewer = bearer_client(create_token(vera, "ci", actor=Actor(user=vera)).raw)
    assert viewer.post("/api/v1/models/iris/versions/", {"artifact": b"x"}, format="multipart").status_code == 403
    walt = UserFactory(username="walt")
    RoleBinding.objects.create(
        user=walt, role=Role.VIEWER, environment=create_environment("dev", actor=Actor(user=alice))
    )
    reader = bearer_client(create_token(walt, "ci", actor=Actor(user=walt)).raw)
    seen = {(e["action"], e["outcome"]) for e in reader.get("/api/v1/audit/").json()["results"]}
    assert ("model.create", "success") in seen  # the registry's changes: every reader's
    assert not any(outcome == "denied" for _, outcome in seen)  # vera's refusal: hers and the auditors'
    own = {e["outcome"] for e in viewer.get("/api/v1/audit/").json()["results"]}
    assert "denied" in own


@pytest.fixture
def other_teams_rollout(alice):
    """A rollout in team-b-prod, and vera, a deployer in team-c-dev only."""
    actor = Actor(user=alice)
    bulk_versions(Model.objects.create(name="fraud", created_by=alice), 1, uploaded_by=alice)
    create_environment("team-b-prod", actor=actor)
    deployment, rollout, _ = deploy("fraud", "team-b-prod", 1, actor=actor)
    vera = UserFactory(username="vera")
    RoleBinding.objects.create(user=vera, role=Role.DEPLOYER, environment=create_environment("team-c-dev", actor=actor))
    return vera, deployment, rollout


def test_a_write_to_another_teams_object_through_the_api_is_audited_without_naming_it(other_teams_rollout):
    vera, _, rollout = other_teams_rollout
    client = bearer_client(create_token(vera, "ci", actor=Actor(user=vera)).raw)
    for url in (f"/api/v1/rollouts/{rollout.pk}/abort/", "/api/v1/rollouts/999999/abort/"):
        assert client.post(url, {}, format="json").status_code == 404
        event = AuditEvent.objects.filter(actor="vera (token: ci)").latest("id")
        assert (event.action, event.outcome) == ("rollout.abort", "invalid")
        assert event.message.startswith(f"404 POST {url}") and event.target_repr == ""
    assert client.get(f"/api/v1/rollouts/{rollout.pk}/").status_code == 404  # a read changes nothing: not recorded
    assert AuditEvent.objects.filter(actor="vera (token: ci)").count() == 2


def test_a_form_sent_to_another_teams_object_is_audited_without_naming_it(other_teams_rollout):
    vera, deployment, rollout = other_teams_rollout
    browser = Client()
    browser.force_login(vera)
    for url, action in (
        (f"/deployments/{deployment.pk}/rollback/", "page.deployment-rollback"),
        (f"/rollouts/{rollout.pk}/abort/", "page.rollout-action"),
        ("/approvals/999999/approve/", "page.approval-decide"),
    ):
        assert browser.post(url, {"reason": "mine now"}).status_code == 404
        event = AuditEvent.objects.filter(actor="vera").latest("id")
        assert (event.action, event.outcome) == (action, "invalid")
        assert event.message.startswith(f"404 POST {url}") and event.target_repr == ""
    assert browser.get(f"/deployments/{deployment.pk}/").status_code == 404  # a read changes nothing: not recorded
    assert AuditEvent.objects.filter(actor="vera", outcome="invalid").count() == 3


def test_a_refused_attempt_with_a_nul_byte_in_its_url_or_input_is_recorded(api, anonymous_api):
    """PostgreSQL's text holds no NUL: the event was refused by the database and the refusal went unrecorded."""
    # A path with a NUL names nothing: 404 before anything is looked up (tests/controlplane/test_error_pages.py).
    assert anonymous_api.post("/api/v1/models/a%00b/versions/", {}, format="json").status_code == 404
    assert api.post("/api/v1/tokens/", {"name": "t", "scope": "\x00root"}, format="json").status_code == 400
    invalid = AuditEvent.objects.get(action="token.create", outcome="invalid")
    assert '"\ufffdroot" is not a scope' in invalid.message
    assert verify_chain() is None
