"""Helpers shared by the browser views."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import render

from controlplane import access
from controlplane.audit import Actor, record_refusal, target_of_request
from controlplane.errors import ServiceError
from controlplane.models import Role

# htmx stops polling when a response has this status (https://htmx.org/docs/#polling).
HTMX_STOP_POLLING = 286


def refuse(
    request, exc: ServiceError, action: str, template: str, context: dict | None = None, *, environment: str = ""
):
    """Render a refusal for the browser and record it in the audit log (in `environment`, when it is about one)."""
    actor = Actor.from_request(request)
    record_refusal(
        action,
        actor=actor,
        target=exc.target or target_of_request(request, actor),
        outcome=exc.outcome,
        message=f"{exc.status_code} {request.method} {request.path}: {exc.message}",
        environment=environment,
    )
    # error_fields: the form fields the refusal is about, for the template to mark (none known: none marked).
    context = {**(context or {}), "error": exc.message, "error_fields": set(exc.fields)}
    return render(request, template, context, status=exc.status_code)


def paginate(request, queryset, per_page: int = 50):
    page = Paginator(queryset, per_page).get_page(request.GET.get("page"))
    others = request.GET.copy()
    others.pop("page", None)
    page.query_prefix = f"{others.urlencode()}&" if others else ""  # keeps filters across pages
    return page


def registry_page(view):
    """A registry page: signed in, with a role in at least one environment (the registry is shared)."""

    @login_required
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        access.require_registry(Actor.from_request(request), Role.VIEWER, "see the registry")
        return view(request, *args, **kwargs)

    return wrapped


def polled(view):
    """Mark a view that a live page refreshes every second or so: a refusal answers htmx's stop-polling status.

    Asked again, the refusal would only repeat itself (and write an audit row each time).
    """
    view.polled = True
    return view


def takes_uploads(view):
    """Mark a view that receives artifacts: the upload middleware refuses non-deployers before the body is read."""
    view.takes_uploads = True
    return view
