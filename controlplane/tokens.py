"""API tokens: created, looked up by hash, revoked. Each change is audited."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from controlplane.audit import Actor, record
from controlplane.errors import Conflict, InvalidInput
from controlplane.models import APIToken

TOKEN_PREFIX = "slw_"
_LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(raw: str) -> str:
    # Tokens are 256 random bits: a fast hash is enough, and lookups stay O(1).
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    token: APIToken
    raw: str  # shown to the user once, never stored


def create_token(user, name: str, *, actor: Actor) -> IssuedToken:
    name = (name or "").strip()
    if not name:
        raise InvalidInput("Give the token a name, such as the script or machine that will use it.")
    if len(name) > 100:
        raise InvalidInput("A token name is at most 100 characters.")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        with transaction.atomic():
            token = APIToken.objects.create(
                user=user, name=name, prefix=raw[: len(TOKEN_PREFIX) + 6], key_hash=hash_token(raw)
            )
            record("token.create", actor=actor, target=token, after={"name": name, "user": user.get_username()})
    except IntegrityError as exc:
        raise Conflict(f"{user.get_username()} already has an active token named {name!r}; pick another name.") from exc
    return IssuedToken(token=token, raw=raw)


def revoke_token(token: APIToken, *, actor: Actor) -> APIToken:
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
    if token is None or token.revoked_at is not None or not token.user.is_active:
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
    why = "revoked" if token.revoked_at is not None else "its user is deactivated"
    return f"token {token.name!r} ({token.prefix}…) of {token.user.get_username()}, {why}"
