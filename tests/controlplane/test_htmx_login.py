"""htmx requests refused: without a session the whole page goes to log in (and back); refused by a view, the
page's refusal box says why."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from registry.models import Model, ModelVersion
from tests.factories import UserFactory

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


def test_an_htmx_request_refused_by_the_view_says_why_in_the_pages_refusal_box(iris):
    """Not a whole 'Not allowed' page inside the fragment the request was to replace."""
    nobody = UserFactory()  # signed in, without a role anywhere
    client = Client()
    client.force_login(nobody)
    response = client.get("/models/iris/versions/rows/", **htmx("http://testserver/models/iris/"))
    assert response.status_code == 286  # htmx's "stop polling": a refused refresh is not asked again every second
    assert response["HX-Retarget"] == "#htmx-refusal" and response["HX-Reswap"] == "innerHTML"
    body = response.content.decode()
    assert 'role="alert"' in body and "<header" not in body and "<html" not in body
    # Not a refresh: the same refusal, with its own status (htmx swaps it into the box all the same).
    other = client.get("/models/iris/", **htmx("http://testserver/models/"))
    assert other.status_code == 403 and other["HX-Retarget"] == "#htmx-refusal"
    page = client.get("/models/")  # the same refusal as a whole page, without htmx
    assert page.status_code == 403 and "<html" in page.content.decode()
    assert "Back to the models" not in page.content.decode()  # it would only lead to this refusal again
    assert "you have none yet" in page.content.decode()


def test_every_page_has_the_box_htmx_refusals_go_to(alice):
    client = Client()
    client.force_login(alice)
    assert 'id="htmx-refusal"' in client.get("/models/").content.decode()
