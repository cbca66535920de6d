"""Image builds, environments, deployments, releases and rollouts.

A build and a Release point at a ModelVersion with on_delete=PROTECT,
which is what registry.services.delete_version checks before deleting.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from registry.models import Model, ModelVersion, slug_validator


class BuildStatus(models.TextChoices):
    QUEUED = "queued", "queued"
    BUILDING = "building", "building"
    PUSHING = "pushing", "pushing"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"


# Which status may follow which. queued -> succeeded is a cache hit; a stale
# building/pushing build goes back to queued for another attempt.
BUILD_TRANSITIONS: dict[str, tuple[str, ...]] = {
    BuildStatus.QUEUED: (BuildStatus.BUILDING, BuildStatus.SUCCEEDED, BuildStatus.FAILED, BuildStatus.CANCELLED),
    BuildStatus.BUILDING: (BuildStatus.PUSHING, BuildStatus.FAILED, BuildStatus.CANCELLED, BuildStatus.QUEUED),
    BuildStatus.PUSHING: (BuildStatus.SUCCEEDED, BuildStatus.FAILED, BuildStatus.CANCELLED, BuildStatus.QUEUED),
    BuildStatus.SUCCEEDED: (),
    BuildStatus.FAILED: (),
    BuildStatus.CANCELLED: (),
}
BUILD_TERMINAL = (BuildStatus.SUCCEEDED, BuildStatus.FAILED, BuildStatus.CANCELLED)
BUILD_ACTIVE = (BuildStatus.QUEUED, BuildStatus.BUILDING, BuildStatus.PUSHING)


class Variant(models.TextChoices):
    GPU = "gpu", "GPU (CUDA)"
    CPU = "cpu", "CPU"


class ImageBuild(models.Model):
    """One runtime image for one model version, variant, runtime version and base image."""

    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="builds")
    variant = models.CharField(max_length=3, choices=Variant.choices, default=Variant.GPU)
    base_image = models.CharField(max_length=300)
    runtime_version = models.CharField(max_length=50)
    registry = models.CharField(max_length=255, help_text="SLIPWAY_REGISTRY when the build was requested")
    image_ref = models.CharField(
        max_length=400, help_text="registry/slipway/<model>:v<version>-<sha12>-<recipe8>[-cpu]"
    )
    digest = models.CharField(max_length=100, blank=True)
    size_bytes = models.BigIntegerField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=BuildStatus.choices, default=BuildStatus.QUEUED)
    cache_hit = models.BooleanField(default=False)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    AUDIT_TYPE = "image_build"

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Two requests for the same image never build twice; failed and
            # cancelled attempts stay as history and do not block a retry. The variant is
            # part of the key: the CPU and GPU base images may be set to the same image,
            # and a CPU request must still get a CPU build (its own tag and torch). So is the
            # registry: once SLIPWAY_REGISTRY moves, an image in the old one is not an answer.
            models.UniqueConstraint(
                fields=["model_version", "variant", "runtime_version", "base_image", "registry"],
                condition=~models.Q(status__in=["failed", "cancelled"]),
                name="one_live_build_per_image",
            )
        ]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"build #{self.pk} of {self.model_version}"

    @property
    def is_terminal(self) -> bool:
        return self.status in BUILD_TERMINAL

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


# --- Environments, deployments, releases, rollouts ----------------------------------------


class TargetKind(models.TextChoices):
    LOCAL = "local", "local processes"
    KUBERNETES = "kubernetes", "Kubernetes"


class Environment(models.Model):
    """A place releases run (dev, staging, prod): a target, and where promotions come from."""

    name = models.CharField(max_length=30, unique=True, validators=[slug_validator])
    description = models.TextField(blank=True)
    target = models.CharField(max_length=20, choices=TargetKind.choices, default=TargetKind.LOCAL)
    # Target settings (kubernetes: namespace, kubeconfig path or in_cluster, context...). Never holds secrets.
    target_config = models.JSONField(default=dict, blank=True)
    promotes_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="promotes_to"
    )
    default_plan = models.JSONField(default=dict, blank=True)
    default_settings = models.JSONField(default=dict, blank=True)
    # Protection: a rollout starts only after this many approvals from approvers other than its requester.
    required_approvals = models.PositiveSmallIntegerField(default=0, help_text="0: not protected")
    approval_timeout_s = models.PositiveIntegerField(default=86400, help_text="a request expires after this long")
    approve_pauses = models.BooleanField(
        default=False, help_text="protected: each pause step of a canary also waits for the approvals"
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    AUDIT_TYPE = "environment"

    class Meta:
        ordering = ["created_at", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_protected(self) -> bool:
        return self.required_approvals > 0


class Deployment(models.Model):
    """One model in one environment: a stable endpoint and the releases behind it over time."""

    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="deployments")
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="deployments")
    key = models.CharField(max_length=40, unique=True, help_text="DNS-safe name of the target's objects.")
    current_release = models.ForeignKey("Release", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    endpoint = models.CharField(max_length=300, blank=True)
    latest_release = models.PositiveIntegerField(default=0, help_text="The highest release number given out.")
    # The release that served before the current one, still up without traffic until warm_until,
    # so that a rollback to it only re-routes (no process or pod to start).
    warm_release = models.ForeignKey("Release", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    warm_until = models.DateTimeField(null=True, blank=True)
    pinned = models.BooleanField(default=False)
    pinned_reason = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    AUDIT_TYPE = "deployment"

    class Meta:
        ordering = ["model__name", "environment__created_at"]
        constraints = [models.UniqueConstraint(fields=["model", "environment"], name="one_deployment_per_environment")]

    def __str__(self) -> str:
        return f"{self.model.name} in {self.environment.name}"

    def idle_state(self, status: dict | None) -> str:
        """What it does while no rollout is active, from its newest rollout's saved target status.

        empty (no release yet), serving, degraded (fewer replicas ready than asked for), down
        (none ready: restarting, or given up after a crash loop), stopped (nothing of it runs:
        `stop_local_deployments`, or the machine lost its state). Only the local target's status
        is kept fresh once the rollout ended (the sweeper rewrites it); elsewhere, and before a
        status was written, a current release counts as serving. Needs environment and
        current_release loaded; asks nothing.
        """
        if not self.current_release_id:
            return "empty"
        if self.environment.target != TargetKind.LOCAL or not status:
            return "serving"
        facts = (status.get("releases") or {}).get(str(self.current_release.slot))
        if facts is None and not status.get("endpoint"):
            return "stopped"
        if facts is None or not status.get("endpoint") or not facts.get("ready"):
            return "down"
        return "degraded" if facts["ready"] < facts.get("desired", 0) else "serving"

    def shown_endpoint(self, state: str) -> str:
        """The endpoint to show for `state`: none once stopped (its port was given back; another may have it)."""
        return "" if state == "stopped" else self.endpoint


def newest_rollout_status() -> models.Subquery:
    """Annotate deployments with their newest rollout's saved target status (for idle_state): in the same query."""
    newest = Rollout.objects.filter(deployment=models.OuterRef("pk")).order_by("-created_at", "-pk")
    return models.Subquery(newest.values("status")[:1], output_field=models.JSONField())


class ReleaseKind(models.TextChoices):
    DEPLOY = "deploy", "deploy"
    PROMOTE = "promote", "promote"
    ROLLBACK = "rollback", "rollback"


class Release(models.Model):
    """Immutable: one model version, one image, one set of runtime settings.

    `image` is written once, when the build the release waits for succeeds
    (the local target runs the artifact itself and has no image).
    """

    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="releases")
    number = models.PositiveIntegerField()
    # What the target runs it as: its own number, or, for a rollback to a release still kept
    # warm, that release's slot (its processes or pods are taken over, not started again).
    slot = models.PositiveIntegerField()
    # (before `settings` below, which hides django.conf.settings in this class body)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="releases")
    build = models.ForeignKey(ImageBuild, null=True, blank=True, on_delete=models.PROTECT, related_name="releases")
    image = models.CharField(max_length=500, blank=True, help_text="repository:tag@sha256:digest")
    settings = models.JSONField(default=dict)
    kind = models.CharField(max_length=10, choices=ReleaseKind.choices, default=ReleaseKind.DEPLOY)
    source = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="rollback: the release restored; promote: the release promoted from the previous environment",
    )
    reason = models.TextField(blank=True)
    # Who approved it in a protected environment, written once when its approval is granted.
    approved_by = models.JSONField(default=list, blank=True, help_text="usernames, in the order they approved")
    created_at = models.DateTimeField(default=timezone.now)

    AUDIT_TYPE = "release"

    class Meta:
        ordering = ["deployment", "-number"]
        constraints = [models.UniqueConstraint(fields=["deployment", "number"], name="unique_release_number")]

    def __str__(self) -> str:
        return f"release {self.number} of {self.deployment}"

    @property
    def digest(self) -> str:
        return self.image.partition("@")[2]


class RolloutState(models.TextChoices):
    AWAITING_APPROVAL = "awaiting_approval", "awaiting approval"  # in a protected environment, before it starts
    PENDING = "pending", "pending"
    BUILDING = "building", "building"
    DEPLOYING = "deploying", "deploying"
    PROGRESSING = "progressing", "progressing"
    PAUSED = "paused", "paused"
    REVERTING = "reverting", "reverting"  # restoring the previous release after a failure or an abort
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    ABORTED = "aborted", "aborted"
    ROLLED_BACK = "rolled_back", "rolled back"


S = RolloutState
ROLLOUT_TRANSITIONS: dict[str, tuple[str, ...]] = {
    S.AWAITING_APPROVAL: (S.PENDING, S.ABORTED),
    S.PENDING: (S.BUILDING, S.DEPLOYING, S.FAILED, S.ABORTED),
    S.BUILDING: (S.DEPLOYING, S.FAILED, S.ABORTED),
    S.DEPLOYING: (S.PROGRESSING, S.REVERTING, S.FAILED),
    S.PROGRESSING: (S.PAUSED, S.REVERTING, S.SUCCEEDED),
    S.PAUSED: (S.PROGRESSING, S.REVERTING),
    S.REVERTING: (S.ABORTED, S.ROLLED_BACK, S.FAILED),
    S.SUCCEEDED: (),
    S.FAILED: (),
    S.ABORTED: (),
    S.ROLLED_BACK: (),
}
ROLLOUT_TERMINAL = (S.SUCCEEDED, S.FAILED, S.ABORTED, S.ROLLED_BACK)
ROLLOUT_ACTIVE = tuple(state for state in ROLLOUT_TRANSITIONS if state not in ROLLOUT_TERMINAL)
# Active states the engine works on; a rollout awaiting approval waits for people, not for the engine.
ROLLOUT_RUNNING = tuple(state for state in ROLLOUT_ACTIVE if state != S.AWAITING_APPROVAL)


class Rollout(models.Model):
    """Getting one release in front of traffic, one stored step at a time."""

    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="rollouts")
    release = models.OneToOneField(Release, on_delete=models.PROTECT, related_name="rollout")
    previous_release = models.ForeignKey(
        Release,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="what served when the rollout began; restored if it fails",
    )
    plan = models.JSONField(help_text="the plan as given, normalised")
    steps = models.JSONField(help_text="the plan compiled to steps")
    state = models.CharField(max_length=20, choices=RolloutState.choices, default=RolloutState.PENDING)
    step_index = models.PositiveIntegerField(default=0)
    step_started_at = models.DateTimeField(null=True, blank=True)
    weight = models.PositiveSmallIntegerField(default=0, help_text="percent of traffic on the new release")
    revert_to = models.CharField(max_length=20, blank=True, help_text="the terminal state reverting ends in")
    skip_steps = models.BooleanField(default=False, help_text="promote-now: go straight to full weight")
    pause_reason = models.CharField(max_length=200, blank=True)
    paused_at = models.DateTimeField(
        null=True, blank=True, help_text="when a person paused the step: its clock stands still until they resume"
    )
    analysis_baseline = models.JSONField(null=True, blank=True)
    analysis = models.JSONField(null=True, blank=True, help_text="the latest analysis: checks with measured values")
    status = models.JSONField(default=dict, blank=True, help_text="the target's latest status, for the pages")
    failure_reason = models.TextField(blank=True)
    retrying_since = models.DateTimeField(
        null=True, blank=True, help_text="when the target began failing in a way the engine retries; null: it answers"
    )
    revision = models.PositiveIntegerField(default=0, help_text="bumped on every write: the engine's guard")
    next_at = models.DateTimeField(default=timezone.now, help_text="when the reconciler should act next")
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    AUDIT_TYPE = "rollout"

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["deployment"],
                condition=models.Q(state__in=list(ROLLOUT_ACTIVE)),
                name="one_active_rollout_per_deployment",
            )
        ]
        indexes = [models.Index(fields=["state", "next_at"])]

    def __str__(self) -> str:
        return f"rollout #{self.pk} of {self.deployment}"

    @property
    def is_terminal(self) -> bool:
        return self.state in ROLLOUT_TERMINAL

    @property
    def current_step(self) -> dict | None:
        return self.steps[self.step_index] if self.step_index < len(self.steps) else None


class RolloutEvent(models.Model):
    """The rollout's timeline: transitions, steps, analyses, warnings, people's actions."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=20)  # transition, step, analysis, warning, action, info
    message = models.TextField()
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "pk"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class ServingInterval(models.Model):
    """The ledger of what served: one release at one share of traffic, from `started_at` until `ended_at`.

    Written by the rollout engine in the transaction that records a traffic change
    (deployments.ledger.record_serving), so "what served at T" is a range lookup, not
    a replay of events. Rows are closed, never changed otherwise nor deleted.
    """

    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="serving_intervals")
    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="serving_intervals")
    weight_percent = models.PositiveSmallIntegerField(help_text="percent of the deployment's traffic; 100: all of it")
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True, help_text="null while it serves")

    class Meta:
        ordering = ["deployment", "started_at", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "release"], condition=models.Q(ended_at__isnull=True), name="one_open_interval"
            ),
            models.CheckConstraint(
                condition=models.Q(weight_percent__gt=0, weight_percent__lte=100), name="interval_weight_percent"
            ),
            models.CheckConstraint(
                condition=models.Q(ended_at__isnull=True) | models.Q(ended_at__gte=models.F("started_at")),
                name="interval_ends_after_it_starts",
            ),
        ]
        indexes = [models.Index(fields=["deployment", "started_at"])]

    def __str__(self) -> str:
        return f"release {self.release_id} at {self.weight_percent}% from {self.started_at:%Y-%m-%d %H:%M:%S}"


# --- Approvals ---------------------------------------------------------------------------
class ApprovalKind(models.TextChoices):
    START = "start", "start the rollout"
    PAUSE = "pause", "go past a pause step"


class ApprovalState(models.TextChoices):
    PENDING = "pending", "pending"
    APPROVED = "approved", "approved"
    REJECTED = "rejected", "rejected"
    EXPIRED = "expired", "expired"
    CANCELLED = "cancelled", "cancelled"  # the rollout was aborted while it waited


class ApprovalRequest(models.Model):
    """A rollout in a protected environment waiting for N approvers other than its requester.

    `change` is a snapshot of what would change (version, artifact and image digests, settings,
    plan, what serves now), taken when the request is made, so approvers judge a fixed thing.
    """

    rollout = models.ForeignKey(Rollout, on_delete=models.PROTECT, related_name="approvals")
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="approval_requests")
    kind = models.CharField(max_length=10, choices=ApprovalKind.choices, default=ApprovalKind.START)
    step_index = models.PositiveIntegerField(null=True, blank=True, help_text="pause approvals: the step")
    state = models.CharField(max_length=10, choices=ApprovalState.choices, default=ApprovalState.PENDING)
    required = models.PositiveSmallIntegerField(help_text="approvals needed, as the environment said when asked")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="approval_requests"
    )
    requester = models.CharField(max_length=200, help_text="who asked, as the audit log names them")
    reason = models.TextField(blank=True)
    change = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)

    AUDIT_TYPE = "approval"

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["rollout", "kind", "step_index"],
                condition=models.Q(step_index__isnull=False),
                name="one_approval_per_rollout_step",
            ),
            models.UniqueConstraint(
                fields=["rollout", "kind"], condition=models.Q(step_index__isnull=True), name="one_start_approval"
            ),
        ]
        indexes = [models.Index(fields=["state", "expires_at"])]

    def __str__(self) -> str:
        return f"approval #{self.pk} for {self.rollout}"

    @property
    def is_pending(self) -> bool:
        return self.state == ApprovalState.PENDING

    @property
    def approval_count(self) -> int:
        """Approvals so far (from prefetched decisions when there are)."""
        return sum(1 for decision in self.decisions.all() if decision.decision == Decision.APPROVE)


class Decision(models.TextChoices):
    APPROVE = "approve", "approved"
    REJECT = "reject", "rejected"


class ApprovalDecision(models.Model):
    """One approver's answer to one request. One per person: N approvals are N people."""

    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="decisions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    approver = models.CharField(max_length=200)
    decision = models.CharField(max_length=10, choices=Decision.choices)
    comment = models.TextField(blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["at", "pk"]
        constraints = [models.UniqueConstraint(fields=["request", "user"], name="one_decision_per_approver")]

    def __str__(self) -> str:
        return f"{self.approver} {self.get_decision_display()} {self.request}"
