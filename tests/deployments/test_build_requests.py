"""Asking for builds: what is refused before any engine is involved."""

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from controlplane.audit import Actor
from deployments import builds, services
from deployments.models import ImageBuild
from registry.models import Model, ModelVersion
from tests.conftest import wait_for

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


def test_a_build_in_the_registry_slipway_no_longer_uses_is_not_the_answer(api, version, settings):
    """An operator moved SLIPWAY_REGISTRY (from a local registry to the one the cluster pulls from): the
    version's image in the old registry must not answer a request, or the cluster is sent to pull from there."""
    settings.SLIPWAY_REGISTRY = "127.0.0.1:5000"
    old = api.post(URL, {"variant": "cpu"}, format="json")
    ImageBuild.objects.filter(pk=old.json()["id"]).update(status="succeeded", digest="sha256:" + "0" * 64)

    settings.SLIPWAY_REGISTRY = "registry.example.com:443"
    new = api.post(URL, {"variant": "cpu"}, format="json")
    assert new.status_code == 201, new.json()
    assert new.json()["id"] != old.json()["id"]
    assert new.json()["image_ref"].startswith("registry.example.com:443/slipway/iris:")
    assert api.post(URL, {"variant": "cpu"}, format="json").json()["id"] == new.json()["id"]

    settings.SLIPWAY_REGISTRY = "127.0.0.1:5000"  # moved back: the image there still answers
    back = api.post(URL, {"variant": "cpu"}, format="json")
    assert back.status_code == 200 and back.json()["id"] == old.json()["id"]
    assert ImageBuild.objects.count() == 2


def _build(version, base_image, status, attempts, heartbeat_age_s=0.0) -> ImageBuild:
    return ImageBuild.objects.create(
        model_version=version,
        variant="cpu",
        base_image=base_image,
        runtime_version="r",
        image_ref=f"r/slipway/iris:v1-{base_image}",
        status=status,
        attempts=attempts,
        heartbeat_at=timezone.now() - timedelta(seconds=heartbeat_age_s),
    )


def _left_behind(build: ImageBuild, attempt: int) -> Path:
    """A build folder as a killed worker leaves it: the context with the model and the CA bundle."""
    folder = builds.context_dir(build.pk, attempt)
    (folder / "context" / "model").mkdir(parents=True)
    (folder / "context" / "model" / "model.pt").write_bytes(b"weights")
    (folder / "context" / "certs").mkdir()
    (folder / "context" / "certs" / "extra-ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    return folder


def test_build_contexts_are_kept_under_the_var_dir_and_removed_once_their_attempt_no_longer_runs(
    api, version, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.VAR_DIR = tmp_path / "var"
    assert builds.context_dir(7, 2) == tmp_path / "var" / "builds" / "build-7-attempt-2"
    stale_s = settings.SLIPWAY_BUILD_STALE_S + 60
    lost = _build(version, "lost", "building", 1, heartbeat_age_s=stale_s)  # its worker was killed
    running = _build(version, "running", "building", 2)  # its first attempt's worker was killed
    cancelled = _build(version, "cancelled", "cancelled", 1, heartbeat_age_s=stale_s)  # its worker was dead
    failed = _build(version, "failed", "failed", 3, heartbeat_age_s=stale_s)
    leftovers = [_left_behind(lost, 1), _left_behind(running, 1), _left_behind(cancelled, 1), _left_behind(failed, 3)]
    in_use = _left_behind(running, 2)
    unrelated = builds.contexts_root() / "notes.txt"
    unrelated.write_text("not a build's")

    assert services.recover_stale_builds(actor=Actor.system()) == [lost.pk]
    assert ImageBuild.objects.get(pk=lost.pk).status == "queued"
    assert [p for p in leftovers if p.exists()] == []
    assert (in_use / "context" / "model" / "model.pt").is_file() and unrelated.is_file()

    # A person cancels a build: the worker still running it removes its own context once it notices the
    # cancel (removed under it, the cancelled build would fail); a worker that died leaves it to the sweeper.
    alive, dead = _build(version, "alive", "building", 1), _build(version, "dead", "building", 1)
    folders = {"alive": _left_behind(alive, 1), "dead": _left_behind(dead, 1)}
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(f"/api/v1/builds/{alive.pk}/cancel/").status_code == 200
        assert api.post(f"/api/v1/builds/{dead.pk}/cancel/").status_code == 200
    ImageBuild.objects.filter(pk=dead.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=stale_s))
    services.recover_stale_builds(actor=Actor.system())
    assert folders["alive"].exists() and not folders["dead"].exists() and in_use.exists()


def test_a_build_whose_worker_lives_keeps_its_heart_beating_through_a_silent_step(live_db, version, settings):
    """A step may print nothing for minutes (pip downloading a large wheel): the worker's own heartbeat, not
    the log, tells the stale-build sweeper that it still runs. Its beats touch only its own attempt."""
    from deployments.tasks import _heartbeat

    settings.SLIPWAY_BUILD_STALE_S = 10  # the least allowed: a beat every 2.5 s
    stale_s = 60
    silent = _build(version, "silent", "building", 1, heartbeat_age_s=stale_s)  # printed nothing for a minute
    replaced = _build(version, "replaced", "building", 2, heartbeat_age_s=stale_s)  # attempt 2's worker died
    hearts = [_heartbeat(silent.pk, 1), _heartbeat(replaced.pk, 1)]  # attempt 1's worker of `replaced` lives on
    try:
        wait_for(
            lambda: ImageBuild.objects.get(pk=silent.pk).heartbeat_at > timezone.now() - timedelta(seconds=5),
            timeout=10,
            what="the silent build's worker to beat its heart",
        )
    finally:
        for heart in hearts:
            heart.stop()
    assert services.recover_stale_builds(actor=Actor.system()) == [replaced.pk]
    assert ImageBuild.objects.get(pk=silent.pk).status == "building"
