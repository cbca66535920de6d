"""Browser views shared by every app: API tokens, the audit log, health."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from axes.handlers.proxy import AxesProxyHandler
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm
from django.db import DatabaseError, connection
from django.http import HttpResponseServerError, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template import loader
from django.utils.cache import add_never_cache_headers
from django.views import csrf
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from controlplane import access, services, tokens
from controlplane.audit import Actor, check_chain, record_refusal
from controlplane.errors import Forbidden, ServiceError
from controlplane.filtersets import AuditEventFilterSet
from controlplane.logins import lockout_response
from controlplane.models import APIToken, AuditEvent, Outcome, TokenScope
from controlplane.web import paginate, refuse

log = logging.getLogger(__name__)


@login_required
@require_http_methods(["GET", "POST"])
def token_list(request):
    from deployments.models import Environment

    actor = Actor.from_request(request)
    context = {
        "tokens": APIToken.objects.filter(user=request.user).prefetch_related("environments").order_by("-created_at"),
        "scopes": TokenScope.choices,
        "environments": access.scope(Environment.objects, actor, field="pk").order_by("created_at", "name"),
        "lifetimes": [(7, "7 days"), (30, "30 days"), (90, "90 days"), (365, "a year"), ("", "until revoked")],
        "form": request.POST,
        "chosen_environments": request.POST.getlist("environments"),
    }
    if request.method == "POST":
        try:
            issued = tokens.create_token(
                request.user,
                request.POST.get("name", ""),
                actor=actor,
                scope=request.POST.get("scope", TokenScope.READ),
                environments=request.POST.getlist("environments"),
                expires_in_days=request.POST.get("expires_in_days") or None,
            )
        except ServiceError as exc:
            return refuse(request, exc, "token.create", "controlplane/tokens.html", context)
        # The raw token is rendered once, in this response only, which no cache may keep.
        response = render(request, "controlplane/tokens.html", {**context, "issued": issued}, status=201)
        add_never_cache_headers(response)
        return response
    return render(request, "controlplane/tokens.html", context)


@login_required
@require_POST
def token_revoke(request, pk):
    token = get_object_or_404(APIToken, pk=pk, user=request.user)
    tokens.revoke_token(token, actor=Actor.from_request(request))
    return redirect("token-list")


@login_required
@require_http_methods(["GET", "POST"])
def password_change(request):
    """A user's own password: the current one, then the new one twice (Django's validators apply).

    This session stays logged in; the account's other sessions end (Django checks each session against
    the password hash). API tokens are separate credentials and keep working until revoked.
    """
    form = PasswordChangeForm(request.user, request.POST if request.method == "POST" else None)
    if request.method == "POST":
        actor = Actor.from_request(request)
        # The current password is checked as a log-in checks it: wrong ones count towards the same lockout.
        credentials = {"username": request.user.get_username()}
        if not AxesProxyHandler.is_allowed(request, credentials):
            return lockout_response(request, credentials=credentials)
        if not form.is_valid():
            # Which fields were refused, never what was typed in them.
            refused = "; ".join(
                f"{form.fields[name].label if name in form.fields else 'form'}: {' '.join(errors)}"
                for name, errors in form.errors.items()
            )
            record_refusal(
                "user.password_change",
                actor=actor,
                target=("user", request.user.pk, request.user.get_username()),
                outcome=Outcome.INVALID,
                message=f"400 POST {request.path}: {refused}",
            )
            if form.has_error("old_password", "password_incorrect"):  # at the limit, django-axes answers 429
                AxesProxyHandler.user_login_failed(__name__, credentials, request)
            return render(request, "registration/password_change.html", {"form": form}, status=400)
        services.change_password(request.user, form.cleaned_data["new_password1"], actor=actor)
        update_session_auth_hash(request, request.user)
        response = render(request, "registration/password_change.html", {"form": None, "changed": True})
        add_never_cache_headers(response)
        return response
    return render(request, "registration/password_change.html", {"form": form})


@login_required
@require_GET
def audit_log(request):
    visible = access.audit_scope(AuditEvent.objects.order_by("-id"), Actor.from_request(request))
    filterset = AuditEventFilterSet(request.GET, queryset=visible)
    events = filterset.qs if filterset.is_valid() else AuditEvent.objects.none()
    filters = request.GET.copy()
    filters.pop("page", None)
    filters.pop("format", None)
    query = request.GET.copy()
    # A link may say 2026-11-23 or 2026-11-23T14:30:00.5+01:00; the form's time fields show only
    # their own format (UTC, whole seconds), and would look empty while the filter is on.
    cleaned = getattr(filterset.form, "cleaned_data", {})  # the fields that are valid, when others are not
    for name, rounding in (("since", 0), ("until", 1)):
        if (when := cleaned.get(name)) is not None:
            if when.microsecond:  # widened to the whole second around it, so that sending the form loses nothing
                when = when.replace(microsecond=0) + timedelta(seconds=rounding)
            query[name] = when.strftime("%Y-%m-%dT%H:%M:%S" if when.second else "%Y-%m-%dT%H:%M")
    return render(
        request,
        "controlplane/audit.html",
        {
            "filter": filterset,
            "page": paginate(request, events),
            "query": query,
            "filters": filters,
            "can_verify": access.sees_everything(Actor.from_request(request)),
        },
    )


@login_required
@require_GET
def audit_verify(request):
    """The chain check, on request: it reads every row, too slow for each page load of a big log."""
    started = time.monotonic()
    if not access.sees_everything(Actor.from_request(request)):
        raise Forbidden(
            "Verifying the hash chain reads every team's events: it needs the viewer role in every "
            "environment (an auditor's). Ask a Slipway superuser to grant it."
        )
    report = check_chain()
    return render(
        request,
        "controlplane/htmx/audit_verify.html",
        {"report": report, "seconds": time.monotonic() - started},
    )


def csrf_failure(request, reason=""):
    """Django's CSRF refusal, recorded: a forged or stale form is a refused attempt too."""
    record_refusal(
        "csrf.check",
        actor=Actor.from_request(request),
        outcome=Outcome.DENIED,
        message=f"403 {request.method} {request.path[:200]}: CSRF verification failed ({reason})",
    )
    return csrf.csrf_failure(request, reason)


@require_GET
def healthz(request):
    """Whether this web process can serve: its database answers (503 when not, for the probe to retry)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        log.warning("healthz: the database does not answer: %s", exc)
        return JsonResponse({"ok": False, "error": "the database does not answer"}, status=503)
    return JsonResponse({"ok": True})


# Django's handler404 and handler500 (controlplane/urls.py): the API answers its JSON error shape.
def not_found(request, exception):
    if request.path.startswith("/api/"):
        error = f"No such API endpoint: {request.method} {request.path}; see /api/docs/"
        return JsonResponse({"error": error, "code": "not_found"}, status=404)
    return render(request, "404.html", status=404)


def server_error(request):
    if request.path.startswith("/api/"):
        body = {"error": "internal error; the server's log has the details", "code": "server_error"}
        return JsonResponse(body, status=500)
    # Rendered without the request: no context processor, no database (it may be what failed).
    return HttpResponseServerError(loader.get_template("500.html").render())
