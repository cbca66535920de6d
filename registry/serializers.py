from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, tzinfo

from django.utils import timezone
from rest_framework import serializers

from registry.models import Model, ModelVersion


class ModelSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", read_only=True)
    latest_version = serializers.IntegerField(
        source="highest_version",  # annotated by registry.api.highest_version()
        read_only=True,
        allow_null=True,
        help_text="The highest version number that exists now; null when the model has none. "
        "Numbers are never reused: after deleting v10 the next upload is still v11.",
    )

    class Meta:
        model = Model
        fields = ["name", "description", "created_by", "created_at", "latest_version", "version_count"]
        read_only_fields = ["created_by", "created_at", "latest_version", "version_count"]
        # Uniqueness and the slug rule are the service's to check, with its own messages.
        extra_kwargs = {"name": {"validators": []}}


class ModelVersionSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name", read_only=True)
    uploaded_by = serializers.SerializerMethodField()
    artifact_url = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "model",
            "version",
            "status",
            "rejection_reason",
            "format",
            "filename",
            "size",
            "sha256",
            "signature",
            "metadata",
            "parameter_count",
            "load_time_ms",
            "uploaded_by",
            "created_at",
            "validated_at",
            "artifact_url",
        ]
        read_only_fields = fields

    def get_uploaded_by(self, obj) -> str:
        # Lists annotate the name (registry.api) instead of loading a User per row.
        name = getattr(obj, "uploaded_by_username", None)
        return obj.uploaded_by.username if name is None else name

    def get_artifact_url(self, obj) -> str:
        request = self.context.get("request")
        path = f"/api/v1/models/{obj.model.name}/versions/{obj.version}/artifact/"
        return request.build_absolute_uri(path) if request else path


# What version_list_rows reads, in this order (a values_list of the list's queryset).
VERSION_LIST_COLUMNS = (
    "version",
    "status",
    "rejection_reason",
    "format",
    "filename",
    "size",
    "sha256",
    "signature",
    "metadata",
    "parameter_count",
    "load_time_ms",
    "uploaded_by_username",
    "created_at",
    "validated_at",
)


def version_list_rows(rows: Iterable[tuple], *, model_name: str, versions_url: str) -> list[dict]:
    """ModelVersionSerializer's output for a page of VERSION_LIST_COLUMNS tuples.

    Written out because DRF's generic fields cost more than the queries at 50 rows
    (no model instance, no field objects); tests/registry/test_version_list.py holds
    the two byte for byte equal. `versions_url` is the absolute URL of the list.
    """
    zone = timezone.get_current_timezone()
    return [
        {
            "model": model_name,
            "version": version,
            "status": status,
            "rejection_reason": rejection_reason,
            "format": format_,
            "filename": filename,
            "size": size,
            "sha256": sha256,
            "signature": signature,
            "metadata": metadata,
            "parameter_count": parameter_count,
            "load_time_ms": None if load_time_ms is None else float(load_time_ms),
            "uploaded_by": uploaded_by,
            "created_at": _iso_datetime(created_at, zone),
            "validated_at": _iso_datetime(validated_at, zone),
            "artifact_url": f"{versions_url}{version}/artifact/",
        }
        for (
            version,
            status,
            rejection_reason,
            format_,
            filename,
            size,
            sha256,
            signature,
            metadata,
            parameter_count,
            load_time_ms,
            uploaded_by,
            created_at,
            validated_at,
        ) in rows
    ]


def _iso_datetime(value: datetime | None, zone: tzinfo) -> str | None:
    """As DRF's DateTimeField writes it: ISO 8601 in the current time zone, UTC as Z."""
    if value is None:
        return None
    text = value.astimezone(zone).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class VersionUploadSerializer(serializers.Serializer):
    """The multipart form of an upload (documented in OpenAPI; checked by the service)."""

    artifact = serializers.FileField(help_text="A TorchScript archive (torch.jit.save) or a torch.export .pt2.")
    sha256 = serializers.CharField(required=False, help_text="Your SHA-256 of the file; a mismatch keeps nothing.")
    signature = serializers.JSONField(
        required=False,
        help_text='Open Inference Protocol style: {"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}; '
        "-1 marks a variable dimension. Required for TorchScript.",
    )
    metadata = serializers.JSONField(required=False, help_text="Free-form JSON object (training run, git commit...).")
