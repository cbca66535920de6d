"""The API answers 401 with a JSON error that says what to send, and audits every refusal."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from controlplane.audit import Actor
from controlplane.models import AuditEvent
from controlplane.tokens import create_token, revoke_token

pytestmark = pytest.mark.django_db


def client_with(authorization: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=authorization)
    return client


def assert_denied(response, says: str, action: str = "model.list") -> AuditEvent:
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="slipway"'
    body = response.json()
    assert body["code"] in ("not_authenticated", "authentication_failed")
    assert says in body["error"]
    event = AuditEvent.objects.get(outcome="denied")
    assert event.action == action
    assert event.actor == "anonymous"
    assert event.request_id == response["X-Request-ID"]
    assert event.source_ip == "127.0.0.1"
    assert says in event.message
    return event


def test_a_request_without_a_token_is_told_how_to_authenticate(anonymous_api):
    response = anonymous_api.get("/api/v1/models/")
    assert_denied(response, "Authorization: Bearer <token>")
    assert "create_api_token" in response.json()["error"]


def test_a_header_with_another_scheme_is_told_to_use_bearer(alice_token):
    response = client_with(f"Token {alice_token}").get("/api/v1/models/")
    assert_denied(response, "Authorization: Bearer <token>")


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Bearer two words"])
def test_a_malformed_bearer_header_is_refused_with_the_expected_form(header):
    response = client_with(header).get("/api/v1/models/")
    assert_denied(response, "Malformed Authorization header")


def test_an_unknown_token_is_refused(alice):
    response = client_with("Bearer slw_not-a-real-token").get("/api/v1/models/")
    event = assert_denied(response, "unknown, revoked or expired")
    assert event.message.endswith("[no such token]")
    assert "slw_not-a-real-token" not in event.message  # a guessed or leaked secret stays out of the log


def test_a_revoked_token_is_refused(alice):
    issued = create_token(alice, "old-laptop", actor=Actor(user=alice))
    client = client_with(f"Bearer {issued.raw}")
    assert client.get("/api/v1/models/").status_code == 200
    revoke_token(issued.token, actor=Actor(user=alice))
    response = client.get("/api/v1/models/")
    assert "old-laptop" not in response.json()["error"]  # the caller learns nothing about the token
    event = assert_denied(response, "unknown, revoked or expired")
    # The log says which token is still in use somewhere, by its public prefix only.
    assert event.message.endswith(f"[token 'old-laptop' ({issued.token.prefix}…) of alice, revoked]")
    assert issued.raw not in event.message


def test_the_token_of_a_deactivated_user_is_refused(alice, alice_token):
    alice.is_active = False
    alice.save()
    event = assert_denied(client_with(f"Bearer {alice_token}").get("/api/v1/models/"), "account is disabled")
    assert "of alice, its user is deactivated]" in event.message


def test_a_refused_write_is_audited_under_the_action_it_attempted(anonymous_api):
    response = anonymous_api.post("/api/v1/models/", {"name": "iris"}, format="json")
    assert_denied(response, "Authorization: Bearer <token>", action="model.create")


def test_a_valid_token_acts_as_its_user_and_is_marked_used(alice, alice_token):
    response = client_with(f"Bearer {alice_token}").post("/api/v1/models/", {"name": "iris"}, format="json")
    assert response.status_code == 201
    assert response.json()["created_by"] == "alice"
    assert alice.api_tokens.get(name="laptop").last_used_at is not None
