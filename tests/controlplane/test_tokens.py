"""API tokens: created in the UI, the API or on the command line, shown once, stored hashed, revocable."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from controlplane.audit import Actor
from controlplane.models import APIToken, AuditEvent, Role, RoleBinding
from controlplane.tokens import create_token, hash_token
from deployments import services as deployment_services
from tests.conftest import ROOT
from tests.factories import UserFactory


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def authenticates(raw: str) -> bool:
    return bearer(raw).get("/api/v1/tokens/").status_code == 200  # any signed-in user may list their tokens


# --- The command ---------------------------------------------------------------------------


def manage(*args: str) -> subprocess.CompletedProcess:
    db = settings.DATABASES["default"]
    env = {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_create_api_token_prints_a_working_token_as_its_last_line(live_db, alice):
    result = manage("create_api_token", "alice", "--name", "ci")
    assert result.returncode == 0, result.stderr
    raw = result.stdout.strip().splitlines()[-1]
    assert raw.startswith("slw_")
    assert authenticates(raw)
    token = APIToken.objects.get(user=alice, name="ci")
    assert token.key_hash == hash_token(raw)
    assert raw not in str(APIToken.objects.filter(pk=token.pk).values().get())  # only its hash is stored
    event = AuditEvent.objects.get(action="token.create")
    assert event.actor == "system"
    assert event.after == {"name": "ci", "user": "alice", "scope": "admin", "environments": [], "expires_at": None}


@pytest.mark.slow
def test_create_api_token_names_an_unknown_user(live_db):
    result = manage("create_api_token", "bob")
    assert result.returncode != 0
    assert "No user named 'bob'" in result.stderr
    assert result.stdout == ""


@pytest.mark.django_db
def test_create_api_token_defaults_the_name_to_cli(alice):
    out = StringIO()
    call_command("create_api_token", "alice", stdout=out, stderr=StringIO())
    assert APIToken.objects.get(user=alice).name == "cli"
    assert authenticates(out.getvalue().strip().splitlines()[-1])


@pytest.mark.django_db
def test_create_api_token_refuses_a_second_active_token_of_the_same_name(alice):
    call_command("create_api_token", "alice", "--name", "ci", stdout=StringIO(), stderr=StringIO())
    with pytest.raises(CommandError, match="already has an active token named 'ci'; pick another name"):
        call_command("create_api_token", "alice", "--name", "ci", stdout=StringIO(), stderr=StringIO())


# --- The web page --------------------------------------------------------------------------


@pytest.fixture
def browser(client, alice):
    client.force_login(alice)
    return client


@pytest.mark.django_db
def test_a_token_created_on_the_page_is_shown_once(browser, alice):
    created = browser.post("/tokens/", {"name": "ci-pipeline"})
    assert created.status_code == 201
    raw = created.context["issued"].raw
    assert raw in created.content.decode()
    assert authenticates(raw)

    again = browser.get("/tokens/")
    page = again.content.decode()
    assert raw not in page
    assert "ci-pipeline" in page and APIToken.objects.get(name="ci-pipeline").prefix in page


@pytest.mark.django_db
def test_revoking_a_token_on_the_page_stops_it_working(browser, alice):
    issued = create_token(alice, "old", actor=Actor(user=alice))
    assert authenticates(issued.raw)
    response = browser.post(f"/tokens/{issued.token.pk}/revoke/")
    assert response.status_code == 302 and response["Location"] == "/tokens/"
    assert not authenticates(issued.raw)
    assert "revoked" in browser.get("/tokens/").content.decode()
    event = AuditEvent.objects.get(action="token.revoke")
    assert event.actor == "alice" and event.target_id == str(issued.token.pk)


@pytest.mark.django_db
def test_revoking_twice_records_one_event(browser, alice):
    token = create_token(alice, "old", actor=Actor(user=alice)).token
    browser.post(f"/tokens/{token.pk}/revoke/")
    browser.post(f"/tokens/{token.pk}/revoke/")
    assert AuditEvent.objects.filter(action="token.revoke").count() == 1


@pytest.mark.django_db
def test_nobody_can_see_or_revoke_someone_elses_token(browser, alice):
    bob = UserFactory(username="bob")
    issued = create_token(bob, "bobs-laptop", actor=Actor(user=bob))
    assert "bobs-laptop" not in browser.get("/tokens/").content.decode()
    assert browser.post(f"/tokens/{issued.token.pk}/revoke/").status_code == 404
    assert authenticates(issued.raw)


@pytest.mark.django_db
def test_a_refused_token_form_keeps_what_was_typed_and_ticked(browser, alice):
    for name in ("dev", "prod-dev"):
        env = deployment_services.create_environment(name, actor=Actor.system())
        RoleBinding.objects.create(user=alice, environment=env, role=Role.ADMIN)
    browser.post("/tokens/", {"name": "ci-pipeline"})
    again = browser.post("/tokens/", {"name": "ci-pipeline", "environments": ["prod-dev"]})  # the name is taken
    assert again.status_code == 409
    page = again.content.decode()
    assert 'value="ci-pipeline"' in page
    assert 'value="prod-dev" checked' in page
    assert 'value="dev" checked' not in page  # "dev" is in "prod-dev", but was not ticked


@pytest.mark.django_db
def test_a_token_without_a_name_is_refused_on_the_page(browser):
    response = browser.post("/tokens/", {"name": "  "})
    assert response.status_code == 400
    assert "Give the token a name" in response.content.decode()
    assert not APIToken.objects.exists()
    assert AuditEvent.objects.get(action="token.create").outcome == "invalid"


@pytest.mark.django_db
def test_the_tokens_page_needs_a_login(client):
    response = client.get("/tokens/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


# --- The API -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_token_created_through_the_api_is_returned_once(api, alice):
    created = api.post("/api/v1/tokens/", {"name": "deploy-bot"}, format="json")
    assert created.status_code == 201
    raw = created.json()["token"]
    assert authenticates(raw)
    listed = api.get("/api/v1/tokens/").json()
    assert {t["name"] for t in listed["results"]} == {"laptop", "deploy-bot"}
    assert "token" not in listed["results"][0]
    assert raw not in str(listed)


@pytest.mark.django_db
def test_a_token_revoked_through_the_api_stops_working(api, alice):
    raw = api.post("/api/v1/tokens/", {"name": "deploy-bot"}, format="json").json()["token"]
    token = APIToken.objects.get(name="deploy-bot")
    response = api.post(f"/api/v1/tokens/{token.pk}/revoke/")
    assert response.status_code == 200 and response.json()["revoked_at"]
    assert not authenticates(raw)


@pytest.mark.django_db
def test_the_api_cannot_revoke_someone_elses_token(api):
    bob = UserFactory(username="bob")
    token = create_token(bob, "bobs-laptop", actor=Actor(user=bob)).token
    response = api.post(f"/api/v1/tokens/{token.pk}/revoke/")
    assert response.status_code == 404
    assert APIToken.objects.get(pk=token.pk).revoked_at is None


@pytest.mark.django_db
def test_a_duplicate_token_name_answers_409(api):
    response = api.post("/api/v1/tokens/", {"name": "laptop"}, format="json")
    assert response.status_code == 409
    assert "pick another name" in response.json()["error"]
