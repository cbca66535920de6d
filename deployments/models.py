"""Image builds now; environments, deployments, releases and rollouts arrive with the rollout engine.

A build (and later a Release) points at a ModelVersion with on_delete=PROTECT,
which is what registry.services.delete_version checks before deleting.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from registry.models import ModelVersion


class BuildStatus(models.TextChoices):
    QUEUED = "queued", "queued"
    BUILDING = "building", "building"
    PUSHING = "pushing", "pushing"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"


# Which status may follow which. queued -> succeeded is a cache hit; a stale
# building/pushing build goes back to queued for another attempt.
BUILD_TRANSITIONS: dict[str, tuple[str, ...]] = {
    BuildStatus.QUEUED: (BuildStatus.BUILDING, BuildStatus.SUCCEEDED, BuildStatus.FAILED, BuildStatus.CANCELLED),
    BuildStatus.BUILDING: (BuildStatus.PUSHING, BuildStatus.FAILED, BuildStatus.CANCELLED, BuildStatus.QUEUED),
    BuildStatus.PUSHING: (BuildStatus.SUCCEEDED, BuildStatus.FAILED, BuildStatus.CANCELLED, BuildStatus.QUEUED),
    BuildStatus.SUCCEEDED: (),
    BuildStatus.FAILED: (),
    BuildStatus.CANCELLED: (),
}
BUILD_TERMINAL = (BuildStatus.SUCCEEDED, BuildStatus.FAILED, BuildStatus.CANCELLED)
BUILD_ACTIVE = (BuildStatus.QUEUED, BuildStatus.BUILDING, BuildStatus.PUSHING)


class Variant(models.TextChoices):
    GPU = "gpu", "GPU (CUDA)"
    CPU = "cpu", "CPU"


class ImageBuild(models.Model):
    """One runtime image for one model version, runtime version and base image."""

    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="builds")
    variant = models.CharField(max_length=3, choices=Variant.choices, default=Variant.GPU)
    base_image = models.CharField(max_length=300)
    runtime_version = models.CharField(max_length=50)
    image_ref = models.CharField(max_length=400, help_text="registry/slipway/<model>:v<version>-<sha12>")
    digest = models.CharField(max_length=100, blank=True)
    size_bytes = models.BigIntegerField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=BuildStatus.choices, default=BuildStatus.QUEUED)
    cache_hit = models.BooleanField(default=False)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    AUDIT_TYPE = "image_build"

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Two requests for the same image never build twice; failed and
            # cancelled attempts stay as history and do not block a retry.
            models.UniqueConstraint(
                fields=["model_version", "runtime_version", "base_image"],
                condition=~models.Q(status__in=["failed", "cancelled"]),
                name="one_live_build_per_image",
            )
        ]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"build #{self.pk} of {self.model_version}"

    @property
    def is_terminal(self) -> bool:
        return self.status in BUILD_TERMINAL

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()
