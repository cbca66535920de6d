"""What every app shares: the audit log, API tokens and roles."""

from __future__ import annotations

import datetime
import hashlib
import json

from django.conf import settings
from django.db import models
from django.utils import timezone


class Outcome(models.TextChoices):
    SUCCESS = "success", "success"
    DENIED = "denied", "denied"  # not authenticated or not permitted
    INVALID = "invalid", "invalid"  # bad input
    FAILED = "failed", "failed"  # the system could not do it


class AuditEvent(models.Model):
    """One row per mutation or refused attempt. Append-only and hash-chained.

    On PostgreSQL a trigger refuses UPDATE, DELETE and TRUNCATE; on SQLite a
    trigger refuses UPDATE and DELETE. `verify_audit` recomputes the chain.
    The actor is stored as text (and a plain id, not a foreign key), so deleting
    a user never has to touch an audit row.
    """

    id = models.BigAutoField(primary_key=True)
    occurred_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.CharField(max_length=200, db_index=True)  # username, "token:<name>", "system", "anonymous"
    actor_user_id = models.BigIntegerField(null=True, blank=True)
    action = models.CharField(max_length=100, db_index=True)
    target_type = models.CharField(max_length=50, blank=True, db_index=True)
    target_id = models.CharField(max_length=100, blank=True)
    target_repr = models.CharField(max_length=300, blank=True)
    # The environment an event concerns (itself, its deployments, their rollouts), so one filter finds them all.
    environment = models.CharField(max_length=100, blank=True, default="", db_index=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.SUCCESS)
    message = models.TextField(blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["target_type", "target_id"])]

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target_repr}"

    HASHED_FIELDS = (
        "occurred_at",
        "actor",
        "actor_user_id",
        "action",
        "target_type",
        "target_id",
        "target_repr",
        "before",
        "after",
        "outcome",
        "message",
        "request_id",
        "source_ip",
    )

    # Hashed only when set: rows written before the field existed keep the hash they were written with.
    HASHED_IF_SET = ("environment",)

    def compute_hash(self) -> str:
        content = {name: getattr(self, name) for name in self.HASHED_FIELDS}
        content.update({name: getattr(self, name) for name in self.HASHED_IF_SET if getattr(self, name)})
        content["occurred_at"] = self.occurred_at.astimezone(datetime.UTC).isoformat()
        body = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(f"{self.prev_hash}\n{body}".encode()).hexdigest()


class Role(models.TextChoices):
    """What someone may do in an environment. Each role includes the ones before it."""

    VIEWER = "viewer", "viewer"  # sees the environment, its deployments, rollouts, ledger and audit events
    DEPLOYER = "deployer", "deployer"  # deploys, promotes into it, rolls back, pauses, resumes, aborts
    APPROVER = "approver", "approver"  # approves or rejects other people's rollouts there
    ADMIN = "admin", "admin"  # changes the environment's settings and who has which role in it


ROLE_RANK = {Role.VIEWER: 1, Role.DEPLOYER: 2, Role.APPROVER: 3, Role.ADMIN: 4}


class RoleBinding(models.Model):
    """A user or a group holds a role in one environment, or in every environment (environment null)."""

    environment = models.ForeignKey(
        "deployments.Environment", null=True, blank=True, on_delete=models.CASCADE, related_name="role_bindings"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="role_bindings"
    )
    group = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.CASCADE, related_name="role_bindings"
    )
    role = models.CharField(max_length=10, choices=Role.choices)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    AUDIT_TYPE = "role_binding"

    class Meta:
        ordering = ["environment__name", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(user__isnull=False, group__isnull=True)
                | models.Q(user__isnull=True, group__isnull=False),
                name="role_binding_user_or_group",
            ),
            # One role per person (or group) and environment, and one for "every environment":
            # granting again changes it. (Partial indexes, not NULLS NOT DISTINCT: SQLite has those too.)
            models.UniqueConstraint(
                fields=["environment", "user"],
                condition=models.Q(user__isnull=False, environment__isnull=False),
                name="one_role_per_user_and_environment",
            ),
            models.UniqueConstraint(
                fields=["user"],
                condition=models.Q(user__isnull=False, environment__isnull=True),
                name="one_global_role_per_user",
            ),
            models.UniqueConstraint(
                fields=["environment", "group"],
                condition=models.Q(group__isnull=False, environment__isnull=False),
                name="one_role_per_group_and_environment",
            ),
            models.UniqueConstraint(
                fields=["group"],
                condition=models.Q(group__isnull=False, environment__isnull=True),
                name="one_global_role_per_group",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.principal} is {self.role} in {self.scope_name}"

    @property
    def principal(self) -> str:
        return self.user.get_username() if self.user_id else f"group {self.group.name}"

    @property
    def scope_name(self) -> str:
        return self.environment.name if self.environment_id else "every environment"


class TokenScope(models.TextChoices):
    """The most a token may do, within what its user may do."""

    READ = "read", "read"  # read what the user may see
    DEPLOY = "deploy", "deploy"  # also upload, build, deploy, promote, roll back
    ADMIN = "admin", "admin"  # everything the user may do: approve, change environments and roles


# The highest role a token of each scope acts with.
SCOPE_CAP = {TokenScope.READ: Role.VIEWER, TokenScope.DEPLOY: Role.DEPLOYER, TokenScope.ADMIN: Role.ADMIN}


class APIToken(models.Model):
    """A bearer token. Only its SHA-256 is stored; the token is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="The first characters, to recognise a token.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    scope = models.CharField(max_length=10, choices=TokenScope.choices, default=TokenScope.ADMIN)
    # Empty: every environment its user has a role in.
    environments = models.ManyToManyField("deployments.Environment", blank=True, related_name="+")
    expires_at = models.DateTimeField(null=True, blank=True, help_text="null: until revoked")

    AUDIT_TYPE = "token"

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "name"],
                condition=models.Q(revoked_at__isnull=True),
                name="one_active_token_name_per_user",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and not self.is_expired

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()
