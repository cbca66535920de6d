"""A disk that fills up during an upload: a 507 that says so, nothing kept, the next upload fine.

The full disk is real: RLIMIT_FSIZE makes the kernel refuse a write past a size, as a full
disk or a quota does (EFBIG instead of ENOSPC; CPython ignores the SIGXFSZ that comes with
it). The limit is set for this process only, around the one request, and never lower than
what else the process writes meanwhile (a few kB of captured output).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import signal

import pytest
from django.conf import settings as django_settings
from django.core.files.storage import FileSystemStorage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from controlplane.audit import Actor
from controlplane.models import AuditEvent
from registry import services
from registry.models import ModelVersion
from tests.models_zoo import MLP_SIGNATURE

pytestmark = pytest.mark.django_db

SIGNATURE = json.dumps(MLP_SIGNATURE)
MiB = 1024 * 1024


@contextlib.contextmanager
def disk_full_past(size: int):
    """Refuse this process's writes past `size` bytes of any file, as a full disk would."""
    assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN, "the test would kill its own process"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.fixture
def iris(alice):
    return services.create_model("iris", "Classifies irises", actor=Actor(user=alice))


def stored_files() -> set[str]:
    roots = (django_settings.ARTIFACT_ROOT, django_settings.FILE_UPLOAD_TEMP_DIR)
    return {os.path.join(path, name) for root in roots for path, _, names in os.walk(root) for name in names}


def test_a_disk_that_fills_mid_upload_answers_507_and_keeps_nothing(api, iris, model_files):
    before = stored_files()
    big = SimpleUploadedFile("big.pt", os.urandom(8 * MiB))
    # Not on a 4 KiB boundary: the O_DIRECT write there comes back short, and the writer must
    # go on without O_DIRECT to learn why (EINVAL otherwise, and a 500).
    with disk_full_past(3 * MiB + 1000):
        response = api.post("/api/v1/models/iris/versions/", {"artifact": big, "signature": SIGNATURE})

    assert response.status_code == 507, response.content
    body = response.json()
    assert body["code"] == "insufficient_storage"
    assert "ran out of room" in body["error"] and "Nothing was kept" in body["error"]
    assert "SLIPWAY_UPLOAD_TEMP_DIR" in body["error"]
    assert stored_files() == before
    assert not ModelVersion.objects.exists()
    event = AuditEvent.objects.get(action="model_version.upload")
    assert event.outcome == "failed" and "507" in event.message

    # Room again: the same server takes the next upload.
    with open(model_files["torchscript"], "rb") as artifact:
        response = api.post("/api/v1/models/iris/versions/", {"artifact": artifact, "signature": SIGNATURE})
    assert response.status_code == 201, response.json()
    assert response.json()["version"] == 1


def test_a_browser_upload_onto_a_full_disk_says_so_on_the_page(alice, iris):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    browser.get("/models/")
    before = stored_files()
    big = SimpleUploadedFile("big.pt", os.urandom(4 * MiB))
    with disk_full_past(2 * MiB):
        response = browser.post(
            "/models/iris/versions/upload/",
            {"artifact": big, "signature": SIGNATURE},
            HTTP_X_CSRFTOKEN=browser.cookies["csrftoken"].value,
        )
    assert response.status_code == 507
    assert "ran out of room" in response.content.decode()
    assert stored_files() == before
    assert not ModelVersion.objects.exists()


class FillingUpStorage(FileSystemStorage):
    """A filesystem storage whose disk fills up half-way through a save: what the copy to
    another filesystem (Django's file_move_safe) does when the disk is full, partial file
    left behind and all."""

    partial: list[str] = []

    def _save(self, name, content):
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(content.read(content.size // 2))
        self.partial.append(path)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_artifact_storage_that_fills_up_keeps_no_partial_file(api, iris, model_files, settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {"BACKEND": f"{__name__}.FillingUpStorage", "OPTIONS": {"location": str(tmp_path)}},
    }
    with open(model_files["torchscript"], "rb") as artifact:
        response = api.post("/api/v1/models/iris/versions/", {"artifact": artifact, "signature": SIGNATURE})
    assert response.status_code == 507, response.content
    assert "artifact storage" in response.json()["error"]
    assert FillingUpStorage.partial, "the storage was not asked to save"
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []
    assert not ModelVersion.objects.exists()
