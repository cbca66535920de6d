"""Browser sessions are CSRF-protected: forms and session-authenticated API calls need the token."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.test import APIClient

from controlplane.audit import Actor
from controlplane.models import APIToken, AuditEvent
from controlplane.tokens import create_token
from registry import services
from registry.models import Model, ModelVersion
from tests.models_zoo import MLP_SIGNATURE

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(alice) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    client.get("/models/")  # a page view sets the CSRF cookie
    return client


@pytest.fixture
def iris(alice):
    return services.create_model("iris", actor=Actor(user=alice))


@pytest.fixture
def tablet(alice):
    return create_token(alice, "tablet", actor=Actor(user=alice)).token


def csrf(client) -> str:
    return client.cookies["csrftoken"].value


def forms(model_files, tablet):
    """Each browser form: (url, its fields, how to tell that it did nothing)."""
    artifact = SimpleUploadedFile("mlp.pt", model_files["torchscript"].read_bytes())
    signature = str(MLP_SIGNATURE).replace("'", '"')
    return {
        "create model": ("/models/", {"name": "churn"}, lambda: not Model.objects.filter(name="churn").exists()),
        "create token": ("/tokens/", {"name": "ci"}, lambda: not APIToken.objects.filter(name="ci").exists()),
        "revoke token": (
            f"/tokens/{tablet.pk}/revoke/",
            {},
            lambda: APIToken.objects.get(pk=tablet.pk).revoked_at is None,
        ),
        "upload": (
            "/models/iris/versions/upload/",
            {"artifact": artifact, "signature": signature},
            lambda: not ModelVersion.objects.exists(),
        ),
    }


FORMS = ["create model", "create token", "revoke token", "upload"]


@pytest.mark.parametrize("form", FORMS)
def test_a_browser_form_posted_without_the_csrf_token_is_refused_and_audited(browser, iris, tablet, model_files, form):
    url, fields, did_nothing = forms(model_files, tablet)[form]
    response = browser.post(url, fields)
    assert response.status_code == 403
    assert did_nothing()
    event = AuditEvent.objects.get(outcome="denied")
    assert event.action == "csrf.check"
    assert event.actor == "alice"
    assert url in event.message and "CSRF" in event.message


@pytest.mark.parametrize("form", FORMS)
def test_the_same_form_with_its_csrf_token_goes_through(browser, iris, tablet, model_files, form):
    url, fields, did_nothing = forms(model_files, tablet)[form]
    response = browser.post(url, {**fields, "csrfmiddlewaretoken": csrf(browser)})
    assert response.status_code in (201, 302), response.content[:500]
    assert not did_nothing()


def test_htmx_sends_the_token_in_a_header(browser, iris, tablet, model_files):
    url, fields, did_nothing = forms(model_files, tablet)["upload"]
    response = browser.post(url, fields, headers={"HX-Request": "true", "X-CSRFToken": csrf(browser)})
    assert response.status_code == 201
    assert not did_nothing()


@pytest.fixture
def session_api(alice) -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(alice)
    return client


def test_a_session_authenticated_api_post_without_the_csrf_token_is_refused(session_api):
    response = session_api.post("/api/v1/models/", {"name": "iris"}, format="json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]
    assert not Model.objects.exists()
    event = AuditEvent.objects.get(outcome="denied")
    assert (event.action, event.actor) == ("model.create", "alice")


def test_a_session_authenticated_api_post_with_the_csrf_token_works(session_api):
    session_api.get("/models/")
    response = session_api.post(
        "/api/v1/models/", {"name": "iris"}, format="json", HTTP_X_CSRFTOKEN=session_api.cookies["csrftoken"].value
    )
    assert response.status_code == 201


def test_a_bearer_token_needs_no_csrf_token(alice_token):
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {alice_token}")
    assert client.post("/api/v1/models/", {"name": "iris"}, format="json").status_code == 201
