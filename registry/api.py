"""REST API v1 for models and versions."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import OuterRef, Subquery
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, mixins, renderers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from controlplane.audit import Actor
from controlplane.errors import InvalidInput, NotFound
from controlplane.pagination import Counted
from controlplane.permissions import RegistryAccess
from controlplane.renderers import JSONRenderer
from registry import services
from registry.downloads import artifact_response
from registry.filtersets import ModelFilterSet, ModelVersionFilterSet
from registry.models import Model, ModelVersion
from registry.serializers import (
    VERSION_LIST_COLUMNS,
    ModelSerializer,
    ModelVersionSerializer,
    VersionUploadSerializer,
    version_list_rows,
)
from registry.uploads import StreamingMultiPartParser, refuse_chunked


def unknown_model(name: str) -> NotFound:
    return NotFound(f"No model named {name!r}. List models at /api/v1/models/, or create it with POST /api/v1/models/.")


def uploaded_artifact(request):
    """The file streamed in the 'artifact' field, or a refusal that says what to send."""
    refuse_chunked(request.META)  # (DRF does not call the parser for what WSGI makes an empty body)
    try:
        upload = request.FILES.get("artifact")
    except exceptions.UnsupportedMediaType as exc:
        raise exceptions.UnsupportedMediaType(
            request.content_type,
            detail=f"An upload is multipart/form-data, not {request.content_type or 'an empty body'}: "
            "for example curl -F artifact=@model.pt -F signature='{...}' <url>.",
        ) from exc
    if upload is None:
        raise InvalidInput("Send the model file in the multipart field 'artifact'.", fields={"artifact": ["required"]})
    return upload


def form_text(request, name: str) -> str | None:
    """A text field of the upload form. A file sent under its name (curl -F name=@file) is refused, not taken
    for the text: request.data holds the files too."""
    if name in request.FILES:
        for file in request.FILES.getlist(name):
            file.close()
        raise InvalidInput(
            f"{name} is a text field, not a file: send its text, -F '{name}=<file' (curl's < sends a file's "
            f"content as text, @ sends the file).",
            fields={name: ["a file, not text"]},
        )
    return request.POST.get(name)


class OctetStreamRenderer(renderers.BaseRenderer):
    """Lets clients that accept only application/octet-stream download artifacts (no 406)."""

    media_type = "application/octet-stream"
    format = "bin"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if isinstance(data, bytes):
            return data
        # An error on the way to the file is still JSON, and says so.
        renderer_context["response"]["Content-Type"] = "application/json"
        return JSONRenderer().render(data)


def uploader_name() -> Subquery:
    """The uploader's username for each version: one column instead of a User per row.

    A subquery, not a join: count() drops an unused subquery but keeps a join, and
    a join made the page's COUNT(*) read auth_user for every version.
    """
    return Subquery(get_user_model().objects.filter(pk=OuterRef("uploaded_by_id")).values("username"))


def highest_version() -> Subquery:
    """The highest version number that exists (None: none). Model.latest_version counts the numbers
    given out, deleted versions' included, so that numbers are never reused: not what users are shown."""
    return Subquery(ModelVersion.objects.filter(model=OuterRef("pk")).order_by("-version").values("version")[:1])


class ModelViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    permission_classes = [IsAuthenticated, RegistryAccess]
    serializer_class = ModelSerializer
    filterset_class = ModelFilterSet
    lookup_field = "name"
    lookup_value_regex = "[^/]+"
    audit_actions = {"create": "model.create"}

    def get_queryset(self):
        return Model.objects.select_related("created_by").annotate(highest_version=highest_version()).order_by("name")

    def get_object(self) -> Model:
        model = self.get_queryset().filter(name=self.kwargs["name"]).first()
        if model is None:
            raise unknown_model(self.kwargs["name"])
        self.check_object_permissions(self.request, model)
        return model

    def perform_create(self, serializer):
        serializer.instance = services.create_model(
            serializer.validated_data["name"],
            serializer.validated_data.get("description", ""),
            actor=Actor.from_request(self.request),
        )
        serializer.instance.highest_version = None  # a new model has no versions yet

    def get_success_headers(self, data):
        return {"Location": self.request.build_absolute_uri(f"/api/v1/models/{data['name']}/")}


class ModelVersionViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    permission_classes = [IsAuthenticated, RegistryAccess]
    serializer_class = ModelVersionSerializer
    filterset_class = ModelVersionFilterSet
    lookup_field = "version"
    lookup_value_regex = "[0-9]+"
    audit_actions = {"create": "model_version.upload", "destroy": "model_version.delete"}

    def get_model(self) -> Model:
        if not hasattr(self, "_model"):
            self._model = Model.objects.filter(name=self.kwargs["model_name"]).first()
            if self._model is None:
                raise unknown_model(self.kwargs["model_name"])
        return self._model

    def get_object(self) -> ModelVersion:
        version = self.get_queryset().filter(version=self.kwargs["version"]).first()
        if version is None:
            model = self.get_model()
            latest = model.versions.order_by("-version").values_list("version", flat=True).first()
            raise NotFound(
                f"{model.name} has no version {self.kwargs['version']}; its latest is {latest or 'none'}. "
                f"List them at /api/v1/models/{model.name}/versions/."
            )
        self.check_object_permissions(self.request, version)
        return version

    queryset = ModelVersion.objects.none()  # for the schema

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        # Through the model's own manager every row shares the instance loaded above
        # (no join, no copy per row); the uploader is one column, not a User per row.
        return self.get_model().versions.annotate(uploaded_by_username=uploader_name()).order_by("-version")

    def list(self, request, *args, **kwargs):
        # ModelVersionSerializer's JSON, from plain tuples: see version_list_rows.
        model = self.get_model()
        rows = self.filter_queryset(self.get_queryset()).values_list(*VERSION_LIST_COLUMNS)
        if not self.filterset.form.has_changed():  # the one the filter backend just bound
            # Every version: the model keeps their number, so the page needs no COUNT(*).
            rows = Counted(rows, model.version_count)
        page = self.paginate_queryset(rows)
        versions_url = request.build_absolute_uri(f"/api/v1/models/{model.name}/versions/")
        data = version_list_rows(rows if page is None else page, model_name=model.name, versions_url=versions_url)
        return Response(data) if page is None else self.get_paginated_response(data)

    def get_parsers(self):
        if getattr(self, "action", None) == "create" or (self.request is not None and self.request.method == "POST"):
            return [StreamingMultiPartParser()]
        return super().get_parsers()

    @extend_schema(
        request={"multipart/form-data": VersionUploadSerializer},
        responses={
            201: ModelVersionSerializer,
            400: OpenApiResponse(description="Refused; nothing kept"),
            408: OpenApiResponse(description="The body arrived too slowly; nothing kept"),
            411: OpenApiResponse(description="A chunked body without Content-Length; nothing kept"),
            413: OpenApiResponse(description="Over SLIPWAY_MAX_ARTIFACT_BYTES; nothing kept"),
            507: OpenApiResponse(description="The server's disk filled up while storing it; nothing kept"),
        },
        description="Upload a new version (streamed to storage, hashed on the way), then validate it in a sandbox.",
    )
    def create(self, request, *args, **kwargs):
        model = self.get_model()
        upload = uploaded_artifact(request)
        version = services.upload_version(
            model,
            upload,
            actor=Actor.from_request(request),
            sha256=form_text(request, "sha256") or None,
            signature=form_text(request, "signature"),
            metadata=form_text(request, "metadata"),
        )
        location = request.build_absolute_uri(f"/api/v1/models/{model.name}/versions/{version.version}/")
        return Response(
            self.get_serializer(version).data, status=status.HTTP_201_CREATED, headers={"Location": location}
        )

    def perform_destroy(self, instance):
        services.delete_version(instance, actor=Actor.from_request(self.request))

    @extend_schema(
        responses={
            (200, "application/octet-stream"): bytes,
            (206, "application/octet-stream"): OpenApiResponse(bytes, description="The bytes a Range header asked for"),
            304: OpenApiResponse(description="If-None-Match holds the ETag: the client has these bytes already"),
            412: OpenApiResponse(description="If-Match names other bytes than the artifact's"),
            416: OpenApiResponse(description="The Range starts past the end of the file"),
        },
        parameters=[
            OpenApiParameter("Range", OpenApiTypes.STR, OpenApiParameter.HEADER, description="one `bytes=N-M`"),
            OpenApiParameter("If-Range", OpenApiTypes.STR, OpenApiParameter.HEADER, description="the ETag"),
            OpenApiParameter("If-None-Match", OpenApiTypes.STR, OpenApiParameter.HEADER),
            OpenApiParameter("If-Match", OpenApiTypes.STR, OpenApiParameter.HEADER),
        ],
        description="The artifact as an attachment. One `Range: bytes=...` resumes a download (206); "
        "`If-Range` with the ETag (the SHA-256) resumes only the same bytes.",
    )
    @action(detail=True, methods=["get"], renderer_classes=[JSONRenderer, OctetStreamRenderer])
    def artifact(self, request, *args, **kwargs):
        version = self.get_object()
        return artifact_response(request, version)
