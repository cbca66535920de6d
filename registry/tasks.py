"""Thin Celery tasks: load the row by id, do one step through the services."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from controlplane.audit import Actor
from registry import services
from registry.validation import validate_stored_artifact

log = logging.getLogger(__name__)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def validate_model_version(version_id: int) -> str:
    if not services.start_validation(version_id):
        return "skipped: not pending"
    from registry.models import ModelVersion

    version = ModelVersion.objects.get(pk=version_id)
    result = validate_stored_artifact(version)
    services.finish_validation(version_id, result, actor=Actor.system())
    return "ready" if result.get("ok") else "rejected"


@shared_task
def requeue_stale_validations() -> list[int]:
    # A validation never legitimately runs past its own timeout; twice that is dead.
    return services.requeue_stale_validations(
        older_than_s=2 * settings.SLIPWAY_VALIDATION_TIMEOUT_S + 60, actor=Actor.system()
    )


@shared_task
def remove_orphan_artifacts() -> list[str]:
    return services.remove_orphan_artifacts(actor=Actor.system())
