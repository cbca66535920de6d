from rest_framework import serializers

from registry.models import Model, ModelVersion


class ModelSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", read_only=True)

    class Meta:
        model = Model
        fields = ["name", "description", "created_by", "created_at", "latest_version"]
        read_only_fields = ["created_by", "created_at", "latest_version"]
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
