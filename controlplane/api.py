"""REST API v1: the audit log, the caller's API tokens, and roles."""

from __future__ import annotations

import django_filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from controlplane import access, audit_export, roles, tokens
from controlplane.audit import Actor, record
from controlplane.errors import InvalidInput, NotFound
from controlplane.filtersets import AuditEventFilterSet
from controlplane.models import APIToken, AuditEvent, Role, RoleBinding, TokenScope
from controlplane.renderers import JSONRenderer


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
    """The events the caller may read: their environments', the registry's and their own (auditors: all)."""

    queryset = AuditEvent.objects.order_by("-id")
    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilterSet

    def get_queryset(self):
        return access.audit_scope(self.queryset, Actor.from_request(self.request))

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
        if request.method == "HEAD":  # what a GET would answer, without building it or recording an export
            return audit_export.response(events.none(), fmt)
        used = {
            name: request.query_params[name]
            for name in self.filterset_class.base_filters
            if request.query_params.get(name)
        }
        exported = record("audit.export", actor=Actor.from_request(request), after={"format": fmt, "filter": used})
        return audit_export.response(events.filter(id__lt=exported.id), fmt)


class APITokenSerializer(serializers.ModelSerializer):
    environments = serializers.SlugRelatedField(
        slug_field="name", many=True, read_only=True, help_text="limited to these; empty: all of yours"
    )
    active = serializers.BooleanField(source="is_active", read_only=True)

    class Meta:
        model = APIToken
        fields = [
            "id",
            "name",
            "prefix",
            "scope",
            "environments",
            "expires_at",
            "active",
            "created_at",
            "last_used_at",
            "revoked_at",
        ]
        read_only_fields = fields


class TokenRequestSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    scope = serializers.ChoiceField(
        choices=TokenScope.choices,
        default=TokenScope.ADMIN,
        help_text="read: look only; deploy: also upload, build and deploy; admin (default): all you may do",
        error_messages={"invalid_choice": f'"{{input}}" is not a scope; use one of {", ".join(TokenScope.values)}.'},
    )
    environments = serializers.ListField(
        child=serializers.CharField(), required=False, default=list, help_text="limit it to these environments"
    )
    expires_in_days = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=1, max_value=tokens.MAX_LIFETIME_DAYS
    )


class NewAPITokenSerializer(APITokenSerializer):
    token = serializers.CharField(read_only=True, help_text="Shown once; only its hash is stored.")

    class Meta(APITokenSerializer.Meta):
        fields = [*APITokenSerializer.Meta.fields, "token"]


class APITokenViewSet(mixins.ListModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    serializer_class = APITokenSerializer
    audit_actions = {"create": "token.create", "revoke": "token.revoke"}

    queryset = APIToken.objects.none()  # for the schema; requests see only their own tokens (tokens.visible_to)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        visible = tokens.visible_to(Actor.from_request(self.request))
        return visible.prefetch_related("environments").order_by("-created_at")

    @extend_schema(request=TokenRequestSerializer, responses={201: NewAPITokenSerializer})
    def create(self, request, *args, **kwargs):
        params = TokenRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        issued = tokens.create_token(request.user, actor=Actor.from_request(request), **params.validated_data)
        data = NewAPITokenSerializer(issued.token).data | {"token": issued.raw}
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: APITokenSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        token = tokens.revoke_token(self.get_object(), actor=Actor.from_request(request))
        return Response(APITokenSerializer(token).data)


# --- Roles -----------------------------------------------------------------------------------
class RoleBindingSerializer(serializers.ModelSerializer):
    environment = serializers.CharField(
        source="environment.name", read_only=True, allow_null=True, help_text="null: every environment"
    )
    user = serializers.CharField(source="user.username", read_only=True, allow_null=True)
    group = serializers.CharField(source="group.name", read_only=True, allow_null=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True)

    class Meta:
        model = RoleBinding
        fields = ["id", "environment", "user", "group", "role", "created_by", "created_at"]
        read_only_fields = fields


class GrantSerializer(serializers.Serializer):
    environment = serializers.CharField(
        allow_null=True, help_text="the environment's name; null: every environment (superusers and global admins)"
    )
    user = serializers.CharField(required=False, allow_blank=True, default="", help_text="a username, or:")
    group = serializers.CharField(required=False, allow_blank=True, default="", help_text="a group's name")
    role = serializers.ChoiceField(choices=Role.choices)


class RoleBindingFilterSet(django_filters.FilterSet):
    environment = django_filters.CharFilter(field_name="environment__name")
    user = django_filters.CharFilter(field_name="user__username")
    role = django_filters.ChoiceFilter(choices=Role.choices)

    class Meta:
        model = RoleBinding
        fields = ["environment", "user", "role"]


class RoleBindingViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Who holds which role where. Granting again changes the role; an environment's admins manage its roles."""

    serializer_class = RoleBindingSerializer
    filterset_class = RoleBindingFilterSet
    queryset = RoleBinding.objects.none()  # for the schema
    audit_actions = {"create": "role.grant", "destroy": "role.revoke"}

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        return roles.visible_bindings(Actor.from_request(self.request)).order_by("environment__name", "pk")

    @extend_schema(
        request=GrantSerializer,
        responses={
            201: RoleBindingSerializer,
            200: RoleBindingSerializer,
            404: OpenApiResponse(description="No such environment (or one where you have no role)"),
        },
    )
    def create(self, request, *args, **kwargs):
        from deployments.models import Environment

        params = GrantSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        actor = Actor.from_request(request)
        environment = None
        if data["environment"] is not None:  # grant_role answers 404 for one the caller has no role in, too
            environment = Environment.objects.filter(name=data["environment"]).first()
            if environment is None:
                raise NotFound(f"There is no environment {data['environment']!r}.", fields={"environment": ["unknown"]})
        binding, created = roles.grant_role(
            environment, data["role"], actor=actor, user=data["user"], group=data["group"]
        )
        return Response(RoleBindingSerializer(binding).data, status=status.HTTP_201_CREATED if created else 200)

    def perform_destroy(self, instance):
        roles.revoke_role(instance, actor=Actor.from_request(self.request))
