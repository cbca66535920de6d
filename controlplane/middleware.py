"""Request ids: taken from X-Request-ID when a proxy set a sane one, else made here."""

from __future__ import annotations

import re
import uuid
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.handlers.exception import response_for_exception
from django.http import Http404
from django.shortcuts import resolve_url
from django.utils.deprecation import MiddlewareMixin
from django_htmx.http import HttpResponseClientRedirect

from controlplane import access
from controlplane.audit import Actor, record_refusal, target_of_request
from controlplane.errors import ServiceError
from controlplane.models import Outcome, Role
from controlplane.web import HTMX_STOP_POLLING
from registry.uploads import read_browser_form

_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UPLOAD_REFUSAL = "registry/htmx/upload_result.html"


class HealthCheckMiddleware:
    """`/healthz` for load balancers and the kubelet, answered before anything reads the Host header.

    Probes come by address (`Host: 10.1.2.3:8000`), which SLIPWAY_ALLOWED_HOSTS rightly refuses on every
    other path (a 400 would fail the probe and keep every pod out of its Service), and over plain HTTP,
    which SLIPWAY_HTTPS redirects elsewhere. The answer says only whether the database answers.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path_info == "/healthz":
            from controlplane.views import healthz  # the views import models: not at settings time

            return healthz(request)
        return self.get_response(request)


class RequestIdMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request.request_id = incoming if _SANE_ID.match(incoming) else uuid.uuid4().hex
        if "\x00" in request.path_info:
            # No name or id holds a NUL (PostgreSQL's text refuses one): the path names nothing. Looked
            # up, it was a 500, and a refusal at it went unaudited (naming its target failed too).
            response = response_for_exception(request, Http404("a NUL in the path"))
        else:
            response = self.get_response(request)
        response["X-Request-ID"] = request.request_id
        return response


class HtmxLoginRedirectMiddleware:
    """An htmx request without a session (it expired): the whole page goes to log in, and comes back after.

    Followed by htmx, the redirect would put the login page inside the fragment, and its `next`
    would be the fragment's URL (an upload's accepts only POST: a 405 once logged in). `next`
    is the page the user was on instead (its query string too), when it is on this host.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            getattr(request, "htmx", False)
            and response.status_code == 302
            and not request.user.is_authenticated
            and urlsplit(response["Location"]).path == (login := resolve_url(settings.LOGIN_URL))
        ):
            page = request.htmx.current_url_abs_path  # None when it is another host's
            return HttpResponseClientRedirect(redirect_to_login(page).url if page else login)
        return response


class RefuseAnonymousUploadsMiddleware(MiddlewareMixin):
    """Refuse a browser upload from someone who may not upload, before its body is read; then read it.

    The CSRF middleware reads request.POST, which streams a multipart body to disk,
    before any view could check the login. Placed above it, this answers first:
    anonymous callers go to the login page, and on the upload views (`web.takes_uploads`)
    signed-in ones without the deployer role anywhere get the refusal. Everyone else's
    multipart body is read here, by registry.uploads rather than Django's slower parser;
    a refusal on the way (too large, malformed) waits for the view. API views are exempt:
    DRF checks them before parsing, with the same reader.
    """

    def process_view(self, request, view_func, view_args, view_kwargs):
        if (
            request.method == "POST"
            and request.content_type == "multipart/form-data"
            and not getattr(view_func, "csrf_exempt", False)
        ):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if getattr(view_func, "takes_uploads", False):
                try:
                    access.require_registry(Actor.from_request(request), Role.DEPLOYER, "upload versions")
                except ServiceError as exc:
                    # htmx swaps the answer into the upload card: the upload view's own refusal, not a page.
                    return refusal_page(request, exc, UPLOAD_REFUSAL if request.htmx else "refused.html")
            read_browser_form(request)
        return None


class ServiceErrorPagesMiddleware(MiddlewareMixin):
    """A refusal raised in a browser view (a role it lacks, say) becomes a page saying so, and is audited.

    For an htmx request the page would land inside whatever fragment it was to replace: the
    refusal goes to the page's #htmx-refusal box instead (base.html), and the fragment stays.
    A live view's refresh (a view marked `polled`) is answered with htmx's "stop polling"
    status, so that a page left open after its user lost a role says why once, and neither
    asks again every second nor writes a refusal into the audit log each time.
    """

    def process_exception(self, request, exception):
        if isinstance(exception, Http404) and request.method == "POST":
            _record_not_found(request, exception)
            return None  # Django's 404 page answers
        if not isinstance(exception, ServiceError):
            return None
        if getattr(request, "htmx", False):
            response = refusal_page(request, exception, "htmx_refusal.html")
            response["HX-Retarget"] = "#htmx-refusal"
            response["HX-Reswap"] = "innerHTML"
            if getattr(getattr(request.resolver_match, "func", None), "polled", False):
                response.status_code = HTMX_STOP_POLLING
            return response
        return refusal_page(request, exception)


def _record_not_found(request, exception: Http404) -> None:
    """A form sent to an object that is not there, or is another team's: a refused attempt like any other."""
    actor = Actor.from_request(request)
    match = getattr(request, "resolver_match", None)
    record_refusal(
        f"page.{match.url_name}" if match and match.url_name else "page",
        actor=actor,
        target=target_of_request(request, actor),
        outcome=Outcome.INVALID,
        message=f"404 {request.method} {request.path[:200]}: {exception or 'not found'}",
    )


def refusal_page(request, exc: ServiceError, template: str = "refused.html"):
    from controlplane.web import refuse

    match = getattr(request, "resolver_match", None)
    action = f"page.{match.url_name}" if match and match.url_name else "page"
    # Someone without any role would be sent from one refusal to the next by "Back to the models".
    may_browse = request.user.is_authenticated and access.can_registry(Actor.from_request(request), Role.VIEWER)
    return refuse(request, exc, action, template, {"status": exc.status_code, "may_browse": may_browse})
