"""A validation whose worker died is put back in the queue and finishes."""

import hashlib
from datetime import timedelta

import pytest
from django.core.files import File
from django.utils import timezone

from controlplane.models import AuditEvent
from registry import tasks
from registry.models import Model, ModelVersion, VersionStatus, artifact_storage
from tests.conftest import wait_for
from tests.models_zoo import MLP_SIGNATURE

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def _version_left_validating(owner, path, started_minutes_ago: int) -> ModelVersion:
    """A version whose worker died mid-validation: no task in the queue, stuck 'validating'."""
    model = Model.objects.create(name="iris", created_by=owner, latest_version=1)
    with open(path, "rb") as fh:
        name = artifact_storage().save("iris/stuck.pt", File(fh))
    return ModelVersion.objects.create(
        model=model,
        version=1,
        artifact=name,
        filename="mlp.pt",
        size=path.stat().st_size,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        format="torchscript",
        signature=MLP_SIGNATURE,
        uploaded_by=owner,
        status=VersionStatus.VALIDATING,
        validation_started_at=timezone.now() - timedelta(minutes=started_minutes_ago),
    )


def test_a_validation_left_behind_by_a_dead_worker_is_requeued_and_finishes(alice, worker, model_files, settings):
    settings.SLIPWAY_VALIDATION_TIMEOUT_S = 60
    stuck = _version_left_validating(alice, model_files["torchscript"], started_minutes_ago=10)

    assert tasks.requeue_stale_validations() == [stuck.pk]

    def ready():
        return ModelVersion.objects.filter(pk=stuck.pk, status=VersionStatus.READY).exists()

    wait_for(ready, timeout=90, what="the requeued validation to finish")
    assert AuditEvent.objects.filter(action="model_version.validation_requeued", target_id=str(stuck.pk)).exists()
    assert AuditEvent.objects.filter(action="model_version.validated", target_id=str(stuck.pk), actor="system").exists()


def test_a_validation_still_within_its_time_is_left_alone(alice, worker, model_files, settings):
    settings.SLIPWAY_VALIDATION_TIMEOUT_S = 600
    running = _version_left_validating(alice, model_files["torchscript"], started_minutes_ago=1)
    assert tasks.requeue_stale_validations() == []
    running.refresh_from_db()
    assert running.status == VersionStatus.VALIDATING
