"""An htmx request after the session expired sends the whole page to log in, and back to that page."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from registry.models import Model, ModelVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def iris(alice):
    return Model.objects.create(name="iris", created_by=alice)


def htmx(current_url: str) -> dict:
    return {"HTTP_HX_REQUEST": "true", "HTTP_HX_CURRENT_URL": current_url}


def test_an_htmx_upload_without_a_session_redirects_the_page_to_log_in_and_back(iris, model_files):
    artifact = SimpleUploadedFile("mlp.pt", model_files["torchscript"].read_bytes())
    response = Client().post(
        "/models/iris/versions/upload/", {"artifact": artifact}, **htmx("http://testserver/models/iris/?page=2")
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == "/login/?next=/models/iris/%3Fpage%3D2"  # back to the same page of the list
    assert ModelVersion.objects.count() == 0


def test_an_htmx_poll_without_a_session_redirects_the_page_too(iris):
    response = Client().get("/models/iris/versions/rows/", **htmx("http://testserver/models/iris/"))
    assert response["HX-Redirect"] == "/login/?next=/models/iris/"


def test_a_page_on_another_host_is_not_where_logging_in_leads(iris):
    response = Client().get("/models/iris/versions/rows/", **htmx("https://elsewhere.example/steal/"))
    assert response["HX-Redirect"] == "/login/"


def test_a_request_without_htmx_is_still_redirected_as_usual(iris):
    response = Client().get("/models/iris/")
    assert response.status_code == 302 and response["Location"] == "/login/?next=/models/iris/"
