"""Stored artifacts no version refers to are removed once they are old enough to belong to no upload.

A web process killed between storing an upload and committing its row leaves one behind, and so
does a deletion whose file could not be removed.
"""

import os
import time

import pytest
from django.core.files.base import ContentFile

from controlplane.audit import Actor
from controlplane.models import AuditEvent
from registry import services, tasks
from registry.models import artifact_storage
from tests.factories import bulk_versions

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def own_storage(settings, tmp_path):
    """An artifact storage of this test's own: earlier runs' files are not its business."""
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": tmp_path}},
    }


def _stored(name: str, hours_old: float) -> str:
    storage = artifact_storage()
    saved = storage.save(name, ContentFile(b"PK\x05\x06" + bytes(18)))
    assert saved == name
    then = time.time() - hours_old * 3600
    os.utime(storage.path(name), (then, then))
    return name


def test_old_artifacts_no_version_refers_to_are_removed_and_audited(alice, django_capture_on_commit_callbacks):
    model = services.create_model("iris", actor=Actor(user=alice))
    [version] = bulk_versions(model, 1, uploaded_by=alice)
    kept = _stored(f"iris/{'a' * 32}.pt", hours_old=5)
    version.artifact.name = kept
    version.save(update_fields=["artifact"])
    orphan = _stored(f"iris/{'b' * 32}.pt2", hours_old=2)
    uploading = _stored(f"iris/{'c' * 32}.pt", hours_old=0)  # stored a moment ago: its row is on its way
    other = _stored("iris/notes.txt", hours_old=5)  # not a name an upload gives: not ours to remove

    with django_capture_on_commit_callbacks(execute=True):
        removed = tasks.remove_orphan_artifacts()

    storage = artifact_storage()
    assert removed == [orphan]
    assert not storage.exists(orphan)
    assert all(storage.exists(name) for name in (kept, uploading, other))
    event = AuditEvent.objects.get(action="model_version.orphan_artifact_delete")
    assert (event.actor, event.target_type, event.target_repr) == ("system", "artifact", orphan)

    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.remove_orphan_artifacts() == []  # nothing left to do, nothing more recorded
    assert AuditEvent.objects.filter(action="model_version.orphan_artifact_delete").count() == 1


def test_the_beat_runs_it_every_hour(settings):
    [entry] = [e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"].endswith("remove_orphan_artifacts")]
    assert entry["schedule"] == 3600.0
