"""Browser views shared by every app: API tokens, the audit log, health."""

from __future__ import annotations

import time

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views import csrf
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from controlplane import tokens
from controlplane.audit import Actor, check_chain, record_refusal
from controlplane.errors import ServiceError
from controlplane.filtersets import AuditEventFilterSet
from controlplane.models import APIToken, AuditEvent, Outcome
from controlplane.web import paginate, refuse


@login_required
@require_http_methods(["GET", "POST"])
def token_list(request):
    context = {"tokens": APIToken.objects.filter(user=request.user).order_by("-created_at")}
    if request.method == "POST":
        try:
            issued = tokens.create_token(request.user, request.POST.get("name", ""), actor=Actor.from_request(request))
        except ServiceError as exc:
            return refuse(request, exc, "token.create", "controlplane/tokens.html", context)
        # The raw token is rendered once, in this response only.
        return render(request, "controlplane/tokens.html", {**context, "issued": issued}, status=201)
    return render(request, "controlplane/tokens.html", context)


@login_required
@require_POST
def token_revoke(request, pk):
    token = get_object_or_404(APIToken, pk=pk, user=request.user)
    tokens.revoke_token(token, actor=Actor.from_request(request))
    return redirect("token-list")


@login_required
@require_GET
def audit_log(request):
    filterset = AuditEventFilterSet(request.GET, queryset=AuditEvent.objects.order_by("-id"))
    events = filterset.qs if filterset.is_valid() else AuditEvent.objects.none()
    filters = request.GET.copy()
    filters.pop("page", None)
    filters.pop("format", None)
    return render(
        request,
        "controlplane/audit.html",
        {"filter": filterset, "page": paginate(request, events), "query": request.GET.copy(), "filters": filters},
    )


@login_required
@require_GET
def audit_verify(request):
    """The chain check, on request: it reads every row, too slow for each page load of a big log."""
    started = time.monotonic()
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
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"ok": True})
