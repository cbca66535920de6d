"""The one way to write the audit log: `record(...)`.

Service functions call `record` inside the same `transaction.atomic()` as the
change they make, so a change and its audit event commit or vanish together.
Refused attempts (no change at all) go through `record_refusal`, in a
transaction of their own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from controlplane.models import AuditEvent, Outcome

# Any constant works; it names "the audit chain" among advisory locks.
_AUDIT_LOCK_KEY = 0x534C_4950_5741_59  # "SLIPWAY"
GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class Actor:
    """Who is acting, and from where. Services take one as `actor=`."""

    user: Any = None  # a User, or None for the system and anonymous callers
    token_name: str = ""
    request_id: str = ""
    source_ip: str | None = None
    is_system: bool = False
    token: Any = None  # the APIToken the request came with: its scope and environments limit the user's roles
    # What controlplane.access worked out about this actor's roles, kept for the rest of the request.
    grants: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def system(cls, request_id: str = "") -> Actor:
        return cls(is_system=True, request_id=request_id)

    @classmethod
    def from_request(cls, request, *, user=None) -> Actor:
        """The request's actor: made once per request (so its roles are read once), unless `user` is given."""
        if user is None and (cached := getattr(request, "_slipway_actor", None)) is not None:
            return cached
        who = user or getattr(request, "user", None)
        auth = getattr(request, "auth", None)  # set by DRF
        token = auth if getattr(auth, "key_hash", None) else None
        actor = cls(
            user=who if who is not None and who.is_authenticated else None,
            token_name=getattr(token, "name", ""),
            token=token,
            request_id=getattr(request, "request_id", ""),
            source_ip=client_ip(request),
        )
        if user is None and actor.user is not None:
            request._slipway_actor = actor
        return actor

    @property
    def label(self) -> str:
        if self.is_system:
            return "system"
        if self.user is None:
            return "anonymous"
        if self.token_name:
            return f"{self.user.get_username()} (token: {self.token_name})"
        return self.user.get_username()


def client_ip(request) -> str | None:
    """The caller's address: behind your proxy, the entry it appended to X-Forwarded-For (the last).

    Earlier entries are whatever the client wrote; the rate limits use the same rule.
    """
    if settings.SLIPWAY_TRUST_X_FORWARDED_FOR:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            return forwarded.split(",")[-1].strip() or None
    return request.META.get("REMOTE_ADDR") or None


def describe(obj: Any) -> tuple[str, str, str]:
    """(type, id, text) of an audited object."""
    if obj is None:
        return "", "", ""
    if isinstance(obj, tuple):
        kind, ident, text = obj
        return kind, str(ident), str(text)[:300]
    kind = getattr(obj, "AUDIT_TYPE", obj._meta.model_name)
    return kind, str(obj.pk), str(obj)[:300]


def _as_stored(before: Any, after: Any, source_ip: str | None) -> tuple[Any, Any, str | None]:
    """`before`, `after` and `source_ip` as reading the row back will give them, so the hash recomputes.

    On PostgreSQL that is as the database gives them back: jsonb keeps numbers as numeric (the float 1e16
    comes back as the integer 10000000000000000, -0.0 as 0.0) and inet writes addresses its own way
    (2001:DB8:0::1 comes back as 2001:db8::1); the database itself says what it will give.
    """
    texts = [None if value is None else json.dumps(value, default=str) for value in (before, after)]
    source_ip = AuditEvent._meta.get_field("source_ip").get_prep_value(source_ip) or None  # as saving would
    if connection.vendor == "postgresql" and (source_ip or any(text is not None for text in texts)):
        with connection.cursor() as cursor:
            cursor.execute("SELECT %s::jsonb::text, %s::jsonb::text, host(%s::inet)", [*texts, source_ip])
            *texts, source_ip = cursor.fetchone()
    before, after = (None if text is None else json.loads(text) for text in texts)
    return before, after, source_ip


def _text(value: str) -> str:
    # PostgreSQL's text holds no NUL byte; a refused request's URL or echoed input may, and must still be recorded.
    return value.replace("\x00", "\ufffd")


def record(
    action: str,
    *,
    actor: Actor,
    target: Any = None,
    before: dict | None = None,
    after: dict | None = None,
    outcome: str = Outcome.SUCCESS,
    message: str = "",
    environment: str = "",
) -> AuditEvent:
    """Append one event to the chain. Call inside the change's transaction.

    `environment` names the environment the event concerns (a deployment's, a rollout's), so the
    log can be read per environment.
    """
    target_type, target_id, target_repr = (_text(part) for part in describe(target))
    before, after, source_ip = _as_stored(before, after, actor.source_ip)
    with transaction.atomic():
        _lock_chain()
        last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
        event = AuditEvent(
            occurred_at=timezone.now(),
            actor=actor.label[:200],
            actor_user_id=actor.user.pk if actor.user is not None else None,
            action=action,
            target_type=target_type,
            target_id=target_id,
            target_repr=target_repr,
            environment=environment,
            before=before,
            after=after,
            outcome=outcome,
            message=_text(message),
            request_id=actor.request_id,
            source_ip=source_ip,
            prev_hash=last or GENESIS_HASH,
        )
        event.hash = event.compute_hash()
        event.save(force_insert=True)
    return event


def record_refusal(
    action: str, *, actor: Actor, outcome: str, message: str, target: Any = None, environment: str = ""
) -> AuditEvent:
    """Record an attempt that changed nothing (denied or invalid), on its own."""
    return record(action, actor=actor, target=target, outcome=outcome, message=message, environment=environment)


# What a request is about, from the first part of its path (after /api/v1/): the model, the URL argument
# that names its object, and how to narrow the lookup to what the actor may see (an environment field;
# "registry": any reader of the registry; "own": the actor's own; "all": only those who see everything).
_URL_OBJECTS = {
    "builds": ("deployments.ImageBuild", "pk", "registry"),
    "environments": ("deployments.Environment", "name", "pk"),
    "deployments": ("deployments.Deployment", "pk", "environment"),
    "rollouts": ("deployments.Rollout", "pk", "deployment__environment"),
    "approvals": ("deployments.ApprovalRequest", "pk", "environment"),
    "tokens": ("controlplane.APIToken", "pk", "own"),  # controlplane.tokens.visible_to
    "role-bindings": ("controlplane.RoleBinding", "pk", "all"),
}


def target_of_request(request, actor: Actor) -> Any:
    """The object a refused request named in its URL, for its audit event: the object when the actor may
    see it (so the event is found under it), else only what the URL said (the actor reads their own
    events: naming an object of another team there would tell them what it is); None when the URL names none.
    """
    from controlplane import access

    match = getattr(request, "resolver_match", None)
    if match is None:
        return None
    kwargs = match.kwargs
    parts = request.path_info.strip("/").split("/")
    first = parts[2] if parts[:2] == ["api", "v1"] and len(parts) > 2 else parts[0]
    reads_registry = access.grants(actor).best_rank() > 0
    if first == "models":
        name, version = kwargs.get("model_name") or kwargs.get("name"), kwargs.get("version")
        if not name:
            return None
        if version is None:
            found = reads_registry and apps.get_model("registry", "Model").objects.filter(name=name).first()
            return found or ("model", "", name)
        versions = apps.get_model("registry", "ModelVersion").objects.select_related("model")
        found = reads_registry and versions.filter(model__name=name, version=version).first()
        return found or ("model_version", "", f"{name} v{version}")
    model_label, field, narrow = _URL_OBJECTS.get(first, (None, None, None))
    value = kwargs.get(field) if field else None
    if value is None:
        return None
    model = apps.get_model(model_label)
    kind = getattr(model, "AUDIT_TYPE", model._meta.model_name)
    said = (kind, value if field == "pk" else "", "" if field == "pk" else value)
    if field == "pk" and not str(value).isdecimal():
        return said
    objects = model._default_manager.all()
    if narrow == "registry":
        visible = objects if reads_registry else objects.none()
    elif narrow == "own":  # (only tokens)
        from controlplane.tokens import visible_to

        visible = visible_to(actor)
    elif narrow == "all":
        visible = objects if access.sees_everything(actor) else objects.none()
    else:
        visible = access.scope(objects, actor, field=narrow)
    return visible.filter(**{field: value}).first() or said


def _lock_chain() -> None:
    # Appends are serialized so that each row's prev_hash is the row before it.
    # SQLite needs nothing: its IMMEDIATE transactions already hold the write lock.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_AUDIT_LOCK_KEY])


@dataclass(frozen=True)
class Anchor:
    """An event's id and hash, written down outside the database: the chain must still hold it."""

    id: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> Anchor:
        event_id, _, digest = text.strip().partition(":")
        if not event_id.isdecimal() or re.fullmatch(r"[0-9a-f]{64}", digest) is None:
            raise ValueError(
                f"{text!r} is not an anchor: give ID:HASH, the event id and its 64-hex-digit hash, "
                "as verify_audit printed them (e.g. 1234:9f86d0...)."
            )
        return cls(int(event_id), digest)

    def __str__(self) -> str:
        return f"{self.id}:{self.hash}"


@dataclass(frozen=True)
class ChainReport:
    """What a walk along the chain found: how far it held, and where it broke if it did."""

    checked: int  # rows found intact (all of them when the chain holds)
    last_hash: str  # the hash of the last intact row; GENESIS_HASH for an empty log
    broken: AuditEvent | None  # the first row whose hash or link is wrong
    last_id: int | None = None  # the last intact row's id; None for an empty log
    anchor_problem: str = ""  # why the anchor asked for does not hold, when the chain itself does

    @property
    def ok(self) -> bool:
        return self.broken is None and not self.anchor_problem

    @property
    def head(self) -> Anchor | None:
        """The anchor to write down now, so that a later check sees the log cut back or rewritten."""
        return None if self.last_id is None else Anchor(self.last_id, self.last_hash)


def check_chain(batch_size: int = 5000, anchor: Anchor | None = None) -> ChainReport:
    """Recompute every row's hash, oldest first, and stop at the first row that does not match.

    A chain cut back from its end, or rewritten whole with fresh hashes by someone who can switch
    the trigger off, still links up; an anchor recorded earlier (`ChainReport.head`) catches both.
    """
    expected_prev, checked, last_id, anchored = GENESIS_HASH, 0, None, anchor is None
    for event in AuditEvent.objects.order_by("id").iterator(chunk_size=batch_size):
        if event.prev_hash != expected_prev or event.compute_hash() != event.hash:
            return ChainReport(checked, expected_prev, event, last_id)
        if anchor is not None and event.id == anchor.id:
            if event.hash != anchor.hash:
                problem = (
                    f"event #{event.id} no longer has the hash recorded for it: the log was rewritten "
                    "up to there (its hashes recomputed). Compare exports or backups from before."
                )
                return ChainReport(checked, expected_prev, None, last_id, problem)
            anchored = True
        expected_prev, checked, last_id = event.hash, checked + 1, event.id
    problem = ""
    if not anchored:
        problem = (
            f"event #{anchor.id}, recorded as an anchor, is gone: the log was cut back past it (its last "
            f"{'event is #' + str(last_id) if last_id is not None else 'event is gone too'}). "
            "Compare exports or backups from before."
        )
    return ChainReport(checked, expected_prev, None, last_id, problem)


def verify_chain(batch_size: int = 5000) -> AuditEvent | None:
    """The first row whose hash or link is wrong, or None when the chain holds."""
    return check_chain(batch_size).broken
