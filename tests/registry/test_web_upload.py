"""Browser uploads: the size limit and login are enforced before anything is kept."""

import os

import pytest
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from controlplane.models import Role, RoleBinding
from registry.models import Model, ModelVersion
from tests.factories import UserFactory
from tests.models_zoo import MLP_SIGNATURE

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(alice) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    client.get("/models/")  # sets the CSRF cookie, as a page view does
    return client


@pytest.fixture
def iris(alice):
    return Model.objects.create(name="iris", created_by=alice)


def _csrf(client: Client) -> dict:
    return {"HTTP_X_CSRFTOKEN": client.cookies["csrftoken"].value}


def _leftovers() -> list[str]:
    found = []
    for root in (django_settings.ARTIFACT_ROOT, django_settings.FILE_UPLOAD_TEMP_DIR):
        for dirpath, _dirs, files in os.walk(root):
            found += [os.path.join(dirpath, f) for f in files]
    return found


def test_an_upload_over_the_limit_answers_413_and_keeps_nothing(browser, iris, model_files, settings):
    settings.SLIPWAY_MAX_ARTIFACT_BYTES = 1000
    before = _leftovers()
    artifact = SimpleUploadedFile("mlp.pt", model_files["torchscript"].read_bytes())
    response = browser.post("/models/iris/versions/upload/", {"artifact": artifact}, **_csrf(browser))
    assert response.status_code == 413
    assert "SLIPWAY_MAX_ARTIFACT_BYTES" in response.content.decode()
    assert ModelVersion.objects.count() == 0
    assert _leftovers() == before


def test_a_browser_upload_is_kept_and_shows_its_sha256(browser, iris, model_files):
    artifact = SimpleUploadedFile("mlp.pt", model_files["torchscript"].read_bytes())
    data = {"artifact": artifact, "signature": '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}'}
    response = browser.post("/models/iris/versions/upload/", data, **_csrf(browser))
    assert response.status_code == 201, response.content
    version = ModelVersion.objects.get()
    assert version.signature == MLP_SIGNATURE
    assert version.sha256 in response.content.decode()
    assert response["HX-Trigger"] == "versions-changed"


def test_an_upload_without_the_csrf_token_is_refused(browser, iris, model_files):
    artifact = SimpleUploadedFile("mlp.pt", model_files["torchscript"].read_bytes())
    response = browser.post("/models/iris/versions/upload/", {"artifact": artifact})
    assert response.status_code == 403
    assert ModelVersion.objects.count() == 0


def test_an_anonymous_upload_is_sent_to_log_in_before_its_body_is_read(iris, model_files):
    client = Client(enforce_csrf_checks=True)
    before = _leftovers()
    artifact = SimpleUploadedFile("mlp.pt", model_files["torchscript"].read_bytes())
    response = client.post("/models/iris/versions/upload/", {"artifact": artifact})
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert ModelVersion.objects.count() == 0
    assert _leftovers() == before


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(browser, iris, settings):
    settings.SLIPWAY_MAX_ARTIFACT_BYTES = 1000
    before = _leftovers()
    artifact = SimpleUploadedFile("big.pt", b"\0" * (512 * 1024))
    response = browser.post("/models/iris/versions/upload/", {"artifact": artifact}, **_csrf(browser))
    assert response.status_code == 413
    assert ModelVersion.objects.count() == 0
    assert _leftovers() == before


def test_a_malformed_body_is_refused_on_the_page_and_keeps_nothing(browser, iris):
    before = _leftovers()
    body = b'--x\r\nContent-Disposition: form-data; name="artifact"; filename="m.pt"\r\n\r\nweights'
    response = browser.generic(
        "POST", "/models/iris/versions/upload/", body, content_type="multipart/form-data; boundary=x", **_csrf(browser)
    )
    assert response.status_code == 400
    assert "ended before the whole body arrived" in response.content.decode()
    assert ModelVersion.objects.count() == 0
    assert _leftovers() == before


def test_a_chunked_body_is_refused_with_what_to_send_instead(browser, iris):
    # The WSGI server hands Django no body for it: that is no short body, as the API says too (411).
    response = browser.generic(
        "POST",
        "/models/iris/versions/upload/",
        b"5\r\n--x--\r\n0\r\n\r\n",  # (the test client passes it as it is)
        content_type="multipart/form-data; boundary=x",
        HTTP_TRANSFER_ENCODING="chunked",
        **_csrf(browser),
    )
    assert response.status_code == 411
    assert "Content-Length header, not chunked" in response.content.decode()
    assert ModelVersion.objects.count() == 0


def test_two_files_chosen_for_one_upload_are_refused_on_the_page(browser, iris, model_files):
    before = _leftovers()
    data = model_files["torchscript"].read_bytes()
    files = [SimpleUploadedFile("a.pt", data), SimpleUploadedFile("b.pt", data)]
    response = browser.post("/models/iris/versions/upload/", {"artifact": files}, **_csrf(browser))
    assert response.status_code == 400
    assert "2 files in &#x27;artifact&#x27;" in response.content.decode()
    assert ModelVersion.objects.count() == 0
    assert _leftovers() == before


@pytest.fixture
def viewer(db):
    """Someone who may read the registry everywhere, and upload nowhere."""
    user = UserFactory(username="victor")
    RoleBinding.objects.create(user=user, role=Role.VIEWER)
    return user


def test_an_htmx_upload_by_a_viewer_answers_the_refusal_in_the_upload_card(viewer, iris, model_files):
    client = Client()
    client.force_login(viewer)
    artifact = SimpleUploadedFile("mlp.pt", model_files["torchscript"].read_bytes())
    response = client.post("/models/iris/versions/upload/", {"artifact": artifact}, HTTP_HX_REQUEST="true")
    assert response.status_code == 403
    page = response.content.decode()
    assert '<div class="notice notice-error" role="alert">' in page and "Upload refused." in page
    assert "you need the deployer role" in page
    assert "<nav" not in page and "<html" not in page
    assert ModelVersion.objects.count() == 0


def test_a_viewers_refused_upload_page_leads_back_to_the_models(viewer, iris, model_files):
    client = Client()
    client.force_login(viewer)
    artifact = SimpleUploadedFile("mlp.pt", model_files["torchscript"].read_bytes())
    response = client.post("/models/iris/versions/upload/", {"artifact": artifact})
    assert response.status_code == 403
    assert "Back to the models" in response.content.decode()  # which they may read


def test_a_viewer_is_told_which_role_uploading_and_creating_need_instead_of_the_forms(viewer, iris):
    client = Client()
    client.force_login(viewer)
    detail = client.get("/models/iris/").content.decode()
    assert 'id="upload-form"' not in detail
    assert "Uploading a version needs the deployer role in at least one environment" in detail
    listing = client.get("/models/").content.decode()
    assert "Create model" not in listing
    assert "Creating a model needs the deployer role in at least one environment" in listing


def test_a_deployer_sees_the_upload_and_create_forms(browser, iris):
    assert 'id="upload-form"' in browser.get("/models/iris/").content.decode()
    assert "Create model" in browser.get("/models/").content.decode()
