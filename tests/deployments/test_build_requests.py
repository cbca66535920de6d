"""Asking for builds: what is refused before any engine is involved."""

import hashlib

import pytest

from deployments.models import ImageBuild
from registry.models import Model, ModelVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(alice):
    model = Model.objects.create(name="iris", created_by=alice, latest_version=1)
    return ModelVersion.objects.create(
        model=model,
        version=1,
        artifact="iris/x.pt",
        filename="x.pt",
        size=3,
        sha256=hashlib.sha256(b"abc").hexdigest(),
        format="torchscript",
        status="ready",
        uploaded_by=alice,
    )


URL = "/api/v1/models/iris/versions/1/builds/"


def test_a_build_without_a_registry_configured_says_which_setting_to_set(api, version, settings):
    settings.SLIPWAY_REGISTRY = ""
    response = api.post(URL, {}, format="json")
    assert response.status_code == 400
    assert "SLIPWAY_REGISTRY" in response.json()["error"]
    assert not ImageBuild.objects.exists()


def test_an_unknown_variant_is_refused(api, version, settings):
    settings.SLIPWAY_REGISTRY = "127.0.0.1:5000"
    response = api.post(URL, {"variant": "tpu"}, format="json")
    assert response.status_code == 400
    assert "variant" in response.json()["error"]


def test_a_version_with_a_build_cannot_be_deleted(api, version):
    ImageBuild.objects.create(model_version=version, base_image="b", runtime_version="r", image_ref="r/slipway/iris:v1")
    response = api.delete("/api/v1/models/iris/versions/1/")
    assert response.status_code == 409
    assert "cannot be deleted" in response.json()["error"] and "build #" in response.json()["error"]
    assert ModelVersion.objects.filter(pk=version.pk).exists()


@pytest.mark.parametrize("default", ["gpu", "cpu"])
def test_the_version_pages_build_form_offers_the_configured_variant_first(client, alice, version, settings, default):
    settings.SLIPWAY_BUILD_VARIANT = default
    client.force_login(alice)
    html = client.get("/models/iris/versions/1/").content.decode()
    form = html[html.index('name="variant"') :]
    assert f'<option value="{default}" selected>' in form
    assert form.count(" selected>") == 1 and "CUDA base image" in form and "slim base image" in form


def test_a_cpu_request_is_not_answered_with_the_gpu_build_of_the_same_base_image(api, version, settings):
    """Both variants on one base image (a site with one Python image for both) are still two images:
    their tags differ (`-cpu`), and so does the torch they install."""
    settings.SLIPWAY_REGISTRY = "127.0.0.1:5000"
    settings.SLIPWAY_BASE_IMAGE_GPU = settings.SLIPWAY_BASE_IMAGE_CPU = "example/python:3.11"
    gpu = api.post(URL, {"variant": "gpu"}, format="json")
    cpu = api.post(URL, {"variant": "cpu"}, format="json")
    assert (gpu.status_code, cpu.status_code) == (201, 201), cpu.json()
    assert cpu.json()["id"] != gpu.json()["id"]
    assert cpu.json()["variant"] == "cpu" and cpu.json()["image_ref"].endswith("-cpu")
    assert gpu.json()["variant"] == "gpu" and not gpu.json()["image_ref"].endswith("-cpu")
    # Asking again answers each variant with its own build.
    again = api.post(URL, {"variant": "cpu"}, format="json")
    assert again.status_code == 200 and again.json()["id"] == cpu.json()["id"]
    assert ImageBuild.objects.count() == 2
