"""Deleting a version removes its row and its file, is audited, and never frees its number for reuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.conf import settings

from controlplane.audit import Actor
from controlplane.models import AuditEvent
from deployments.models import ImageBuild
from registry import services
from registry.models import ModelVersion
from tests.models_zoo import MLP_SIGNATURE

pytestmark = pytest.mark.django_db


@pytest.fixture
def iris(alice):
    return services.create_model("iris", actor=Actor(user=alice))


def upload(api, path: Path):
    with open(path, "rb") as fh:
        response = api.post(
            "/api/v1/models/iris/versions/",
            {"artifact": fh, "signature": json.dumps(MLP_SIGNATURE)},
            format="multipart",
        )
    assert response.status_code == 201, response.json()
    return ModelVersion.objects.get(model__name="iris", version=response.json()["version"])


def test_deleting_a_version_removes_its_row_and_its_file(api, iris, model_files, django_capture_on_commit_callbacks):
    version = upload(api, model_files["torchscript"])
    stored = Path(settings.ARTIFACT_ROOT) / version.artifact.name
    assert stored.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete("/api/v1/models/iris/versions/1/")
    assert response.status_code == 204
    assert not ModelVersion.objects.filter(pk=version.pk).exists()
    assert not stored.exists()
    event = AuditEvent.objects.get(action="model_version.delete")
    assert (event.actor, event.outcome, event.target_id) == ("alice (token: laptop)", "success", str(version.pk))
    assert event.before["sha256"] == version.sha256
    assert api.get("/api/v1/models/iris/versions/1/").status_code == 404


def test_a_deleted_version_number_is_never_given_out_again(api, iris, model_files, django_capture_on_commit_callbacks):
    upload(api, model_files["torchscript"])
    upload(api, model_files["torchscript"])
    with django_capture_on_commit_callbacks(execute=True):
        api.delete("/api/v1/models/iris/versions/2/")
    assert upload(api, model_files["torchscript"]).version == 3


def test_a_version_with_an_image_build_cannot_be_deleted(api, iris, model_files, django_capture_on_commit_callbacks):
    version = upload(api, model_files["torchscript"])
    build = ImageBuild.objects.create(
        model_version=version, base_image="debian:bookworm", runtime_version="1", image_ref="r/slipway/iris:v1"
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete("/api/v1/models/iris/versions/1/")
    assert response.status_code == 409
    assert (
        response.json()["error"]
        == f"iris v1 cannot be deleted: build #{build.pk} of iris v1 refers to it, and builds and releases are kept "
        "for the history (what ran where, and when). Only a version never built or deployed can be deleted; a "
        "version nobody should deploy again can simply be left alone."
    )
    assert ModelVersion.objects.filter(pk=version.pk).exists()
    assert (Path(settings.ARTIFACT_ROOT) / version.artifact.name).exists()
    assert not AuditEvent.objects.filter(action="model_version.delete", outcome="success").exists()
    assert AuditEvent.objects.get(action="model_version.delete").outcome == "invalid"


def test_deleting_an_unknown_version_answers_404_and_changes_nothing(api, iris, model_files):
    upload(api, model_files["torchscript"])
    response = api.delete("/api/v1/models/iris/versions/9/")
    assert response.status_code == 404
    assert "iris has no version 9; its latest is 1" in response.json()["error"]
    assert ModelVersion.objects.count() == 1


def test_deleting_needs_a_token(anonymous_api, api, iris, model_files):
    upload(api, model_files["torchscript"])
    assert anonymous_api.delete("/api/v1/models/iris/versions/1/").status_code == 401
    assert ModelVersion.objects.count() == 1
    assert AuditEvent.objects.get(outcome="denied").action == "model_version.delete"


def test_a_verdict_for_a_version_deleted_meanwhile_is_dropped(api, iris, model_files):
    version = upload(api, model_files["torchscript"])
    services.start_validation(version.pk)
    services.delete_version(version, actor=Actor(user=version.uploaded_by))
    assert (
        services.finish_validation(version.pk, {"ok": True, "signature": MLP_SIGNATURE}, actor=Actor.system()) is None
    )
    assert not AuditEvent.objects.filter(action="model_version.validated").exists()


def test_after_deleting_the_highest_version_users_see_the_highest_that_exists(api, client, alice, iris, model_files):
    upload(api, model_files["torchscript"])
    upload(api, model_files["torchscript"])
    assert api.delete("/api/v1/models/iris/versions/2/").status_code == 204
    assert api.get("/api/v1/models/iris/").json()["latest_version"] == 1
    assert api.get("/api/v1/models/").json()["results"][0]["latest_version"] == 1
    assert "its latest is 1." in api.get("/api/v1/models/iris/versions/2/").json()["error"]
    client.force_login(alice)
    assert '<td class="num">v1</td>' in client.get("/models/").content.decode()

    assert api.delete("/api/v1/models/iris/versions/1/").status_code == 204
    assert api.get("/api/v1/models/iris/").json()["latest_version"] is None
    assert "its latest is none." in api.get("/api/v1/models/iris/versions/2/").json()["error"]
    # Numbers are not reused.
    assert upload(api, model_files["torchscript"]).version == 3
