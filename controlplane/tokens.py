"""API tokens: created, looked up by hash, revoked. Each change is audited.

A token acts as its user, limited by its scope (read, deploy, admin), optionally to some
environments, and until it expires (controlplane.access applies the limits).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from controlplane.audit import Actor, record
from controlplane.errors import Conflict, Forbidden, InvalidInput
from controlplane.models import APIToken, TokenScope

TOKEN_PREFIX = "slw_"
_LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(raw: str) -> str:
    # Tokens are 256 random bits: a fast hash is enough, and lookups stay O(1).
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    token: APIToken
    raw: str  # shown to the user once, never stored


MAX_LIFETIME_DAYS = 3650


def create_token(
    user,
    name: str,
    *,
    actor: Actor,
    scope: str = TokenScope.ADMIN,
    environments: list[str] | tuple[str, ...] = (),
    expires_in_days: int | None = None,
) -> IssuedToken:
    """A new token for `user`. `environments`: names it is limited to (none: all of the user's)."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput("Give the token a name, such as the script or machine that will use it.")
    if len(name) > 100:
        raise InvalidInput("A token name is at most 100 characters.")
    _check_issuer(actor, user)
    if scope not in TokenScope.values:
        raise InvalidInput(
            f"scope must be one of {', '.join(TokenScope.values)} (read: look only; deploy: also upload and "
            "deploy; admin: everything you may do).",
            fields={"scope": ["unknown"]},
        )
    expires_at = _expiry(expires_in_days)
    limited_to = _environments(user, environments)
    _check_within_issuer(actor, limited_to, expires_at)
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        with transaction.atomic():
            token = APIToken.objects.create(
                user=user,
                name=name,
                prefix=raw[: len(TOKEN_PREFIX) + 6],
                key_hash=hash_token(raw),
                scope=scope,
                expires_at=expires_at,
            )
            token.environments.set(limited_to)
            record(
                "token.create",
                actor=actor,
                target=token,
                after={
                    "name": name,
                    "user": user.get_username(),
                    "scope": scope,
                    "environments": sorted(env.name for env in limited_to),
                    "expires_at": expires_at,
                },
            )
    except IntegrityError as exc:
        raise Conflict(
            f"{user.get_username()} already has an active token named {name!r}; pick another name.",
            target=("token", "", name),
        ) from exc
    return IssuedToken(token=token, raw=raw)


def _check_issuer(actor: Actor, user) -> None:
    """A token never makes another token: it could otherwise widen its own scope or outlive itself."""
    if actor.token is not None and actor.token.scope != TokenScope.ADMIN:
        raise Forbidden(
            f"This API token's scope is {actor.token.scope!r}: only an admin-scoped token (or the web UI) "
            "may create or revoke tokens."
        )
    if not actor.is_system and (actor.user is None or actor.user.pk != user.pk):
        raise Forbidden("You may create and revoke only your own tokens.")


def _check_within_issuer(actor: Actor, limited_to: list, expires_at: datetime | None) -> None:
    """A token makes no token that reaches further than itself: into other environments, or past its expiry."""
    issuer = actor.token
    if issuer is None:
        return
    allowed = sorted(issuer.environments.values_list("name", flat=True))
    if allowed and not (limited_to and {env.name for env in limited_to} <= set(allowed)):
        raise Forbidden(
            f"This API token is limited to {', '.join(allowed)}: a token it creates must be limited to "
            "some of those too. Create wider tokens in the web UI.",
            fields={"environments": [f"some of: {', '.join(allowed)}"]},
        )
    if issuer.expires_at is not None and (expires_at is None or expires_at > issuer.expires_at):
        raise Forbidden(
            f"This API token expires at {issuer.expires_at:%Y-%m-%d %H:%M} UTC: a token it creates must expire "
            "by then too (ask for fewer days). Create longer-lived tokens in the web UI.",
            fields={"expires_in_days": ["after this token expires"]},
        )


def _expiry(days) -> datetime | None:
    if days in (None, ""):
        return None
    try:
        days = int(days)
    except (TypeError, ValueError):
        days = 0
    if not 1 <= days <= MAX_LIFETIME_DAYS:
        raise InvalidInput(
            f"expires_in_days must be a whole number of days from 1 to {MAX_LIFETIME_DAYS}, or left out for a "
            "token that lasts until it is revoked.",
            fields={"expires_in_days": ["out of range"]},
        )
    return timezone.now() + timedelta(days=days)


def _environments(user, names) -> list:
    """The environments named, each one where `user` holds a role; else a refusal naming the others."""
    from controlplane import access
    from deployments.models import Environment

    names = sorted({str(name).strip() for name in names or () if str(name).strip()})
    if not names:
        return []
    found = {env.name: env for env in Environment.objects.filter(name__in=names)}
    mine = Actor(user=user)
    unknown = [name for name in names if name not in found or access.role_in(mine, found[name]) is None]
    if unknown:
        raise InvalidInput(
            f"You have no role in {', '.join(map(repr, unknown))} (or no such environment exists): "
            "a token can be limited only to environments where you have a role.",
            fields={"environments": [f"unknown: {name}" for name in unknown]},
        )
    return [found[name] for name in names]


def visible_to(actor: Actor) -> QuerySet[APIToken]:
    """The tokens `actor` may list and revoke: their user's own; through a token limited to some environments,
    only those limited to some of the same (itself among them), as such a token may create no others.

    (A token for x alone does not read the audit log of y, nor see the token that deploys to y.)
    """
    from controlplane import access

    if actor.user is None:
        return APIToken.objects.none()
    own = APIToken.objects.filter(user=actor.user)
    within = access.grants(actor).token_environments
    if within is None:
        return own
    limits = APIToken.environments.through.objects
    reaching_elsewhere = limits.exclude(environment_id__in=within).values("apitoken_id")
    return own.filter(pk__in=limits.values("apitoken_id")).exclude(pk__in=reaching_elsewhere)


def revoke_token(token: APIToken, *, actor: Actor) -> APIToken:
    _check_issuer(actor, token.user)
    with transaction.atomic():
        token = APIToken.objects.select_for_update().get(pk=token.pk)
        if token.revoked_at is None:
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
            record("token.revoke", actor=actor, target=token, before={"active": True}, after={"active": False})
    return token


def authenticate_token(raw: str) -> APIToken | None:
    """The active token for `raw`, or None. Marks it used (at most once a minute)."""
    token = APIToken.objects.select_related("user").filter(key_hash=hash_token(raw)).first()
    if token is None or not token.is_active or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > _LAST_USED_RESOLUTION:
        APIToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def describe_refused(raw: str) -> str:
    """For the audit log: which known token was refused and why, without the secret itself."""
    token = APIToken.objects.select_related("user").filter(key_hash=hash_token(raw)).first()
    if token is None:
        return "no such token"
    if token.revoked_at is not None:
        why = "revoked"
    elif token.is_expired:
        why = f"expired at {token.expires_at:%Y-%m-%d %H:%M} UTC"
    else:
        why = "its user is deactivated"
    return f"token {token.name!r} ({token.prefix}…) of {token.user.get_username()}, {why}"
