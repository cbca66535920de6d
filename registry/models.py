"""Models and their versions (uploaded artifacts)."""

from __future__ import annotations

from django.conf import settings
from django.core.files.storage import storages
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

slug_validator = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$",
    "Use 1 to 63 lowercase letters, digits and hyphens, starting and ending with a letter or digit "
    "(it becomes part of image names and Kubernetes objects).",
)


def artifact_storage():
    return storages["artifacts"]


class Model(models.Model):
    name = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    latest_version = models.PositiveIntegerField(default=0, help_text="The highest version number given out.")
    # Kept by the database (triggers on registry_modelversion, migration 0002) so that a page of versions
    # needs no COUNT(*): at 10,000 versions that count cost more than the page itself.
    version_count = models.PositiveIntegerField(
        default=0, editable=False, help_text="How many versions exist now (kept by the database)."
    )

    AUDIT_TYPE = "model"

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        # Never write back a version_count read earlier: the triggers may have moved it since.
        if not self._state.adding and kwargs.get("update_fields") is None and not kwargs.get("force_insert"):
            unloaded = self.get_deferred_fields() | {"version_count"}
            kwargs["update_fields"] = [
                field.attname
                for field in self._meta.concrete_fields
                if not field.primary_key and field.attname not in unloaded
            ]
        super().save(*args, **kwargs)


class VersionStatus(models.TextChoices):
    PENDING = "pending", "pending"
    VALIDATING = "validating", "validating"
    READY = "ready", "ready"
    REJECTED = "rejected", "rejected"


# Which status may follow which. validating -> pending is the sweeper's retry.
VERSION_TRANSITIONS: dict[str, tuple[str, ...]] = {
    VersionStatus.PENDING: (VersionStatus.VALIDATING, VersionStatus.REJECTED),
    VersionStatus.VALIDATING: (VersionStatus.READY, VersionStatus.REJECTED, VersionStatus.PENDING),
    VersionStatus.READY: (),
    VersionStatus.REJECTED: (),
}
VERSION_TERMINAL = (VersionStatus.READY, VersionStatus.REJECTED)


class ArtifactFormat(models.TextChoices):
    TORCHSCRIPT = "torchscript", "TorchScript"
    TORCH_EXPORT = "torch_export", "torch.export (.pt2)"


class ModelVersion(models.Model):
    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="versions")
    version = models.PositiveIntegerField()
    artifact = models.FileField(storage=artifact_storage, max_length=300)
    filename = models.CharField(max_length=255, help_text="The uploaded file's name, cleaned for display.")
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    format = models.CharField(max_length=20, choices=ArtifactFormat.choices)
    status = models.CharField(max_length=20, choices=VersionStatus.choices, default=VersionStatus.PENDING)
    rejection_reason = models.TextField(blank=True)
    signature = models.JSONField(default=dict, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    parameter_count = models.BigIntegerField(null=True, blank=True)
    load_time_ms = models.FloatField(null=True, blank=True)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    validation_started_at = models.DateTimeField(null=True, blank=True)
    # How many times a worker has started validating it: the sweeper gives up after
    # SLIPWAY_VALIDATION_MAX_ATTEMPTS starts that ended without a verdict.
    validation_attempts = models.PositiveSmallIntegerField(default=0)
    validated_at = models.DateTimeField(null=True, blank=True)

    AUDIT_TYPE = "model_version"

    class Meta:
        ordering = ["model", "-version"]
        constraints = [models.UniqueConstraint(fields=["model", "version"], name="unique_version_per_model")]
        indexes = [models.Index(fields=["status", "validation_started_at"])]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.version}"

    @property
    def is_terminal(self) -> bool:
        return self.status in VERSION_TERMINAL
