"""REST API v1 for models and versions."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import OuterRef, Subquery
from django.http import FileResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from controlplane.audit import Actor
from controlplane.errors import InvalidInput
from registry import services
from registry.filtersets import ModelFilterSet, ModelVersionFilterSet
from registry.models import Model, ModelVersion
from registry.serializers import ModelSerializer, ModelVersionSerializer, VersionUploadSerializer


def uploader_name() -> Subquery:
    """The uploader's username for each version: one column instead of a User per row.

    A subquery, not a join: count() drops an unused subquery but keeps a join, and
    a join made the page's COUNT(*) read auth_user for every version.
    """
    return Subquery(get_user_model().objects.filter(pk=OuterRef("uploaded_by_id")).values("username"))


class ModelViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    serializer_class = ModelSerializer
    filterset_class = ModelFilterSet
    lookup_field = "name"
    lookup_value_regex = "[^/]+"
    audit_actions = {"create": "model.create"}

    def get_queryset(self):
        return Model.objects.select_related("created_by").order_by("name")

    def perform_create(self, serializer):
        serializer.instance = services.create_model(
            serializer.validated_data["name"],
            serializer.validated_data.get("description", ""),
            actor=Actor.from_request(self.request),
        )


class ModelVersionViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    serializer_class = ModelVersionSerializer
    filterset_class = ModelVersionFilterSet
    lookup_field = "version"
    lookup_value_regex = "[0-9]+"
    audit_actions = {"create": "model_version.upload", "destroy": "model_version.delete"}

    def get_model(self) -> Model:
        if not hasattr(self, "_model"):
            self._model = get_object_or_404(Model, name=self.kwargs["model_name"])
        return self._model

    queryset = ModelVersion.objects.none()  # for the schema

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        # Through the model's own manager every row shares the instance loaded above
        # (no join, no copy per row); the uploader is one column, not a User per row.
        return self.get_model().versions.annotate(uploaded_by_username=uploader_name()).order_by("-version")

    def get_parsers(self):
        if getattr(self, "action", None) == "create" or (self.request is not None and self.request.method == "POST"):
            return [MultiPartParser()]
        return super().get_parsers()

    @extend_schema(
        request={"multipart/form-data": VersionUploadSerializer},
        responses={201: ModelVersionSerializer, 400: OpenApiResponse(description="Refused; nothing kept"), 413: None},
        description="Upload a new version (streamed to storage, hashed on the way), then validate it in a sandbox.",
    )
    def create(self, request, *args, **kwargs):
        model = self.get_model()
        upload = request.FILES.get("artifact")
        if upload is None:
            raise InvalidInput(
                "Send the model file in the multipart field 'artifact'.", fields={"artifact": ["required"]}
            )
        version = services.upload_version(
            model,
            upload,
            actor=Actor.from_request(request),
            sha256=request.data.get("sha256") or None,
            signature=request.data.get("signature"),
            metadata=request.data.get("metadata"),
        )
        return Response(self.get_serializer(version).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        services.delete_version(instance, actor=Actor.from_request(self.request))

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    @action(detail=True, methods=["get"])
    def artifact(self, request, *args, **kwargs):
        version = self.get_object()
        return artifact_response(version)


def artifact_response(version: ModelVersion) -> FileResponse:
    response = FileResponse(
        version.artifact.open("rb"),
        as_attachment=True,
        filename=version.filename,
        content_type="application/octet-stream",
    )
    response["X-Checksum-SHA256"] = version.sha256
    return response
