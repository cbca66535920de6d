"""What a locked-out log-in sees, and its audit event (django-axes calls `lockout_response`).

django-axes counts failed log-ins in the database and refuses a username or an address that
reached the limit; this module answers those refusals for /login/ and the admin alike.
"""

from __future__ import annotations

import math
from datetime import datetime

from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_client_username, get_cool_off, get_failure_limit
from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone

from controlplane.audit import Actor, record_refusal
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
