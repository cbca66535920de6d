"""Log-ins in the audit log (each success and failure), and what a locked-out log-in sees.

django-axes counts failed log-ins in the database and refuses a username or an address that
reached the limit; `lockout_response` (django-axes calls it) answers those refusals for /login/
and the admin alike.
"""

from __future__ import annotations

import math
from datetime import datetime

from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_client_username, get_cool_off, get_failure_limit
from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone

from controlplane.audit import Actor, record, record_refusal
from controlplane.models import Outcome


def lockout_response(request, original_response=None, credentials: dict | None = None) -> HttpResponse:
    """429 with the time to retry, and one audit event per refused try."""
    unlocked_at = unlocked_at_for(request, credentials)
    retry_in = max(1, math.ceil((unlocked_at - timezone.now()).total_seconds()))
    username = get_client_username(request, credentials) or ""
    record_refusal(
        "login.locked_out",
        actor=Actor.from_request(request),
        outcome=Outcome.DENIED,
        message=(
            f"429 {request.method} {request.path[:200]}: log-in for {username[:150]!r} refused after "
            f"{get_failure_limit(request, credentials)} failed attempts for this username or from "
            f"{getattr(request, 'axes_ip_address', None) or 'this address'}; retry in {retry_in} s"
        ),
    )
    context = {"retry_in": retry_in, "wait": as_duration(retry_in), "unlocked_at": unlocked_at}
    response = render(request, "registration/locked_out.html", context, status=429)
    response["Retry-After"] = str(retry_in)
    return response


def unlocked_at_for(request, credentials: dict | None) -> datetime:
    """When every limit this log-in hit has expired.

    Each username or address counts the failures whose last try is within the cool-off; a
    limit lifts once enough of its newest tries have aged out to leave fewer than the limit.
    """
    limit = get_failure_limit(request, credentials)
    cool_off = get_cool_off(request)
    unlocked_at = timezone.now()
    for attempts in AxesProxyHandler.get_implementation().get_user_attempts(request, credentials):
        failures = 0
        for tried_at, count in attempts.order_by("-attempt_time").values_list("attempt_time", "failures_since_start"):
            failures += count
            if failures >= limit:
                unlocked_at = max(unlocked_at, tried_at + cool_off)
                break
    return unlocked_at


def as_duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    return f"{math.ceil(seconds / 60)} minutes"


def record_login(sender, request, user, **kwargs) -> None:
    """`user_logged_in`: who signed in, and from where."""
    if request is not None:
        record("login", actor=Actor.from_request(request, user=user), target=("user", user.pk, user.get_username()))


def record_failed_login(sender, credentials: dict, request=None, **kwargs) -> None:
    """`user_login_failed`: a wrong username or password, in the audit log as a refused log-in.

    Tries refused by a lockout are left to `lockout_response` (one event each, not two). Django has
    already replaced the password in `credentials`; only the username is kept.
    """
    if request is None or getattr(request, "axes_locked_out", False):
        return
    username = str(get_client_username(request, credentials) or "")[:150]
    record_refusal(
        "login",
        actor=Actor.from_request(request),
        outcome=Outcome.DENIED,
        message=f"{request.method} {request.path[:200]}: wrong username or password for {username!r}",
    )
