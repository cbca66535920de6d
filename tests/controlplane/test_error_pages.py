"""Unrouted paths and server errors: JSON under /api/, the site's pages elsewhere."""

from __future__ import annotations

import pytest
from django.test import Client, RequestFactory

from controlplane.views import server_error
from registry import api as registry_api
from registry import views as registry_views

pytestmark = pytest.mark.django_db


def fail(*args, **kwargs):
    raise RuntimeError("a bug")


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/api/v1/models/iris/versions/abc/"), ("post", "/api/v1//models/"), ("delete", "/api/v2/")],
)
def test_an_unrouted_api_path_answers_the_api_404(api, method, path):
    response = getattr(api, method)(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "error": f"No such API endpoint: {method.upper()} {path}; see /api/docs/",
        "code": "not_found",
    }


def test_an_api_server_error_answers_json(api, monkeypatch):
    monkeypatch.setattr(registry_api.ModelViewSet, "list", fail)
    api.raise_request_exception = False
    response = api.get("/api/v1/models/")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error; the server's log has the details", "code": "server_error"}


def test_an_unknown_page_answers_a_404_in_the_site_layout(client, alice):
    client.force_login(alice)
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    page = response.content.decode()
    assert "There is no page at <code>/no-such-page/</code>" in page
    assert 'aria-label="Main"' in page and "Audit log" in page  # base.html, signed in


def test_a_page_error_answers_a_standalone_500(alice, monkeypatch):
    monkeypatch.setattr(registry_views, "_model_list_context", fail)
    client = Client(raise_request_exception=False)
    client.force_login(alice)
    response = client.get("/models/")
    assert response.status_code == 500
    page = response.content.decode()
    assert "Server error" in page and "/static/vendor/pico/pico.min.css" in page


def test_the_500_page_reads_nothing_from_the_database(django_assert_num_queries):
    with django_assert_num_queries(0):
        response = server_error(RequestFactory().get("/models/"))
    assert response.status_code == 500 and b"Server error" in response.content


@pytest.mark.parametrize(
    "path",
    ["/api/v1/models/%00/", "/api/v1/models/a%00b/versions/1/", "/api/v1/environments/%00/", "/models/%00/versions/1/"],
)
def test_a_path_with_a_nul_names_nothing_and_answers_404(api, client, alice, path):
    """No name holds a NUL (PostgreSQL's text refuses one): looking it up was a 500."""
    client.force_login(alice)
    response = (api if path.startswith("/api/") else client).get(path)
    assert response.status_code == 404
    assert response["X-Request-ID"]


def test_a_refused_upload_at_a_path_with_a_nul_is_not_a_500(alice):
    """A read-only token's POST was refused (403), then its audit event failed to name the model."""
    from controlplane.audit import Actor
    from controlplane.tokens import create_token
    from tests.conftest import bearer_client

    reader = bearer_client(create_token(alice, "reader", actor=Actor(user=alice), scope="read").raw)
    response = reader.post("/api/v1/models/%00/versions/", {}, format="multipart")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
