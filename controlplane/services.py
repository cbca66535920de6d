"""Verbs on users that are not about a single app."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from controlplane.audit import Actor, record
from controlplane.errors import InvalidInput


def create_superuser(username: str, email: str, password: str | None, *, actor: Actor):
    with transaction.atomic():
        user = get_user_model().objects.create_superuser(username, email, password)
        record("user.create", actor=actor, target=("user", user.pk, username), after={"superuser": True})
    return user


def change_password(user, new_password: str, *, actor: Actor) -> None:
    """Set `user`'s password (already validated) and record it; the event holds no password or hash."""
    with transaction.atomic():
        user.set_password(new_password)
        user.save(update_fields=["password"])
        record("user.password_change", actor=actor, target=("user", user.pk, user.get_username()))


@dataclass(frozen=True)
class LiftedLockouts:
    attempts_removed: int  # django-axes' records of failed log-ins, removed
    lifted: list[str]  # the lockouts that were in force and are not any more: "username 'bob'", "address 192.0.2.1"


def lift_login_lockouts(
    *, actor: Actor, username: str | None = None, ip_address: str | None = None, how: str = ""
) -> LiftedLockouts:
    """Forget the failed log-ins of `username`, of `ip_address`, of both together, or (neither given) of everyone,
    through django-axes' own reset, and record what that lifted in the same transaction.

    `how` says where it was asked from (the command line, and by which OS user), for the event's message.
    """
    from axes.utils import reset

    if username is not None and not username.strip():
        # django-axes reads an empty username as "no filter": it would lift every lockout there is.
        raise InvalidInput("The username is empty: give the one the lockout names (the login.locked_out event).")
    if ip_address is not None:
        try:
            ip_address = str(ipaddress.ip_address(ip_address.strip()))
        except ValueError:
            raise InvalidInput(
                f"{ip_address!r} is not an IP address: give it as the login.locked_out event shows it, "
                "for example 192.0.2.10 or 2001:db8::1."
            ) from None
    with transaction.atomic():
        before = _lockouts_in_force()
        removed = reset(ip=ip_address, username=username)
        lifted = sorted(before - _lockouts_in_force())
        described = [f"username {value!r}" if kind == "username" else f"address {value}" for kind, value in lifted]
        if username is not None:
            user = get_user_model().objects.filter(username=username).first()
            target = ("user", user.pk if user else "", username)
        elif ip_address is not None:
            target = ("ip_address", "", ip_address)
        else:
            target = ("login_attempts", "", "every username and address")
        scope = " from ".join(
            part for part in (f"username {username!r}" if username is not None else "", ip_address or "") if part
        )
        summary = (
            f"lifted {len(lifted)} lockout{'s' if len(lifted) != 1 else ''}"
            + (f" ({', '.join(described)})" if described else "")
            + f"; removed {removed} record{'s' if removed != 1 else ''} of failed log-ins"
            + (f" of {scope}" if scope else " (all of them)")
        )
        record(
            "login.lockout_reset",
            actor=actor,
            target=target,
            after={
                "username": username,
                "ip_address": ip_address,
                "attempts_removed": removed,
                "lockouts_lifted": [f"{kind}:{value}" for kind, value in lifted],
            },
            message=f"{how}: {summary}" if how else summary,
        )
    return LiftedLockouts(removed, described)


def _lockouts_in_force() -> set[tuple[str, str]]:
    """(parameter, value) of each lockout in force now, judged as django-axes judges it: the failures within the
    cool-off for one username, or from one address (AXES_LOCKOUT_PARAMETERS), reach the limit."""
    from axes.helpers import get_cool_off, get_failure_limit
    from axes.models import AccessAttempt

    attempts = AccessAttempt.objects.all()
    cool_off = get_cool_off(None)
    if cool_off is not None:
        attempts = attempts.filter(attempt_time__gte=timezone.now() - cool_off)
    limit = get_failure_limit(None, None)
    locked = set()
    for field in ("username", "ip_address"):
        totals = (
            attempts.exclude(**{f"{field}__isnull": True})
            .order_by()
            .values(field)
            .annotate(total=Sum("failures_since_start"))
            .filter(total__gte=limit)
        )
        locked |= {(field, str(row[field])) for row in totals}
    return locked
