"""REST API v1: the audit log and the caller's API tokens."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from controlplane import audit_export, tokens
from controlplane.audit import Actor, record
from controlplane.errors import InvalidInput
from controlplane.filtersets import AuditEventFilterSet
from controlplane.models import APIToken, AuditEvent


class AuditEventSerializer(serializers.ModelSerializer):
    target = serializers.SerializerMethodField()

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "occurred_at",
            "actor",
            "action",
            "target",
            "environment",
            "outcome",
            "message",
            "before",
            "after",
            "request_id",
            "source_ip",
            "prev_hash",
            "hash",
        ]

    def get_target(self, obj) -> dict:
        return {"type": obj.target_type, "id": obj.target_id, "text": obj.target_repr}


class AuditEventViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = AuditEvent.objects.order_by("-id")
    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilterSet

    def perform_content_negotiation(self, request, force=False):
        if self.action == "export":
            # There `?format=` names the file to write, not a renderer; errors are still JSON.
            renderer = JSONRenderer()
            return renderer, renderer.media_type
        return super().perform_content_negotiation(request, force)

    @extend_schema(
        filters=True,
        parameters=[OpenApiParameter("format", enum=list(audit_export.FORMATS), default="jsonl")],
        responses={
            (200, media): OpenApiResponse(OpenApiTypes.STR, description="One event per line; CSV starts with a header")
            for media in ("application/jsonl", "text/csv")
        },
    )
    @action(detail=False, pagination_class=None)
    def export(self, request):
        """Every event the filters match, oldest first, streamed as a file; the export itself is audited.

        The file holds the events recorded before the export's own event, so it is a fixed snapshot.
        """
        fmt = request.query_params.get("format") or "jsonl"
        if fmt not in audit_export.FORMATS:
            raise InvalidInput(
                f"format must be one of {', '.join(audit_export.FORMATS)}, not {fmt!r}.", fields={"format": ["unknown"]}
            )
        events = self.filter_queryset(self.get_queryset())  # a bad filter answers 400 here, before anything is recorded
        used = {
            name: request.query_params[name]
            for name in self.filterset_class.base_filters
            if request.query_params.get(name)
        }
        exported = record("audit.export", actor=Actor.from_request(request), after={"format": fmt, "filter": used})
        return audit_export.response(events.filter(id__lt=exported.id), fmt)


class APITokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = APIToken
        fields = ["id", "name", "prefix", "created_at", "last_used_at", "revoked_at"]
        read_only_fields = ["id", "prefix", "created_at", "last_used_at", "revoked_at"]


class NewAPITokenSerializer(APITokenSerializer):
    token = serializers.CharField(read_only=True, help_text="Shown once; only its hash is stored.")

    class Meta(APITokenSerializer.Meta):
        fields = [*APITokenSerializer.Meta.fields, "token"]


class APITokenViewSet(mixins.ListModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    serializer_class = APITokenSerializer
    audit_actions = {"create": "token.create", "revoke": "token.revoke"}

    queryset = APIToken.objects.none()  # for the schema; requests see only their own tokens

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        return APIToken.objects.filter(user=self.request.user).order_by("-created_at")

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        issued = tokens.create_token(request.user, serializer.validated_data["name"], actor=Actor.from_request(request))
        data = NewAPITokenSerializer(issued.token).data | {"token": issued.raw}
        return Response(data, status=status.HTTP_201_CREATED)

    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        token = tokens.revoke_token(self.get_object(), actor=Actor.from_request(request))
        return Response(APITokenSerializer(token).data)
