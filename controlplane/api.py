"""REST API v1: the audit log and the caller's API tokens."""

from __future__ import annotations

from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from controlplane import tokens
from controlplane.audit import Actor
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
            "outcome",
            "message",
            "before",
            "after",
            "request_id",
            "source_ip",
            "hash",
        ]

    def get_target(self, obj) -> dict:
        return {"type": obj.target_type, "id": obj.target_id, "text": obj.target_repr}


class AuditEventViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = AuditEvent.objects.order_by("-id")
    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilterSet


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
