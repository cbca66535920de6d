"""REST API v1 for image builds."""

from __future__ import annotations

import django_filters
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from controlplane import access
from controlplane.audit import Actor
from controlplane.permissions import RegistryAccess
from deployments import approvals, ledger, services
from deployments.models import (
    ROLLOUT_ACTIVE,
    ApprovalDecision,
    ApprovalRequest,
    ApprovalState,
    BuildStatus,
    Decision,
    Deployment,
    Environment,
    ImageBuild,
    Release,
    Rollout,
    RolloutEvent,
    RolloutState,
    TargetKind,
    Variant,
    newest_rollout_status,
)
from deployments.plans import describe
from registry.models import ModelVersion, slug_validator


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
    permission_classes = [IsAuthenticated, RegistryAccess]
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

    permission_classes = [IsAuthenticated, RegistryAccess]
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


# --- Environments, deployments, releases, rollouts ---------------------------------------
class EnvironmentSerializer(serializers.ModelSerializer):
    promotes_from = serializers.SlugRelatedField(
        slug_field="name", read_only=True, allow_null=True, help_text="the environment releases come from; null: none"
    )
    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True)
    your_role = serializers.SerializerMethodField(help_text="the caller's role here (with this token)")

    class Meta:
        model = Environment
        fields = [
            "name",
            "description",
            "target",
            "target_config",
            "promotes_from",
            "default_plan",
            "default_settings",
            "required_approvals",
            "approval_timeout_s",
            "approve_pauses",
            "your_role",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields

    @extend_schema_field({"type": "string", "nullable": True, "description": "viewer, deployer, approver or admin"})
    def get_your_role(self, env: Environment) -> str | None:
        request = self.context.get("request")
        return access.role_in(Actor.from_request(request), env) if request is not None else None


class ProtectionFields(serializers.Serializer):
    """Optional: left out, the environment keeps (or gets) 0, 86400 and false."""

    required_approvals = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=10,
        help_text="approvals from people other than the requester; 0 (default): not protected",
    )
    approval_timeout_s = serializers.IntegerField(
        required=False, min_value=60, max_value=30 * 86400, help_text="a request not approved in time expires (86400)"
    )
    approve_pauses = serializers.BooleanField(
        required=False, help_text="each pause step of a plan waits for the approvals too (false)"
    )


class EnvironmentCreateSerializer(ProtectionFields):
    name = serializers.CharField(max_length=30)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    target = serializers.ChoiceField(choices=TargetKind.choices, default=TargetKind.LOCAL)
    target_config = serializers.JSONField(
        required=False,
        default=dict,
        help_text="kubernetes: namespace, kubeconfig or in_cluster, context, image_pull_secret, ingress_host, gateway",
    )
    promotes_from = serializers.CharField(required=False, allow_null=True, default=None)
    default_plan = serializers.JSONField(required=False, default=dict)
    default_settings = serializers.JSONField(required=False, default=dict)

    def validate_name(self, value):
        try:
            slug_validator(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None
        return value


class EnvironmentUpdateSerializer(ProtectionFields):
    """Every field optional: what is left out stays as it is."""

    description = serializers.CharField(required=False, allow_blank=True)
    default_plan = serializers.JSONField(required=False)
    default_settings = serializers.JSONField(required=False)


AT_PARAMETER = OpenApiParameter(
    "at",
    OpenApiTypes.DATETIME,
    OpenApiParameter.QUERY,
    description="The instant asked about, ISO 8601 (e.g. 2026-05-01T14:30:00Z; no offset means UTC). Default: now.",
)


class ServingSerializer(serializers.Serializer):
    """One release serving one deployment at the instant asked about."""

    model = serializers.CharField(source="deployment.model.name")
    deployment = serializers.IntegerField(source="deployment.pk")
    release = serializers.IntegerField(source="release.number")
    version = serializers.IntegerField(source="release.model_version.version")
    image = serializers.CharField(source="release.image", help_text="repository:tag@sha256:digest; empty on local")
    digest = serializers.CharField(source="release.digest")
    weight_percent = serializers.IntegerField(help_text="its share of the deployment's traffic then; 100: all")
    since = serializers.DateTimeField(allow_null=True, help_text="when it started serving at this share")
    until = serializers.DateTimeField(allow_null=True, help_text="when that share ended; null: it still holds")
    kind = serializers.CharField(source="release.kind", help_text="deploy, promote or rollback")
    source_release = serializers.IntegerField(source="release.source.number", allow_null=True)
    deployed_by = serializers.CharField(source="release.created_by.username", allow_null=True)
    reason = serializers.CharField(source="release.reason")
    rollout = serializers.SerializerMethodField()
    approved_by = serializers.ListField(
        source="release.approved_by",
        child=serializers.CharField(),
        help_text="who approved the release, in a protected environment; else empty",
    )
    recorded = serializers.BooleanField(
        help_text="false: no ledger rows for this deployment; derived from its current release"
    )

    @extend_schema_field(
        {
            "type": "object",
            "nullable": True,
            "properties": {"id": {"type": "integer"}, "state": {"type": "string", "description": "its state now"}},
        }
    )
    def get_rollout(self, row: ledger.Serving):
        rollout = row.rollout
        return None if rollout is None else {"id": rollout.pk, "state": rollout.state}


class ServingAnswerSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    note = serializers.CharField(help_text="why the list is empty or partial, when it is; else empty")
    results = ServingSerializer(source="rows", many=True)


class DeploymentServingSerializer(ServingAnswerSerializer):
    deployment = serializers.IntegerField()


class EnvironmentServingSerializer(ServingAnswerSerializer):
    environment = serializers.CharField()
    count = serializers.IntegerField(help_text="deployments in the environment (pages are by deployment)")
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)


class EnvironmentViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    queryset = Environment.objects.select_related("promotes_from", "created_by")
    serializer_class = EnvironmentSerializer
    lookup_field = "name"
    audit_actions = {"create": "environment.create", "partial_update": "environment.update"}
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self):
        return access.scope(self.queryset, Actor.from_request(self.request), field="pk")

    @extend_schema(
        request=EnvironmentUpdateSerializer,
        responses={200: EnvironmentSerializer},
        description="Change the description, default plan and settings, or protection (the environment's admins).",
    )
    def partial_update(self, request, *args, **kwargs):
        params = EnvironmentUpdateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        env = services.update_environment(self.get_object(), actor=Actor.from_request(request), **params.validated_data)
        return Response(self.get_serializer(env).data)

    @extend_schema(request=EnvironmentCreateSerializer, responses={201: EnvironmentSerializer})
    def create(self, request, *args, **kwargs):
        params = EnvironmentCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        env = services.create_environment(actor=Actor.from_request(request), **params.validated_data)
        return Response(self.get_serializer(env).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[AT_PARAMETER],
        responses={200: EnvironmentServingSerializer},
        description="What served in this environment at `at`: per deployment, each release that had traffic, "
        "with its share (a canary shows both releases), since when, who deployed it and why. Paginated by "
        "deployment. 400 when `at` is not a time; before the environment existed: no results and a note.",
    )
    @action(detail=True, methods=["get"])
    def serving(self, request, name=None):
        env = self.get_object()
        at = ledger.parse_instant(request.query_params.get("at"))
        ids = self.paginate_queryset(ledger.environment_deployments(env).values_list("pk", flat=True))
        page = Deployment.objects.filter(pk__in=ids).order_by("model__name", "pk")
        answer = ledger.environment_serving(env, at, page)
        body = ServingAnswerSerializer(answer).data
        paginated = self.get_paginated_response(body["results"]).data
        return Response({"environment": env.name, "at": body["at"], "note": body["note"], **paginated})


class RolloutEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = RolloutEvent
        fields = ["at", "kind", "message", "data"]
        read_only_fields = fields


class RolloutSerializer(serializers.ModelSerializer):
    deployment = serializers.IntegerField(source="deployment_id", read_only=True)
    release = serializers.IntegerField(source="release.number", read_only=True)
    version = serializers.IntegerField(source="release.model_version.version", read_only=True)
    previous_release = serializers.IntegerField(source="previous_release.number", read_only=True, allow_null=True)
    current_step = serializers.SerializerMethodField()
    requested_by = serializers.CharField(source="requested_by.username", read_only=True, allow_null=True)
    events = serializers.SerializerMethodField()

    class Meta:
        model = Rollout
        fields = [
            "id",
            "deployment",
            "release",
            "version",
            "previous_release",
            "state",
            "step_index",
            "current_step",
            "steps",
            "weight",
            "plan",
            "pause_reason",
            "analysis",
            "status",
            "failure_reason",
            "requested_by",
            "created_at",
            "updated_at",
            "finished_at",
            "events",
        ]
        read_only_fields = fields

    @extend_schema_field(
        {
            "type": "object",
            "nullable": True,
            "properties": {"kind": {"type": "string"}, "description": {"type": "string"}},
        }
    )
    def get_current_step(self, rollout: Rollout):
        step = rollout.current_step
        return None if step is None or rollout.is_terminal else {**step, "description": describe(step)}

    @extend_schema_field(RolloutEventSerializer(many=True))
    def get_events(self, rollout: Rollout):
        if not self.context.get("with_events", False):
            return []
        events = list(rollout.events.order_by("-at", "-pk")[:200])[::-1]
        return RolloutEventSerializer(events, many=True).data


class ReleaseSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model_version.model.name", read_only=True)
    version = serializers.IntegerField(source="model_version.version", read_only=True)
    source = serializers.IntegerField(source="source.number", read_only=True, allow_null=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True)
    rollout = serializers.SerializerMethodField()

    class Meta:
        model = Release
        fields = [
            "number",
            "model",
            "version",
            "image",
            "digest",
            "settings",
            "kind",
            "source",
            "reason",
            "created_by",
            "created_at",
            "rollout",
        ]
        read_only_fields = fields

    @extend_schema_field(
        {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "state": {"type": "string"},
                "failure_reason": {"type": "string"},
                "finished_at": {"type": "string", "nullable": True},
            },
        }
    )
    def get_rollout(self, release: Release):
        rollout = getattr(release, "rollout", None)
        if rollout is None:
            return None
        return {
            "id": rollout.pk,
            "state": rollout.state,
            "failure_reason": rollout.failure_reason,
            "finished_at": rollout.finished_at,
        }


class DeploymentSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name", read_only=True)
    environment = serializers.CharField(source="environment.name", read_only=True)
    target = serializers.CharField(source="environment.target", read_only=True)
    state = serializers.SerializerMethodField()
    endpoint = serializers.SerializerMethodField()
    current_release = ReleaseSerializer(read_only=True, allow_null=True)
    active_rollout = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = [
            "id",
            "model",
            "environment",
            "target",
            "key",
            "state",
            "endpoint",
            "current_release",
            "active_rollout",
            "pinned",
            "pinned_reason",
            "created_at",
        ]
        read_only_fields = fields

    def _active(self, deployment: Deployment):
        return next(iter(getattr(deployment, "active", None) or []), None)

    def _idle_state(self, deployment: Deployment) -> str:
        # deployments_query() annotates the newest rollout's status: no query per row.
        return deployment.idle_state(deployment.newest_status)

    @extend_schema_field(
        {
            "type": "string",
            "description": "the active rollout's state; else empty, serving, degraded (fewer replicas ready than "
            "asked for), down (none ready) or stopped (nothing runs); from the target's status as last seen",
        }
    )
    def get_state(self, deployment: Deployment) -> str:
        active = self._active(deployment)
        if active is not None:
            return active.state
        return self._idle_state(deployment)

    @extend_schema_field({"type": "string", "description": "the stable endpoint; empty while nothing serves there"})
    def get_endpoint(self, deployment: Deployment) -> str:
        return deployment.shown_endpoint(self.get_state(deployment))

    @extend_schema_field({"type": "integer", "nullable": True})
    def get_active_rollout(self, deployment: Deployment):
        active = self._active(deployment)
        return active.pk if active else None


class DeployRequestSerializer(serializers.Serializer):
    model = serializers.CharField()
    environment = serializers.CharField()
    version = serializers.IntegerField(min_value=1)
    plan = serializers.JSONField(
        required=False,
        default=None,
        help_text='e.g. {"strategy": "canary", "steps": [{"set_weight": 20}, {"pause": {"duration": "30s"}}]}',
    )
    config = serializers.JSONField(
        required=False,
        default=None,
        help_text="runtime settings: replicas, cpu_request, memory_limit, gpus, max_batch_size, max_delay_ms...",
    )
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class PromoteRequestSerializer(serializers.Serializer):
    environment = serializers.CharField(
        required=False, allow_null=True, default=None, help_text="when several environments promote from this one"
    )
    plan = serializers.JSONField(required=False, default=None)
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class RollbackRequestSerializer(serializers.Serializer):
    to_release = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1)
    reason = serializers.CharField()


class DeployResultSerializer(DeploymentSerializer):
    rollout = serializers.SerializerMethodField()

    class Meta(DeploymentSerializer.Meta):
        fields = [*DeploymentSerializer.Meta.fields, "rollout"]
        read_only_fields = fields

    @extend_schema_field(RolloutSerializer)
    def get_rollout(self, deployment):
        return RolloutSerializer(self.context["rollout"]).data


class DeploymentFilterSet(django_filters.FilterSet):
    model = django_filters.CharFilter(field_name="model__name")
    environment = django_filters.CharFilter(field_name="environment__name")

    class Meta:
        model = Deployment
        fields = ["model", "environment"]


def deployments_query():
    return (
        Deployment.objects.annotate(newest_status=newest_rollout_status())
        .select_related(
            "model",
            "environment",
            "current_release__model_version__model",
            "current_release__source",
            "current_release__created_by",
            "current_release__rollout",
        )
        .prefetch_related(
            Prefetch("rollouts", queryset=Rollout.objects.filter(state__in=ROLLOUT_ACTIVE), to_attr="active")
        )
    )


def _rollouts():
    return Rollout.objects.select_related("release__model_version", "previous_release", "requested_by")


class DeploymentViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    queryset = deployments_query().order_by("pk")
    serializer_class = DeploymentSerializer

    def get_queryset(self):
        return access.scope(self.queryset, Actor.from_request(self.request))

    filterset_class = DeploymentFilterSet
    audit_actions = {
        "create": "deployment.deploy",
        "promote": "deployment.promote",
        "rollback": "deployment.rollback",
        "unpin": "deployment.unpin",
    }

    def _result(self, deployment, rollout, code):
        deployment = deployments_query().get(pk=deployment.pk)
        return Response(
            DeployResultSerializer(deployment, context={"rollout": _rollouts().get(pk=rollout.pk)}).data, status=code
        )

    @extend_schema(
        request=DeployRequestSerializer,
        responses={
            201: DeployResultSerializer,
            200: DeployResultSerializer,
            404: OpenApiResponse(description="No such model, version or environment (or one where you have no role)"),
        },
        description="Deploy a ready version: 201 when this creates the deployment, 200 when it starts "
        "a new rollout on the existing one; 409 while another rollout is active.",
    )
    def create(self, request, *args, **kwargs):
        params = DeployRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        deployment, rollout, created = services.deploy(
            data["model"],
            data["environment"],
            data["version"],
            actor=Actor.from_request(request),
            plan=data["plan"],
            config=data["config"],
            reason=data["reason"],
        )
        return self._result(deployment, rollout, status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(
        request=PromoteRequestSerializer, responses={201: DeployResultSerializer, 200: DeployResultSerializer}
    )
    @action(detail=True, methods=["post"])
    def promote(self, request, pk=None):
        params = PromoteRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        deployment, rollout, created = services.promote(
            self.get_object(), actor=Actor.from_request(request), **params.validated_data
        )
        return self._result(deployment, rollout, status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(request=RollbackRequestSerializer, responses={200: DeployResultSerializer})
    @action(detail=True, methods=["post"])
    def rollback(self, request, pk=None):
        params = RollbackRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        deployment, rollout, _ = services.rollback(
            self.get_object(), actor=Actor.from_request(request), **params.validated_data
        )
        return self._result(deployment, rollout, status.HTTP_200_OK)

    @extend_schema(request=None, responses={200: DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def unpin(self, request, pk=None):
        deployment, _was_pinned = services.unpin(self.get_object(), actor=Actor.from_request(request))
        return Response(DeploymentSerializer(deployments_query().get(pk=deployment.pk)).data)

    @extend_schema(
        parameters=[AT_PARAMETER],
        responses={200: DeploymentServingSerializer},
        description="What served this deployment at `at`: each release that had traffic, with its share.",
    )
    @action(detail=True, methods=["get"])
    def serving(self, request, pk=None):
        deployment = self.get_object()  # DRF's: an id that is not a number is a 404, not a 500
        at = ledger.parse_instant(request.query_params.get("at"))
        body = ServingAnswerSerializer(ledger.deployment_serving(deployment, at)).data
        return Response({"deployment": deployment.pk, **body})

    @extend_schema(responses={200: ReleaseSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def releases(self, request, pk=None):
        deployment = self.get_object()
        query = deployment.releases.select_related("model_version__model", "source", "created_by", "rollout").order_by(
            "-number"
        )
        page = self.paginate_queryset(query)
        return self.get_paginated_response(ReleaseSerializer(page, many=True).data)


class RolloutFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=RolloutState.choices)
    deployment = django_filters.NumberFilter(field_name="deployment_id")

    class Meta:
        model = Rollout
        fields = ["state", "deployment"]


class RolloutViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = _rollouts().order_by("-created_at")
    serializer_class = RolloutSerializer

    def get_queryset(self):
        return access.scope(self.queryset, Actor.from_request(self.request), field="deployment__environment")

    filterset_class = RolloutFilterSet
    audit_actions = {
        "pause": "rollout.pause",
        "resume": "rollout.resume",
        "abort": "rollout.abort",
        "promote": "rollout.promote",
    }

    def retrieve(self, request, *args, **kwargs):
        return Response(RolloutSerializer(self.get_object(), context={"with_events": True}).data)

    def _do(self, verb, **kwargs):
        rollout = verb(self.get_object(), actor=Actor.from_request(self.request), **kwargs)
        return Response(RolloutSerializer(_rollouts().get(pk=rollout.pk), context={"with_events": True}).data)

    @extend_schema(request=None, responses={200: RolloutSerializer})
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return self._do(services.pause_rollout)

    @extend_schema(request=None, responses={200: RolloutSerializer})
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._do(services.resume_rollout)

    @extend_schema(request=None, responses={200: RolloutSerializer})
    @action(detail=True, methods=["post"])
    def abort(self, request, pk=None):
        return self._do(
            services.abort_rollout, reason=str(request.data.get("reason", "")) if hasattr(request.data, "get") else ""
        )

    @extend_schema(
        request=None,
        responses={200: RolloutSerializer},
        description="Skip the remaining steps: all traffic to the new release now.",
    )
    @action(detail=True, methods=["post"])
    def promote(self, request, pk=None):
        return self._do(services.promote_rollout_now)


# --- Approvals -------------------------------------------------------------------------------
class ApprovalDecisionSerializer(serializers.ModelSerializer):
    class Meta:
        model = ApprovalDecision
        fields = ["approver", "decision", "comment", "at"]
        read_only_fields = fields


class ApprovalSerializer(serializers.ModelSerializer):
    environment = serializers.CharField(source="environment.name", read_only=True)
    deployment = serializers.IntegerField(source="rollout.deployment_id", read_only=True)
    rollout_state = serializers.CharField(source="rollout.state", read_only=True)
    approvals = serializers.IntegerField(source="approval_count", read_only=True, help_text="approvals so far")
    decisions = ApprovalDecisionSerializer(many=True, read_only=True)
    change = serializers.JSONField(
        read_only=True,
        help_text="what would change: kind, model, version, sha256, release, image, digest, settings, plan, "
        "and what serves now (previous)",
    )

    class Meta:
        model = ApprovalRequest
        fields = [
            "id",
            "environment",
            "deployment",
            "rollout",
            "rollout_state",
            "kind",
            "step_index",
            "state",
            "required",
            "approvals",
            "requester",
            "reason",
            "change",
            "created_at",
            "expires_at",
            "decided_at",
            "decisions",
        ]
        read_only_fields = fields


class DecisionSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, default="", help_text="required to reject")


class ApprovalFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=ApprovalState.choices)
    environment = django_filters.CharFilter(field_name="environment__name")

    class Meta:
        model = ApprovalRequest
        fields = ["state", "environment"]


class ApprovalViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Approval requests of protected environments: approvers approve or reject with a comment."""

    queryset = ApprovalRequest.objects.select_related("environment", "rollout").prefetch_related("decisions")
    serializer_class = ApprovalSerializer
    filterset_class = ApprovalFilterSet
    audit_actions = {"approve": "approval.approve", "reject": "approval.reject"}

    def get_queryset(self):
        return access.scope(self.queryset.order_by("-created_at"), Actor.from_request(self.request))

    def _decide(self, request, decision):
        params = DecisionSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        approvals.decide(
            self.get_object(),
            actor=Actor.from_request(request),
            decision=decision,
            comment=params.validated_data["comment"],
        )
        return Response(self.get_serializer(self.get_queryset().get(pk=self.kwargs["pk"])).data)

    @extend_schema(
        request=DecisionSerializer,
        responses={200: ApprovalSerializer},
        description="Approve (approvers of the environment, not the requester). The Nth approval starts the "
        "rollout (or lets it past the pause). 409 when the request is no longer pending or has expired.",
    )
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        return self._decide(request, Decision.APPROVE)

    @extend_schema(
        request=DecisionSerializer,
        responses={200: ApprovalSerializer},
        description="Reject with a comment: the rollout ends (aborted) and nothing it would change is changed.",
    )
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        return self._decide(request, Decision.REJECT)
