"""REST API v1 for image builds."""

from __future__ import annotations

import django_filters
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from controlplane.audit import Actor
from deployments import services
from deployments.models import BuildStatus, ImageBuild, Variant
from registry.models import ModelVersion


class ImageBuildSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model_version.model.name", read_only=True)
    version = serializers.IntegerField(source="model_version.version", read_only=True)
    duration_s = serializers.FloatField(read_only=True, allow_null=True)
    requested_by = serializers.CharField(source="requested_by.username", read_only=True, allow_null=True)

    class Meta:
        model = ImageBuild
        fields = [
            "id",
            "model",
            "version",
            "status",
            "variant",
            "image_ref",
            "digest",
            "size_bytes",
            "cache_hit",
            "base_image",
            "runtime_version",
            "error",
            "attempts",
            "requested_by",
            "created_at",
            "started_at",
            "finished_at",
            "duration_s",
            "log",
        ]
        read_only_fields = fields


class BuildRequestSerializer(serializers.Serializer):
    variant = serializers.ChoiceField(choices=Variant.choices, required=False, help_text="gpu (default) or cpu")


class ImageBuildFilterSet(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=BuildStatus.choices)
    model = django_filters.CharFilter(field_name="model_version__model__name")

    class Meta:
        model = ImageBuild
        fields = ["status", "model"]


def _builds():
    return ImageBuild.objects.select_related("model_version__model", "requested_by").order_by("-created_at")


class ImageBuildViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = _builds()
    serializer_class = ImageBuildSerializer
    filterset_class = ImageBuildFilterSet
    audit_actions = {"cancel": "image_build.cancel"}

    @extend_schema(request=None, responses={200: ImageBuildSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        build = services.cancel_build(self.get_object(), actor=Actor.from_request(request))
        return Response(self.get_serializer(build).data)


class VersionBuildViewSet(mixins.ListModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    """/models/{name}/versions/{version}/builds/: a version's builds, and asking for one."""

    queryset = ImageBuild.objects.none()  # for the schema
    serializer_class = ImageBuildSerializer
    audit_actions = {"create": "image_build.start"}

    def get_version(self) -> ModelVersion:
        return get_object_or_404(
            ModelVersion.objects.select_related("model"),
            model__name=self.kwargs["model_name"],
            version=self.kwargs["version"],
        )

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        return _builds().filter(model_version=self.get_version())

    @extend_schema(
        request=BuildRequestSerializer,
        responses={201: ImageBuildSerializer, 200: ImageBuildSerializer},
        description="Build this version's runtime image (201), or return the build that already exists (200).",
    )
    def create(self, request, *args, **kwargs):
        params = BuildRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        build, created = services.request_build(
            self.get_version(), actor=Actor.from_request(request), variant=params.validated_data.get("variant")
        )
        build = _builds().get(pk=build.pk)
        return Response(
            ImageBuildSerializer(build).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )
